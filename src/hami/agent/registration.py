"""Node registration (SPEC §2): what the agent tells the scheduler about its devices, and the handshake.

`registered_devices` and `node_annotations` are pure, so `hami node-agent --registration-only` prints exactly
what the running agent writes. `Registrar` writes them, only the keys whose value differs from the node's, and
answers the scheduler's handshake.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from hami.agent.config import NodeConfig
from hami.agent.discovery import DiscoveredDevice, Inventory
from hami.kube.api import KubeApi
from hami.protocol import annotations as anno
from hami.protocol.manifests import annotations_of
from hami.resources import Device, HamiError

_log = logging.getLogger(__name__)
VENDOR = "NVIDIA"


def device_type(model: str) -> str:
    """HAMi's registered type: NVML's product name, prefixed `NVIDIA-` unless it already starts with NVIDIA
    (so "Tesla T4" → "NVIDIA-Tesla T4" and "NVIDIA H100 80GB HBM3" stays as it is)."""
    return model if model.startswith("NVIDIA") else f"NVIDIA-{model}"


def visible_devices(inventory: Inventory, config: NodeConfig) -> tuple[DiscoveredDevice, ...]:
    """The devices this node shares: the hidden ones (nodeconfig `filterdevices`) left out, index order."""
    return tuple(sorted((d for d in inventory.devices if not config.hides(d.uuid, d.index)),
                        key=lambda d: d.index))


def registered_devices(inventory: Inventory, config: NodeConfig,
                       health: Mapping[str, bool] | None = None) -> tuple[Device, ...]:
    """The registration of each visible device, with scaling applied as HAMi does it.

    Memory is `int32(MiB * scaling)` (truncated, like Go's conversion) and cores `int32(scaling * 100)`; in
    MIG mode neither is scaled. `health` overrides the discovered health (health events since discovery).
    """
    mig = config.mode == "mig"
    out: list[Device] = []
    for d in visible_devices(inventory, config):
        memory = d.memory_mib if mig else int(d.memory_mib * config.memory_scaling)
        cores = 100 if mig else int(config.core_scaling * 100)
        healthy = d.healthy if health is None else health.get(d.uuid, d.healthy)
        out.append(Device(uuid=d.uuid, index=d.index, count=config.split_count, memory_mib=memory, cores=cores,
                          type=device_type(d.model), vendor=VENDOR, numa=max(d.numa, 0), mode=config.mode,
                          health=healthy))
    return tuple(out)


def topology_scores(inventory: Inventory, devices: Sequence[Device]) -> tuple[tuple[str, str, int], ...]:
    """Pair scores among the registered devices only (a hidden device is no placement option)."""
    shown = {d.uuid for d in devices}
    return tuple((a, b, s) for a, b, s in inventory.links if a in shown and b in shown)


def node_annotations(inventory: Inventory, config: NodeConfig,
                     health: Mapping[str, bool] | None = None) -> dict[str, str]:
    """`hami.io/node-nvidia-register`, plus `hami.io/node-nvidia-score` when two or more devices are linked."""
    devices = registered_devices(inventory, config, health)
    out = {anno.NODE_NVIDIA_REGISTER: anno.encode_node_devices(devices)}
    scores = topology_scores(inventory, devices)
    if len(devices) > 1 and scores:
        out[anno.NODE_NVIDIA_SCORE] = anno.encode_topology(scores)
    return out


def _wants_answer(handshake: str | None) -> bool:
    """The scheduler asked (`Requesting_…`), marked the node gone (`Deleted_…`), or nobody wrote one yet."""
    if not handshake:
        return True
    try:
        return anno.decode_handshake(handshake).state != "Reported"
    except HamiError:
        return True  # unreadable: overwrite it with a well-formed report


class Registrar:
    """Writes a node's registration to the API server; owns the keys it writes, and nothing else."""

    def __init__(self, api: KubeApi, node_name: str, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.api = api
        self.node_name = node_name
        self.clock = clock
        self.writes = 0

    async def sync(self, wanted: Mapping[str, str]) -> dict[str, str | None]:
        """Patch what differs from the node (a stale score annotation is removed) and answer the handshake.

        Returns the patch written ({} when the node already said all of it).
        """
        node = await self.api.get("nodes", self.node_name)
        current = annotations_of(node)
        patch: dict[str, str | None] = {k: v for k, v in wanted.items() if current.get(k) != v}
        if anno.NODE_NVIDIA_SCORE not in wanted and anno.NODE_NVIDIA_SCORE in current:
            patch[anno.NODE_NVIDIA_SCORE] = None
        if patch or _wants_answer(current.get(anno.NODE_HANDSHAKE)):
            patch[anno.NODE_HANDSHAKE] = anno.reported_handshake(self.clock())
        if patch:
            await self.api.patch_annotations("nodes", self.node_name, patch)
            self.writes += 1
            _log.info("node %s: wrote %s", self.node_name, ", ".join(sorted(patch)))
        return patch
