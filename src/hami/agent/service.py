"""The node agent process: discovery, registration, health and the kubelet device plugin, wired together.

Three loops share one DeviceTable: the backend's health stream updates it; the registration loop writes the
node annotations whenever it changed (and every `register_interval_s`, which is also how the scheduler's
handshake gets answered); the device plugin serves kubelet from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from hami.agent.allocate import AllocationSettings, Allocator
from hami.agent.config import NodeConfig
from hami.agent.deviceplugin import DEFAULT_SOCKET_DIR, DevicePluginServer
from hami.agent.devices import DeviceTable
from hami.agent.discovery import Backend
from hami.agent.registration import Registrar
from hami.kube.api import ApiError, KubeApi
from hami.kube.events import EventRecorder
from hami.resources import HamiError

_log = logging.getLogger(__name__)
EVENT_COMPONENT = "hami-node-agent"


@dataclass(frozen=True, slots=True)
class AgentSettings:
    node_name: str
    resource_name: str = "nvidia.com/gpu"
    socket_dir: Path = DEFAULT_SOCKET_DIR
    endpoint: str | None = None
    register_interval_s: float = 30.0
    watch_interval_s: float = 1.0
    preferred_allocation: bool = True


class NodeAgent:
    def __init__(self, backend: Backend, api: KubeApi, config: NodeConfig, settings: AgentSettings,
                 allocation: AllocationSettings) -> None:
        self.backend = backend
        self.api = api
        self.config = config
        self.settings = settings
        self.allocation = allocation
        self.table: DeviceTable | None = None
        self.plugin: DevicePluginServer | None = None
        self.registrar = Registrar(api, settings.node_name)
        self.ready = asyncio.Event()

    async def _health(self, table: DeviceTable) -> None:
        try:
            async for change in self.backend.health_changes():
                if await table.apply([change]):
                    level = logging.INFO if change.healthy else logging.WARNING
                    _log.log(level, "device %s is now %s (%s)", change.uuid,
                             "healthy" if change.healthy else "unhealthy", change.reason)
        except Exception:  # the devices still serve; only their health is no longer followed
            _log.exception("health watching failed")
        _log.warning("health watching ended; device health is no longer updated")

    async def _register(self, table: DeviceTable) -> None:
        seen = -1
        while True:
            version = table.version
            try:
                await self.registrar.sync(table.annotations())
                seen = version
            except (ApiError, OSError, HamiError) as exc:
                _log.error("node %s: registration failed, retrying: %s", self.settings.node_name, exc)
                await asyncio.sleep(min(5.0, self.settings.register_interval_s))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(table.wait_changed(seen), timeout=self.settings.register_interval_s)

    async def run(self) -> None:
        """Run until cancelled. A backend that cannot see any device raises DiscoveryError before serving."""
        inventory = await asyncio.to_thread(self.backend.discover)
        table = DeviceTable(inventory, self.config)
        self.table = table
        _log.info("node %s: %d device(s) found by %s, %d shared, split %d", self.settings.node_name,
                  len(inventory.devices), self.backend.name, len(table.devices), self.config.split_count)
        events = EventRecorder(self.api, component=EVENT_COMPONENT, instance=self.settings.node_name,
                               action="Allocating")
        allocator = Allocator(self.api, self.settings.node_name, table, self.allocation, events)
        self.plugin = DevicePluginServer(
            table, allocator, resource_name=self.settings.resource_name, socket_dir=self.settings.socket_dir,
            endpoint=self.settings.endpoint, preferred_allocation=self.settings.preferred_allocation,
            watch_interval_s=self.settings.watch_interval_s)
        tasks = [asyncio.create_task(coro) for coro in
                 (self._health(table), self._register(table), self.plugin.run(), events.run())]
        self.ready.set()
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.backend.close()
