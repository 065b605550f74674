"""Per-node agent configuration, read from HAMi's device plugin config file.

HAMi mounts a JSON file (ConfigMap `hami-device-plugin`, key `config.json`) shaped
`{"nodeconfig": [{"name": "<node>", "devicesplitcount": 10, "devicememoryscaling": 1.0,
"devicecorescaling": 1.0, "operatingmode": "hami-core", "filterdevices": {"uuid": [...], "index": [...]},
"enablenumatopology": true, "preconfigureddevicememory": 0, "libcudaloglevel": "0", "migstrategy": "none"}]}`.
Entries whose `name` is this node override the cluster defaults, later entries over earlier ones. Keys are
matched case-insensitively, as Go's encoding/json does, so HAMi's files load unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hami.resources import HamiError

MODES = ("hami-core", "mig", "mps")
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """What a node registers and how it shares its devices.

    `split_count` tasks may share a device; registered memory is the card's * `memory_scaling` (above 1
    oversubscribes, and the limiter is told so) and cores are 100 * `core_scaling`. Hidden devices are neither
    registered nor advertised to kubelet. `numa_topology` puts each replica's NUMA node in ListAndWatch (HAMi's
    `enablenumatopology`; kubelet's TopologyManager then aligns CPUs with GPUs).
    """

    split_count: int = 10
    memory_scaling: float = 1.0
    core_scaling: float = 1.0
    mode: str = "hami-core"
    hide_uuids: frozenset[str] = frozenset()
    hide_indices: frozenset[int] = frozenset()
    numa_topology: bool = True
    preconfigured_memory_mib: int = 0
    libcuda_log_level: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.split_count <= _INT32_MAX:
            raise HamiError("devicesplitcount", f"must be at least 1, got {self.split_count}")
        if not self.memory_scaling > 0:
            raise HamiError("devicememoryscaling", f"must be above 0, got {self.memory_scaling}")
        if not self.core_scaling > 0:
            raise HamiError("devicecorescaling", f"must be above 0, got {self.core_scaling}")
        if self.mode not in MODES:
            raise HamiError("operatingmode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.preconfigured_memory_mib < 0:
            raise HamiError("preconfigureddevicememory", "must not be negative")

    def hides(self, uuid: str, index: int) -> bool:
        return uuid in self.hide_uuids or index in self.hide_indices


def _get(obj: Mapping[str, Any], key: str) -> Any:
    """Go encoding/json's lookup: exact key, else the first case-insensitive match."""
    if key in obj:
        return obj[key]
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == key:
            return v
    return None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HamiError(where, f"expected a number, got {value!r}")
    return float(value)


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise HamiError(where, f"expected an integer, got {value!r}")
    return value


def apply_node_entries(data: Any, node_name: str, base: NodeConfig, origin: str = "config") -> NodeConfig:
    """`base` overridden by every `nodeconfig` entry named `node_name`."""
    if not isinstance(data, Mapping):
        raise HamiError(origin, "expected a JSON object with a `nodeconfig` list")
    entries = _get(data, "nodeconfig") or []
    if not isinstance(entries, list):
        raise HamiError(f"{origin}.nodeconfig", "expected a list")
    config = base
    for i, entry in enumerate(entries):
        where = f"{origin}.nodeconfig[{i}]"
        if not isinstance(entry, Mapping):
            raise HamiError(where, "expected an object")
        if _get(entry, "name") != node_name:
            continue
        changes: dict[str, Any] = {}
        if (v := _get(entry, "devicesplitcount")) is not None:
            changes["split_count"] = _integer(v, f"{where}.devicesplitcount")
        if (v := _get(entry, "devicememoryscaling")) is not None:
            changes["memory_scaling"] = _number(v, f"{where}.devicememoryscaling")
        if (v := _get(entry, "devicecorescaling")) is not None:
            changes["core_scaling"] = _number(v, f"{where}.devicecorescaling")
        if v := _get(entry, "operatingmode"):  # HAMi: an empty mode keeps the default
            if not isinstance(v, str):
                raise HamiError(f"{where}.operatingmode", f"expected a string, got {v!r}")
            changes["mode"] = v
        if (v := _get(entry, "enablenumatopology")) is not None:
            if not isinstance(v, bool):
                raise HamiError(f"{where}.enablenumatopology", f"expected true or false, got {v!r}")
            changes["numa_topology"] = v
        if (v := _get(entry, "preconfigureddevicememory")) is not None:
            changes["preconfigured_memory_mib"] = _integer(v, f"{where}.preconfigureddevicememory")
        if (v := _get(entry, "libcudaloglevel")) is not None:
            changes["libcuda_log_level"] = str(v)
        hidden = _get(entry, "filterdevices")
        if hidden is not None:
            if not isinstance(hidden, Mapping):
                raise HamiError(f"{where}.filterdevices", "expected an object with uuid and index lists")
            uuids = _get(hidden, "uuid") or []
            indices = _get(hidden, "index") or []
            if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
                raise HamiError(f"{where}.filterdevices.uuid", "expected a list of strings")
            if not isinstance(indices, list):
                raise HamiError(f"{where}.filterdevices.index", "expected a list of integers")
            # HAMi replaces the filter only when the entry names some device.
            if uuids or indices:
                changes["hide_uuids"] = frozenset(uuids)
                changes["hide_indices"] = frozenset(_integer(x, f"{where}.filterdevices.index") for x in indices)
        try:
            config = replace(config, **changes)
        except HamiError as exc:
            raise HamiError(f"{where}.{exc.field}", exc.message) from None
    return config


def load_node_config(path: str | Path | None, node_name: str, base: NodeConfig | None = None) -> NodeConfig:
    """The node's config: `base` (the command-line defaults) overridden by the file's entries for the node."""
    base = base or NodeConfig()
    if path is None:
        return base
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HamiError(str(path), f"cannot read: {exc}") from None
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise HamiError(str(path), f"not valid JSON: {exc}") from None
    return apply_node_entries(data, node_name, base, str(path))
