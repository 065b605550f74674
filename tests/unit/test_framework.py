"""Policy and constraint behaviour of the framework on hand-made clusters."""

from __future__ import annotations

import pytest

from hami.resources import DeviceSelector, HamiError
from hami.scheduler.framework import Scheduler, SchedulerConfig
from hami.scheduler.state import ClusterState
from tests.builders import gpu, node, pod, share


def cluster(*nodes):  # type: ignore[no-untyped-def]
    state = ClusterState()
    for n in nodes:
        state.upsert_node(n)
    return state


def place(s: Scheduler, state: ClusterState, p):  # type: ignore[no-untyped-def]
    d = s.schedule(p, state)
    if d.placed:
        s.reserve(state, d)
    return d


def uuids(d) -> list[list[str]]:  # type: ignore[no-untyped-def]
    return [[x.uuid for x in c] for c in d.allocation]


def two_nodes() -> ClusterState:
    return cluster(node("n1", gpu("a", index=0), gpu("b", index=1)),
                   node("n2", gpu("c", index=0), gpu("d", index=1)))


def test_node_binpack_fills_one_node_first() -> None:
    s, st = Scheduler(SchedulerConfig(node_policy="binpack", device_policy=("binpack",))), two_nodes()
    nodes = [place(s, st, pod(f"p{i}", share(mem=1000, cores=10))).node for i in range(4)]
    assert nodes == ["n1"] * 4
    assert st.device_usage()[("n1", "a")] == (4000, 40, 4)  # device binpack: same card


def test_node_spread_alternates_nodes_and_device_spread_alternates_cards() -> None:
    s, st = Scheduler(SchedulerConfig(node_policy="spread", device_policy=("spread",))), two_nodes()
    ds = [place(s, st, pod(f"p{i}", share(mem=1000, cores=10))) for i in range(4)]
    assert [d.node for d in ds] == ["n1", "n2", "n1", "n2"]
    assert uuids(ds[0]) != uuids(ds[2])  # second pod on n1 goes to the other card


def test_pod_annotation_overrides_cluster_default() -> None:
    s, st = Scheduler(SchedulerConfig(node_policy="binpack")), two_nodes()
    place(s, st, pod("p0", share(mem=1000)))
    d = place(s, st, pod("p1", share(mem=1000), node_policy="spread"))
    assert d.node == "n2"


def test_exclusive_card_only_lands_on_idle_card() -> None:
    s, st = Scheduler(), cluster(node("n1", gpu("a", index=0), gpu("b", index=1)))
    place(s, st, pod("shared", share(mem=1000, cores=10)))
    d = place(s, st, pod("whole", share(pct=100, cores=100)))
    assert d.placed and len(uuids(d)[0]) == 1
    busy = next(u for (_, u), use in st.device_usage().items() if use[2] == 1 and use[1] == 10)
    assert uuids(d)[0][0] != busy
    d2 = place(s, st, pod("another", share(mem=10, cores=0)))
    assert uuids(d2)[0][0] == busy  # nothing joins the exclusive card
    d3 = s.schedule(pod("third", share(pct=100, cores=100)), st)
    assert not d3.placed
    assert "ExclusiveDeviceAllocateConflict" in d3.rejected["n1"]


def test_memory_exhaustion_reason_aggregated() -> None:
    s, st = Scheduler(), cluster(node("n1", gpu("a", mem=8000, index=0), gpu("b", mem=8000, index=1)))
    d = s.schedule(pod("big", share(mem=9000)), st)
    assert not d.placed
    assert d.rejected["n1"] == "NodeInsufficientDevice: need 1, 0/2 fit, 2/2 CardInsufficientMemory"
    assert d.rejected.unresolvable() == {"n1"}  # no eviction can make 9000 fit in 8000


