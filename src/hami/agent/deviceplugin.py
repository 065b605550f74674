"""The kubelet device plugin (gRPC over a unix socket, API v1beta1 — SPEC §5).

Serve the plugin socket first, then register with kubelet; ListAndWatch streams the replica list again on
every health change; Allocate and GetPreferredAllocation are answered by the Allocator. kubelet forgets its
plugins when it restarts (and wipes their sockets), so a supervisor watches `kubelet.sock` and our own socket
and serves and registers again when either is re-created or gone.

Handlers are registered through a generic handler with the method paths spelled out, rather than through the
generated servicer base class, so this module stays type-checked and the wire names are visible here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from hami.agent.allocate import AllocationError, Allocator, ContainerGrant, PreferredRequest
from hami.agent.devices import DeviceTable
from hami.protocol.deviceplugin import api_pb2 as pb

_log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
DEFAULT_SOCKET_DIR = Path("/var/lib/kubelet/device-plugins")
KUBELET_SOCKET = "kubelet.sock"
HEALTHY, UNHEALTHY = "Healthy", "Unhealthy"

_CODES = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "internal": grpc.StatusCode.INTERNAL,
}


def default_endpoint(resource_name: str) -> str:
    """`nvidia.com/gpu` → `hami-nvidia.com-gpu.sock`: distinct from HAMi's and NVIDIA's own plugin sockets."""
    return f"hami-{resource_name.replace('/', '-')}.sock"


def list_response(table: DeviceTable) -> pb.ListAndWatchResponse:
    devices = []
    for d in table.plugin_devices():
        topology = pb.TopologyInfo(nodes=[pb.NUMANode(ID=d.numa)]) if d.numa is not None else None
        devices.append(pb.Device(ID=d.id, health=HEALTHY if d.healthy else UNHEALTHY, topology=topology))
    return pb.ListAndWatchResponse(devices=devices)


def allocate_response(grants: list[ContainerGrant]) -> pb.AllocateResponse:
    return pb.AllocateResponse(container_responses=[
        pb.ContainerAllocateResponse(
            envs=dict(g.envs),
            mounts=[pb.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
                    for m in g.mounts],
        )
        for g in grants
    ])


def _identity(path: Path) -> tuple[int, int] | None:
    """A socket file's identity; a re-created file has a new inode or change time."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns


