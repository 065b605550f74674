"""dotprod: Tetris-style alignment as the paper's artifact configures it ("merge" dimensions, "max"
normalisation): the dot product of the node's free (CPU, total GPU) and the task's request, each scaled by
the largest node; the node with the smallest product wins (score = 1 - product/2), packing tasks onto the
nodes with the least of what they ask for. GPU on the node: best fit.

Integer scores, ties to the first node by name, as measured in the paper (see bestfit).
"""

from __future__ import annotations

import numpy as np

from hami.scheduler.framework import PlacementContext
from hami.scheduler.plugins import register_node_scorer
from hami.scheduler.plugins.bestfit import MAX_CPU, MAX_GPU
from hami.scheduler.plugins.gpushare import FloatArray, IntArray, gpu_state, layout, pod_shape


class DotProductNodes:
    name = "dotprod"

    def score(self, ctx: PlacementContext, nodes: IntArray) -> FloatArray:
        g = gpu_state(ctx.state)
        shape = pod_shape(ctx.pod, layout(ctx.state).card_memory_mib)
        cpu_free = g.cpu_left[nodes].astype(np.float64) / MAX_CPU
        gpu_free = g.free[nodes].sum(axis=1).astype(np.float64) / MAX_GPU
        dot = cpu_free * (shape.cpu_milli / MAX_CPU) + gpu_free * (shape.gpu_request / MAX_GPU)
        integer = np.trunc(100.0 * (1.0 - dot / 2.0))
        out: FloatArray = integer
        return out


register_node_scorer("dotprod", DotProductNodes)