def test_time_slicing_exhausted_at_split_count() -> None:
    s, st = Scheduler(), cluster(node("n1", gpu("a", count=2)))
    assert place(s, st, pod("p0", share(mem=10))).placed
    assert place(s, st, pod("p1", share(mem=10))).placed
    d = s.schedule(pod("p2", share(mem=10)), st)
    assert "CardTimeSlicingExhausted" in d.rejected["n1"]
    assert d.rejected.unresolvable() == set()  # evicting would help


def test_type_selectors_case_insensitive_substring() -> None:
    st = cluster(node("t4", gpu("a", model="NVIDIA-Tesla T4")), node("h100", gpu("b", model="NVIDIA-H100")))
    s = Scheduler()
    assert s.schedule(pod("p", share(mem=10), selector=DeviceSelector(use_types=("h100",))), st).node == "h100"
    d = s.schedule(pod("q", share(mem=10), selector=DeviceSelector(nouse_types=("H100", "t4"))), st)
    assert not d.placed
    assert all("CardTypeMismatch" in r for r in d.rejected.values())


def test_uuid_selectors() -> None:
    st = cluster(node("n1", gpu("GPU-a", index=0), gpu("GPU-b", index=1)))
    s = Scheduler()
    d = s.schedule(pod("p", share(mem=10), selector=DeviceSelector(use_uuids=("GPU-b",))), st)
    assert uuids(d) == [["GPU-b"]]
    d = s.schedule(pod("p", share(mem=10), selector=DeviceSelector(nouse_uuids=("GPU-a", "GPU-b"))), st)
    assert "2/2 CardUuidMismatch" in d.rejected["n1"]


def test_cordon_and_health() -> None:
    st = cluster(node("n1", gpu("a", index=0), gpu("b", index=1, health=False), cordoned=("a",)))
    d = Scheduler().schedule(pod("p", share(mem=10)), st)
    assert not d.placed
    assert "1/2 CardCordoned" in d.rejected["n1"] and "1/2 CardNotHealth" in d.rejected["n1"]


def test_mode_selector() -> None:
    st = cluster(node("n1", gpu("a", mode="mig")), node("n2", gpu("b")))
    d = Scheduler().schedule(pod("p", share(mem=10), selector=DeviceSelector(mode="mig")), st)
    assert d.node == "n1"
    assert "ModeNotFit" in d.rejected["n2"]


def test_numa_bind_requires_one_numa_node() -> None:
    st = cluster(node("split", gpu("a", index=0, numa=0), gpu("b", index=1, numa=1)),
                 node("same", gpu("c", index=0, numa=1), gpu("d", index=1, numa=1), gpu("e", index=2)))
    s = Scheduler(SchedulerConfig(node_policy="spread"))
    d = s.schedule(pod("p", share(count=2, mem=10), selector=DeviceSelector(numa_bind=True)), st)
    assert d.node == "same" and sorted(uuids(d)[0]) == ["c", "d"]
    assert d.rejected["split"] == "NumaNotFit"


def test_numa_policy_prefers_but_does_not_require() -> None:
    st = cluster(node("n", gpu("a", index=0, numa=0), gpu("b", index=1, numa=1), gpu("c", index=2, numa=1)))
    s = Scheduler()
    assert sorted(uuids(s.schedule(pod("p", share(count=2, mem=10), device_policy=("spread", "numa")),
                                   st))[0]) == ["b", "c"]
    st2 = cluster(node("n", gpu("a", index=0, numa=0), gpu("b", index=1, numa=1)))
    assert s.schedule(pod("p", share(count=2, mem=10), device_policy=("numa",)), st2).placed


def test_mutex_keeps_other_pods_off_the_device() -> None:
    s, st = Scheduler(), cluster(node("n1", gpu("a", index=0), gpu("b", index=1)))
    place(s, st, pod("other", share(mem=10)))
    d = place(s, st, pod("m", share(mem=10), device_policy=("mutex", "binpack")))
    busy = {u for (_, u), use in st.device_usage().items() if use[2] and u not in uuids(d)[0]}
    assert busy and not busy & set(uuids(d)[0])
    assert not s.schedule(pod("m2", share(mem=10), device_policy=("mutex",)), st).placed