class DevicePluginServer:
    """One resource's plugin: serves `<socket_dir>/<endpoint>` and keeps it registered with kubelet."""

    def __init__(self, table: DeviceTable, allocator: Allocator, *, resource_name: str = "nvidia.com/gpu",
                 socket_dir: Path = DEFAULT_SOCKET_DIR, endpoint: str | None = None,
                 preferred_allocation: bool = True, watch_interval_s: float = 1.0,
                 register_timeout_s: float = 5.0) -> None:
        self.table = table
        self.allocator = allocator
        self.resource_name = resource_name
        self.socket_dir = Path(socket_dir)
        self.endpoint = endpoint or default_endpoint(resource_name)
        self.preferred_allocation = preferred_allocation
        self.watch_interval_s = watch_interval_s
        self.register_timeout_s = register_timeout_s
        self.registrations = 0
        self._server: Any = None
        self._registered = False
        self._kubelet_seen: tuple[int, int] | None = None
        self._own_seen: tuple[int, int] | None = None

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / self.endpoint

    @property
    def kubelet_socket(self) -> Path:
        return self.socket_dir / KUBELET_SOCKET

    # -- RPC handlers ----------------------------------------------------------------------------------
    async def get_device_plugin_options(self, request: pb.Empty, context: Any) -> pb.DevicePluginOptions:
        return pb.DevicePluginOptions(pre_start_required=False,
                                      get_preferred_allocation_available=self.preferred_allocation)

    async def list_and_watch(self, request: pb.Empty, context: Any) -> AsyncIterator[pb.ListAndWatchResponse]:
        seen = self.table.version
        yield list_response(self.table)
        while True:
            seen = await self.table.wait_changed(seen)
            _log.info("ListAndWatch: device health changed, resending %d replicas", len(
                self.table.plugin_devices()))
            yield list_response(self.table)

    async def get_preferred_allocation(self, request: pb.PreferredAllocationRequest,
                                       context: Any) -> pb.PreferredAllocationResponse:
        requests = [PreferredRequest(tuple(r.available_deviceIDs), tuple(r.must_include_deviceIDs),
                                     r.allocation_size) for r in request.container_requests]
        try:
            chosen = await self.allocator.preferred(requests)
        except Exception as exc:  # a preference is optional: kubelet chooses itself on an empty answer
            _log.exception("GetPreferredAllocation failed: %s", exc)
            chosen = []
        return pb.PreferredAllocationResponse(container_responses=[
            pb.ContainerPreferredAllocationResponse(deviceIDs=ids) for ids in chosen])

    async def allocate(self, request: pb.AllocateRequest, context: Any) -> pb.AllocateResponse:
        requests = [list(c.devices_ids) for c in request.container_requests]
        try:
            grants = await self.allocator.allocate(requests)
        except AllocationError as exc:
            await context.abort(_CODES[exc.status], exc.message)
            raise  # unreachable: abort raises
        except Exception as exc:
            _log.exception("Allocate %s failed", requests)
            await context.abort(grpc.StatusCode.INTERNAL, f"node agent error: {type(exc).__name__}: {exc}")
            raise
        return allocate_response(grants)

    async def pre_start_container(self, request: pb.PreStartContainerRequest,
                                  context: Any) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()

    def _handler(self) -> Any:
        unary, stream = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
        return grpc.method_handlers_generic_handler(f"{API_VERSION}.DevicePlugin", {
            "GetDevicePluginOptions": unary(self.get_device_plugin_options, pb.Empty.FromString,
                                            pb.DevicePluginOptions.SerializeToString),
            "ListAndWatch": stream(self.list_and_watch, pb.Empty.FromString,
                                   pb.ListAndWatchResponse.SerializeToString),
            "GetPreferredAllocation": unary(self.get_preferred_allocation, pb.PreferredAllocationRequest.FromString,
                                            pb.PreferredAllocationResponse.SerializeToString),
            "Allocate": unary(self.allocate, pb.AllocateRequest.FromString, pb.AllocateResponse.SerializeToString),
            "PreStartContainer": unary(self.pre_start_container, pb.PreStartContainerRequest.FromString,
                                       pb.PreStartContainerResponse.SerializeToString),
        })

    # -- serving and registering -----------------------------------------------------------------------
    async def serve(self) -> None:
        """Listen on the plugin socket (a stale file from an earlier run is removed first)."""
        await self.stop()
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self._handler(),))
        server.add_insecure_port(f"unix:{self.socket_path}")
        await server.start()
        self._server = server
        self._own_seen = _identity(self.socket_path)
        self._registered = False
        _log.info("device plugin for %s serving on %s", self.resource_name, self.socket_path)

    async def register(self) -> bool:
        """Register with kubelet; False (logged) when kubelet is not there yet."""
        self._kubelet_seen = _identity(self.kubelet_socket)
        if self._kubelet_seen is None:
            _log.warning("kubelet socket %s does not exist yet; will register when it appears", self.kubelet_socket)
            return False
        request = pb.RegisterRequest(
            version=API_VERSION, endpoint=self.endpoint, resource_name=self.resource_name,
            options=pb.DevicePluginOptions(pre_start_required=False,
                                           get_preferred_allocation_available=self.preferred_allocation))
        try:
            async with grpc.aio.insecure_channel(f"unix:{self.kubelet_socket}") as channel:
                register = channel.unary_unary(f"/{API_VERSION}.Registration/Register",
                                               request_serializer=pb.RegisterRequest.SerializeToString,
                                               response_deserializer=pb.Empty.FromString)
                await register(request, timeout=self.register_timeout_s, wait_for_ready=True)
        except grpc.RpcError as exc:
            _log.warning("cannot register %s with kubelet at %s: %s", self.resource_name, self.kubelet_socket,
                         exc.details() if hasattr(exc, "details") else exc)
            return False
        self._registered = True
        self.registrations += 1
        _log.info("registered %s with kubelet (endpoint %s)", self.resource_name, self.endpoint)
        return True

    async def start(self) -> None:
        await self.serve()
        await self.register()

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace=0.5)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)

    async def check(self) -> None:
        """One supervision step: serve again if our socket vanished, register again after a kubelet restart."""
        if self._server is None or _identity(self.socket_path) != self._own_seen:
            _log.info("plugin socket %s is gone; serving again", self.socket_path)
            await self.serve()
        kubelet = _identity(self.kubelet_socket)
        if kubelet is None:
            self._registered = False
            return
        if kubelet != self._kubelet_seen and self._registered:
            _log.info("kubelet restarted (%s re-created); registering again", self.kubelet_socket)
            self._registered = False
        if not self._registered:
            await self.register()

    async def run(self) -> None:
        """Serve, register, and keep it so until cancelled."""
        try:
            await self.start()
            while True:
                await asyncio.sleep(self.watch_interval_s)
                try:
                    await self.check()
                except Exception:  # keep supervising: the next tick retries
                    _log.exception("device plugin supervision failed")
        finally:
            await self.stop()
