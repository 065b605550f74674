"""FGD: the fragmentation measure against its definition, and placements that descend its gradient."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hami.resources import DeviceSelector
from hami.scheduler.framework import Scheduler, SchedulerConfig
from hami.scheduler.plugins.fgd import FgdNodes, best_per_row, sharing_candidates
from hami.scheduler.plugins.fragmodel import FragModel, Workload
from hami.scheduler.plugins.gpushare import PodShape
from hami.sim.trace import TaskShape, TraceNode
from tests.builders import occupy
from tests.builders import trace_cluster as cluster


def naive_frag(wl: Workload, free: list[int], cpu: int, node_type: str) -> float:
    """F_n(M) straight from the paper's definition."""
    total = 0.0
    for s, p in zip(wl.shapes, wl.weights, strict=True):
        fits = (s.num_gpu > 0 and DeviceSelector(use_types=s.types).type_allowed(node_type)
                and cpu >= s.cpu_milli and sum(f >= s.gpu_milli for f in free) >= s.num_gpu)
        total += p * (sum(f for f in free if f < s.gpu_milli) if fits else sum(free))
    return total


def test_vectorised_fragmentation_matches_the_definition() -> None:
    rng = random.Random(3)
    shapes = [PodShape(rng.choice([0, 2000, 8000, 16000]), k, m, rng.choice([(), ("NVIDIA-T4",)]))
              for k, m in [(1, 100), (1, 250), (1, 500), (1, 1000), (2, 1000), (8, 1000), (1, 810)]
              for _ in range(2)] + [PodShape(4000, 0, 0)]
    wl = Workload.from_shapes(shapes)
    state = cluster(TraceNode("t", 1, 1, 1, "T4"), TraceNode("g", 1, 1, 1, "G2"))
    model = FragModel(wl, state)
    for _ in range(200):
        free = np.array([[rng.choice([0, 60, 190, 500, 750, 1000, 1000]) for _ in range(8)]], np.int64)
        cpu, t = rng.choice([0, 3000, 9000, 20000]), rng.randrange(2)
        cnt, sums = model.tables(free)
        node_type = np.array([t])
        got = model.frag(cnt, sums, free.sum(axis=1), node_type, model.bucket(np.array([cpu])))[0]
        name = state.types.names[t]
        assert got == pytest.approx(naive_frag(wl, free[0].tolist(), cpu, name))
        q, used = rng.choice([100, 250, 810]), rng.choice([0, 1000, 4000])
        for col in np.flatnonzero(free[0] >= q).tolist():
            after = free[0].copy()
            after[col] -= q
            got = model.after_sharing(cnt, sums, free.sum(axis=1), node_type,
                                      model.bucket(np.array([cpu - used])), free[0, [col]], q)[0]
            assert got == pytest.approx(naive_frag(wl, after.tolist(), cpu - used, name))
        idle = np.flatnonzero(free[0] == 1000)
        if len(idle) >= 2:
            after = free[0].copy()
            after[idle[:2]] = 0
            got = model.after_whole(cnt, sums, free.sum(axis=1), node_type, model.bucket(np.array([cpu])), 2)[0]
            assert got == pytest.approx(naive_frag(wl, after.tolist(), cpu, name))


def test_candidates_and_best_per_row() -> None:
    free = np.array([[1000, 300, 1000, 300], [100, 0, 0, 0]])
    rows, cols, f = sharing_candidates(free, 250)
    assert list(zip(rows.tolist(), cols.tolist(), f.tolist(), strict=True)) == [(0, 1, 300), (0, 0, 1000)]
    best, col = best_per_row(np.array([0, 0, 0, 2]), np.array([3, 1, 2, 0]), np.array([1.0, 5.0, 5.0, 2.0]), 3)
    assert best.tolist() == [5.0, -np.inf, 2.0] and col.tolist() == [1, -1, 0]


def scheduler(workload: Workload) -> Scheduler:
    sched = Scheduler(SchedulerConfig("fgd", ("fgd",)))
    scorer = sched.node_scorer("fgd")
    assert isinstance(scorer, FgdNodes)
    scorer.set_workload(workload)
    return sched


def test_sharing_task_fills_the_gap_whole_tasks_cannot_use() -> None:
    s = cluster(TraceNode("a", 64000, 65536, 2, "T4"), TraceNode("b", 64000, 65536, 2, "T4"))
    occupy(s, "b", 1, 50)
    sched = scheduler(Workload.from_shapes([PodShape(1000, 1, 1000)]))  # the future: whole GPUs only
    d = sched.schedule(TaskShape(1000, 100, 1, 500).request("p", "p"), s)
    assert d.node == "b" and d.allocation[0][0].uuid == "b-gpu1"  # dF = -500 there, +500 on an idle GPU


def test_whole_task_keeps_an_8_gpu_node_whole() -> None:
    s = cluster(TraceNode("a", 96000, 393216, 8, "G2"), TraceNode("b", 96000, 393216, 8, "G2"))
    occupy(s, "b", 0, 100)
    wl = Workload.from_shapes([PodShape(8000, 8, 1000), PodShape(1000, 1, 1000)])
    d = scheduler(wl).schedule(TaskShape(1000, 100, 1, 1000).request("p", "p"), s)
    assert d.node == "b"  # a stays able to host the 8-GPU shape


def test_without_a_workload_fgd_learns_the_pods_it_sees() -> None:
    s = cluster(TraceNode("a", 64000, 65536, 2, "T4"))
    sched = Scheduler(SchedulerConfig("fgd", ("fgd",)))
    for _ in range(3):
        sched.schedule(TaskShape(1000, 100, 1, 500).request("p", "p"), s)
    scorer = sched.node_scorer("fgd")
    assert isinstance(scorer, FgdNodes) and scorer.workload is None
    assert sum(scorer._seen.values()) == 3
