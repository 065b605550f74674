"""The scheduler-extender verbs kube-scheduler calls (SPEC §5): filter, prioritize, bind, preempt.

`Extender` holds the verbs as plain methods on parsed arguments (tests call them directly); `routes`
puts them on HTTP. The policy is all in the scheduling framework; this module only sequences it with
the reservations and the binder:

- filter answers with the one node the framework chose (and reserves its devices, in the same loop step
  as the decision, so concurrent filters cannot hand out the same share), or with the reason per node;
  nodes where even preemption cannot help go to FailedAndUnresolvableNodes.
- prioritize scores 10 for that node; kube-scheduler rarely calls it, as filter leaves one node.
- bind binds what filter chose (see kube/binder.py).
- preempt keeps, per node, only the victims whose eviction the pod's devices need.

Pods that request no managed resource pass through untouched. Only the leader decides; a follower
answers with an Error, which kube-scheduler retries (the chart routes traffic to the leader only, so
this is the rare window of a failover).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Container, Sequence
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hami.kube.binder import Binder
from hami.kube.events import EventRecorder, PodRef, summarize
from hami.kube.nodelock import NodeLocks
from hami.kube.reservations import Reservations
from hami.protocol import extender as wire
from hami.protocol.manifests import pod_request
from hami.resources import HamiError, PodRequest
from hami.scheduler.framework import Scheduler
from hami.scheduler.state import ClusterState, PodRecord
from hami.services.metrics import ServiceMetrics
from hami.vendors.base import Vendor

log = logging.getLogger(__name__)

NOT_LEADER = "this hami-scheduler replica is not the leader; retry"
NOT_SYNCED = "hami-scheduler has not listed the cluster yet; retry"
NO_DEVICES = "NodeInsufficientDevice: no device registered on this node"
REASON_FILTER_FAILED = "FilteringFailed"


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


def internal_error(where: str) -> Response:
    """A 500 for a bug, answered (not raised) so the keep-alive connection survives; the trace is logged."""
    log.exception("%s: internal error", where)
    return json_response({"error": f"internal error in {where}; see the scheduler log"}, 500)


class Extender:
    def __init__(self, state: ClusterState, scheduler: Scheduler, reservations: Reservations, binder: Binder,
                 vendors: Sequence[Vendor], *, events: EventRecorder | None = None,
                 metrics: ServiceMetrics | None = None, is_leader: Callable[[], bool] = lambda: True,
                 locks: NodeLocks | None = None, queue_depth: int = 4,
                 seen: Container[str] | None = None, synced: Callable[[], bool] = lambda: True) -> None:
        self.state = state
        self.scheduler = scheduler
        self.reservations = reservations
        self.binder = binder
        self.vendors = tuple(vendors)
        self.events = events
        self.metrics = metrics
        self.is_leader = is_leader
        self.locks = locks
        self.queue_depth = queue_depth
        self.seen = seen  # pending pods the cluster cache knows; None: trust every filter (tests, static)
        self.synced = synced  # whether the cluster cache holds a full list: before that, no decisions
        self._cover: tuple[tuple[str, ...], int, bool] | None = None  # (names, layout version, covers all)

    def _candidates(self, names: tuple[str, ...]) -> tuple[str, ...] | None:
        """The candidates to hand the framework: None when `names` includes every node of the state, which
        is what kube-scheduler usually sends. The framework then skips mapping thousands of names to node
        slots on every call; the answer is cached until the list or the cluster's node set changes."""
        layout = self.state.layout_version
        cover = self._cover
        if cover is None or cover[1] != layout or cover[0] != names:
            given = set(names)
            cover = (names, layout, all(node.name in given for node in self.state.live_nodes()))
            self._cover = cover
        return None if cover[2] else names

    def _count(self, counter: str, result: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, counter).labels(result).inc()

    def _request(self, pod: Any) -> PodRequest:
        request = pod_request(pod, self.vendors)
        if not request.uid:
            raise HamiError("Pod.metadata.uid", "is required")
        return request

    # -- filter -------------------------------------------------------------------------------------
    def _invalid(self, args: wire.ExtenderArgs, exc: HamiError) -> dict[str, Any]:
        """The webhook should have refused this pod; say why on every node, and on the pod."""
        message = f"invalid device request: {exc}"
        self._event_for(args.pod, REASON_FILTER_FAILED, message)
        self._count("filter_total", "error")
        return wire.filter_result(args, (), {}, dict.fromkeys(args.node_names, message))

    def filter(self, args: wire.ExtenderArgs) -> dict[str, Any]:
        if not self.is_leader() or not self.synced():
            self._count("filter_total", "error")
            return wire.filter_error(NOT_LEADER if not self.is_leader() else NOT_SYNCED)
        try:
            request = self._request(args.pod)
        except HamiError as exc:
            return self._invalid(args, exc)
        if not request.wants_devices:
            self._count("filter_total", "passthrough")
            return wire.filter_result(args, args.node_names, {}, {})
        provisional = self.seen is not None and request.uid not in self.seen
        if provisional and request.uid not in self.reservations and self.reservations.provisional_full():
            self._count("filter_total", "error")
            return wire.filter_error(f"pod {request.key} ({request.uid}) is not in the cluster cache yet and "
                                     f"{self.reservations.max_provisional} such pods hold reservations; retry")

        # Decide and reserve in one step: no await between them (one event loop), so no other filter
        # can see the devices as free in between.
        self.reservations.release(request.uid)  # a re-filtered pod gives its old reservation back first
        candidates = self._candidates(args.node_names)
        busy = self._busy() if self.locks is not None and self.queue_depth > 0 else set()
        decision = None
        try:
            if busy:
                # Prefer nodes without a full line for their lock; the best of them is the best overall
                # whenever that one is not busy, so one decision suffices in the common case.
                decision = self.scheduler.schedule(request, self.state, candidates, exclude=busy)
            if decision is None or decision.node is None:
                decision = self.scheduler.schedule(request, self.state, candidates)
        except HamiError as exc:  # e.g. a policy name the webhook did not see (the pod predates it)
            return self._invalid(args, exc)
        if decision.node is not None:
            self.reservations.reserve(decision, provisional=provisional)
            self._count("filter_total", "placed")
            return wire.filter_result(args, (decision.node,), {}, {})

        failed = dict(decision.rejected)
        never = decision.rejected.unresolvable()
        index, valid = self.state.node_index, self.state.node_valid
        for name in args.node_names:
            if name not in failed:
                i = index.get(name)
                if i is None or not valid[i]:
                    failed[name] = NO_DEVICES
                    never.add(name)
        unresolvable = {name: failed.pop(name) for name in never if name in failed}
        reasons = {**failed, **unresolvable}
        self._event(request, REASON_FILTER_FAILED, summarize(reasons, len(args.node_names)))
        self._count("filter_total", "unschedulable")
        return wire.filter_result(args, (), failed, unresolvable)

    def _busy(self) -> set[str]:
        """Nodes with `queue_depth` pods or more between filter and their device plugin's allocation
        (reserved, binding, or holding the node lock). Binds to one node go one at a time, each waiting
        for the previous pod's node lock, which in a cluster lasts until kubelet has started that pod.
        Filter takes the best node with a shorter line when one fits: binpack still fills nodes,
        `queue_depth` pods at a time, but a burst no longer queues behind one node for many lock cycles
        (HAMi's stall; bounded here by the bind wait) while other nodes could take the pods now."""
        assert self.locks is not None
        depth = self.queue_depth
        line = self.reservations.pending_on_nodes()
        busy = {node for node, pods in line.items() if len(pods) >= depth}
        for node, holder in self.locks.held().items():
            pods = line.get(node, {})
            if node not in busy and len(pods) + (holder not in pods.values()) >= depth:
                busy.add(node)
        return busy

    def _event(self, request: PodRequest, reason: str, message: str) -> None:
        if self.events is not None:
            self.events.emit(PodRef(request.namespace, request.name, request.uid), reason, message)

    def _event_for(self, pod: Any, reason: str, message: str) -> None:
        meta = pod.get("metadata") if isinstance(pod, dict) else None
        if self.events is None or not isinstance(meta, dict):
            return
        name, namespace, uid = meta.get("name"), meta.get("namespace") or "default", meta.get("uid") or ""
        if isinstance(name, str) and isinstance(namespace, str) and isinstance(uid, str):
            self.events.emit(PodRef(namespace, name, uid), reason, message)

    # -- prioritize ---------------------------------------------------------------------------------
    def prioritize(self, args: wire.ExtenderArgs) -> list[dict[str, Any]]:
        """10 for the node the filter chose; other feasible nodes scaled 0-9 by the pod's node policy."""
        try:
            request = self._request(args.pod)
        except HamiError:
            return wire.host_priorities(dict.fromkeys(args.node_names, 0))
        if not request.wants_devices or not self.is_leader():
            return wire.host_priorities(dict.fromkeys(args.node_names, 0))
        scores = dict.fromkeys(args.node_names, 0)
        idx = np.array([i for n in args.node_names if (i := self.state.node_index.get(n)) is not None
                        and self.state.node_valid[i]], np.int64)
        if len(idx):
            try:
                raw = np.asarray(self.scheduler.score_nodes(request, self.state, idx), np.float64)
            except HamiError:
                raw = np.zeros(len(idx))
            # A node the pod cannot use may score -inf (or a policy may misbehave): such nodes get 0, the
            # rest are scaled over the finite range.
            finite = np.isfinite(raw)
            lo = float(np.min(raw[finite])) if finite.any() else 0.0
            hi = float(np.max(raw[finite])) if finite.any() else 0.0
            for i, value, ok in zip(idx.tolist(), raw.tolist(), finite.tolist(), strict=True):
                if not ok:
                    continue
                scores[self.state.node_names[i]] = round(9 * (value - lo) / (hi - lo)) if hi > lo else 9
        reservation = self.reservations.get(request.uid)
        if reservation is not None and reservation.decision.node in scores:
            scores[reservation.decision.node] = wire.MAX_SCORE
        return wire.host_priorities(scores)

    # -- bind ---------------------------------------------------------------------------------------
    async def bind(self, args: wire.BindingArgs) -> dict[str, Any]:
        if not self.is_leader() or not self.synced():
            self._count("bind_total", "failed")
            return wire.binding_result(NOT_LEADER if not self.is_leader() else NOT_SYNCED)
        outcome = await self.binder.bind(args)
        if self.metrics is not None and outcome.ok:
            self.metrics.lock_wait_seconds.observe(outcome.lock_wait_s)
        self._count("bind_total", "bound" if outcome.ok else "failed")
        return wire.binding_result(outcome.error)

    # -- preempt ------------------------------------------------------------------------------------
    def preempt(self, args: wire.PreemptionArgs) -> dict[str, Any]:
        """Per node, the fewest of kube-scheduler's victims whose eviction frees the devices the pod needs.

        Victims holding no devices on the node stay: kube-scheduler chose them for resources it tracks
        (CPU, memory, ports). Victims holding devices are reprieved one by one, most important first (the
        order kube-scheduler sends), whenever the pod still fits without evicting them; fractional shares
        count, so evicting one 10% tenant can be enough. Nodes where the pod does not fit even with every
        victim gone are dropped.
        """
        if not self.is_leader():
            return wire.preemption_result({})
        try:
            request = self._request(args.pod)
        except HamiError:
            return wire.preemption_result({})
        if not request.wants_devices:
            return wire.preemption_result(args.victims)
        out: dict[str, wire.Victims] = {}
        own = self.state.remove_pod(request.uid)  # the preemptor's own stale reservation does not count
        try:
            for node, victims in args.victims.items():
                kept = self._victims_on(request, node, victims)
                if kept is not None:
                    out[node] = kept
        finally:
            if own is not None:
                self.state.add_pod(own)
        return wire.preemption_result(out)

    def _victims_on(self, request: PodRequest, node: str, victims: wire.Victims) -> wire.Victims | None:
        state = self.state
        holding = [uid for uid in victims.uids
                   if (r := state.pods.get(uid)) is not None and r.node == node and any(r.allocation)]
        removed: list[PodRecord] = [r for uid in holding if (r := state.remove_pod(uid)) is not None]
        evicted: list[PodRecord] = []
        try:
            if not self.scheduler.schedule(request, state, [node]).placed:
                return None
            for record in removed:  # reprieve, most important first
                state.add_pod(record)
                if not self.scheduler.schedule(request, state, [node]).placed:
                    state.remove_pod(record.uid)
                    evicted.append(record)
        finally:
            for record in removed:
                state.add_pod(record)
        evicted_uids = {r.uid for r in evicted}
        holding_set = set(holding)
        kept = tuple(uid for uid in victims.uids if uid not in holding_set or uid in evicted_uids)
        return wire.Victims(kept, victims.pdb_violations if kept == victims.uids else
                            min(victims.pdb_violations, len(kept)))


