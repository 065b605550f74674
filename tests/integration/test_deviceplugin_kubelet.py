"""The node agent against a fake kubelet: a Registration server on a temp `kubelet.sock` that, once the plugin
registers, dials the plugin's socket and calls its RPCs as kubelet does (GetDevicePluginOptions, a long-lived
ListAndWatch, GetPreferredAllocation, Allocate). Devices come from the fake backend; the API server is
MemoryKubeApi at the kube/ seam. Uses the generated stubs (api_pb2_grpc) on the kubelet side."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from hami.agent.allocate import AllocationSettings, Limiter
from hami.agent.config import NodeConfig
from hami.agent.fake import FakeBackend
from hami.agent.service import AgentSettings, NodeAgent
from hami.kube.memory import MemoryKubeApi
from hami.protocol import annotations as anno
from hami.protocol.deviceplugin import api_pb2 as pb
from hami.protocol.deviceplugin import api_pb2_grpc as pb_grpc
from tests.agent_support import (
    GPU0,
    GPU1,
    GPU2,
    NODE,
    allocation,
    container,
    lock_for,
    node_manifest,
    pod_manifest,
    spec,
)

WAIT = 10.0


class FakeKubelet(pb_grpc.RegistrationServicer):  # type: ignore[misc]
    """kubelet's side of the device plugin API, just enough of it."""

    def __init__(self, socket_dir: Path) -> None:
        self.socket_dir = socket_dir
        self.registrations: asyncio.Queue[pb.RegisterRequest] = asyncio.Queue()
        self.lists: asyncio.Queue[pb.ListAndWatchResponse] = asyncio.Queue()
        self.options: pb.DevicePluginOptions | None = None
        self.plugin: Any = None
        self._channel: Any = None
        self._server: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._server = grpc.aio.server()
        pb_grpc.add_RegistrationServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix:{self.socket_dir / 'kubelet.sock'}")
        await self._server.start()

    async def stop(self, *, wipe: bool = True) -> None:
        """Die as kubelet does on restart: its socket and (on start) every plugin socket are removed."""
        for task in self._tasks:
            task.cancel()
        if self._channel is not None:
            await self._channel.close()
        await self._server.stop(0)
        if wipe:
            for path in self.socket_dir.iterdir():
                path.unlink()

    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.Empty:
        self.registrations.put_nowait(request)
        self._tasks.append(asyncio.create_task(self._connect(request.endpoint)))
        return pb.Empty()

    async def _connect(self, endpoint: str) -> None:
        self._channel = grpc.aio.insecure_channel(f"unix:{self.socket_dir / endpoint}")
        self.plugin = pb_grpc.DevicePluginStub(self._channel)
        self.options = await self.plugin.GetDevicePluginOptions(pb.Empty())
        async for response in self.plugin.ListAndWatch(pb.Empty()):
            self.lists.put_nowait(response)

    async def allocate(self, *containers: list[str]) -> pb.AllocateResponse:
        request = pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=ids)
                                                         for ids in containers])
        response: pb.AllocateResponse = await self.plugin.Allocate(request, timeout=WAIT)
        return response

    async def prefer(self, available: list[str], size: int) -> list[str]:
        request = pb.PreferredAllocationRequest(container_requests=[pb.ContainerPreferredAllocationRequest(
            available_deviceIDs=available, must_include_deviceIDs=[], allocation_size=size)])
        response = await self.plugin.GetPreferredAllocation(request, timeout=WAIT)
        return list(response.container_responses[0].deviceIDs)


