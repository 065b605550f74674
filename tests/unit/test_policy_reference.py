"""The paper's baseline policies on hand-made clusters: each picks what its definition says."""

from __future__ import annotations

import pytest

from hami.scheduler.framework import Decision, Scheduler, SchedulerConfig
from hami.scheduler.state import ClusterState
from hami.sim.engine import make_scheduler
from hami.sim.policies import policy
from hami.sim.trace import TaskShape, TraceNode
from tests.builders import occupy
from tests.builders import trace_cluster as cluster


def place(name: str, state: ClusterState, shape: TaskShape, seed: int = 1) -> Decision:
    sched = make_scheduler(policy(name), seed, [])
    return sched.schedule(shape.request("p", "p"), state)


def where(d: Decision) -> tuple[str | None, list[str]]:
    return d.node, [dev.uuid.rsplit("-", 1)[1] for c in d.allocation for dev in c]


SHARE = TaskShape(1000, 100, 1, 250)
WHOLE = TaskShape(1000, 100, 1, 1000)
CPU = TaskShape(1000, 100, 0, 0)


def two_nodes() -> ClusterState:
    s = cluster(TraceNode("a", 64000, 65536, 2, "T4"), TraceNode("b", 64000, 65536, 2, "T4"))
    occupy(s, "b", 1, 70)  # b: GPU1 has 300 free
    return s


def test_bestfit_least_left_over() -> None:
    s = two_nodes()
    assert where(place("bestfit", s, SHARE)) == ("b", ["gpu1"])  # fullest node, fullest GPU that fits
    assert where(place("bestfit", s, WHOLE)) == ("b", ["gpu0"])
    assert place("bestfit", s, CPU).node == "b"


def test_dotprod_smallest_product_of_free_and_request() -> None:
    s = cluster(TraceNode("a", 64000, 65536, 2, "T4"), TraceNode("b", 40000, 65536, 2, "T4"))
    assert place("dotprod", s, TaskShape(32000, 100, 1, 1000)).node == "b"  # least free CPU, same GPU
    occupy(s, "a", 0, 100)
    occupy(s, "a", 1, 50)
    # a: 500 milli GPU free x 64 cores; b: 2000 x 16 cores -> GPU dominates the product
    assert place("dotprod", s, WHOLE).node == "b"
    assert place("dotprod", s, SHARE).node == "a"


def test_packing_shared_gpu_then_used_node_then_idle_node() -> None:
    s = cluster(TraceNode("a", 64000, 65536, 2, "T4"), TraceNode("b", 64000, 65536, 4, "T4"),
                TraceNode("c", 64000, 65536, 2, "T4"))
    occupy(s, "b", 0, 100)
    occupy(s, "c", 1, 40)
    assert where(place("packing", s, SHARE)) == ("c", ["gpu1"])  # a partly used GPU first
    assert place("packing", s, WHOLE).node == "b"  # an idle GPU on a used node (c has none idle... b has 3)
    assert place("packing", s, TaskShape(1000, 100, 2, 1000)).node == "b"


def test_clustering_keeps_shapes_together() -> None:
    s = cluster(TraceNode("a", 64000, 65536, 4, "T4"), TraceNode("b", 64000, 65536, 4, "T4"),
                TraceNode("c", 64000, 65536, 4, "T4"))
    occupy(s, "a", 0, 30)  # a sharing task on a
    occupy(s, "b", 0, 100)  # a 1-GPU task on b
    assert place("clustering", s, SHARE).node == "a"
    assert place("clustering", s, WHOLE).node == "b"
    assert place("clustering", s, TaskShape(1000, 100, 2, 1000)).node == "c"  # idle beats other tags


def test_random_is_seeded_and_feasible() -> None:
    s = cluster(*(TraceNode(f"n{i}", 64000, 65536, 2, "T4") for i in range(8)),
                TraceNode("cpu-poor", 100, 65536, 2, "T4"))
    picks = [place("random", s, SHARE, seed).node for seed in range(20)]
    assert picks == [place("random", s, SHARE, seed).node for seed in range(20)]
    assert len(set(picks)) > 3
    assert "cpu-poor" not in picks


@pytest.mark.parametrize("name", ["bestfit", "dotprod", "packing", "clustering", "fgd"])
def test_ties_go_to_the_first_node_by_name(name: str) -> None:
    s = cluster(*(TraceNode(f"n{i}", 64000, 65536, 2, "T4") for i in (3, 1, 2)))
    assert place(name, s, SHARE).node == "n1"


def test_type_constraint_is_exact() -> None:
    s = cluster(TraceNode("a", 64000, 65536, 2, "V100M32"), TraceNode("b", 64000, 65536, 2, "V100M16"))
    assert place("bestfit", s, TaskShape(1000, 100, 1, 1000, ("V100M16",))).node == "b"
    assert place("bestfit", s, TaskShape(1000, 100, 1, 1000, ("V100M32",))).node == "a"


def test_hami_default_is_binpack_nodes_spread_gpus() -> None:
    p = policy("hami-default")
    assert (p.node_policy, p.device_policy) == ("binpack", ("spread",))
    s = two_nodes()
    d = Scheduler(SchedulerConfig("binpack", ("spread",))).schedule(SHARE.request("p", "p"), s)
    assert where(d) == ("b", ["gpu0"])  # the fuller node, its emptier GPU
