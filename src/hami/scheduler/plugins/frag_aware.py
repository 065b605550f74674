"""frag-aware: Hami's placement policy for GPU-sharing clusters (node scorer and GPU choice).

Every placement is priced by what it costs the tasks still to come, in milli-GPU they will not be able to
use; the node (and GPU) with the lowest cost wins. All knowledge of "the tasks to come" is learned online
from the pods this scheduler has been asked to place (decayed counts of their shapes) and from what has
become of the GPU shares it left free; nothing is read from a trace or configured up front.

The cost has four parts:
- Fragmentation (whole-GPU and CPU-only tasks): the change of FGD's expected unusable free GPU F under
  the learned workload (fragmodel), which protects whole nodes for multi-GPU shapes and GPU types for the
  shapes that can use them.
- CPU stranding: GPUs on a node without the CPU to feed them are as lost as fragmented ones. With rho the
  learned CPU per milli-GPU, a node strands max(0, free GPU - CPU left / rho); CPU-only tasks go where CPU
  is surplus, CPU-heavy GPU tasks to CPU-rich nodes.
- Scarcity: shapes that only some nodes can host (a GPU-type constraint, 8 GPUs, 120 cores) are expected
  to claim a share of those nodes' free GPU; using a node costs in proportion to that claim, so
  unconstrained tasks keep out of the scarce models until the rest of the cluster is full.
- Gap value (sharing tasks): what a GPU's leftover share will eventually waste. Learned from history (mean
  current share of the GPUs that once had that share), shrunk towards a model where the gap is offered
  tasks drawn from the learned shapes. It prefers leaving gaps that common tasks fill (530 after a 470)
  over "tight" fits that strand a gap nothing fits (210 after 470 + 320).
Ties go to the node with the least free GPU after placement (packing), then to the first node.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from hami.resources import DeviceSelector
from hami.scheduler.fit import DeviceView
from hami.scheduler.framework import PlacementContext, Slot
from hami.scheduler.plugins import register_device_policy, register_node_scorer
from hami.scheduler.plugins.fgd import SCRATCH, ChosenDevice, FragTables, GpuChoice, gpu_choice
from hami.scheduler.plugins.fragmodel import FragModel, Workload
from hami.scheduler.plugins.gpushare import (
    MILLI,
    BoolArray,
    FloatArray,
    GpuState,
    IntArray,
    NodeCache,
    PodShape,
    device_free,
    gpu_state,
    layout,
    pod_shape,
)
from hami.scheduler.state import ClusterState

GAP_STEPS = MILLI // 10 + 1  # gap tables are indexed by free share in steps of 10 milli (whole percent)
RECENT_PODS = 4096  # pod uids remembered so that one pod is learned once


@dataclass(frozen=True, slots=True)
class Tuning:
    """Weights of the cost terms (milli-GPU per milli-GPU unless noted). Measured on the openb traces."""

    half_life: float = 2000.0  # pods: how fast the learned workload forgets
    relearn_every: int = 50  # pods between rebuilds of the learned model
    strand: float = 1.0
    scarcity: float = 0.5
    gap: float = 2.0
    gap_horizon: int = 40  # offers a gap gets in the model prior
    gap_prior: float = 2.0  # weight of the model prior, in observed gaps
    pack: float = 0.01  # per GPU left free on the node: the tie-break


class ShapeHistory:
    """Exponentially decayed counts of the pod shapes seen so far (the only view of the future)."""

    def __init__(self, half_life: float) -> None:
        self._growth = 0.5 ** (-1.0 / half_life)
        self.counts: dict[PodShape, float] = {}
        self._scale = 1.0

    def observe(self, shape: PodShape) -> None:
        self._scale *= self._growth  # newer pods weigh more instead of decaying every old count
        self.counts[shape] = self.counts.get(shape, 0.0) + self._scale
        if self._scale > 1e100:
            for k in self.counts:
                self.counts[k] /= self._scale
            self._scale = 1.0

    def workload(self) -> Workload:
        return Workload.from_counts(self.counts)

    def cpu_per_milli(self) -> float:
        """rho: CPU (milli) the learned GPU tasks bring per milli-GPU."""
        cpu = gpu = 0.0
        for s, c in self.counts.items():
            if s.num_gpu:
                cpu += c * s.cpu_milli
                gpu += c * s.gpu_request
        return cpu / gpu if gpu else 10.0

    def offered_waste(self, horizon: int) -> FloatArray:
        """Model prior of a gap's waste: after `horizon` offers of a random learned GPU task (placed on
        this GPU if it fits), the expected share still free, per gap step."""
        sizes: dict[int, float] = {}
        total = 0.0
        for s, c in self.counts.items():
            if s.num_gpu:
                total += c
                if s.num_gpu == 1:
                    sizes[s.gpu_milli // 10] = sizes.get(s.gpu_milli // 10, 0.0) + c
        v0: FloatArray = np.arange(GAP_STEPS, dtype=np.float64) * 10.0
        if total <= 0:
            return v0
        # One offer: v'[r] = v[r] + sum over sizes x <= r of p_x (v[r - x] - v[r]), as a gather per step
        # (elementwise; a BLAS matrix power is no faster at this size and stalls on a busy machine).
        xs = np.array([x for x in sizes if 0 < x < GAP_STEPS], np.int64)
        ps = np.array([sizes[x] / total for x in xs.tolist()])
        r = np.arange(GAP_STEPS)[:, None]
        fits = r >= xs[None, :]
        prob = np.where(fits, ps[None, :], 0.0)
        src = np.where(fits, r - xs[None, :], 0)
        stay = 1.0 - prob.sum(axis=1)
        v = v0
        for _ in range(horizon):
            v = stay * v + (prob * v[src]).sum(axis=1)
        return v


class GapTracker:
    """What becomes of a GPU's free share once a placement leaves it: V[h] = mean current share of the
    GPUs that once had share h. Observed as changes of the free matrix between decisions, so it sees
    what the scheduler did (and pods leaving), nothing of the future."""

    def __init__(self) -> None:
        self._cache = NodeCache()
        self._free = np.zeros((0, 0), np.int64)
        self.sums = np.zeros(GAP_STEPS)
        self.counts = np.zeros(GAP_STEPS)
        self._events: dict[tuple[int, int], list[int]] = {}  # (node, device column) -> gap steps seen

    def observe(self, state: ClusterState, free: IntArray) -> None:
        rows = self._cache.changed(state)
        if rows is None or self._free.shape != free.shape:
            self._free = free.copy()
            self._events.clear()
            return
        for r in rows.tolist():
            old, new = self._free[r], free[r]
            for c in np.flatnonzero(old != new).tolist():
                self._move((r, c), int(old[c]), int(new[c]))
            self._free[r] = new

    def _move(self, key: tuple[int, int], a: int, b: int) -> None:
        seen = self._events.get(key, [])
        for h in seen:
            self.sums[h] += b - a
        if b >= MILLI:  # idle again: its history no longer says anything about its future
            for h in seen:
                self.sums[h] -= b
                self.counts[h] -= 1
            self._events.pop(key, None)
        elif b > 0:
            h = b // 10
            self._events.setdefault(key, []).append(h)
            self.sums[h] += b
            self.counts[h] += 1

    def waste(self, prior: FloatArray, weight: float) -> FloatArray:
        out: FloatArray = (self.sums + weight * prior) / (self.counts + weight)
        out[-1] = prior[-1]
        return out


class Eligibility:
    """Which nodes could ever host each learned GPU shape (type, GPU count, CPU size), grouped by
    identical node sets, with each group's share of the learned GPU volume."""

    def __init__(self, state: ClusterState, g: GpuState, workload: Workload) -> None:
        lay = g.layout
        n = state.n_node_slots
        cpu_cap = np.where(state.node_cpu_total[:n] > 0, state.node_cpu_total[:n], 1 << 40)
        names = state.types.names
        sizes = np.unique(cpu_cap)  # few distinct node sizes: shapes are grouped by which they fit
        by_key: dict[tuple[tuple[str, ...], int, int], float] = {}
        for sh, w in zip(workload.shapes, workload.weights, strict=True):
            vol = w * sh.gpu_request
            if vol > 0:
                key = (sh.types, sh.num_gpu, int(np.searchsorted(sizes, sh.cpu_milli)))
                by_key[key] = by_key.get(key, 0.0) + vol
        groups: dict[bytes, int] = {}
        rows: list[BoolArray] = []
        vols: list[float] = []
        for (types, num_gpu, size), vol in by_key.items():
            sel = DeviceSelector(use_types=types)
            type_ok = np.array([False] + [sel.type_allowed(t) for t in names], np.bool_)
            floor = sizes[size] if size < len(sizes) else np.inf
            row = type_ok[lay.node_type + 1] & (lay.n_gpus >= num_gpu) & (cpu_cap >= floor)
            packed = np.packbits(row).tobytes()
            i = groups.get(packed)
            if i is None:
                i = groups[packed] = len(rows)
                rows.append(row)
                vols.append(0.0)
            vols[i] += vol
        total = sum(vols)
        self.nodes = np.array(rows, np.float64).reshape(len(rows), n)
        self.volume = np.array(vols, np.float64) / total if total > 0 else np.zeros(len(vols))

    def pressure(self, free: IntArray) -> FloatArray:
        """Per node: the share of its free GPU the shapes able to use it are expected to claim before the
        cluster is full (each shape's volume spread over its nodes by their free GPU)."""
        if len(self.volume) == 0 or self.nodes.shape[1] != len(free):
            return np.zeros(len(free))
        f = free.astype(np.float64)
        # Elementwise rather than BLAS: a threaded matmul of this size stalls on a busy machine.
        reachable = (self.nodes * f[None, :]).sum(axis=1)
        per_milli = np.divide(self.volume, reachable, out=np.zeros(len(self.volume)), where=reachable > 0)
        out: FloatArray = (per_milli[:, None] * self.nodes).sum(axis=0) * float(f.sum())
        return out


