"""Bind: take the node lock, then POST the Binding with the allocation annotations (SPEC §3) in one write.

The allocation is the one `/filter` reserved for this pod (looked up by UID). When there is none — the
extender restarted, leadership moved, or kube-scheduler picked another node than ours — the pod is
scheduled again restricted to the bind node, so a bind never writes an allocation the state has not
accounted. On any failure the lock and the reservation are released, so nothing leaks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from hami.kube.api import ApiError, KubeApi
from hami.kube.events import EventRecorder, PodRef
from hami.kube.nodelock import NodeLockError, NodeLocks, release_node_lock
from hami.kube.reservations import Reservations
from hami.protocol import manifests, trust
from hami.protocol.allocation import allocation_annotations
from hami.protocol.extender import BindingArgs
from hami.resources import HamiError
from hami.scheduler.framework import Decision, Scheduler
from hami.vendors.base import Vendor

log = logging.getLogger(__name__)

REASON_BIND_FAILED = "FailedBinding"


@dataclass(frozen=True, slots=True)
class BindOutcome:
    error: str = ""  # "" when bound
    lock_wait_s: float = 0.0
    rescheduled: bool = False  # no reservation matched: the pod was scheduled again at bind

    @property
    def ok(self) -> bool:
        return not self.error


class Binder:
    def __init__(self, api: KubeApi, scheduler: Scheduler, reservations: Reservations,
                 vendors: Sequence[Vendor], locks: NodeLocks | None, events: EventRecorder | None = None,
                 *, max_wait_s: float = 20.0, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 scheduler_name: str = "hami-scheduler") -> None:
        self.api = api
        self.scheduler = scheduler
        self.reservations = reservations
        self.vendors = tuple(vendors)
        self.locks = locks
        self.events = events
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.scheduler_name = scheduler_name

    async def bind(self, args: BindingArgs) -> BindOutcome:
        pod_ref = PodRef(args.namespace, args.pod_name, args.uid)
        try:
            decision, rescheduled = await self._decision(args)
        except (ApiError, HamiError) as exc:
            return self._fail(args, pod_ref, f"cannot schedule at bind: {exc}")
        if decision is None:
            return self._fail(args, pod_ref, "no longer fits on this node")
        reservation = self.reservations.get(decision.pod.uid)
        if reservation is not None:
            reservation.binding = True  # no expiry while we wait for the lock and the API server
        assert decision.node is not None
        annotations = allocation_annotations(decision.allocation, decision.node, self.vendors, self.clock())
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.max_wait_s
        locked = False
        try:
            if self.locks is None:
                await self.api.bind(args.namespace, args.pod_name, args.uid, args.node, annotations)
            else:
                async with self.locks.turn(args.node, deadline):
                    await self.locks.acquire(args.node, args.namespace, args.pod_name, deadline)
                    locked = True
                    waited = loop.time() - started
                    await self.api.bind(args.namespace, args.pod_name, args.uid, args.node, annotations)
                return BindOutcome("", waited, rescheduled)
        except NodeLockError as exc:
            return await self._undo(args, pod_ref, f"{exc} (waited {self.max_wait_s:.0f}s)", locked)
        except ApiError as exc:
            if exc.status == 409 and await self._already_ours(args, annotations):
                return BindOutcome("", loop.time() - started, rescheduled)
            what = {404: "pod or node not found", 409: "pod already bound"}.get(exc.status, "API error")
            return await self._undo(args, pod_ref, f"{what}: {exc.message or exc}", locked)
        return BindOutcome("", loop.time() - started, rescheduled)

    async def _decision(self, args: BindingArgs) -> tuple[Decision | None, bool]:
        reservation = self.reservations.get(args.uid) if args.uid else None
        if reservation is not None and reservation.decision.node == args.node:
            return reservation.decision, False
        pod = await self.api.get("pods", args.pod_name, namespace=args.namespace)
        request = manifests.pod_request(pod, self.vendors)
        if args.uid and request.uid and request.uid != args.uid:
            raise ApiError(404, f"pod {args.key} has uid {request.uid}, not {args.uid}", "NotFound")
        # The service may bind any pod of the cluster; it binds only the device pods that are its own.
        if not request.wants_devices:
            raise HamiError("pod", "requests no device Hami manages; kube-scheduler binds such pods itself")
        foreign = trust.untrusted_scheduler(pod, (self.scheduler_name,))
        if foreign:
            raise HamiError("spec.schedulerName", foreign)
        # Schedule and reserve with no await in between: atomic with respect to concurrent filters.
        self.reservations.release(request.uid)
        decision = self.scheduler.schedule(request, self.reservations.state, [args.node])
        if decision.node is None:
            return None, True
        self.reservations.reserve(decision)
        return decision, True

    async def _already_ours(self, args: BindingArgs, annotations: dict[str, str]) -> bool:
        """A 409 for a retried bind whose first attempt did land (same node, same allocation)."""
        try:
            pod = await self.api.get("pods", args.pod_name, namespace=args.namespace)
        except ApiError:
            return False
        node = (pod.get("spec") or {}).get("nodeName")
        current = (pod.get("metadata") or {}).get("annotations") or {}
        return node == args.node and all(current.get(k) == annotations[k] for k in annotations
                                         if k.endswith("-devices-allocated"))

    async def _undo(self, args: BindingArgs, pod_ref: PodRef, message: str, locked: bool) -> BindOutcome:
        if locked and self.locks is not None:
            await release_node_lock(self.api, args.node, args.namespace, args.pod_name)
        return self._fail(args, pod_ref, message)

    def _fail(self, args: BindingArgs, pod_ref: PodRef, message: str) -> BindOutcome:
        self.reservations.release(args.uid)
        text = f"binding to {args.node} failed: {message}"
        log.info("%s: %s", args.key, text)
        if self.events is not None:
            self.events.emit(pod_ref, REASON_BIND_FAILED, text)
        return BindOutcome(text)
