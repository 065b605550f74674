"""bestfit: the node left with the least (CPU, GPU) after placement, each normalised by the largest node
(128 cores, 8 GPUs) and weighted equally; on the node, the fullest GPU that still fits.

Scores are the paper artifact's integers (0-100); ties go to the first node by name (the framework's
lowest slot, nodes being added in name order), which is how the artifact's patched kube-scheduler breaks
them. The published baselines were measured that way, so the coarse integer is part of the behaviour.
"""

from __future__ import annotations

import numpy as np

from hami.scheduler.fit import DeviceView
from hami.scheduler.framework import DevicePolicy, PlacementContext, Slot
from hami.scheduler.plugins import register_device_policy, register_node_scorer
from hami.scheduler.plugins.gpushare import FloatArray, IntArray, device_free, gpu_state, layout, pod_shape

MAX_CPU = 128000.0  # milli-CPU of the largest node of the paper's cluster
MAX_GPU = 8000.0  # milli-GPU of the largest node


class BestFitNodes:
    name = "bestfit"

    def score(self, ctx: PlacementContext, nodes: IntArray) -> FloatArray:
        g = gpu_state(ctx.state)
        shape = pod_shape(ctx.pod, layout(ctx.state).card_memory_mib)
        cpu_free = g.cpu_left[nodes].astype(np.float64)
        gpu_free = g.free[nodes].sum(axis=1).astype(np.float64)
        left = (cpu_free - shape.cpu_milli) / MAX_CPU * 0.5 + (gpu_free - shape.gpu_request) / MAX_GPU * 0.5
        integer = np.trunc((1.0 - left) * 100.0)
        out: FloatArray = integer
        return out


class BestFitDevices(DevicePolicy):
    """The GPU with the least free share that fits (ties: lowest index); whole cards by index."""

    name = "bestfit"

    def rank(self, ctx: PlacementContext, node: int, slot: Slot, view: DeviceView,
             cand: IntArray) -> FloatArray | None:
        if slot.request.exclusive:
            return None
        out: FloatArray = device_free(view, cand).astype(np.float64)
        return out


register_node_scorer("bestfit", BestFitNodes)
register_device_policy("bestfit", BestFitDevices)
