"""fgd: Fragmentation Gradient Descent (Weng et al., ATC'23), the paper's policy, as its artifact runs it.

The node (and, for a sharing task, the GPU) where the cluster's expected fragmentation F (fragmodel) grows
least. The target workload is the trace's most common task shapes covering 95% of tasks, handed in with
`set_workload` (the simulator does; that is knowledge of the future, which frag-aware does without).
Without one, FGD learns the shapes it has been asked to place.

Scores are the artifact's integers, int(100 * sigmoid(-dF / 1000)), ties to the first node by name (see
bestfit); on a node, the first GPU (by index) with the best integer score.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from hami.scheduler.fit import DeviceView
from hami.scheduler.framework import DevicePolicy, PlacementContext, Slot
from hami.scheduler.plugins import register_device_policy, register_node_scorer
from hami.scheduler.plugins.fragmodel import FragModel, Workload
from hami.scheduler.plugins.gpushare import (
    FloatArray,
    GpuState,
    IntArray,
    NodeCache,
    PodShape,
    gpu_state,
    layout,
    pod_shape,
)
from hami.scheduler.state import ClusterState

SCRATCH = "gpu-choice"  # ctx.scratch key: the GpuChoice of the node step
COVERAGE = 0.95
RELEARN_EVERY = 100


class GpuChoice:
    """The device column a node step chose on each node it scored (-1: no GPU of the node fits), for its
    own device step. An array per node slot, not a dict: filling a 5,000-entry dict per pod cost more
    than the scoring it records."""

    __slots__ = ("_col",)

    def __init__(self, nodes: IntArray, cols: IntArray) -> None:
        self._col = np.full(int(nodes.max(initial=-1)) + 1, -2, np.int64)  # -2: not scored
        self._col[nodes] = cols

    def get(self, node: int) -> int | None:
        """The chosen column (-1 when none fits), or None when the node step did not score `node`."""
        if node >= len(self._col) or self._col[node] == -2:
            return None
        return int(self._col[node])


def gpu_choice(ctx: PlacementContext) -> GpuChoice | None:
    choice = ctx.scratch.get(SCRATCH)
    return choice if isinstance(choice, GpuChoice) else None


class FragTables:
    """Per-node demand tables and fragmentation under one FragModel, kept current incrementally."""

    def __init__(self) -> None:
        self.model: FragModel | None = None
        self._cache = NodeCache()
        self.cnt = np.zeros((0, 0), np.int64)
        self.sums = np.zeros((0, 0), np.int64)
        self.total = np.zeros(0, np.int64)
        self.frag = np.zeros(0, np.float64)
        self._keep_tables = False
        self._refrag = True

    def use(self, model: FragModel) -> None:
        old = self.model
        self.model = model
        # The demand tables depend only on the set of per-GPU demands: a relearned workload with the same
        # demands keeps them and only re-derives F (cheap), which keeps relearning off the latency tail.
        self._keep_tables = old is not None and np.array_equal(old.demands, model.demands)
        self._refrag = True

    def refresh(self, state: ClusterState, g: GpuState) -> None:
        model = self.model
        assert model is not None
        rows = self._cache.changed(state)
        if rows is None or (self._refrag and not self._keep_tables) or len(self.total) != len(g.free):
            self._cache.changed(state)  # (re)baseline the cache at this state
            self.cnt, self.sums = model.tables(g.free)
            self.total = g.free.sum(axis=1)
            self.frag = model.frag(self.cnt, self.sums, self.total, g.layout.node_type,
                                   model.bucket(g.cpu_left))
            self._refrag = False
            return
        if len(rows):
            cnt, sums = model.tables(g.free[rows])
            self.cnt[rows], self.sums[rows] = cnt, sums
            self.total[rows] = g.free[rows].sum(axis=1)
        if self._refrag:
            self.frag = model.frag(self.cnt, self.sums, self.total, g.layout.node_type,
                                   model.bucket(g.cpu_left))
            self._refrag = False
            return
        if len(rows):
            self.frag[rows] = model.frag(self.cnt[rows], self.sums[rows], self.total[rows],
                                         g.layout.node_type[rows], model.bucket(g.cpu_left[rows]))


def sharing_candidates(free: IntArray, q: int) -> tuple[IntArray, IntArray, IntArray]:
    """Distinct (row, free share) pairs where a `q`-milli task fits, each with the lowest device column
    that has that share: GPUs with equal free share on one node are interchangeable."""
    order = np.argsort(free, axis=1, kind="stable")
    ordered = np.take_along_axis(free, order, axis=1)
    first = np.ones(ordered.shape, np.bool_)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    rows, pos = np.nonzero(first & (ordered >= q))
    return rows.astype(np.int64), order[rows, pos].astype(np.int64), ordered[rows, pos].astype(np.int64)


def best_per_row(rows: IntArray, cols: IntArray, value: FloatArray, n_rows: int) -> tuple[FloatArray, IntArray]:
    """Per row: the highest value and, among that row's ties, the lowest column. `rows` must be
    non-decreasing (np.nonzero order), which lets this run in linear time with reduceat."""
    best = np.full(n_rows, -np.inf)
    col = np.full(n_rows, -1, np.int64)
    if len(rows) == 0:
        return best, col
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    top = np.maximum.reduceat(value, starts)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(rows)]))
    tied = np.where(value == top[seg], cols, np.iinfo(np.int64).max)
    best[rows[starts]] = top
    col[rows[starts]] = np.minimum.reduceat(tied, starts)
    return best, col


class FgdNodes:
    name = "fgd"

    def __init__(self) -> None:
        self.workload: Workload | None = None
        self._seen: Counter[PodShape] = Counter()
        self._since_learn = 0
        self.tables = FragTables()

    def set_workload(self, workload: Workload) -> None:
        """Fix the target workload (the paper: the trace's shapes covering 95% of its tasks)."""
        self.workload = workload
        self.tables.model = None

    def _ensure_model(self, state: ClusterState, shape: PodShape) -> FragModel:
        if self.workload is None:
            self._seen[shape] += 1
            self._since_learn += 1
        model = self.tables.model
        relearn = self.workload is None and (model is None or self._since_learn >= RELEARN_EVERY)
        if model is None or model.stale(state) or relearn:
            workload = self.workload or Workload.from_counts(self._seen, COVERAGE)
            model = FragModel(workload, state)
            self.tables.use(model)
            self._since_learn = 0
        return model

    def score(self, ctx: PlacementContext, nodes: IntArray) -> FloatArray:
        state = ctx.state
        shape = pod_shape(ctx.pod, layout(ctx.state).card_memory_mib)
        model = self._ensure_model(state, shape)
        g = gpu_state(state)
        t = self.tables
        t.refresh(state, g)
        node_type = g.layout.node_type[nodes]
        bucket = model.bucket(g.cpu_left[nodes] - shape.cpu_milli)
        before = t.frag[nodes]
        if shape.sharing:
            rows, cols, f = sharing_candidates(g.free[nodes], shape.gpu_milli)
            n_idx = nodes[rows]
            after = model.after_sharing(t.cnt[n_idx], t.sums[n_idx], t.total[n_idx], node_type[rows],
                                        bucket[rows], f, shape.gpu_milli)
            integer = fgd_score(after - before[rows])
            best, col = best_per_row(rows, cols, integer, len(nodes))
            ctx.scratch[SCRATCH] = GpuChoice(nodes, col)
            integer_nodes = np.where(np.isfinite(best), best, -1.0)
        elif shape.num_gpu:
            after = model.after_whole(t.cnt[nodes], t.sums[nodes], t.total[nodes], node_type, bucket,
                                      shape.num_gpu)
            integer_nodes = fgd_score(after - before)
        else:
            after = model.frag(t.cnt[nodes], t.sums[nodes], t.total[nodes], node_type, bucket)
            integer_nodes = fgd_score(after - before)
        out: FloatArray = integer_nodes
        return out


def fgd_score(delta: FloatArray) -> FloatArray:
    """The artifact's node score: int(100 * sigmoid(-dF / 1000)), dF in milli-GPU."""
    out: FloatArray = np.trunc(100.0 / (1.0 + np.exp(delta / 1000.0)))
    return out


class ChosenDevice(DevicePolicy):
    """Takes the GPU its node step chose (ctx.scratch); whole cards by index."""

    name = "fgd"

    def rank(self, ctx: PlacementContext, node: int, slot: Slot, view: DeviceView,
             cand: IntArray) -> FloatArray | None:
        chosen = gpu_choice(ctx)
        choice = chosen.get(node) if chosen is not None else None
        if choice is None or slot.request.exclusive:
            return None
        out: FloatArray = (cand != choice).astype(np.float64)
        return out


register_node_scorer("fgd", FgdNodes)
register_device_policy("fgd", ChosenDevice)
