"""Builders shared by the node agent tests (unit and integration): a fake node's devices, and the Node and Pod
objects the scheduler would have left behind for the device plugin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hami.agent.fake import FakeSpec, parse_fake_spec
from hami.protocol import annotations as anno
from hami.protocol.annotations import encode_node_lock, encode_pod_allocation
from hami.resources import ContainerDevice, HamiError

NODE = "node-1"
GPU0 = "GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855b4ca0"
GPU1 = "GPU-7a3b1e2c-1111-2222-3333-444455556666"
GPU2 = "GPU-9d8c7b6a-aaaa-bbbb-cccc-ddddeeeeffff"

DEVICES_YAML = f"""
devices:
  - {{uuid: {GPU0}, model: Tesla V100-PCIE-32GB, memory_mib: 32768, numa: 0, nvlinks: {{{GPU1}: 2}}}}
  - {{uuid: {GPU1}, model: Tesla V100-PCIE-32GB, memory_mib: 32768, numa: 0}}
  - {{uuid: {GPU2}, model: NVIDIA A100-SXM4-80GB, memory_mib: 81920, numa: 1}}
"""


def spec(text: str = DEVICES_YAML) -> FakeSpec:
    import yaml

    return parse_fake_spec(yaml.safe_load(text))


def node_manifest(name: str = NODE, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"kind": "Node", "metadata": {"name": name, "annotations": dict(annotations or {})}}


def allocation(*containers: Sequence[tuple[str, int, int]]) -> str:
    """`hami.io/vgpu-devices-*` for containers given as [(uuid, mem MiB, cores), ...] each."""
    return encode_pod_allocation(tuple(
        tuple(ContainerDevice(uuid, "NVIDIA", mem, cores) for uuid, mem, cores in c) for c in containers))


def container(name: str, gpus: int = 1, *, gpumem: int | None = None, gpucores: int | None = None,
              env: dict[str, str] | None = None, priority: int | None = None) -> dict[str, Any]:
    limits: dict[str, Any] = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    if gpumem is not None:
        limits["nvidia.com/gpumem"] = str(gpumem)
    if gpucores is not None:
        limits["nvidia.com/gpucores"] = str(gpucores)
    if priority is not None:
        limits["nvidia.com/priority"] = str(priority)
    ctr: dict[str, Any] = {"name": name, "image": "cuda", "resources": {"limits": limits}}
    if env:
        ctr["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return ctr


def asking_for(to_allocate: str) -> dict[str, Any]:
    """Container `main` asking for what the allocation's first entry holds, as the scheduler placed it (a whole
    GPU when the text is no allocation)."""
    try:
        first = next((c for c in anno.decode_pod_allocation(to_allocate) if c), ())
    except HamiError:
        first = ()
    if not first:
        return container("main")
    return container("main", len(first), gpumem=first[0].memory_mib, gpucores=first[0].cores)


def pod_manifest(name: str, to_allocate: str, *, containers: Sequence[dict[str, Any]] | None = None,
                 init: Sequence[dict[str, Any]] = (), node: str = NODE, phase: str = anno.BIND_PHASE_ALLOCATING,
                 bind_time: int = 1_700_000_000, namespace: str = "default",
                 scheduler: str = "hami-scheduler") -> dict[str, Any]:
    """A pod the scheduler bound here; without `containers`, one that asks for its allocation (asking_for)."""
    annotations = {
        anno.VGPU_DEVICES_ALLOCATED: to_allocate,
        anno.VGPU_DEVICES_TO_ALLOCATE: to_allocate,
        anno.VGPU_NODE: node,
        anno.VGPU_TIME: str(bind_time),
        anno.BIND_PHASE: phase,
        anno.BIND_TIME: str(bind_time),
    }
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "annotations": annotations},
        "spec": {"nodeName": node, "schedulerName": scheduler, "initContainers": list(init),
                 "containers": list(containers if containers is not None else [asking_for(to_allocate)])},
        "status": {"phase": "Pending"},
    }


def lock_for(namespace: str, pod: str) -> dict[str, str]:
    from datetime import UTC, datetime

    return {anno.NODE_LOCK: encode_node_lock(datetime.now(UTC), namespace, pod)}
