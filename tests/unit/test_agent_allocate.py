"""Allocation without gRPC: the HAMi-core contract, pod matching, the pod's bookkeeping and every failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hami.agent.allocate import (
    AllocationError,
    AllocationSettings,
    Allocator,
    Limiter,
    PreferredRequest,
    container_grant,
    preferred_ids,
)
from hami.agent.config import NodeConfig
from hami.agent.devices import DeviceTable
from hami.kube.events import EventRecorder
from hami.kube.memory import MemoryKubeApi
from hami.protocol import annotations as anno
from hami.resources import ContainerDevice
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


def limiter(tmp_path: Path, install: str = "on") -> Limiter:
    return Limiter(hook_path="/usr/local", lib_host_path=str(tmp_path / "lib" / "libvgpu.so"),
                   cache_host_dir=str(tmp_path / "containers"), lock_dir=str(tmp_path / "vgpulock"),
                   install=install)  # type: ignore[arg-type]


def make(tmp_path: Path, *pods: dict[str, Any], node_annotations: dict[str, str] | None = None,
         settings: AllocationSettings | None = None) -> tuple[MemoryKubeApi, Allocator, EventRecorder]:
    api = MemoryKubeApi()
    api.put("nodes", node_manifest(NODE, node_annotations))
    for pod in pods:
        api.put("pods", pod)
    table = DeviceTable(spec().inventory, NodeConfig())
    events = EventRecorder(api, component="hami-node-agent", instance=NODE)
    ids = iter(f"cache{i}" for i in range(100))
    allocator = Allocator(api, NODE, table, settings or AllocationSettings(limiter=limiter(tmp_path)), events,
                          new_cache_id=lambda: next(ids))
    return api, allocator, events


async def pod_annotations(api: MemoryKubeApi, name: str) -> dict[str, str]:
    return (await api.get("pods", name, namespace="default"))["metadata"]["annotations"]


# --- the contract (pure) -----------------------------------------------------------------------------------


def test_shared_container_env_and_mounts() -> None:
    devices = (ContainerDevice(GPU0, "NVIDIA", 3000, 30),)
    grant = container_grant(devices, container("main", priority=1), "uid-1",
                            AllocationSettings(core_policy="force", oversubscribed=True, libcuda_log_level="2"),
                            limiter_installed=True, cache_id="c1")
    assert grant.envs == {
        "NVIDIA_VISIBLE_DEVICES": GPU0,
        "CUDA_DEVICE_MEMORY_LIMIT_0": "3000m",
        "CUDA_DEVICE_SM_LIMIT": "30",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": "/usr/local/vgpu/c1.cache",
        "CUDA_TASK_PRIORITY": "1",
        "GPU_CORE_UTILIZATION_POLICY": "force",
        "CUDA_OVERSUBSCRIBE": "true",
        "LIBCUDA_LOG_LEVEL": "2",
    }
    assert [(m.container_path, m.host_path, m.read_only) for m in grant.mounts] == [
        ("/usr/local/vgpu/libvgpu.so", "/usr/local/vgpu/libvgpu.so", True),
        ("/usr/local/vgpu", "/usr/local/vgpu/containers/uid-1_main", False),
        ("/tmp/vgpulock", "/tmp/vgpulock", False),
        ("/etc/ld.so.preload", "/usr/local/vgpu/ld.so.preload", True),
    ]
    assert grant.cache_dir == "/usr/local/vgpu/containers/uid-1_main"


def test_multi_gpu_no_limiter_and_a_tenants_disable_control_is_not_honoured() -> None:
    devices = (ContainerDevice(GPU0, "NVIDIA", 32768, 100), ContainerDevice(GPU1, "NVIDIA", 16384, 100))
    grant = container_grant(devices, container("main", 2, env={"CUDA_DISABLE_CONTROL": "true"}), "u",
                            AllocationSettings(), limiter_installed=True, cache_id="c")
    assert grant.envs["NVIDIA_VISIBLE_DEVICES"] == f"{GPU0},{GPU1}"
    assert (grant.envs["CUDA_DEVICE_MEMORY_LIMIT_0"], grant.envs["CUDA_DEVICE_MEMORY_LIMIT_1"]) == ("32768m",
                                                                                                    "16384m")
    assert "CUDA_TASK_PRIORITY" not in grant.envs
    # The preload switches the limiter on: a container's own env must not switch it off.
    assert "/etc/ld.so.preload" in [m.container_path for m in grant.mounts]
    bare = container_grant(devices, container("main", 2), "u", AllocationSettings(), limiter_installed=False,
                           cache_id="c")
    assert bare.mounts == () and bare.cache_dir is None
    assert bare.envs["CUDA_DEVICE_SM_LIMIT"] == "100"


def test_limiter_auto_detects_the_library(tmp_path: Path) -> None:
    auto = limiter(tmp_path, "auto")
    assert not auto.installed()
    Path(auto.lib).parent.mkdir(parents=True)
    Path(auto.lib).write_bytes(b"\x7fELF")
    assert auto.installed()
    assert not limiter(tmp_path, "off").installed()


def test_preferred_ids_follow_the_annotation() -> None:
    def phys(i: str) -> str | None:
        return i.rsplit("-", 1)[0] if i[-1].isdigit() else None

    available = [f"{u}-{r}" for u in ("GPU-a", "GPU-b", "GPU-c") for r in range(3)]
    assert preferred_ids(available, [], 2, ["GPU-c", "GPU-b"], phys) == ["GPU-b-0", "GPU-c-0"][::-1]
    assert preferred_ids(available, ["GPU-b-2"], 2, ["GPU-c", "GPU-b"], phys) == ["GPU-b-2", "GPU-c-0"]
    # no pod known: distinct cards first
    assert preferred_ids(available, [], 3, None, phys) == ["GPU-a-0", "GPU-b-0", "GPU-c-0"]
    # the annotated card has no free replica: fall back rather than fail
    assert preferred_ids(["GPU-a-0", "GPU-a-1"], [], 1, ["GPU-z"], phys) == ["GPU-a-0"]


# --- Allocator ---------------------------------------------------------------------------------------------


async def test_allocate_single_container_finishes_the_pod(tmp_path: Path) -> None:
    pod = pod_manifest("p1", allocation([(GPU1, 4000, 25)]))
    api, allocator, events = make(tmp_path, pod, node_annotations=lock_for("default", "p1"))
    [grant] = await allocator.allocate([[f"{GPU0}-3"]])  # kubelet's replica differs: the annotation wins
    assert grant.envs["NVIDIA_VISIBLE_DEVICES"] == GPU1
    assert grant.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "4000m"
    assert Path(tmp_path / "containers" / "uid-p1_main").is_dir()
    assert (tmp_path / "vgpulock").is_dir()
    got = await pod_annotations(api, "p1")
    assert got[anno.VGPU_DEVICES_TO_ALLOCATE] == ";"
    assert got[anno.BIND_PHASE] == anno.BIND_PHASE_SUCCESS
    assert got[anno.VGPU_DEVICES_ALLOCATED] == allocation([(GPU1, 4000, 25)])  # the record stays
    assert anno.NODE_LOCK not in (await api.get("nodes", NODE))["metadata"]["annotations"]
    assert list(events.pending()) == []


async def test_containers_are_served_in_order_init_first(tmp_path: Path) -> None:
    text = allocation([(GPU0, 1000, 10)], [], [(GPU1, 2000, 20), (GPU2, 2000, 20)])
    pod = pod_manifest("p1", text, init=[container("setup", gpumem=1000, gpucores=10)],
                       containers=[container("sidecar", 0), container("train", 2, gpumem=2000, gpucores=20)])
    api, allocator, _ = make(tmp_path, pod, node_annotations=lock_for("default", "p1"))
    [first] = await allocator.allocate([[f"{GPU0}-0"]])
    assert (first.container, first.envs["NVIDIA_VISIBLE_DEVICES"]) == ("setup", GPU0)
    got = await pod_annotations(api, "p1")
    assert got[anno.BIND_PHASE] == anno.BIND_PHASE_ALLOCATING
    assert anno.NODE_LOCK in (await api.get("nodes", NODE))["metadata"]["annotations"]
    [second] = await allocator.allocate([[f"{GPU0}-1", f"{GPU0}-2"]])
    assert (second.container, second.envs["NVIDIA_VISIBLE_DEVICES"]) == ("train", f"{GPU1},{GPU2}")
    got = await pod_annotations(api, "p1")
    assert got[anno.VGPU_DEVICES_TO_ALLOCATE] == ";;;"
    assert got[anno.BIND_PHASE] == anno.BIND_PHASE_SUCCESS
    assert anno.NODE_LOCK not in (await api.get("nodes", NODE))["metadata"]["annotations"]


async def test_two_pending_pods_the_lock_decides(tmp_path: Path) -> None:
    older = pod_manifest("older", allocation([(GPU0, 1000, 0)]), bind_time=100)
    newer = pod_manifest("newer", allocation([(GPU2, 2000, 0)]), bind_time=200)
    api, allocator, _ = make(tmp_path, older, newer, node_annotations=lock_for("default", "newer"))
    [grant] = await allocator.allocate([[f"{GPU0}-0"]])
    assert grant.envs["NVIDIA_VISIBLE_DEVICES"] == GPU2
    assert (await pod_annotations(api, "older"))[anno.BIND_PHASE] == anno.BIND_PHASE_ALLOCATING


async def test_two_pending_pods_without_lock(tmp_path: Path) -> None:
    one = pod_manifest("one", allocation([(GPU0, 1000, 0), (GPU1, 1000, 0)]), bind_time=100)
    older = pod_manifest("older", allocation([(GPU0, 1000, 0)]), bind_time=100)
    newer = pod_manifest("newer", allocation([(GPU2, 2000, 0)]), bind_time=200)
    elsewhere = pod_manifest("elsewhere", allocation([(GPU2, 2000, 0)]), bind_time=1, node="node-2")
    done = pod_manifest("done", allocation([(GPU2, 2000, 0)]), bind_time=1, phase=anno.BIND_PHASE_SUCCESS)
    api, allocator, _ = make(tmp_path, one, older, newer, elsewhere, done)
    # kubelet's IDs name GPU2: the pod the scheduler put on GPU2 is the better match
    [grant] = await allocator.allocate([[f"{GPU2}-4"]])
    assert grant.envs["NVIDIA_VISIBLE_DEVICES"] == GPU2
    assert (await pod_annotations(api, "newer"))[anno.BIND_PHASE] == anno.BIND_PHASE_SUCCESS
    # no hint: the oldest binding goes first; the count picks between one- and two-device pods
    [grant] = await allocator.allocate([[f"{GPU1}-0"]])
    assert grant.envs["NVIDIA_VISIBLE_DEVICES"] == GPU0
    assert (await pod_annotations(api, "older"))[anno.BIND_PHASE] == anno.BIND_PHASE_SUCCESS
    [grant] = await allocator.allocate([[f"{GPU1}-0", f"{GPU1}-1"]])
    assert grant.envs["NVIDIA_VISIBLE_DEVICES"] == f"{GPU0},{GPU1}"


async def test_wrong_count_fails_the_pod_with_an_event(tmp_path: Path) -> None:
    pod = pod_manifest("p1", allocation([(GPU0, 1000, 0), (GPU1, 1000, 0)]))
    api, allocator, events = make(tmp_path, pod, node_annotations=lock_for("default", "p1"))
    with pytest.raises(AllocationError) as info:
        await allocator.allocate([[f"{GPU0}-0"]])
    assert info.value.status == "invalid"
    assert "kubelet allocates 1 device(s), the scheduler assigned 2" in info.value.message
    got = await pod_annotations(api, "p1")
    assert got[anno.BIND_PHASE] == anno.BIND_PHASE_FAILED
    assert got[anno.VGPU_DEVICES_TO_ALLOCATE] == allocation([(GPU0, 1000, 0), (GPU1, 1000, 0)])  # untouched
    assert anno.NODE_LOCK not in (await api.get("nodes", NODE))["metadata"]["annotations"]
    [event] = events.pending()
    assert event["reason"] == "DeviceAllocationFailed"
    assert event["involvedObject"]["name"] == "p1"
    assert "scheduler assigned 2" in event["message"]


@pytest.mark.parametrize(("text", "message"), [
    ("GPU-x,NVIDIA,notanumber,0:;", "not an integer"),
    ("", "missing or empty"),
    (allocation([("GPU-not-here", 1000, 0)]), "is not a device of node node-1"),
    ("GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855b4ca0,Cambricon,1000,0:;", "has vendor Cambricon"),
    (allocation([(GPU0, 1, 0)], [(GPU1, 1, 0)]), "2 entries for 1 containers"),
])
async def test_malformed_annotations_fail_the_pod(tmp_path: Path, text: str, message: str) -> None:
    pod = pod_manifest("p1", text)
    api, allocator, events = make(tmp_path, pod, node_annotations=lock_for("default", "p1"))
    with pytest.raises(AllocationError, match=message) as info:
        await allocator.allocate([[f"{GPU0}-0"]])
    assert info.value.status == "invalid"
    assert (await pod_annotations(api, "p1"))[anno.BIND_PHASE] == anno.BIND_PHASE_FAILED
    assert len(list(events.pending())) == 1


async def test_foreign_device_ids_are_refused(tmp_path: Path) -> None:
    pod = pod_manifest("p1", allocation([(GPU0, 1000, 0)]))
    _, allocator, _ = make(tmp_path, pod, node_annotations=lock_for("default", "p1"))
    with pytest.raises(AllocationError, match="not this plugin's"):
        await allocator.allocate([["GPU-elsewhere-0"]])


async def test_missing_pod_is_not_found_and_touches_nothing(tmp_path: Path) -> None:
    other = pod_manifest("other", allocation([(GPU0, 1000, 0), (GPU1, 1000, 0)]))
    api, allocator, events = make(tmp_path, other, node_annotations=lock_for("default", "gone"))
    with pytest.raises(AllocationError) as info:
        await allocator.allocate([[f"{GPU0}-0"]])  # wants 1 device; the only pod waits for 2
    assert info.value.status == "not_found"
    assert "waiting for 1 device(s)" in info.value.message
    assert (await pod_annotations(api, "other"))[anno.BIND_PHASE] == anno.BIND_PHASE_ALLOCATING
    assert anno.NODE_LOCK in (await api.get("nodes", NODE))["metadata"]["annotations"]
    assert list(events.pending()) == []


async def test_lock_of_another_pod_survives(tmp_path: Path) -> None:
    pod = pod_manifest("p1", allocation([(GPU0, 1000, 0)]))
    api, allocator, _ = make(tmp_path, pod, node_annotations=lock_for("default", "someone-else"))
    await allocator.allocate([[f"{GPU0}-0"]])
    assert (await api.get("nodes", NODE))["metadata"]["annotations"][anno.NODE_LOCK].endswith("someone-else")


async def test_mig_mode_is_refused(tmp_path: Path) -> None:
    pod = pod_manifest("p1", allocation([(GPU0, 1000, 0)]))
    _, allocator, _ = make(tmp_path, pod, node_annotations=lock_for("default", "p1"),
                           settings=AllocationSettings(mig_mode=True))
    with pytest.raises(AllocationError, match="mig"):
        await allocator.allocate([[f"{GPU0}-0"]])


async def test_preferred_allocation_uses_the_pending_pod(tmp_path: Path) -> None:
    pod = pod_manifest("p1", allocation([(GPU2, 1000, 0), (GPU1, 1000, 0)]))
    api, allocator, _ = make(tmp_path, pod, node_annotations=lock_for("default", "p1"))
    available = tuple(f"{u}-{r}" for u in (GPU0, GPU1, GPU2) for r in range(10))
    [chosen] = await allocator.preferred([PreferredRequest(available, (), 2)])
    assert sorted(chosen) == [f"{GPU1}-0", f"{GPU2}-0"]
    assert (await pod_annotations(api, "p1"))[anno.BIND_PHASE] == anno.BIND_PHASE_ALLOCATING  # no side effects
    api.put("nodes", node_manifest())
    await api.delete("pods", "p1", namespace="default")
    [fallback] = await allocator.preferred([PreferredRequest(available, (), 2)])
    assert fallback == [f"{GPU0}-0", f"{GPU1}-0"]


async def test_a_served_pod_still_holding_the_lock_is_not_failed(tmp_path: Path) -> None:
    served = pod_manifest("served", ";")  # every container allocated, lock not released (e.g. an API error)
    waiting = pod_manifest("waiting", allocation([(GPU1, 1000, 0)]))
    api, allocator, _ = make(tmp_path, served, waiting, node_annotations=lock_for("default", "served"))
    [grant] = await allocator.allocate([[f"{GPU0}-0"]])
    assert grant.envs["NVIDIA_VISIBLE_DEVICES"] == GPU1
    assert (await pod_annotations(api, "served"))[anno.BIND_PHASE] == anno.BIND_PHASE_ALLOCATING


# --- what the agent believes: a tenant may patch its own pod ------------------------------------------------


async def refused(tmp_path: Path, pod: dict[str, Any], match: str, *,
                  settings: AllocationSettings | None = None) -> None:
    """The allocation is refused through the failure flow: the pod failed, an Event, the lock released."""
    api, allocator, events = make(tmp_path, pod, node_annotations=lock_for("default", "p1"), settings=settings)
    with pytest.raises(AllocationError, match=match) as info:
        await allocator.allocate([[f"{GPU0}-0"]])
    assert info.value.status == "invalid"
    assert (await pod_annotations(api, "p1"))[anno.BIND_PHASE] == anno.BIND_PHASE_FAILED
    [event] = events.pending()
    assert event["reason"] == "DeviceAllocationFailed" and event["involvedObject"]["name"] == "p1"
    assert anno.NODE_LOCK not in (await api.get("nodes", NODE))["metadata"]["annotations"]


async def test_a_pod_of_another_scheduler_is_refused(tmp_path: Path) -> None:
    # `hami.io/webhook: ignore` or its own scheduler: the annotations are the tenant's, not a scheduler's.
    pod = pod_manifest("p1", allocation([(GPU0, 32768, 100)]), scheduler="default-scheduler")
    await refused(tmp_path, pod, "scheduled by default-scheduler, not hami-scheduler")


async def test_extra_trusted_schedulers_are_served(tmp_path: Path) -> None:
    pod = pod_manifest("p1", allocation([(GPU0, 1000, 0)]), scheduler="volcano")
    settings = AllocationSettings(limiter=limiter(tmp_path), trusted_schedulers=("hami-scheduler", "volcano"))
    _, allocator, _ = make(tmp_path, pod, node_annotations=lock_for("default", "p1"), settings=settings)
    [grant] = await allocator.allocate([[f"{GPU0}-0"]])
    assert grant.envs["NVIDIA_VISIBLE_DEVICES"] == GPU0


async def test_a_rewritten_to_allocate_entry_is_refused(tmp_path: Path) -> None:
    pod = pod_manifest("p1", allocation([(GPU0, 1000, 0)]))
    pod["metadata"]["annotations"][anno.VGPU_DEVICES_TO_ALLOCATE] = allocation([(GPU0, 32768, 100)])
    await refused(tmp_path, pod, "vgpu-devices-to-allocate entry differs from hami.io/vgpu-devices-allocated")


@pytest.mark.parametrize("forged", [
    [(GPU0, 1, 0)],  # memory 1 MiB, cores 0: the limiter would hand out the whole card
    [(GPU0, 4000, 0)],  # the right memory, other cores
    [(GPU0, 32768, 25)],  # more memory than asked for
])
async def test_an_allocation_other_than_the_request_is_refused(tmp_path: Path,
                                                               forged: list[tuple[str, int, int]]) -> None:
    text = allocation(forged)  # both annotations rewritten alike
    pod = pod_manifest("p1", text, containers=[container("main", gpumem=4000, gpucores=25)])
    await refused(tmp_path, pod, r"does not match the container's request \(1 NVIDIA device\(s\) at 4000 MiB, 25%")


async def test_a_percentage_request_is_checked_against_the_registered_memory(tmp_path: Path) -> None:
    half = {"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "50", "nvidia.com/gpucores": "30"}
    honest = pod_manifest("p1", allocation([(GPU2, 40960, 30)]),  # GPU2 registers 81920 MiB
                          containers=[{"name": "main", "resources": {"limits": half}}])
    _, allocator, _ = make(tmp_path, honest, node_annotations=lock_for("default", "p1"))
    [grant] = await allocator.allocate([[f"{GPU2}-0"]])
    assert grant.envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "40960m"
    greedy = pod_manifest("p1", allocation([(GPU2, 81920, 30)]),
                          containers=[{"name": "main", "resources": {"limits": half}}])
    await refused(tmp_path / "greedy", greedy, "50% memory, 30% cores")


async def test_an_untrusted_pod_never_stands_in_for_a_real_one(tmp_path: Path) -> None:
    # No lock names the pod: the oldest waiting pod would be picked, and the forged one is older.
    forged = pod_manifest("forged", allocation([(GPU0, 1000, 0)]), bind_time=1, scheduler="default-scheduler")
    real = pod_manifest("real", allocation([(GPU1, 1000, 0)]), bind_time=200)
    api, allocator, _ = make(tmp_path, forged, real)
    [grant] = await allocator.allocate([[f"{GPU2}-0"]])
    assert grant.envs["NVIDIA_VISIBLE_DEVICES"] == GPU1
    assert (await pod_annotations(api, "forged"))[anno.BIND_PHASE] == anno.BIND_PHASE_ALLOCATING
