"""GPU fragmentation against a target workload (Weng et al., ATC'23), vectorised over nodes.

For a workload M of task shapes m with frequencies p_m, a node's fragmentation is
    F_n(M) = sum_m p_m F_n(m),  F_n(m) = free milli-GPU that m cannot use on n:
the free share of GPUs below m's per-GPU demand when m fits on n (type, CPU, enough GPUs), and all of
the node's free share when it does not (CPU-only shapes and shapes of another GPU type included).
Equivalently F_n = free_n - sum_m p_m [m fits n] usable_n(m), which is what is computed here: shapes are
grouped by (per-GPU demand, GPU count, allowed types), and per node only two small tables are needed,
the count and the sum of free shares at or above each distinct demand. CPU enters through a step function
(the probability mass of a group whose CPU fits), looked up by the node's CPU bucket.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from hami.resources import DeviceSelector
from hami.scheduler.plugins.gpushare import MILLI, FloatArray, IntArray, PodShape
from hami.scheduler.state import ClusterState


@dataclass(frozen=True, slots=True)
class Workload:
    """Task shapes and their probabilities (summing to 1)."""

    shapes: tuple[PodShape, ...]
    weights: tuple[float, ...]

    @classmethod
    def from_counts(cls, counts: Counter[PodShape] | dict[PodShape, float], coverage: float = 1.0) -> Workload:
        """The most frequent shapes covering `coverage` of the total weight, renormalised. Ties in
        frequency are ordered by shape so the result does not depend on arrival order."""
        items = sorted(counts.items(), key=lambda kv: (-kv[1], _order_key(kv[0])))
        total = float(sum(v for _, v in items))
        if total <= 0:
            return cls((), ())
        chosen: list[tuple[PodShape, float]] = []
        cum = 0.0
        for shape, w in items:
            if cum >= coverage * total - 1e-9:
                break
            chosen.append((shape, float(w)))
            cum += w
        return cls(tuple(s for s, _ in chosen), tuple(w / cum for _, w in chosen))

    @classmethod
    def from_shapes(cls, shapes: Iterable[PodShape], coverage: float = 1.0) -> Workload:
        return cls.from_counts(Counter(shapes), coverage)


def _order_key(s: PodShape) -> tuple[int, int, int, tuple[str, ...]]:
    return (-s.cpu_milli, -s.gpu_milli, -s.num_gpu, s.types)


class FragModel:
    """A workload compiled against one ClusterState's type table, ready to score node tables."""

    def __init__(self, workload: Workload, state: ClusterState) -> None:
        self.workload = workload
        self.n_types = len(state.types.names)
        gpu = [(s, w) for s, w in zip(workload.shapes, workload.weights, strict=True) if s.num_gpu > 0]
        demands = sorted({s.gpu_milli for s, _ in gpu}) or [MILLI]
        self.demands = np.asarray(demands, np.int64)
        thresholds = sorted({s.cpu_milli for s, _ in gpu})
        self.cpu_thresholds = np.asarray(thresholds, np.int64)
        groups: dict[tuple[int, int, tuple[str, ...]], list[tuple[int, float]]] = {}
        for s, w in gpu:
            groups.setdefault((s.gpu_milli, s.num_gpu, s.types), []).append((s.cpu_milli, w))
        keys = sorted(groups)
        g = len(keys)
        self.n_groups = g
        self.group_demand = np.asarray([k[0] for k in keys], np.int64)
        self.group_col = np.searchsorted(self.demands, self.group_demand).astype(np.int64)
        self.group_count = np.asarray([k[1] for k in keys], np.int64)
        # type_ok[g, t + 1]: column 0 is "node without devices"
        self.type_ok = np.zeros((g, self.n_types + 1), np.bool_)
        for gi, (_, _, types) in enumerate(keys):
            sel = DeviceSelector(use_types=types)
            for t, name in enumerate(state.types.names):
                self.type_ok[gi, t + 1] = sel.type_allowed(name)
        # pfit[g, b]: probability mass of group g whose CPU demand is <= the b-th threshold bucket
        self.pfit = np.zeros((g, len(thresholds) + 1), np.float64)
        for gi, k in enumerate(keys):
            for cpu, w in groups[k]:
                b = int(np.searchsorted(self.cpu_thresholds, cpu, side="right"))
                self.pfit[gi, b:] += w

    def stale(self, state: ClusterState) -> bool:
        return len(state.types.names) != self.n_types

    def tables(self, free: IntArray) -> tuple[IntArray, IntArray]:
        """Per row of a (rows, gpus) free matrix: count and sum of free shares >= each demand."""
        ge = free[:, :, None] >= self.demands[None, None, :]
        cnt = ge.sum(axis=1).astype(np.int64)
        tot = (np.where(ge, free[:, :, None], 0)).sum(axis=1).astype(np.int64)
        return cnt, tot

    def bucket(self, cpu_left: IntArray) -> IntArray:
        out: IntArray = np.searchsorted(self.cpu_thresholds, cpu_left, side="right").astype(np.int64)
        return out

    def usable(self, cnt_g: IntArray, sum_g: IntArray, node_type: IntArray, bucket: IntArray) -> FloatArray:
        """Expected usable free share sum_g p_g [fits] usable_g, for rows given per group (rows, groups)."""
        ok = self.type_ok[:, node_type + 1].T & (cnt_g >= self.group_count[None, :])
        pf = self.pfit[:, bucket].T
        out: FloatArray = (np.where(ok, pf, 0.0) * sum_g).sum(axis=1)
        return out

    def frag(self, cnt: IntArray, sums: IntArray, total_free: IntArray, node_type: IntArray,
             bucket: IntArray) -> FloatArray:
        """F_n(M) for rows given their demand tables (rows, demands)."""
        col = self.group_col
        out: FloatArray = total_free - self.usable(cnt[:, col], sums[:, col], node_type, bucket)
        return out

    def after_sharing(self, cnt: IntArray, sums: IntArray, total_free: IntArray, node_type: IntArray,
                      bucket: IntArray, f: IntArray, q: int) -> FloatArray:
        """F after taking `q` milli from one GPU whose free share is `f`, per candidate row."""
        col = self.group_col
        d = self.group_demand[None, :]
        before = f[:, None] >= d
        after = (f - q)[:, None] >= d
        cross = before & ~after
        cnt_g = cnt[:, col] - cross
        sum_g = sums[:, col] - q * after - f[:, None] * cross
        out: FloatArray = (total_free - q) - self.usable(cnt_g, sum_g, node_type, bucket)
        return out

    def after_whole(self, cnt: IntArray, sums: IntArray, total_free: IntArray, node_type: IntArray,
                    bucket: IntArray, k: int) -> FloatArray:
        """F after taking `k` idle GPUs, per row."""
        col = self.group_col
        out: FloatArray = (total_free - k * MILLI) - self.usable(
            cnt[:, col] - k, sums[:, col] - k * MILLI, node_type, bucket)
        return out

