"""Shared usage measures for the binpack and spread policies (one definition, two directions)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from hami.scheduler.fit import DeviceView
from hami.scheduler.state import ClusterState

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _ratio(used: IntArray, total: IntArray) -> FloatArray:
    return np.divide(used, total, out=np.zeros(len(used), np.float64), where=total > 0)


def node_usage(state: ClusterState, nodes: IntArray) -> FloatArray:
    """How full each node is, 0..1: device memory and cores, or CPU/memory on nodes without devices."""
    dev = (_ratio(state.node_dmem_used[nodes], state.node_dmem_total[nodes])
           + _ratio(state.node_dcore_used[nodes], state.node_dcore_total[nodes])) / 2
    host = (_ratio(state.node_cpu_used[nodes], state.node_cpu_total[nodes])
            + _ratio(state.node_mem_used[nodes], state.node_mem_total[nodes])) / 2
    return np.where(state.node_dmem_total[nodes] > 0, dev, host)


def device_usage(view: DeviceView, cand: IntArray) -> FloatArray:
    """How full each candidate device is, 0..1 (memory and cores averaged)."""
    return (_ratio(view.mem_used[cand], view.mem_total[cand])
            + _ratio(view.core_used[cand], view.core_total[cand])) / 2
