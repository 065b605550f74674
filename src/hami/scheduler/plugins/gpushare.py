"""What GPU-sharing policies look at: a pod's shape and every node's per-GPU free share, as arrays.

The fragmentation-family policies (the paper's baselines, FGD and frag-aware) all reason about "milli-GPU"
(1000 = one card) per device and the CPU left on each node. This module derives those from ClusterState
once per state version, so a policy scores 1,000+ nodes with a few vectorised operations.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hami.resources import PodRequest
from hami.scheduler.fit import DeviceView
from hami.scheduler.state import ClusterState

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
MILLI = 1000


@dataclass(frozen=True, slots=True)
class PodShape:
    """A pod reduced to what GPU-sharing policies compare: CPU, GPU count, share per GPU, allowed types."""

    cpu_milli: int
    num_gpu: int
    gpu_milli: int  # per GPU, 1..1000; 0 for CPU-only pods
    types: tuple[str, ...] = ()  # the selector's use_types; empty = any

    @property
    def sharing(self) -> bool:
        return self.num_gpu == 1 and 0 < self.gpu_milli < MILLI

    @property
    def gpu_request(self) -> int:
        return self.num_gpu * self.gpu_milli


def pod_shape(pod: PodRequest, card_memory_mib: int = 0) -> PodShape:
    """The shape of a pod. Several device requests are folded into one (count summed, largest share):
    exact for the one-container pods of GPU traces, an approximation for multi-container pods. An
    absolute memory request counts as its share of a card of `card_memory_mib` (a typical card of the
    cluster: the share really depends on the card it lands on)."""
    count = share = 0
    for c in pod.containers:
        if c.init:
            continue
        for r in c.devices:
            count += r.count
            milli = max(r.cores, r.memory_pct) * 10
            if r.memory_mib and card_memory_mib > 0:
                milli = max(milli, -(-r.memory_mib * MILLI // card_memory_mib))
            share = max(share, min(MILLI, milli))
    if count and share == 0:
        share = 1  # neither cores nor a known memory share: the smallest slice
    return PodShape(pod.cpu_milli, count, share if count else 0, tuple(pod.selector.use_types))


@dataclass(slots=True)
class Layout:
    """Device slots per node as a padded matrix (-1 = no device), rebuilt when nodes or devices change."""

    version: int
    slots: IntArray  # (nodes, width)
    present: BoolArray
    node_type: IntArray  # interned type of the node's first device, -1 on nodes without devices
    n_gpus: IntArray
    card_memory_mib: int  # median device memory: converts absolute memory requests to shares


@dataclass(slots=True)
class GpuState:
    """Per-node GPU summary at one state version."""

    version: int
    layout: Layout
    free: IntArray  # (nodes, width) free milli-GPU per device, 0 where absent or unusable
    idle: BoolArray  # (nodes, width) device carries no task (a whole-card request can take it)
    cpu_left: IntArray  # (nodes,) allocatable CPU left; a large number where CPU is not tracked
    mem_left: IntArray
    epoch: IntArray  # ClusterState.node_epoch the rows were computed at


_layouts: weakref.WeakKeyDictionary[ClusterState, Layout] = weakref.WeakKeyDictionary()
_states: weakref.WeakKeyDictionary[ClusterState, GpuState] = weakref.WeakKeyDictionary()
UNTRACKED = 1 << 40


def layout(state: ClusterState) -> Layout:
    cached = _layouts.get(state)
    if cached is not None and cached.version == state.layout_version:
        return cached
    n = state.n_node_slots
    width = max((len(state.node_devices[i]) for i in range(n)), default=0)
    slots = np.full((n, max(width, 1)), -1, np.int64)
    for i in range(n):
        d = state.node_devices[i]
        if state.node_valid[i] and len(d):
            slots[i, : len(d)] = d
    present = slots >= 0
    first = slots[:, 0]
    node_type = np.where(first >= 0, state.dev_type[np.clip(first, 0, None)], -1)
    mem = state.dev_mem_total[slots[present]]
    made = Layout(state.layout_version, slots, present, node_type.astype(np.int64),
                  present.sum(axis=1).astype(np.int64), int(np.median(mem)) if len(mem) else 0)
    _layouts[state] = made
    return made


def gpu_state(state: ClusterState) -> GpuState:
    """Free share per device and CPU/memory left per node, cached per state version and refreshed
    incrementally: only nodes whose ClusterState.node_epoch moved are recomputed."""
    cached = _states.get(state)
    if cached is not None and cached.version == state.version and cached.layout.version == state.layout_version:
        return cached
    lay = layout(state)
    n = state.n_node_slots
    epoch = state.node_epoch[:n]
    if cached is None or cached.layout is not lay or len(cached.epoch) != n:
        free, idle = _device_shares(state, lay.slots, lay.present)
        cached = GpuState(state.version, lay, free, idle, np.zeros(n, np.int64), np.zeros(n, np.int64),
                          epoch.copy())
        rows = np.arange(n)
    else:
        rows = np.flatnonzero(epoch != cached.epoch)
        if len(rows):
            cached.free[rows], cached.idle[rows] = _device_shares(state, lay.slots[rows], lay.present[rows])
            cached.epoch[rows] = epoch[rows]
        cached.version = state.version
    cpu_total, mem_total = state.node_cpu_total[rows], state.node_mem_total[rows]
    cached.cpu_left[rows] = np.where(cpu_total > 0, cpu_total - state.node_cpu_used[rows], UNTRACKED)
    cached.mem_left[rows] = np.where(mem_total > 0, mem_total - state.node_mem_used[rows], UNTRACKED)
    _states[state] = cached
    return cached


def _device_shares(state: ClusterState, slots: IntArray, present: BoolArray) -> tuple[IntArray, BoolArray]:
    s = np.clip(slots, 0, None)
    core_total = state.dev_core_total[s]
    mem_total = state.dev_mem_total[s]
    core_free = np.divide((core_total - state.dev_core_used[s]) * MILLI, core_total,
                          out=np.zeros(s.shape), where=core_total > 0)
    mem_free = np.divide((mem_total - state.dev_mem_used[s]) * MILLI, mem_total,
                         out=np.zeros(s.shape), where=mem_total > 0)
    usable = (present & state.dev_health[s] & ~state.dev_cordoned[s]
              & (state.dev_count_used[s] < state.dev_count_total[s]))
    share = np.clip(np.floor(np.minimum(core_free, mem_free) + 1e-9), 0, MILLI)  # over-committed: 0, not <0
    free = np.where(usable, share, 0).astype(np.int64)
    idle = usable & (state.dev_count_used[s] == 0)
    return free, idle


def device_free(view: DeviceView, cand: IntArray) -> IntArray:
    """Free milli-GPU of candidate devices in a node-local view (the device step's counterpart of
    GpuState.free)."""
    core = np.divide((view.core_total[cand] - view.core_used[cand]) * MILLI, view.core_total[cand],
                     out=np.zeros(len(cand)), where=view.core_total[cand] > 0)
    mem = np.divide((view.mem_total[cand] - view.mem_used[cand]) * MILLI, view.mem_total[cand],
                    out=np.zeros(len(cand)), where=view.mem_total[cand] > 0)
    out: IntArray = np.floor(np.minimum(core, mem) + 1e-9).astype(np.int64)
    return out


def types_allowed(state: ClusterState, pod: PodRequest) -> BoolArray:
    """Per interned device type: may this pod use it (the selector's type rules)."""
    sel = pod.selector
    names = state.types.names
    out = np.fromiter((sel.type_allowed(t) for t in names), np.bool_, count=len(names))
    return out


class Seeded:
    """Mixin for policies that draw random numbers (random choice, tie-breaking): `reseed` makes a
    simulation seed reproducible; the default seed keeps production decisions deterministic per process."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def jitter(self, n: int) -> FloatArray:
        """Uniform [0, 1) noise to add to integer scores: breaks ties uniformly at random (as
        kube-scheduler's selectHost does) without ever reordering different integer scores."""
        out: FloatArray = self.rng.random(n)
        return out


class NodeCache:
    """Tells a policy which nodes changed since it last looked (by ClusterState.node_epoch), so per-node
    derived values are recomputed for a node or two per placement instead of for the whole cluster."""

    def __init__(self) -> None:
        self._state: weakref.ref[ClusterState] | None = None
        self._layout = -1
        self._epoch = np.zeros(0, np.int64)

    def changed(self, state: ClusterState) -> IntArray | None:
        """Node slots to recompute, or None when everything must be (first look, new layout, new state)."""
        n = state.n_node_slots
        epoch = state.node_epoch[:n]
        same = (self._state is not None and self._state() is state and self._layout == state.layout_version
                and len(self._epoch) == n)
        if not same:
            self._state = weakref.ref(state)
            self._layout = state.layout_version
            self._epoch = epoch.copy()
            return None
        rows = np.flatnonzero(epoch != self._epoch)
        self._epoch[rows] = epoch[rows]
        return rows
