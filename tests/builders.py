"""Builders for hand-made clusters and pods, shared by the tests."""

from __future__ import annotations

from hami.resources import (
    ContainerDevice,
    ContainerRequest,
    Device,
    DeviceRequest,
    DeviceSelector,
    Node,
    PodRequest,
)
from hami.scheduler.state import ClusterState, PodRecord
from hami.sim.trace import TraceNode, cluster_nodes


def gpu(uuid: str, mem: int = 16384, model: str = "NVIDIA-Tesla T4", *, index: int = 0, numa: int = 0,
        count: int = 10, cores: int = 100, health: bool = True, mode: str = "hami-core") -> Device:
    return Device(uuid, index, count, mem, cores, model, numa=numa, health=health, mode=mode)


def node(name: str, *devices: Device, cordoned: tuple[str, ...] = (), cpu: int = 0, mem: int = 0,
         topology: tuple[tuple[str, str, int], ...] = ()) -> Node:
    return Node(name, devices, cpu_milli=cpu, memory_mib=mem, cordoned=frozenset(cordoned),
                topology=topology)


def share(count: int = 1, mem: int = 0, pct: int = 0, cores: int = 0) -> DeviceRequest:
    return DeviceRequest("NVIDIA", count, memory_mib=mem, memory_pct=pct, cores=cores)


def pod(name: str, *requests: DeviceRequest, selector: DeviceSelector | None = None,
        node_policy: str | None = None, device_policy: tuple[str, ...] = (),
        init: tuple[DeviceRequest, ...] = (), cpu: int = 0) -> PodRequest:
    containers = []
    if init:
        containers.append(ContainerRequest("init", init, init=True))
    containers.append(ContainerRequest("main", tuple(requests), cpu_milli=cpu))
    return PodRequest("default", name, f"uid-{name}", tuple(containers),
                      selector=selector or DeviceSelector(), node_policy=node_policy,
                      device_policy=device_policy)


def trace_cluster(*nodes: TraceNode) -> ClusterState:
    """A state holding openb-style nodes, as the simulator builds them."""
    return ClusterState.build(cluster_nodes(list(nodes)), ())


def occupy(state: ClusterState, node: str, gpu: int, pct: int, cpu: int = 0, uid: str = "") -> None:
    """A pod already holding `pct` of one GPU (and `cpu` milli-CPU) on a trace node."""
    uuid = f"{node}-gpu{gpu}"
    card = int(state.dev_mem_total[state.node_uuid_slot[state.node_index[node]][uuid]])
    device = ContainerDevice(uuid, "NVIDIA", card * pct // 100, pct)
    uid = uid or f"{node}-{gpu}-{pct}-{len(state.pods)}"
    state.add_pod(PodRecord(uid, f"x/{uid}", node, ((device,),), (False,), cpu, 0))