@dataclass
class Rig:
    api: MemoryKubeApi
    backend: FakeBackend
    agent: NodeAgent
    kubelet: FakeKubelet
    dir: Path

    async def next_list(self) -> dict[str, tuple[str, list[int]]]:
        response = await asyncio.wait_for(self.kubelet.lists.get(), WAIT)
        return {d.ID: (d.health, [n.ID for n in d.topology.nodes]) for d in response.devices}

    async def registered(self) -> list[dict[str, Any]]:
        for _ in range(int(WAIT / 0.05)):
            node = await self.api.get("nodes", NODE)
            text = node["metadata"].get("annotations", {}).get(anno.NODE_NVIDIA_REGISTER)
            if text:
                return list(json.loads(text))
            await asyncio.sleep(0.05)
        raise AssertionError("the agent never registered the node")

    async def pod(self, name: str) -> dict[str, str]:
        return dict((await self.api.get("pods", name, namespace="default"))["metadata"]["annotations"])


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    # unix socket paths are limited to ~107 bytes: keep the directory short
    socket_dir = Path(tempfile.mkdtemp(prefix="hami-dp-", dir="/tmp"))
    host = Path(tempfile.mkdtemp(prefix="hami-host-"))
    (host / "vgpu").mkdir()
    (host / "vgpu" / "libvgpu.so").write_bytes(b"\x7fELF")
    api = MemoryKubeApi()
    api.put("nodes", node_manifest())
    backend = FakeBackend(spec())
    settings = AgentSettings(node_name=NODE, socket_dir=socket_dir, watch_interval_s=0.05,
                             register_interval_s=0.2)
    allocation_settings = AllocationSettings(limiter=Limiter(
        hook_path="/usr/local", lib_host_path=str(host / "vgpu" / "libvgpu.so"),
        preload_host_path=str(host / "vgpu" / "ld.so.preload"), cache_host_dir=str(host / "vgpu" / "containers"),
        lock_dir=str(host / "vgpulock")))
    agent = NodeAgent(backend, api, NodeConfig(), settings, allocation_settings)
    kubelet = FakeKubelet(socket_dir)
    await kubelet.start()
    task = asyncio.create_task(agent.run())
    rig = Rig(api, backend, agent, kubelet, socket_dir)
    try:
        yield rig
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await rig.kubelet.stop(wipe=False)
        shutil.rmtree(socket_dir, ignore_errors=True)
        shutil.rmtree(host, ignore_errors=True)


async def test_registration_and_first_list(rig: Rig) -> None:
    request = await asyncio.wait_for(rig.kubelet.registrations.get(), WAIT)
    assert (request.version, request.endpoint, request.resource_name) == (
        "v1beta1", "hami-nvidia.com-gpu.sock", "nvidia.com/gpu")
    assert request.options.get_preferred_allocation_available
    devices = await rig.next_list()
    assert len(devices) == 30  # 3 cards x split count 10
    assert devices[f"{GPU0}-0"] == ("Healthy", [0])
    assert devices[f"{GPU2}-9"] == ("Healthy", [1])
    assert rig.kubelet.options is not None and rig.kubelet.options.get_preferred_allocation_available
    assert [(d["id"], d["count"], d["devmem"], d["health"]) for d in await rig.registered()] == [
        (GPU0, 10, 32768, True), (GPU1, 10, 32768, True), (GPU2, 10, 81920, True)]
    node = await rig.api.get("nodes", NODE)
    assert node["metadata"]["annotations"][anno.NODE_HANDSHAKE].startswith("Reported ")
    assert anno.NODE_NVIDIA_SCORE in node["metadata"]["annotations"]


async def test_injected_failure_reaches_kubelet_and_the_scheduler(rig: Rig) -> None:
    await rig.next_list()
    rig.backend.inject(GPU1, False, "XID 79")
    devices = await rig.next_list()
    assert {devices[f"{GPU1}-{r}"][0] for r in range(10)} == {"Unhealthy"}
    assert {devices[f"{GPU0}-{r}"][0] for r in range(10)} == {"Healthy"}
    for _ in range(200):
        health = {d["id"]: d["health"] for d in await rig.registered()}
        if not health[GPU1]:
            break
        await asyncio.sleep(0.05)
    assert health == {GPU0: True, GPU1: False, GPU2: True}
    rig.backend.inject(GPU1, True, "recovered")
    devices = await rig.next_list()
    assert devices[f"{GPU1}-0"][0] == "Healthy"


