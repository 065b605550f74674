"""The agent's live view of its devices: what it registers, what kubelet sees, and health as it changes.

kubelet counts `nvidia.com/gpu` in replicas: each shared device is advertised `split_count` times as
`<uuid>-<replica>` (HAMi's form), so a node with two cards split 10 ways offers 20. Which replica kubelet
hands a container does not matter; the scheduler's allocation annotation says which card it really gets.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass

from hami.agent.config import NodeConfig
from hami.agent.discovery import DiscoveredDevice, HealthChange, Inventory
from hami.agent.registration import node_annotations, visible_devices

_REPLICA = re.compile(r"(.+)-(\d+)")


@dataclass(frozen=True, slots=True)
class PluginDevice:
    """One replica as ListAndWatch advertises it."""

    id: str
    healthy: bool
    numa: int | None


def replica_id(uuid: str, replica: int) -> str:
    return f"{uuid}-{replica}"


class DeviceTable:
    """Inventory + config + health, and a version that changes whenever what kubelet sees changes.

    Health changes come from the backend's stream; `wait_changed` lets every ListAndWatch stream (one per
    kubelet connection) resend the list.
    """

    def __init__(self, inventory: Inventory, config: NodeConfig) -> None:
        self.inventory = inventory
        self.config = config
        self.devices: tuple[DiscoveredDevice, ...] = visible_devices(inventory, config)
        self.health: dict[str, bool] = {d.uuid: d.healthy for d in self.devices}
        self.reasons: dict[str, str] = {}
        self.version = 0
        self._changed = asyncio.Condition()

    @property
    def uuids(self) -> frozenset[str]:
        return frozenset(self.health)

    def physical_id(self, device_id: str) -> str | None:
        """The card behind a kubelet device ID (`<uuid>-<n>` or a bare uuid); None when it is not ours."""
        if device_id in self.health:
            return device_id
        m = _REPLICA.fullmatch(device_id)
        if m and m.group(1) in self.health and int(m.group(2)) < self.config.split_count:
            return m.group(1)
        return None

    def plugin_devices(self) -> list[PluginDevice]:
        out: list[PluginDevice] = []
        for d in self.devices:
            numa = d.numa if self.config.numa_topology and d.numa >= 0 else None
            healthy = self.health[d.uuid]
            out.extend(PluginDevice(replica_id(d.uuid, r), healthy, numa) for r in range(self.config.split_count))
        return out

    def annotations(self) -> dict[str, str]:
        """The node annotations to register now (health included)."""
        return node_annotations(self.inventory, self.config, self.health)

    async def apply(self, changes: Iterable[HealthChange]) -> bool:
        """Record health changes; wakes the watchers when any device's health actually flipped."""
        flipped = False
        for change in changes:
            if change.uuid not in self.health:
                continue  # a hidden or unknown device
            if self.health[change.uuid] != change.healthy:
                self.health[change.uuid] = change.healthy
                flipped = True
            self.reasons[change.uuid] = change.reason
        if flipped:
            async with self._changed:
                self.version += 1
                self._changed.notify_all()
        return flipped

    async def wait_changed(self, seen: int) -> int:
        """Wait until the version is past `seen`; returns the new version."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.version != seen)
            return self.version
