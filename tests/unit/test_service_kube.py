"""The `kube/` pieces on the in-memory API: informer, reservations, node lock, leader election, events."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kube_kit import node_manifest, pod_manifest

from hami.kube.api import ApiError, WatchEvent
from hami.kube.events import EventRecorder, PodRef, coarse_reason, summarize
from hami.kube.informer import ClusterInformer
from hami.kube.leader import LeaderElector, LeaseConfig
from hami.kube.memory import MemoryKubeApi
from hami.kube.nodelock import LockConfig, NodeLockError, NodeLocks, release_node_lock
from hami.kube.reservations import Reservations
from hami.protocol import annotations as anno
from hami.scheduler.framework import Scheduler, SchedulerConfig
from hami.scheduler.state import ClusterState
from hami.vendors.registry import default_vendors

VENDORS = default_vendors()


def bound(name: str, node: str, alloc: str, **kwargs: Any) -> dict[str, Any]:
    return pod_manifest(name, node=node, annotations={anno.VGPU_DEVICES_ALLOCATED: alloc}, **kwargs)


def cluster(*pods: dict[str, Any]) -> MemoryKubeApi:
    return MemoryKubeApi.from_objects(
        [node_manifest("n1", ("GPU-a", 16000), ("GPU-b", 16000)), node_manifest("n2", ("GPU-c", 8000))], pods)


class Harness:
    def __init__(self, api: MemoryKubeApi) -> None:
        self.api = api
        self.state = ClusterState()
        self.reservations = Reservations(self.state, ttl_s=60)
        self.informer = ClusterInformer(api, self.state, VENDORS, self.reservations, backoff_s=0.01)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Harness:
        self.task = asyncio.create_task(self.informer.run())
        await asyncio.wait_for(self.informer.synced.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def settle(self) -> None:
        target = {k: max((rv for rv, kind, _ in self.api._log if kind == k), default=0) for k in ("nodes", "pods")}
        for _ in range(500):
            if all(int(self.informer.resource_version[k] or 0) >= rv for k, rv in target.items()):
                return
            await asyncio.sleep(0.005)
        raise TimeoutError


# --- informer ----------------------------------------------------------------------------------------------


async def test_state_after_start_equals_the_annotations() -> None:
    api = cluster(
        bound("a", "n1", "GPU-a,NVIDIA,4000,20:;", gpumem=4000, gpucores=20),
        bound("b", "n1", "GPU-a,NVIDIA,2000,10:GPU-b,NVIDIA,2000,10:;", gpu=2, gpumem=2000, gpucores=10),
        # Allocated but not bound yet (kube-scheduler's bind still in flight): counts via hami.io/vgpu-node.
        pod_manifest("c", gpumem=1000, gpucores=0,
                     annotations={anno.VGPU_DEVICES_ALLOCATED: "GPU-c,NVIDIA,1000,0:;", anno.VGPU_NODE: "n2"}),
        # Finished pods hold nothing; HAMi's failed binds hold nothing.
        {**bound("done", "n1", "GPU-b,NVIDIA,9000,0:;", gpumem=9000, gpucores=0), "status": {"phase": "Succeeded"}},
        pod_manifest("failed", gpumem=1000, gpucores=0,
                     annotations={anno.VGPU_DEVICES_ALLOCATED: "GPU-c,NVIDIA,1000,0:;", anno.VGPU_NODE: "n2",
                                  anno.BIND_PHASE: "failed"}),
        pod_manifest("pending"),
    )
    async with Harness(api) as h:
        assert h.state.device_usage() == {("n1", "GPU-a"): (6000, 30, 2), ("n1", "GPU-b"): (2000, 10, 1),
                                          ("n2", "GPU-c"): (1000, 0, 1)}


async def test_watch_events_update_the_state() -> None:
    api = cluster(pod_manifest("p", gpumem=3000, gpucores=0))
    async with Harness(api) as h:
        await api.bind("default", "p", "uid-p", "n2", {anno.VGPU_DEVICES_ALLOCATED: "GPU-c,NVIDIA,3000,0:;"})
        await h.settle()
        assert h.state.device_usage() == {("n2", "GPU-c"): (3000, 0, 1)}
        obj = await api.get("pods", "p")
        obj["status"] = {"phase": "Failed"}
        api.put("pods", obj)
        await h.settle()
        assert h.state.device_usage() == {}
        api.put("pods", bound("q", "n1", "GPU-a,NVIDIA,100,0:;", gpumem=100, gpucores=0))
        await h.settle()
        await api.delete("pods", "q")
        await h.settle()
        assert h.state.device_usage() == {} and h.state.pods == {}


async def test_nodes_come_go_and_bad_registrations_take_no_work() -> None:
    api = cluster()
    async with Harness(api) as h:
        api.put("nodes", node_manifest("n3", ("GPU-d", 1000)))
        await h.settle()
        assert "n3" in {n.name for n in h.state.live_nodes()}
        api.put("nodes", {"metadata": {"name": "n3", "annotations": {anno.NODE_NVIDIA_REGISTER: "[{garbage"}}})
        await h.settle()
        assert "n3" not in {n.name for n in h.state.live_nodes()}
        await api.delete("nodes", "n1")
        await h.settle()
        assert {n.name for n in h.state.live_nodes()} == {"n2"}


async def test_relist_after_410_reconciles_missed_changes() -> None:
    api = cluster(bound("a", "n1", "GPU-a,NVIDIA,4000,0:;", gpumem=4000, gpucores=0), pod_manifest("r"))
    async with Harness(api) as h:
        decision = Scheduler().schedule(_request(api, "r"), h.state, ["n2"])
        h.reservations.reserve(decision)
        h.task.cancel()  # type: ignore[union-attr]
        await asyncio.gather(h.task, return_exceptions=True)  # type: ignore[arg-type]
        # While we were not watching: a is deleted, b appears, and history is compacted.
        api._objects["pods"].pop("default/a")
        api.put("pods", bound("b", "n1", "GPU-b,NVIDIA,5000,0:;", gpumem=5000, gpucores=0))
        api.compact()
        relists = h.informer.relists["pods"]
        h.task = asyncio.create_task(h.informer._run("pods"))
        for _ in range(400):
            if h.informer.relists["pods"] > relists:
                break
            await asyncio.sleep(0.005)
        assert h.informer.relists["pods"] == relists + 1
        assert h.state.device_usage() == {("n1", "GPU-b"): (5000, 0, 1), ("n2", "GPU-c"): (8000, 100, 1)}
        assert "uid-r" in h.reservations  # a reservation whose pod still exists survives the re-list


async def test_reservation_kept_while_pending_and_released_when_pod_goes() -> None:
    api = cluster(pod_manifest("r"))
    async with Harness(api) as h:
        h.reservations.reserve(Scheduler().schedule(_request(api, "r"), h.state, ["n1"]))
        obj = await api.get("pods", "r")
        obj["metadata"]["labels"] = {"touched": "yes"}
        api.put("pods", obj)  # an unrelated update before bind keeps the reservation
        await h.settle()
        assert "uid-r" in h.reservations and h.state.device_usage()
        await api.delete("pods", "r")
        await h.settle()
        assert "uid-r" not in h.reservations and h.state.device_usage() == {}


async def test_informer_retries_after_errors() -> None:
    class Flaky(MemoryKubeApi):
        failures = 2

        async def watch(self, kind: str, **kwargs: Any) -> AsyncIterator[WatchEvent]:  # type: ignore[override]
            if Flaky.failures > 0:
                Flaky.failures -= 1
                raise ApiError(500, "boom")
            async for event in super().watch(kind, **kwargs):
                yield event

    api = Flaky.from_objects([node_manifest("n1", ("GPU-a", 16000))], [])
    async with Harness(api) as h:  # type: ignore[arg-type]
        api.put("pods", bound("a", "n1", "GPU-a,NVIDIA,1,0:;", gpumem=1, gpucores=0))
        for _ in range(400):
            if h.state.device_usage():
                break
            await asyncio.sleep(0.01)
        assert h.state.device_usage() == {("n1", "GPU-a"): (1, 0, 1)}


def _request(api: MemoryKubeApi, name: str) -> Any:
    from hami.protocol.manifests import pod_request
    return pod_request(api._objects["pods"][f"default/{name}"], VENDORS)


# --- reservations ------------------------------------------------------------------------------------------


def test_reservations_expire_unless_binding() -> None:
    now = [0.0]
    state = ClusterState()
    state.upsert_node(_node("n1"))
    res = Reservations(state, ttl_s=10, clock=lambda: now[0])
    from hami.protocol.manifests import pod_request
    a = Scheduler().schedule(pod_request(pod_manifest("a", gpumem=100), VENDORS), state)
    res.reserve(a)
    b = Scheduler().schedule(pod_request(pod_manifest("b", gpumem=100), VENDORS), state)
    res.reserve(b).binding = True
    now[0] = 11
    assert [d.pod.name for d in res.expire()] == ["a"]
    assert set(state.pods) == {"uid-b"} and "uid-b" in res
    res.confirm("uid-b")
    assert res.release("uid-b") is None and set(state.pods) == {"uid-b"}  # confirmed: the record stays


def test_pending_pods_per_node_follow_every_way_a_reservation_ends() -> None:
    # Filter reads this on every call, so it is kept as reservations change rather than recomputed; it must
    # agree with the reservations after any sequence of reserve / re-reserve / release / confirm / expire.
    from hami.protocol.manifests import pod_request
    now = [0.0]
    state = ClusterState()
    for name in ("n1", "n2", "n3"):
        state.upsert_node(_node(name))
    res = Reservations(state, ttl_s=10, clock=lambda: now[0])
    sched = Scheduler(SchedulerConfig(node_policy="spread"))
    rng = random.Random(3)
    expected: dict[str, tuple[str, str]] = {}  # uid -> (node, key)
    for step in range(300):
        uid = f"uid-p{rng.randrange(12)}"
        op = rng.choice(["reserve", "reserve", "release", "confirm", "expire"])
        if op == "reserve":
            decision = sched.schedule(pod_request(pod_manifest(uid[4:], gpumem=1), VENDORS), state,
                                      [rng.choice(["n1", "n2", "n3"])])
            assert decision.node is not None
            res.reserve(decision)
            expected[uid] = (decision.node, decision.pod.key)
        elif op == "release":
            res.release(uid)
            expected.pop(uid, None)
        elif op == "confirm":
            res.confirm(uid)
            expected.pop(uid, None)
        else:
            now[0] += 6
            for d in res.expire():
                expected.pop(d.pod.uid)
        by_node: dict[str, dict[str, str]] = {}
        for u, (node, key) in expected.items():
            by_node.setdefault(node, {})[u] = key
        assert res.pending_on_nodes() == by_node, step
        assert len(res) == len(expected)


def _node(name: str) -> Any:
    from hami.protocol.manifests import node_from_manifest
    return node_from_manifest(node_manifest(name, ("GPU-a", 1000)), VENDORS)


# --- node lock ---------------------------------------------------------------------------------------------


async def _lock_value(api: MemoryKubeApi, node: str) -> str | None:
    value: str | None = (await api.get("nodes", node))["metadata"]["annotations"].get(anno.NODE_LOCK)
    return value


async def test_lock_is_taken_and_a_second_bind_waits_its_turn() -> None:
    api = cluster(pod_manifest("a"), pod_manifest("b"))
    locks = NodeLocks(api, LockConfig(poll_s=0.02))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    async with locks.turn("n1", deadline):
        await locks.acquire("n1", "default", "a", deadline)
    assert (await _lock_value(api, "n1") or "").endswith(",default,a")

    order: list[str] = []

    async def second() -> None:
        async with locks.turn("n1", deadline):
            await locks.acquire("n1", "default", "b", deadline)
            order.append("b")

    task = asyncio.create_task(second())
    await asyncio.sleep(0.1)
    assert order == [] and not task.done()  # a's lock is live: b waits instead of failing
    # The device plugin finishes with a and releases the lock.
    await api.patch_annotations("nodes", "n1", {anno.NODE_LOCK: None})
    locks.notify("n1")
    await asyncio.wait_for(task, 2)
    assert order == ["b"] and (await _lock_value(api, "n1") or "").endswith(",default,b")


async def test_binds_to_one_node_go_in_arrival_order_and_others_do_not_wait() -> None:
    api = cluster(*(pod_manifest(f"p{i}") for i in range(5)))
    locks = NodeLocks(api, LockConfig(poll_s=0.01))
    deadline = asyncio.get_running_loop().time() + 5
    order: list[str] = []

    async def bind(node: str, pod: str) -> None:
        async with locks.turn(node, deadline):
            await locks.acquire(node, "default", pod, deadline)
            order.append(pod)
            await asyncio.sleep(0.02)
            await release_node_lock(api, node, "default", pod)  # as the device plugin would

    n1 = [asyncio.create_task(bind("n1", f"p{i}")) for i in range(4)]
    await asyncio.sleep(0)
    other = asyncio.create_task(bind("n2", "p4"))
    await asyncio.wait_for(other, 0.5)
    assert order.index("p4") < 3  # n2's bind did not queue behind n1's
    await asyncio.gather(*n1)
    assert [p for p in order if p != "p4"] == ["p0", "p1", "p2", "p3"]


@pytest.mark.parametrize("case", ["expired", "pod-gone", "pod-done", "malformed"])
async def test_stale_locks_are_taken_over(case: str) -> None:
    holder = pod_manifest("holder")
    if case == "pod-done":
        holder["metadata"]["annotations"] = {anno.BIND_PHASE: "success"}
    api = cluster(holder, pod_manifest("b"))
    at = datetime.now(UTC) - (timedelta(minutes=10) if case == "expired" else timedelta(seconds=1))
    value = anno.encode_node_lock(at, "default", "ghost" if case == "pod-gone" else "holder")
    if case == "malformed":
        value = "yesterday,default,holder"
    await api.patch_annotations("nodes", "n1", {anno.NODE_LOCK: value})
    locks = NodeLocks(api, LockConfig(poll_s=0.02))
    deadline = asyncio.get_running_loop().time() + 2
    async with locks.turn("n1", deadline):
        await locks.acquire("n1", "default", "b", deadline)
    assert (await _lock_value(api, "n1") or "").endswith(",default,b")
    assert locks.takeovers == 1


async def test_live_lock_times_out_with_a_clear_error() -> None:
    api = cluster(pod_manifest("holder"), pod_manifest("b"))
    await api.patch_annotations("nodes", "n1", {anno.NODE_LOCK: anno.encode_node_lock(
        datetime.now(UTC), "default", "holder")})
    locks = NodeLocks(api, LockConfig(poll_s=0.02))
    deadline = asyncio.get_running_loop().time() + 0.2
    with pytest.raises(NodeLockError, match="locked by default/holder"):
        async with locks.turn("n1", deadline):
            await locks.acquire("n1", "default", "b", deadline)
    assert locks.waiting("n1") == 0


async def test_waiting_line_is_bounded() -> None:
    api = cluster()
    locks = NodeLocks(api, LockConfig(max_waiters=2))
    deadline = asyncio.get_running_loop().time() + 5
    gate = asyncio.Event()

    async def hold() -> None:
        async with locks.turn("n1", deadline):
            await gate.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(NodeLockError, match="already wait"):
        async with locks.turn("n1", deadline):
            pass
    gate.set()
    await asyncio.gather(*tasks)
    assert locks.waiting("n1") == 0


async def test_lock_race_with_a_concurrent_writer_retries() -> None:
    api = cluster(pod_manifest("b"))
    real_patch = api.patch_annotations
    raced = []

    async def racing_patch(kind: str, name: str, annotations: Any, **kwargs: Any) -> Any:
        if kind == "nodes" and not raced:
            raced.append(1)
            await real_patch("nodes", name, {"agent/heartbeat": "1"})  # the node agent writes meanwhile
        return await real_patch(kind, name, annotations, **kwargs)

    api.patch_annotations = racing_patch  # type: ignore[method-assign]
    locks = NodeLocks(api)
    deadline = asyncio.get_running_loop().time() + 2
    async with locks.turn("n1", deadline):
        await locks.acquire("n1", "default", "b", deadline)
    assert (await _lock_value(api, "n1") or "").endswith(",default,b")


async def test_release_removes_only_this_pods_lock_and_retries_conflicts(caplog: pytest.LogCaptureFixture) -> None:
    api = cluster()
    mine = anno.encode_node_lock(datetime.now(UTC), "default", "mine")
    real_patch = api.patch_annotations
    writes: list[str] = []

    async def racing_patch(kind: str, name: str, annotations: Any, **kwargs: Any) -> Any:
        writes.append(name)
        if len(writes) == 1:
            await real_patch("nodes", name, {"agent/heartbeat": "1"})  # the node agent writes meanwhile: 409
        return await real_patch(kind, name, annotations, **kwargs)

    await api.patch_annotations("nodes", "n1", {anno.NODE_LOCK: mine})
    api.patch_annotations = racing_patch  # type: ignore[method-assign]
    assert await release_node_lock(api, "n1", "default", "mine")
    node = await api.get("nodes", "n1")
    assert anno.NODE_LOCK not in node["metadata"]["annotations"] and writes == ["n1", "n1"]
    assert node["metadata"]["annotations"]["agent/heartbeat"] == "1"
    api.patch_annotations = real_patch  # type: ignore[method-assign]

    # Someone else's lock, and one that cannot be read, are not this pod's to remove.
    for value in (anno.encode_node_lock(datetime.now(UTC), "default", "other"), "yesterday,default,mine",
                  anno.encode_node_lock(datetime.now(UTC), "elsewhere", "mine")):
        await api.patch_annotations("nodes", "n1", {anno.NODE_LOCK: value})
        assert await release_node_lock(api, "n1", "default", "mine")
        assert await _lock_value(api, "n1") == value
    assert await release_node_lock(api, "gone", "default", "mine")  # a deleted node holds no lock

    # A node that never stops changing, or an API that fails: given up, said with the node's name.
    await api.patch_annotations("nodes", "n1", {anno.NODE_LOCK: mine})

    async def always_conflict(*args: Any, **kwargs: Any) -> Any:
        raise ApiError(409, "modified", "Conflict")

    api.patch_annotations = always_conflict  # type: ignore[method-assign]
    assert not await release_node_lock(api, "n1", "default", "mine", attempts=3)
    assert "node n1: could not release the lock of default/mine" in caplog.text

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ApiError(500, "etcd is down")

    real_get = api.get
    api.get = broken  # type: ignore[method-assign]
    caplog.clear()
    assert not await release_node_lock(api, "n1", "default", "mine")
    assert "node n1" in caplog.text and "etcd is down" in caplog.text
    api.get = real_get  # type: ignore[method-assign]
    assert await _lock_value(api, "n1") == mine


# --- leader election ---------------------------------------------------------------------------------------


async def test_one_leader_failover_and_release() -> None:
    api = MemoryKubeApi()
    now = [0.0]
    cfg = LeaseConfig(namespace="kube-system", lease_s=15)
    a = LeaderElector(api, LeaseConfig(**{**_fields(cfg), "identity": "a"}), clock=lambda: now[0])
    b = LeaderElector(api, LeaseConfig(**{**_fields(cfg), "identity": "b"}), clock=lambda: now[0])
    assert await a.try_acquire_or_renew() and a.is_leader
    assert not await b.try_acquire_or_renew() and not b.is_leader and b.holder == "a"
    now[0] = 10
    assert await a.try_acquire_or_renew()  # renew
    assert not await b.try_acquire_or_renew()
    now[0] = 20  # b saw the renewal at 10: not expired yet for b
    assert not await b.try_acquire_or_renew()
    now[0] = 26  # a stopped renewing: 16 s since b last saw a change
    assert await b.try_acquire_or_renew() and b.is_leader
    lease = await api.get("leases", "hami-scheduler", namespace="kube-system")
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    assert not await a.try_acquire_or_renew() and not a.is_leader
    await b.release()
    assert not b.is_leader
    assert await a.try_acquire_or_renew() and a.is_leader  # released: no need to wait for expiry


def _fields(cfg: LeaseConfig) -> dict[str, Any]:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}


async def test_leader_steps_down_when_it_cannot_renew() -> None:
    api = MemoryKubeApi()
    changes: list[bool] = []
    elector = LeaderElector(api, LeaseConfig(namespace="ns", identity="a", renew_deadline_s=0.05, retry_s=0.01),
                            on_change=changes.append)
    await elector.try_acquire_or_renew()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ApiError(503, "apiserver down")

    api.get = broken  # type: ignore[method-assign]
    task = asyncio.create_task(elector.run())
    await asyncio.sleep(0.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert changes == [True, False] and not elector.is_leader


# --- events ------------------------------------------------------------------------------------------------


async def test_events_are_written_deduplicated_and_bounded() -> None:
    api = MemoryKubeApi()
    recorder = EventRecorder(api, max_queue=2, dedup_s=60)
    pod = PodRef("team", "p", "u1")
    recorder.emit(pod, "FilteringFailed", "0/1 nodes are available: 1 x.")
    recorder.emit(pod, "FilteringFailed", "0/1 nodes are available: 1 x.")  # same: skipped
    recorder.emit(pod, "FailedBinding", "node locked")
    recorder.emit(pod, "FailedBinding", "another")  # queue full: dropped, counted
    assert recorder.dropped == 1
    task = asyncio.create_task(recorder.run())
    for _ in range(100):
        if recorder.sent == 2:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    events = (await api.list("events", namespace="team")).items
    assert sorted(e["reason"] for e in events) == ["FailedBinding", "FilteringFailed"]
    event = next(e for e in events if e["reason"] == "FilteringFailed")
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "namespace": "team", "name": "p",
                                       "uid": "u1"}
    assert event["type"] == "Warning" and event["source"] == {"component": "hami-scheduler"}


def test_summaries_add_up_equal_causes() -> None:
    assert coarse_reason("NodeInsufficientDevice: need 2, 1/8 fit, 5/8 CardInsufficientMemory, 2/8 "
                         "CardTypeMismatch") == "NodeInsufficientDevice (CardInsufficientMemory, CardTypeMismatch)"
    reasons = {"a": "NodeInsufficientDevice: need 1, 0/2 fit, 2/2 CardInsufficientMemory",
               "b": "NodeInsufficientDevice: need 1, 0/4 fit, 4/4 CardInsufficientMemory", "c": "Insufficient cpu"}
    assert summarize(reasons, 5) == ("2/5 nodes are available: 2 NodeInsufficientDevice (CardInsufficientMemory) "
                                     "[a, b], 1 Insufficient cpu [c].")
    many = {f"n{i}": "Insufficient cpu" for i in range(6)}
    assert summarize(many, 6) == "0/6 nodes are available: 6 Insufficient cpu [n0, n1, n2, n3, ...]."


# --- device-plugin stand-in ----------------------------------------------------------------------------------


async def test_stand_in_acknowledges_a_bind_seen_while_an_older_event_of_the_pod_waits() -> None:
    # Under load a pod's pre-bind event may still wait for a slot when its bind event arrives; the bind must
    # not be dropped as a duplicate, or the node stays locked until the lock expires.
    from hami.kube.devicesim import DevicePluginSimulator
    api = cluster(pod_manifest("p", gpumem=1000))
    before = await api.get("pods", "p")
    await api.patch_annotations("nodes", "n1", {anno.NODE_LOCK: anno.encode_node_lock(
        datetime.now(UTC), "default", "p")})
    await api.bind("default", "p", "uid-p", "n1", {anno.VGPU_DEVICES_ALLOCATED: "GPU-a,NVIDIA,1000,0:;",
                                                  anno.VGPU_DEVICES_TO_ALLOCATE: "GPU-a,NVIDIA,1000,0:;",
                                                  anno.BIND_PHASE: anno.BIND_PHASE_ALLOCATING})
    sim = DevicePluginSimulator(api, VENDORS, concurrency=1)
    bound_pod = await api.get("pods", "p")
    await sim._slots.acquire()  # every slot busy
    sim._spawn(WatchEvent("MODIFIED", before))
    sim._spawn(WatchEvent("MODIFIED", bound_pod))
    sim._slots.release()
    for _ in range(100):
        if not sim._tasks:
            break
        await asyncio.sleep(0.01)
    assert (await api.get("pods", "p"))["metadata"]["annotations"][anno.BIND_PHASE] == anno.BIND_PHASE_SUCCESS
    assert await _lock_value(api, "n1") is None and sim.allocated == 1
    writes = len(api._log)
    await sim.handle(WatchEvent("MODIFIED", bound_pod))  # an event from before our own patch, late
    assert len(api._log) == writes and sim.allocated == 1
