"""List + watch of nodes and pods, kept in a ClusterState.

The state is a cache of two facts the API server holds: node registrations and pods' allocation
annotations (SPEC §2-3). After a (re)start or a 410 re-list the state is rebuilt from exactly those, so
no device is double-allocated and no allocation is forgotten; reservations made at filter whose pods
still exist are kept on top. A pod counts from the moment it carries an allocation annotation on a node
(spec.nodeName, or `hami.io/vgpu-node` before the bind lands) until it is finished or gone, as far as
protocol/trust believes the annotation; once bound, the allocation first counted for it stays (a tenant may
patch its own pod, the scheduler wrote the allocation once).

Node CPU/memory are not tracked by default: kube-scheduler has already filtered on them before it calls
the extender, and counting them here would need every pod of the cluster, not only device pods.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hami.kube.api import ApiError, KubeApi, KubeObject, WatchEvent
from hami.kube.events import EventRecorder, EventSubject, NodeRef, PodRef
from hami.kube.reservations import Reservations
from hami.protocol import annotations as anno
from hami.protocol import liveness, manifests, trust
from hami.scheduler.snapshot import REGISTRATION_EXPIRY_S, node_lookup, node_state, pod_state
from hami.scheduler.state import ClusterState, PodRecord
from hami.vendors.base import Vendor

log = logging.getLogger(__name__)

KINDS = ("nodes", "pods")
REASON_NODE_SKIPPED = "InvalidDeviceRegistration"


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return manifests.map_or_empty(obj, "metadata")


class ClusterInformer:
    """Feeds `state` from the API server. `synced` is set once both kinds have been listed in full.
    `on_node(name, annotations)` hears of every node change (the node lock waits on it), `on_pod(event type,
    pod)` of every pod event and listed pod. Allocations count on pods of the `trusted_schedulers` only
    (protocol/trust); skipped nodes and untrusted allocations are logged and told with a Warning Event on
    the object, once per object and cause."""

    def __init__(self, api: KubeApi, state: ClusterState, vendors: Sequence[Vendor],
                 reservations: Reservations, *, track_node_resources: bool = False,
                 on_node: Callable[[str, Mapping[str, str]], None] | None = None,
                 on_pod: Callable[[str, KubeObject], None] | None = None, watch_timeout_s: int = 300,
                 backoff_s: float = 1.0, registration_expiry_s: float = REGISTRATION_EXPIRY_S,
                 liveness_check_s: float = 5.0, clock: Callable[[], float] = time.time,
                 events: EventRecorder | None = None,
                 trusted_schedulers: Sequence[str] = (trust.DEFAULT_SCHEDULER,),
                 tell: Callable[[], bool] = lambda: True) -> None:
        self.api = api
        self.state = state
        self.vendors = tuple(vendors)
        self.reservations = reservations
        self.track_node_resources = track_node_resources
        self.on_node = on_node
        self.on_pod = on_pod
        self.watch_timeout_s = watch_timeout_s
        self.backoff_s = backoff_s
        self.registration_expiry_s = registration_expiry_s
        self.liveness_check_s = liveness_check_s
        self.clock = clock
        self.events = events
        self.trusted_schedulers = tuple(trusted_schedulers)
        self._node = node_lookup(state)
        self.tell = tell  # whether this replica posts Events (the leader only; every replica logs)
        self._warned: dict[str, str] = {}  # pod uid or node/<name> -> the last warning told about it
        # uid -> the record of a bound pod's first accounted allocation: later changes to its annotation are
        # ignored (a tenant may patch its own pod; the scheduler wrote the allocation once, at bind)
        self._bound: dict[str, PodRecord] = {}
        # uid -> (node, pod) of pods counted before their node was seen: their percentages are checked, and
        # their allocation fixed, once it is (pods may be listed before nodes)
        self._before_node: dict[str, tuple[str, KubeObject]] = {}
        self._recheck: dict[str, tuple[float, KubeObject]] = {}  # node -> (when its liveness may lapse, obj)
        self.synced = asyncio.Event()
        self._kind_synced = {kind: False for kind in KINDS}
        self._node_inputs: dict[str, tuple[dict[str, Any], Any]] = {}
        self.relists = {kind: 0 for kind in KINDS}
        self.object_failures = 0  # events that raised while being applied (skipped, logged)
        self.resource_version = {kind: "" for kind in KINDS}

    async def run(self) -> None:
        """List and watch both kinds until cancelled. A (re)start always begins with full lists, and
        `synced` is clear until both are done: a supervisor restarting a failed informer gets a truthful
        readiness and a cache rebuilt from the API server."""
        self.synced.clear()
        self._kind_synced = {kind: False for kind in KINDS}
        async with asyncio.TaskGroup() as group:
            for kind in KINDS:
                group.create_task(self._run(kind), name=f"informer-{kind}")
            group.create_task(self._liveness(), name="informer-liveness")

    async def _liveness(self) -> None:
        while True:
            await asyncio.sleep(self.liveness_check_s)
            self.check_liveness()

    def check_liveness(self) -> None:
        """Re-read the nodes whose registration may have gone stale since they last changed (time passes
        without any event: an agent that died writes nothing)."""
        now = self.clock()
        for name in [n for n, (at, _) in self._recheck.items() if at <= now]:
            _, obj = self._recheck.pop(name)
            self._node_inputs.pop(name, None)
            self.apply_node("MODIFIED", obj)

    # -- list + watch -------------------------------------------------------------------------------
    async def _run(self, kind: str) -> None:
        need_list = True
        failures = 0
        while True:
            try:
                if need_list:
                    await self._list(kind)
                    need_list = False
                async for event in self.api.watch(kind, resource_version=self.resource_version[kind],
                                                  timeout_s=self.watch_timeout_s):
                    self._on_event(kind, event)
                    failures = 0
                    _check_cancelled()
                # The server closed the watch (timeoutSeconds): resume from the last resourceVersion.
            except ApiError as exc:
                if exc.status == 410:
                    log.info("%s watch expired (%s), re-listing", kind, exc.message)
                    need_list = True
                    continue
                failures += 1
                log.warning("%s watch failed (%s), retrying", kind, exc)
                await asyncio.sleep(min(30.0, self.backoff_s * 2 ** min(failures - 1, 5)))
                if failures >= 3:
                    need_list = True  # something is off for a while: start from a fresh list

    async def _list(self, kind: str) -> None:
        started = time.monotonic()
        listed = await self.api.list(kind)
        if kind == "nodes":
            self._replace_nodes(listed.items)
        else:
            self._replace_pods(listed.items, started)
        self.resource_version[kind] = listed.resource_version
        self.relists[kind] += 1
        self._kind_synced[kind] = True
        if all(self._kind_synced.values()):
            self.synced.set()
        log.info("listed %d %s at resourceVersion %s", len(listed.items), kind, listed.resource_version)

    def _on_event(self, kind: str, event: WatchEvent) -> None:
        rv = _meta(event.object).get("resourceVersion")
        if isinstance(rv, str) and rv:
            self.resource_version[kind] = rv
        if event.type == "BOOKMARK":
            return
        self._apply(kind, event.type, event.object)

    def _apply(self, kind: str, event_type: str, obj: KubeObject) -> None:
        """Apply one event or listed object. One object we fail on must not end the watch or the list for
        every other object: the bug is logged with the object's name (a later event or re-list of it is
        tried afresh) and counted."""
        try:
            if kind == "nodes":
                self.apply_node(event_type, obj)
            else:
                self.apply_pod(event_type, obj)
        except Exception:
            meta = _meta(obj)
            self.object_failures += 1
            log.exception("%s %s/%s: cannot apply %s; skipped", kind, meta.get("namespace", ""),
                          meta.get("name", ""), event_type)

    # -- nodes --------------------------------------------------------------------------------------
    def _replace_nodes(self, items: Sequence[KubeObject]) -> None:
        seen = set()
        for obj in items:
            name = _meta(obj).get("name")
            if isinstance(name, str):
                seen.add(name)
            self._apply("nodes", "ADDED", obj)
        for node in list(self.state.live_nodes()):
            if node.name not in seen:
                self.state.remove_node(node.name)
        for name in set(self._node_inputs) - seen:
            del self._node_inputs[name]
            self._warned.pop(f"node/{name}", None)
        for name in set(self._recheck) - seen:
            del self._recheck[name]

    def apply_node(self, event_type: str, obj: KubeObject) -> None:
        name = _meta(obj).get("name")
        if not isinstance(name, str) or not name:
            return
        if event_type == "DELETED":
            self.state.remove_node(name)
            self._node_inputs.pop(name, None)
            self._recheck.pop(name, None)
            self._warned.pop(f"node/{name}", None)
        elif self._unchanged(name, obj):
            pass  # e.g. only the node lock moved (twice per bind): nothing to re-parse
        else:
            self._take_node(name, obj)
        if self.on_node is not None:
            self.on_node(name, manifests.map_or_empty(_meta(obj), "annotations") if event_type != "DELETED" else {})

    def _take_node(self, name: str, obj: KubeObject) -> None:
        converted = node_state(obj, self.vendors, now=self.clock(), expiry_s=self.registration_expiry_s)
        if converted.recheck_at < liveness.NEVER:
            self._recheck[name] = (converted.recheck_at, obj)
        else:
            self._recheck.pop(name, None)
        if converted.node is None:
            # A node we cannot read takes no new work until its agent writes a valid registration.
            self._warn(f"node/{name}", NodeRef(name, str(_meta(obj).get("uid") or "")), REASON_NODE_SKIPPED,
                       converted.skipped)
            self.state.remove_node(name)
            return
        self._warned.pop(f"node/{name}", None)
        if converted.stale:
            log.warning("node %s: %s registration older than %gs and no allocatable devices: its devices take "
                        "no new work until its device plugin reports again", name,
                        ", ".join(sorted(converted.stale)), self.registration_expiry_s)
        node = converted.node
        if not self.track_node_resources:
            node = dataclasses.replace(node, cpu_milli=0, memory_mib=0)
        self.state.upsert_node(node)
        for uid, (_, pod) in [(u, w) for u, w in self._before_node.items() if w[0] == name]:
            self._take_pod(uid, pod)

    def _unchanged(self, name: str, obj: KubeObject) -> bool:
        """Whether what a Node becomes in the state (annotations but the lock, allocatable) is as last seen."""
        annotations = dict(_meta(obj).get("annotations") or {})
        annotations.pop(anno.NODE_LOCK, None)
        inputs = (annotations, manifests.map_or_empty(manifests.map_or_empty(obj, "status"), "allocatable"))
        if self._node_inputs.get(name) == inputs:
            return True
        self._node_inputs[name] = inputs
        return False

    # -- pods ---------------------------------------------------------------------------------------
    def _replace_pods(self, items: Sequence[KubeObject], started: float) -> None:
        seen = set()
        for obj in items:
            uid = _meta(obj).get("uid")
            if isinstance(uid, str):
                seen.add(uid)
            self._apply("pods", "ADDED", obj)
        for uid in list(self.state.pods):
            if uid not in seen and uid not in self.reservations:
                self.state.remove_pod(uid)
        for uid in set(self._bound) - seen:
            del self._bound[uid]
        for uid in set(self._before_node) - seen:
            del self._before_node[uid]
        for key in [k for k in self._warned if not k.startswith("node/") and k not in seen]:
            del self._warned[key]
        # A reservation older than the list whose pod is not in it: the pod was deleted meanwhile.
        for uid in self.reservations.created_before(started):
            if uid not in seen:
                self.reservations.release(uid)

    def apply_pod(self, event_type: str, obj: KubeObject) -> None:
        if self.on_pod is not None:
            self.on_pod(event_type, obj)
        meta = _meta(obj)
        uid = meta.get("uid")
        if not isinstance(uid, str) or not uid:
            return
        if event_type == "DELETED":
            self.reservations.release(uid)
            self.state.remove_pod(uid)
            self._bound.pop(uid, None)
            self._before_node.pop(uid, None)
            self._warned.pop(uid, None)
            return
        self._take_pod(uid, obj)

    def _take_pod(self, uid: str, obj: KubeObject) -> None:
        meta = _meta(obj)
        converted = pod_state(obj, self.vendors, nodes=self._node, trusted=self.trusted_schedulers)
        record = converted.record
        ref = PodRef(str(meta.get("namespace") or "default"), str(meta.get("name") or ""), uid)
        held = self._bound.get(uid)
        if held is not None and not _finished(obj):
            if record != held:
                names = "/".join(v.annotations.allocated for v in self.vendors)
                self._warn(uid, ref, trust.UNTRUSTED_ALLOCATION, f"ignoring a change of {names} after the pod "
                           "was bound: its first bound allocation stays counted")
            return
        self._bound.pop(uid, None)
        if converted.malformed:
            log.warning("pod %s: ignoring malformed allocation: %s", converted.key, converted.malformed)
        if converted.untrusted:
            self._warn(uid, ref, trust.UNTRUSTED_ALLOCATION, converted.untrusted)
        else:
            self._warned.pop(uid, None)
        self._before_node.pop(uid, None)
        if record is not None:
            self.state.add_pod(record)
            self.reservations.confirm(uid)
            if self._node(record.node) is None:
                self._before_node[uid] = (record.node, obj)
            elif manifests.map_or_empty(obj, "spec").get("nodeName"):
                self._bound[uid] = record
            return
        reservation = self.reservations.get(uid)
        if reservation is not None:
            if _finished(obj) or manifests.map_or_empty(obj, "spec").get("nodeName"):
                # Finished, or bound by someone else without our allocation: the devices are not used.
                self.reservations.release(uid)
            return  # still pending between filter and bind: keep the reservation
        self.state.remove_pod(uid)

    def _warn(self, key: str, subject: EventSubject, reason: str, message: str) -> None:
        """Log and tell with a Warning Event, once per object and message (not once per watch event: a pod's
        or node's every update would repeat it)."""
        if self._warned.get(key) == message:
            return
        self._warned[key] = message
        if isinstance(subject, NodeRef):
            log.warning("%s", message)  # names the node already
        else:
            log.warning("pod %s/%s: %s", subject.namespace, subject.name, message)
        if self.events is not None and self.tell():
            self.events.emit(subject, reason, message)


def _check_cancelled() -> None:
    """Honour a cancellation a watch swallowed: Python 3.11's asyncio.wait_for (which a KubeApi may use
    inside its watch) drops a cancel that arrives just as its inner wait completes."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _finished(pod: KubeObject) -> bool:
    return manifests.map_or_empty(pod, "status").get("phase") in manifests.TERMINAL_PHASES
