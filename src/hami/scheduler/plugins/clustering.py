"""clustering (the paper's "GPU Clustering"): keep tasks of one GPU shape together. A task's tag is
"sharing" or "k whole GPUs"; nodes running only its tag come first, then nodes mixing its tag with others,
then idle nodes, then nodes of other tags; within each band the node with less free GPU first.
CPU-only tasks have no preference. GPU: best fit.

Integer scores, ties to the first node by name, as measured in the paper (see bestfit).
"""

from __future__ import annotations

import numpy as np

from hami.scheduler.framework import PlacementContext
from hami.scheduler.plugins import register_node_scorer
from hami.scheduler.plugins.gpushare import (
    MILLI,
    FloatArray,
    IntArray,
    NodeCache,
    gpu_state,
    layout,
    pod_shape,
)
from hami.scheduler.state import ClusterState, PodRecord

MAX_GPU = 8000
SHARING_TAG = 0  # bit 0; bit k = tasks of k whole GPUs


def pod_tag(record: PodRecord) -> int | None:
    """Which tag a placed pod carries (None for CPU-only pods)."""
    devices = [d for c, init in zip(record.allocation, record.init, strict=False) if not init for d in c]
    if not devices:
        return None
    if len(devices) == 1 and devices[0].cores < 100:
        return SHARING_TAG
    return min(len(devices), 63)


class ClusteringNodes:
    name = "clustering"

    def __init__(self) -> None:
        self._cache = NodeCache()
        self._tags = np.zeros(0, np.int64)  # per node: bitmask of the tags of the pods on it

    def _refresh(self, state: ClusterState) -> None:
        rows = self._cache.changed(state)
        if rows is None:
            self._tags = np.zeros(state.n_node_slots, np.int64)
            rows = np.arange(state.n_node_slots)
        for i in rows.tolist():
            mask = 0
            for uid in state.pods_by_node.get(state.node_names[i], ()):
                tag = pod_tag(state.pods[uid])
                if tag is not None:
                    mask |= 1 << tag
            self._tags[i] = mask

    def score(self, ctx: PlacementContext, nodes: IntArray) -> FloatArray:
        shape = pod_shape(ctx.pod, layout(ctx.state).card_memory_mib)
        n = len(nodes)
        if shape.num_gpu == 0:
            return np.zeros(n)
        self._refresh(ctx.state)
        tag = SHARING_TAG if shape.gpu_milli < MILLI else min(shape.num_gpu, 63)
        masks = self._tags[nodes]
        has = (masks >> tag) & 1 == 1
        kinds = np.bitwise_count(masks.astype(np.uint64))
        base = np.where(has, np.where(kinds == 1, 75, 50), np.where(kinds == 0, 25, 0))
        left = gpu_state(ctx.state).free[nodes].sum(axis=1)
        integer = (25 * (MAX_GPU - left)) // MAX_GPU + base
        out: FloatArray = integer.astype(np.float64)
        return out


register_node_scorer("clustering", ClusteringNodes)
