"""packing (the paper's "GPU Packing"): put a task where it opens the fewest idle GPUs. In order:
a partly used GPU (the fuller the better), then idle GPUs on a node already in use (the fewer the better),
then an untouched node (the smaller the better). CPU-only tasks have no preference. GPU: best fit.

Integer scores, ties to the first node by name, as measured in the paper (see bestfit).
"""

from __future__ import annotations

import numpy as np

from hami.scheduler.framework import PlacementContext
from hami.scheduler.plugins import register_node_scorer
from hami.scheduler.plugins.gpushare import MILLI, FloatArray, IntArray, gpu_state, layout, pod_shape


class PackingNodes:
    name = "packing"

    def score(self, ctx: PlacementContext, nodes: IntArray) -> FloatArray:
        shape = pod_shape(ctx.pod, layout(ctx.state).card_memory_mib)
        n = len(nodes)
        if shape.num_gpu == 0:
            return np.zeros(n)
        g = gpu_state(ctx.state)
        free = g.free[nodes]
        present = g.layout.present[nodes]
        n_gpus = g.layout.n_gpus[nodes]
        fully_free = ((free == MILLI) & present).sum(axis=1)
        untouched = np.maximum(33 - fully_free, fully_free)  # an idle node: 100/3 - idle GPUs
        if shape.sharing:
            best = np.where(free >= shape.gpu_milli, free, MILLI + 1).min(axis=1)
            on_shared = np.maximum(100 - (best * 100 // MILLI) // 10, 50)
            used_node = np.where(best == MILLI, 49, on_shared)
        else:
            used_node = np.full(n, max(50 - shape.num_gpu, 33))
        integer = np.where(fully_free == n_gpus, untouched, used_node).astype(np.float64)
        out: FloatArray = integer
        return out


register_node_scorer("packing", PackingNodes)
