"""Prometheus metrics: device allocation read from the ClusterState at scrape time, plus request latencies.

Allocation gauges are computed from the state's arrays when Prometheus scrapes (nothing is updated on
the hot path), and rendered as text by hand in a worker thread: at 5,000 nodes they are some 250,000
lines, which prometheus_client's generic exposition would take seconds of event-loop time to write.
Names follow HAMi's metrics in Prometheus style, with HAMi's label names (`nodeid`, `deviceuuid`,
`deviceidx`; `podnamespace`, `podname`, `containeridx` for per-container shares), so HAMi dashboards map
one to one:

| here                                  | HAMi                       |
|---------------------------------------|----------------------------|
| hami_gpu_memory_limit_bytes           | GPUDeviceMemoryLimit       |
| hami_gpu_core_limit_ratio             | GPUDeviceCoreLimit / 100   |
| hami_gpu_memory_allocated_bytes       | GPUDeviceMemoryAllocated   |
| hami_gpu_core_allocated_ratio         | GPUDeviceCoreAllocated / 100 |
| hami_gpu_shared_count                 | GPUDeviceSharedNum         |
| hami_vgpu_memory_allocated_bytes      | vGPUMemoryAllocated        |
| hami_vgpu_core_allocated_ratio        | vGPUCoreAllocated / 100    |

`hami_legacy_names=True` also exports the HAMi names themselves, for dashboards that cannot be changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from hami.scheduler.state import ClusterState, PodRecord

MIB = 1 << 20
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CONTAINER_LABELS = ("podnamespace", "podname", "nodename", "containeridx", "deviceuuid")


@dataclass(frozen=True, slots=True)
class AllocationSnapshot:
    """Copies of what the allocation gauges need, taken on the event loop in a few milliseconds so the
    text (hundreds of thousands of lines at 5,000 nodes) can be rendered in a worker thread while the
    loop keeps answering filters."""

    node: list[str]
    uuid: list[str]
    index: npt.NDArray[np.int64]
    type: list[str]
    vendor: list[str]
    mem_total: npt.NDArray[np.int64]
    core_total: npt.NDArray[np.int64]
    mem_used: npt.NDArray[np.int64]
    core_used: npt.NDArray[np.int64]
    count_used: npt.NDArray[np.int64]
    pods: list[PodRecord]


def snapshot(state: ClusterState) -> AllocationSnapshot:
    st = state
    slots = np.flatnonzero(st.dev_valid[: st.n_dev_slots])
    names, uuids = st.node_names, st.dev_uuid
    types, vendors = st.types.names, st.vendors.names
    return AllocationSnapshot(
        node=[names[i] for i in st.dev_node[slots].tolist()], uuid=[uuids[s] for s in slots.tolist()],
        index=st.dev_index[slots], type=[types[i] for i in st.dev_type[slots].tolist()],
        vendor=[vendors[i] for i in st.dev_vendor[slots].tolist()], mem_total=st.dev_mem_total[slots],
        core_total=st.dev_core_total[slots], mem_used=st.dev_mem_used[slots], core_used=st.dev_core_used[slots],
        count_used=st.dev_count_used[slots], pods=list(st.pods.values()))


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _family(out: list[str], name: str, help_text: str, labels: Sequence[str],
            values: Sequence[float]) -> None:
    out.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
    out.extend(f"{name}{{{label}}} {value!r}\n" for label, value in zip(labels, values, strict=True))


def render_allocation(snap: AllocationSnapshot, *, hami_legacy_names: bool = False) -> str:
    """The allocation gauges in Prometheus text format 0.0.4."""
    esc = _escape
    base = [f'nodeid="{esc(n)}",deviceuuid="{esc(u)}",deviceidx="{i}"'
            for n, u, i in zip(snap.node, snap.uuid, snap.index.tolist(), strict=True)]
    full = [f'{b},devicetype="{esc(t)}",vendor="{esc(v)}"' for b, t, v in zip(base, snap.type, snap.vendor,
                                                                            strict=True)]
    mem_total = (snap.mem_total.astype(np.float64) * MIB).tolist()
    mem_used = (snap.mem_used.astype(np.float64) * MIB).tolist()
    core_total, core_used = snap.core_total.astype(np.float64), snap.core_used.astype(np.float64)
    shared = snap.count_used.astype(np.float64).tolist()
    out: list[str] = []
    _family(out, "hami_gpu_memory_limit_bytes", "Device memory of a GPU", full, mem_total)
    _family(out, "hami_gpu_core_limit_ratio", "Compute of a GPU, in cards (1 = 100% cores)", full,
            (core_total / 100).tolist())
    _family(out, "hami_gpu_memory_allocated_bytes", "Device memory allocated on a GPU", full, mem_used)
    _family(out, "hami_gpu_core_allocated_ratio", "Compute allocated on a GPU, in cards (0.45 = 45% cores)",
            full, (core_used / 100).tolist())
    _family(out, "hami_gpu_shared_count", "Containers sharing a GPU", full, shared)
    if hami_legacy_names:
        _family(out, "GPUDeviceMemoryLimit", "Device memory limit for a certain GPU", base, mem_total)
        _family(out, "GPUDeviceCoreLimit", "Device core limit for a certain GPU", base, core_total.tolist())
        _family(out, "GPUDeviceMemoryAllocated", "Device memory allocated for a certain GPU", base, mem_used)
        _family(out, "GPUDeviceCoreAllocated", "Device core allocated for a certain GPU", base, core_used.tolist())
        _family(out, "GPUDeviceSharedNum", "Number of containers sharing this GPU", base, shared)
    labels: list[str] = []
    vmem: list[float] = []
    vcore: list[float] = []
    for record in snap.pods:
        namespace, _, name = record.key.partition("/")
        prefix = f'podnamespace="{esc(namespace)}",podname="{esc(name)}",nodename="{esc(record.node)}"'
        for ci, container in enumerate(record.allocation):
            for dev in container:
                labels.append(f'{prefix},containeridx="{ci}",deviceuuid="{esc(dev.uuid)}"')
                vmem.append(float(dev.memory_mib * MIB))
                vcore.append(dev.cores / 100)
    _family(out, "hami_vgpu_memory_allocated_bytes", "Device memory allocated to a container", labels, vmem)
    _family(out, "hami_vgpu_core_allocated_ratio", "Compute allocated to a container, in cards", labels, vcore)
    return "".join(out)


class ServiceMetrics:
    """Every metric the service exports, in its own registry (tests can build several services)."""

    def __init__(self, state: ClusterState, *, hami_legacy_names: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.filter_seconds = Histogram("hami_extender_filter_duration_seconds",
                                        "Time to answer a filter call", registry=r, buckets=_LATENCY_BUCKETS)
        self.bind_seconds = Histogram("hami_extender_bind_duration_seconds",
                                      "Time to answer a bind call, node-lock wait included", registry=r,
                                      buckets=_LATENCY_BUCKETS)
        self.lock_wait_seconds = Histogram("hami_node_lock_wait_seconds", "Time a bind waited for its node lock",
                                           registry=r, buckets=_LATENCY_BUCKETS)
        self.webhook_seconds = Histogram("hami_webhook_duration_seconds", "Time to answer an admission review",
                                         registry=r, buckets=_LATENCY_BUCKETS)
        self.filter_total = Counter("hami_extender_filter", "Filter calls by result "
                                    "(placed, unschedulable, passthrough, error)", ["result"], registry=r)
        self.bind_total = Counter("hami_extender_bind", "Bind calls by result (bound, failed)", ["result"],
                                  registry=r)
        self.webhook_total = Counter("hami_webhook_admission", "Admission reviews by result "
                                     "(mutated, unchanged, denied)", ["result"], registry=r)
        self.background_failures = Counter("hami_background_task_failures", "Background tasks that failed "
                                           "and were restarted", ["task"], registry=r)
        self.reservations_expired = Counter("hami_reservations_expired", "Filter reservations never bound",
                                            registry=r)
        self.reservations = Gauge("hami_reservations", "Filter reservations not yet confirmed", registry=r)
        self.leader = Gauge("hami_leader", "1 while this replica is the leader", registry=r)
        self.state = state
        self.hami_legacy_names = hami_legacy_names

    async def exposition(self) -> bytes:
        """The whole /metrics text: the registry, then the allocation gauges rendered off the loop."""
        snap = snapshot(self.state)
        text = await asyncio.to_thread(render_allocation, snap, hami_legacy_names=self.hami_legacy_names)
        return generate_latest(self.registry) + text.encode()
