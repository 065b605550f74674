"""The `fake` discovery backend: devices from a YAML file, for tests, demos and GPU-less clusters.

```yaml
devices:
  - uuid: GPU-0
    model: Tesla T4            # NVML's product name; registered as NVIDIA-Tesla T4
    memory_mib: 15360
    numa: 0                    # default 0
    index: 0                   # default: position in the list
    healthy: true              # default true
    mig_capable: false         # default false
    nvlinks: {GPU-1: 4}        # NVLinks to other devices (mirrored when only one side says so)
failures:                      # health changes to inject, relative to the start of health watching
  - {uuid: GPU-0, after_s: 30, healthy: false, reason: "XID 79"}
```

Pairs without NVLink score as PCIe on the same CPU (same NUMA node) or across CPUs, as HAMi would see them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hami.agent.discovery import (
    PCIE_CROSS_CPU,
    PCIE_SAME_CPU,
    DiscoveredDevice,
    DiscoveryError,
    HealthChange,
    Inventory,
    pair_score,
)
from hami.resources import HamiError

_DEVICE_KEYS = frozenset({"uuid", "model", "memory_mib", "numa", "index", "healthy", "mig_capable", "nvlinks"})
_FAILURE_KEYS = frozenset({"uuid", "after_s", "healthy", "reason"})


@dataclass(frozen=True, slots=True)
class ScheduledFailure:
    uuid: str
    after_s: float
    healthy: bool = False
    reason: str = "injected"


@dataclass(frozen=True, slots=True)
class FakeSpec:
    """A parsed devices file."""

    inventory: Inventory
    failures: tuple[ScheduledFailure, ...] = ()


def _int(value: Any, where: str, *, lo: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HamiError(where, f"expected an integer, got {value!r}")
    if lo is not None and value < lo:
        raise HamiError(where, f"must be at least {lo}, got {value}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise HamiError(where, f"expected true or false, got {value!r}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise HamiError(where, f"expected a non-empty string, got {value!r}")
    return value.strip()


def _entries(data: Mapping[str, Any], key: str, allowed: frozenset[str], origin: str
             ) -> list[tuple[str, Mapping[str, Any]]]:
    """`data[key]` as (field path, mapping) pairs: a list of mappings with only `allowed` keys."""
    raw_list = data.get(key) or []
    if not isinstance(raw_list, list):
        raise HamiError(f"{origin}.{key}", "expected a list")
    out = []
    for i, raw in enumerate(raw_list):
        where = f"{origin}.{key}[{i}]"
        if not isinstance(raw, Mapping):
            raise HamiError(where, "expected a mapping")
        unknown = set(raw) - allowed
        if unknown:
            raise HamiError(where, f"unknown keys {sorted(unknown)}")
        out.append((where, raw))
    return out


def parse_fake_spec(data: Any, origin: str = "devices") -> FakeSpec:
    """Validate a devices document; every mistake is a HamiError naming the file and the field."""
    if not isinstance(data, Mapping):
        raise HamiError(origin, "expected a mapping with a `devices` list")
    unknown = set(data) - {"devices", "failures"}
    if unknown:
        raise HamiError(origin, f"unknown keys {sorted(unknown)} (expected devices, failures)")
    devices: list[DiscoveredDevice] = []
    nvlinks: dict[tuple[str, str], int] = {}
    for i, (where, raw) in enumerate(_entries(data, "devices", _DEVICE_KEYS, origin)):
        uuid = _str(raw.get("uuid"), f"{where}.uuid")
        if any(c in uuid for c in ",:;"):
            raise HamiError(f"{where}.uuid", f"{uuid!r} contains one of , : ; (annotation separators)")
        if any(d.uuid == uuid for d in devices):
            raise HamiError(f"{where}.uuid", f"duplicate device {uuid}")
        model = _str(raw.get("model"), f"{where}.model")
        if any(c in model for c in ",:"):
            raise HamiError(f"{where}.model", f"{model!r} contains , or :")
        declared = raw.get("nvlinks") or {}
        if not isinstance(declared, Mapping):
            raise HamiError(f"{where}.nvlinks", "expected a mapping of device uuid to link count")
        for peer, count in declared.items():
            if str(peer) == uuid:
                raise HamiError(f"{where}.nvlinks", "a device has no NVLink to itself")
            nvlinks[(uuid, str(peer))] = _int(count, f"{where}.nvlinks[{peer}]", lo=0)
        devices.append(DiscoveredDevice(
            uuid=uuid,
            index=_int(raw.get("index", i), f"{where}.index", lo=0),
            model=model,
            memory_mib=_int(raw.get("memory_mib"), f"{where}.memory_mib", lo=1),
            numa=_int(raw.get("numa", 0), f"{where}.numa", lo=-1),
            healthy=_bool(raw.get("healthy", True), f"{where}.healthy"),
            mig_capable=_bool(raw.get("mig_capable", False), f"{where}.mig_capable"),
        ))

    known = {d.uuid for d in devices}
    for (a, b), count in nvlinks.items():
        if b not in known:
            raise HamiError(f"{origin}.devices[{a}].nvlinks", f"unknown device {b}")
        back = nvlinks.get((b, a))
        if back is not None and back != count:
            raise HamiError(f"{origin}.devices[{a}].nvlinks",
                            f"{a}→{b} has {count} links but {b}→{a} has {back}")
    if len({d.index for d in devices}) != len(devices):
        raise HamiError(f"{origin}.devices", "device indexes must be distinct")

    links: list[tuple[str, str, int]] = []
    for one in devices:
        for other in devices:
            if one.uuid == other.uuid:
                continue
            count = nvlinks.get((one.uuid, other.uuid), nvlinks.get((other.uuid, one.uuid), 0))
            pcie = PCIE_SAME_CPU if one.numa == other.numa else PCIE_CROSS_CPU
            links.append((one.uuid, other.uuid, pair_score(pcie, count)))

    failures: list[ScheduledFailure] = []
    for where, raw in _entries(data, "failures", _FAILURE_KEYS, origin):
        uuid = _str(raw.get("uuid"), f"{where}.uuid")
        if uuid not in known:
            raise HamiError(f"{where}.uuid", f"unknown device {uuid}")
        after = raw.get("after_s", 0)
        if isinstance(after, bool) or not isinstance(after, int | float) or after < 0:
            raise HamiError(f"{where}.after_s", f"expected seconds >= 0, got {after!r}")
        reason = raw.get("reason", "injected")
        failures.append(ScheduledFailure(uuid, float(after), _bool(raw.get("healthy", False), f"{where}.healthy"),
                                         str(reason)))
    return FakeSpec(Inventory(tuple(devices), tuple(links)), tuple(failures))


def load_fake_spec(path: str | Path) -> FakeSpec:
    """Read and validate a devices file; an unreadable file is a DiscoveryError, bad content a HamiError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DiscoveryError(f"cannot read fake devices file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HamiError(str(path), f"not valid YAML: {exc}") from None
    return parse_fake_spec(data, str(path))


class FakeBackend:
    """Serves a FakeSpec. Scheduled failures fire after their delay once health watching starts; `inject`
    adds one now (tests call it from the event loop)."""

    name = "fake"

    def __init__(self, spec: FakeSpec) -> None:
        self.spec = spec
        self._queue: asyncio.Queue[HealthChange | None] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._closed = False

    @classmethod
    def from_file(cls, path: str | Path) -> FakeBackend:
        return cls(load_fake_spec(path))

    def discover(self) -> Inventory:
        return self.spec.inventory

    def _ensure_queue(self) -> asyncio.Queue[HealthChange | None]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            for failure in self.spec.failures:
                change = HealthChange(failure.uuid, failure.healthy, failure.reason)
                self._timers.append(loop.call_later(failure.after_s, self._queue.put_nowait, change))
        return self._queue

    def inject(self, uuid: str, healthy: bool, reason: str = "injected") -> None:
        """Report a health change now, as an NVML event would."""
        if uuid not in {d.uuid for d in self.spec.inventory.devices}:
            raise KeyError(uuid)
        self._ensure_queue().put_nowait(HealthChange(uuid, healthy, reason))

    async def health_changes(self) -> AsyncIterator[HealthChange]:
        queue = self._ensure_queue()
        while not self._closed:
            change = await queue.get()
            if change is None:
                return
            yield change

    def close(self) -> None:
        self._closed = True
        for timer in self._timers:
            timer.cancel()
        if self._queue is not None:
            self._queue.put_nowait(None)