def routes(extender: Extender, metrics: ServiceMetrics | None = None) -> list[Route]:
    """POST /filter, /prioritize, /bind, /preempt. Malformed bodies get 400 with the reason."""

    def timed(handler: Callable[[bytes], Awaitable[Any]], histogram: str | None
              ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                body = await request.body()
                result = await handler(body)
                response = json_response(result)
            except HamiError as exc:
                response = json_response({"error": str(exc)}, 400)
            except Exception:
                response = internal_error(request.url.path)
            if metrics is not None and histogram is not None:
                getattr(metrics, histogram).observe(time.perf_counter() - started)
            return response
        return endpoint

    async def do_filter(body: bytes) -> Any:
        return extender.filter(wire.parse_extender_args(body))

    async def do_prioritize(body: bytes) -> Any:
        return extender.prioritize(wire.parse_extender_args(body))

    async def do_bind(body: bytes) -> Any:
        return await extender.bind(wire.parse_binding_args(body))

    async def do_preempt(body: bytes) -> Any:
        return extender.preempt(wire.parse_preemption_args(body))

    return [
        Route("/filter", timed(do_filter, "filter_seconds"), methods=["POST"]),
        Route("/prioritize", timed(do_prioritize, None), methods=["POST"]),
        Route("/bind", timed(do_bind, "bind_seconds"), methods=["POST"]),
        Route("/preempt", timed(do_preempt, None), methods=["POST"]),
    ]