class FragAwareNodes:
    name = "frag-aware"

    def __init__(self, tuning: Tuning | None = None) -> None:
        self.tuning = tuning or Tuning()
        self.history = ShapeHistory(self.tuning.half_life)
        self.tables = FragTables()
        self.gaps = GapTracker()
        self.eligibility: Eligibility | None = None
        self.rho = 10.0
        self.gap_prior: FloatArray = np.arange(GAP_STEPS, dtype=np.float64) * 10.0
        self._since = 0
        self._counted: OrderedDict[str, None] = OrderedDict()

    def _learn(self, state: ClusterState, g: GpuState, shape: PodShape, uid: str) -> FragModel:
        if uid not in self._counted:  # a pod asked about twice (filter then prioritize, retries) counts once
            self._counted[uid] = None
            if len(self._counted) > RECENT_PODS:
                self._counted.popitem(last=False)
            self.history.observe(shape)
            self._since += 1
        model = self.tables.model
        stale = self.eligibility is None or self.eligibility.nodes.shape[1] != state.n_node_slots
        if model is None or model.stale(state) or stale or self._since >= self.tuning.relearn_every:
            workload = self.history.workload()
            model = FragModel(workload, state)
            self.tables.use(model)
            self.eligibility = Eligibility(state, g, workload)
            self.rho = self.history.cpu_per_milli()
            self.gap_prior = self.history.offered_waste(self.tuning.gap_horizon)
            self._since = 0
        return model

    def _stranded(self, free: FloatArray | IntArray, cpu: FloatArray | IntArray) -> FloatArray:
        if self.rho <= 0:  # the pods seen so far ask no CPU: nothing can be stranded for want of it
            return np.zeros(np.shape(free), np.float64)
        out: FloatArray = np.maximum(0.0, free - cpu / self.rho)
        return out

    def score(self, ctx: PlacementContext, nodes: IntArray) -> FloatArray:
        state, tn = ctx.state, self.tuning
        shape = pod_shape(ctx.pod, layout(ctx.state).card_memory_mib)
        g = gpu_state(state)
        model = self._learn(state, g, shape, ctx.pod.uid)
        t = self.tables
        t.refresh(state, g)
        self.gaps.observe(state, g.free)
        node_type = g.layout.node_type[nodes]
        cpu_after = g.cpu_left[nodes] - shape.cpu_milli
        total = t.total[nodes]
        stranded = self._stranded(total, g.cpu_left[nodes])
        price = np.zeros(len(nodes))
        if shape.num_gpu and tn.scarcity and self.eligibility is not None:
            price = tn.scarcity * shape.gpu_request * self.eligibility.pressure(t.total)[nodes]
        if shape.sharing:
            # Only the gap term depends on which GPU of a node is taken (the others on the node's total):
            # price every free share once, gather per GPU, and keep each node's cheapest (first on ties).
            q = shape.gpu_milli
            waste = self.gaps.waste(self.gap_prior, tn.gap_prior)
            share = np.arange(q, MILLI + 1)
            gap_cost = np.full(MILLI + 1, np.inf)
            gap_cost[q:] = waste[(share - q) // 10] - waste[share // 10]
            per_gpu = gap_cost[g.free[nodes]]
            col = per_gpu.argmin(axis=1)
            best_gap = per_gpu[np.arange(len(nodes)), col]
            fits = np.isfinite(best_gap)
            free_after = total - q
            cost = (tn.strand * (self._stranded(free_after, cpu_after) - stranded) + price
                    + tn.gap * np.where(fits, best_gap, 0.0) + tn.pack * free_after / MILLI)
            ctx.scratch[SCRATCH] = GpuChoice(nodes, np.where(fits, col, -1))
            out: FloatArray = np.where(fits, -cost, -np.inf)
            return out
        bucket = model.bucket(cpu_after)
        if shape.num_gpu:
            after = model.after_whole(t.cnt[nodes], t.sums[nodes], total, node_type, bucket, shape.num_gpu)
            free_after = total - shape.num_gpu * MILLI
        else:
            after = model.frag(t.cnt[nodes], t.sums[nodes], total, node_type, bucket)
            free_after = total
        cost = ((after - t.frag[nodes]) + tn.strand * (self._stranded(free_after, cpu_after) - stranded)
                + price + tn.pack * free_after / MILLI)
        out = -cost
        return out


class FragAwareDevices(ChosenDevice):
    """The GPU the node step priced lowest (ctx.scratch); whole cards by index. Under another node policy
    (a pod's own annotation) there is no such choice: then the fullest GPU that fits (best fit)."""

    name = "frag-aware"

    def rank(self, ctx: PlacementContext, node: int, slot: Slot, view: DeviceView,
             cand: IntArray) -> FloatArray | None:
        chosen = gpu_choice(ctx)
        if slot.request.exclusive or (chosen is not None and chosen.get(node) is not None):
            return super().rank(ctx, node, slot, view, cand)
        out: FloatArray = device_free(view, cand).astype(np.float64)
        return out


register_node_scorer("frag-aware", FragAwareNodes)
register_device_policy("frag-aware", FragAwareDevices)