def test_multi_gpu_container_gets_distinct_devices_and_containers_may_share() -> None:
    s, st = Scheduler(SchedulerConfig(device_policy=("binpack",))), cluster(
        node("n1", gpu("a", index=0), gpu("b", index=1)))
    p = pod("p", share(count=2, mem=1000))
    d = place(s, st, p)
    assert sorted(uuids(d)[0]) == ["a", "b"]
    assert not s.schedule(pod("q", share(count=3, mem=10)), st).placed


def test_init_container_counts_at_peak_not_summed() -> None:
    s, st = Scheduler(), cluster(node("n1", gpu("a", mem=10000)))
    d = place(s, st, pod("p", share(mem=6000), init=(share(mem=8000),)))
    assert d.placed
    assert uuids(d) == [["a"], ["a"]]
    assert st.device_usage()[("n1", "a")] == (8000, 0, 1)


def test_containers_of_one_pod_are_summed() -> None:
    from hami.resources import ContainerRequest, PodRequest

    s, st = Scheduler(), cluster(node("n1", gpu("a", mem=10000)))
    p = PodRequest("default", "p", "uid-p", (ContainerRequest("x", (share(mem=6000),)),
                                             ContainerRequest("y", (share(mem=6000),))))
    d = s.schedule(p, st)
    assert not d.placed and "CardInsufficientMemory" in d.rejected["n1"]


def test_topology_aware_picks_linked_pair() -> None:
    topo = (("a", "c", 100), ("b", "d", 100), ("a", "b", 1), ("c", "d", 1))
    st = cluster(node("n", gpu("a", index=0), gpu("b", index=1), gpu("c", index=2), gpu("d", index=3),
                      topology=topo))
    d = Scheduler().schedule(pod("p", share(count=2, mem=10), device_policy=("topology-aware",)), st)
    assert sorted(uuids(d)[0]) in (["a", "c"], ["b", "d"])


def test_candidates_restrict_nodes() -> None:
    s, st = Scheduler(SchedulerConfig(node_policy="binpack")), two_nodes()
    d = s.schedule(pod("p", share(mem=10)), st, candidates=["n2", "ghost"])
    assert d.node == "n2"


def test_exclude_avoids_named_nodes_and_falls_through_to_none() -> None:
    s, st = Scheduler(SchedulerConfig(node_policy="binpack")), two_nodes()
    assert s.schedule(pod("p", share(mem=10)), st, exclude={"n1"}).node == "n2"
    assert s.schedule(pod("p", share(mem=10)), st, candidates=["n1"], exclude=["n1", "ghost"]).node is None


def test_cpu_and_memory_are_hard_limits_when_tracked() -> None:
    st = cluster(node("small", gpu("a"), cpu=1000, mem=1000), node("big", gpu("b"), cpu=8000, mem=8000))
    d = Scheduler(SchedulerConfig(node_policy="binpack")).schedule(pod("p", share(mem=10), cpu=2000), st)
    assert d.node == "big"
    assert d.rejected["small"] == "Insufficient cpu"


def test_pod_without_devices_places_on_host_resources() -> None:
    st = cluster(node("cpu", cpu=4000, mem=4000))
    d = Scheduler().schedule(pod("p", cpu=1000), st)
    assert d.node == "cpu" and d.allocation == ((),)


def test_unknown_policy_is_a_clear_error() -> None:
    with pytest.raises(HamiError, match="unknown policy 'nope'"):
        Scheduler(SchedulerConfig(node_policy="nope"))
    with pytest.raises(HamiError, match="gpu-scheduler-policy"):
        Scheduler().schedule(pod("p", share(mem=10), device_policy=("nope",)), two_nodes())


def test_schedule_does_not_mutate_state() -> None:
    st = two_nodes()
    before = (st.version, st.device_usage())
    Scheduler().schedule(pod("p", share(mem=10)), st)
    assert (st.version, st.device_usage()) == before