async def test_allocate_shared_and_multi_gpu(rig: Rig) -> None:
    await rig.next_list()
    text = allocation([(GPU1, 3000, 30)], [(GPU0, 32768, 100), (GPU2, 81920, 100)])
    rig.api.put("pods", pod_manifest("train", text, containers=[container("shared", gpumem=3000, gpucores=30),
                                                                 container("multi", 2)]))
    await rig.api.patch_annotations("nodes", NODE, lock_for("default", "train"))
    available = [f"{u}-{r}" for u in (GPU0, GPU1, GPU2) for r in range(10)]

    chosen = await rig.kubelet.prefer(available, 1)
    assert chosen == [f"{GPU1}-0"]
    shared = (await rig.kubelet.allocate(chosen)).container_responses[0]
    assert dict(shared.envs) | {"CUDA_DEVICE_MEMORY_SHARED_CACHE": "x"} == {
        "NVIDIA_VISIBLE_DEVICES": GPU1, "CUDA_DEVICE_MEMORY_LIMIT_0": "3000m", "CUDA_DEVICE_SM_LIMIT": "30",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": "x", "GPU_CORE_UTILIZATION_POLICY": "default"}
    assert shared.envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"].startswith("/usr/local/vgpu/")
    assert [(m.container_path, m.read_only) for m in shared.mounts] == [
        ("/usr/local/vgpu/libvgpu.so", True), ("/usr/local/vgpu", False), ("/tmp/vgpulock", False),
        ("/etc/ld.so.preload", True)]
    assert shared.mounts[1].host_path.endswith("/vgpu/containers/uid-train_shared")
    assert Path(shared.mounts[1].host_path).is_dir()
    assert (await rig.pod("train"))[anno.BIND_PHASE] == anno.BIND_PHASE_ALLOCATING

    chosen = await rig.kubelet.prefer(available, 2)
    assert sorted(chosen) == [f"{GPU0}-0", f"{GPU2}-0"]
    # kubelet may still pick other replicas; the annotation decides
    multi = (await rig.kubelet.allocate([f"{GPU1}-5", f"{GPU1}-6"])).container_responses[0]
    assert multi.envs["NVIDIA_VISIBLE_DEVICES"] == f"{GPU0},{GPU2}"
    assert (multi.envs["CUDA_DEVICE_MEMORY_LIMIT_0"], multi.envs["CUDA_DEVICE_MEMORY_LIMIT_1"]) == (
        "32768m", "81920m")
    assert multi.envs["CUDA_DEVICE_SM_LIMIT"] == "100"
    got = await rig.pod("train")
    assert got[anno.BIND_PHASE] == anno.BIND_PHASE_SUCCESS
    assert got[anno.VGPU_DEVICES_TO_ALLOCATE] == ";;"
    assert anno.NODE_LOCK not in (await rig.api.get("nodes", NODE))["metadata"]["annotations"]


async def test_two_pending_pods_on_the_node(rig: Rig) -> None:
    await rig.next_list()
    rig.api.put("pods", pod_manifest("first", allocation([(GPU0, 1000, 10)]), bind_time=100))
    rig.api.put("pods", pod_manifest("second", allocation([(GPU2, 2000, 20)]), bind_time=200))
    await rig.api.patch_annotations("nodes", NODE, lock_for("default", "second"))
    response = await rig.kubelet.allocate([f"{GPU0}-0"])
    assert response.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == GPU2
    assert (await rig.pod("second"))[anno.BIND_PHASE] == anno.BIND_PHASE_SUCCESS
    assert (await rig.pod("first"))[anno.BIND_PHASE] == anno.BIND_PHASE_ALLOCATING
    # the lock is gone now: the remaining pending pod is found without it
    response = await rig.kubelet.allocate([f"{GPU2}-1"])
    assert response.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == GPU0
    assert (await rig.pod("first"))[anno.BIND_PHASE] == anno.BIND_PHASE_SUCCESS


async def test_errors_are_grpc_errors_and_events(rig: Rig) -> None:
    await rig.next_list()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rig.kubelet.allocate([f"{GPU0}-0"])
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no pod on node node-1" in (info.value.details() or "")

    rig.api.put("pods", pod_manifest("bad", allocation([(GPU0, 1000, 0), (GPU1, 1000, 0)]),
                                     containers=[container("main", 2)]))
    await rig.api.patch_annotations("nodes", NODE, lock_for("default", "bad"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rig.kubelet.allocate([f"{GPU0}-0"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the scheduler assigned 2" in (info.value.details() or "")
    assert (await rig.pod("bad"))[anno.BIND_PHASE] == anno.BIND_PHASE_FAILED
    for _ in range(100):
        events = (await rig.api.list("events", namespace="default")).items
        if events:
            break
        await asyncio.sleep(0.05)
    assert [(e["reason"], e["involvedObject"]["name"]) for e in events] == [("DeviceAllocationFailed", "bad")]

    # the plugin keeps serving after errors
    rig.api.put("pods", pod_manifest("good", allocation([(GPU2, 500, 5)])))
    response = await rig.kubelet.allocate([f"{GPU2}-0"])
    assert response.container_responses[0].envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "500m"


async def test_kubelet_restart_registers_again(rig: Rig) -> None:
    await asyncio.wait_for(rig.kubelet.registrations.get(), WAIT)
    await rig.next_list()
    await rig.kubelet.stop()  # kubelet.sock and the plugin socket are gone
    assert not (rig.dir / "kubelet.sock").exists()
    await asyncio.sleep(0.2)
    kubelet = FakeKubelet(rig.dir)
    await kubelet.start()
    rig.kubelet = kubelet
    request = await asyncio.wait_for(kubelet.registrations.get(), WAIT)
    assert request.resource_name == "nvidia.com/gpu"
    assert (rig.dir / request.endpoint).exists()
    assert len(await rig.next_list()) == 30
    rig.api.put("pods", pod_manifest("after", allocation([(GPU0, 1000, 0)])))
    response = await kubelet.allocate([f"{GPU0}-0"])
    assert response.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == GPU0
    assert rig.agent.plugin is not None and rig.agent.plugin.registrations == 2
