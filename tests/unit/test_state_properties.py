"""Invariants of the core under random clusters and request sequences (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hami.protocol.annotations import decode_pod_allocation, encode_pod_allocation
from hami.resources import DeviceRequest, Node, PodRequest
from hami.scheduler.framework import Scheduler, SchedulerConfig, best_first
from hami.scheduler.state import ClusterState, PodRecord
from tests.builders import gpu, node, pod, share

MODELS = ["NVIDIA-Tesla T4", "NVIDIA-A100", "NVIDIA-H100"]


@st.composite
def clusters(draw: st.DrawFn) -> list[Node]:
    nodes = []
    for n in range(draw(st.integers(1, 4))):
        devs = tuple(
            gpu(f"n{n}-g{g}", mem=draw(st.sampled_from([8000, 16000, 40000])),
                model=draw(st.sampled_from(MODELS)), index=g, numa=g % 2,
                count=draw(st.integers(1, 4)))
            for g in range(draw(st.integers(0, 4)))
        )
        nodes.append(node(f"n{n}", *devs))
    return nodes


requests = st.builds(
    lambda count, mem, pct, cores, use_pct: share(count=count, mem=0 if use_pct else mem,
                                                  pct=pct if use_pct else 0, cores=cores),
    st.integers(1, 3), st.integers(1, 20000), st.integers(1, 100), st.sampled_from([0, 10, 30, 50, 100]),
    st.booleans(),
)
pods = st.lists(st.tuples(st.lists(requests, min_size=1, max_size=2), st.lists(requests, max_size=1),
                          st.sampled_from(["binpack", "spread"]),
                          st.sampled_from([("binpack",), ("spread",), ("mutex",), ("spread", "numa")])),
                max_size=25)


def build(nodes: list[Node], specs: list[tuple[list[DeviceRequest], list[DeviceRequest], str, tuple[str, ...]]]
          ) -> tuple[Scheduler, ClusterState, list[PodRequest]]:
    state = ClusterState()
    for n in nodes:
        state.upsert_node(n)
    s = Scheduler(SchedulerConfig())
    placed = []
    for i, (main, init, node_policy, device_policy) in enumerate(specs):
        p = pod(f"p{i}", *main, init=tuple(init), node_policy=node_policy, device_policy=device_policy)
        d = s.schedule(p, state)
        if d.placed:
            s.reserve(state, d)
            placed.append(p)
    return s, state, placed


def assert_within_capacity(state: ClusterState) -> None:
    n = state.n_dev_slots
    valid = state.dev_valid[:n]
    assert (state.dev_mem_used[:n][valid] <= state.dev_mem_total[:n][valid]).all()
    assert (state.dev_core_used[:n][valid] <= state.dev_core_total[:n][valid]).all()
    assert (state.dev_count_used[:n][valid] <= state.dev_count_total[:n][valid]).all()
    assert (state.dev_mem_used[:n] >= 0).all() and (state.dev_count_used[:n] >= 0).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), pods)
def test_no_device_exceeds_memory_cores_or_split_count(nodes: list[Node], specs) -> None:  # type: ignore[no-untyped-def]
    _, state, _ = build(nodes, specs)
    assert_within_capacity(state)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), pods)
def test_place_then_delete_everything_returns_to_empty(nodes: list[Node], specs) -> None:  # type: ignore[no-untyped-def]
    _, state, placed = build(nodes, specs)
    for p in reversed(placed):
        assert state.remove_pod(p.uid) is not None
    assert state.device_usage() == {}
    assert not state.pods
    n = state.n_node_slots
    assert (state.node_dmem_used[:n] == 0).all() and (state.node_dtasks[:n] == 0).all()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), pods, st.booleans())
def test_rebuild_from_annotations_equals_incremental(nodes: list[Node], specs, pods_first: bool) -> None:  # type: ignore[no-untyped-def]
    _, state, _ = build(nodes, specs)
    records = [PodRecord(r.uid, r.key, r.node, decode_pod_allocation(encode_pod_allocation(r.allocation)),
                         r.init, r.cpu_milli, r.memory_mib) for r in state.pods.values()]
    # A restarted extender may see pods before their nodes: the order must not matter.
    rebuilt = ClusterState()
    if pods_first:
        for r in records:
            rebuilt.add_pod(r)
    for n in nodes:
        rebuilt.upsert_node(n)
    if not pods_first:
        for r in records:
            rebuilt.add_pod(r)
    assert rebuilt.device_usage() == state.device_usage()
    k = state.n_node_slots
    for name in ("node_dmem_used", "node_dcore_used", "node_dtasks"):
        a = {state.node_names[i]: int(getattr(state, name)[i]) for i in range(k)}
        b = {rebuilt.node_names[i]: int(getattr(rebuilt, name)[i]) for i in range(rebuilt.n_node_slots)}
        assert a == b


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), pods)
def test_node_reregistration_keeps_usage(nodes: list[Node], specs) -> None:  # type: ignore[no-untyped-def]
    _, state, _ = build(nodes, specs)
    before = state.device_usage()
    for n in nodes:  # node removed and back (agent restart), then an unchanged update
        state.remove_node(n.name)
        state.upsert_node(n)
        state.upsert_node(n)
    assert state.device_usage() == before
    assert_within_capacity(state)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([-np.inf, -1.0, 0.0, 0.5, 2.0, np.nan]), max_size=40), st.integers(0, 45))
def test_best_first_is_the_head_of_a_full_sort(scores: list[float], k: int) -> None:
    # Few distinct values, so ties straddle the k-th place; ties must still go to the lower slot.
    nodes = np.arange(len(scores), dtype=np.int64) * 3
    values = np.array(scores, np.float64)
    full = nodes[np.lexsort((nodes, -values))][:k]
    assert best_first(nodes, values, k).tolist() == full.tolist()
