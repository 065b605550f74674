"""Decisions made at filter, held in the state until the pod's own annotations confirm them.

kube-scheduler filters a pod, then (if nothing else fails) asks us to bind it. Between the two, the devices
the filter chose must count as used, or a concurrent filter would hand them out again. A reservation does
that: `reserve` accounts the decision in the ClusterState and remembers it by pod UID, so `/bind` binds
exactly what `/filter` chose. It ends in one of three ways:

- confirmed: the informer sees the pod carrying the allocation annotation (the record is then the
  informer's, taken from the API server, and stays);
- released: the pod was deleted, re-filtered, or its bind failed;
- expired: kube-scheduler never came back to bind (another plugin failed after filter, the scheduler
  restarted...). After a successful bind a reservation no longer expires; only the informer ends it.

Not thread-safe, like the state: everything runs on the event loop, and `reserve` must follow the
scheduling decision with no await in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hami.scheduler.framework import Decision
from hami.scheduler.state import ClusterState


@dataclass(slots=True)
class Reservation:
    decision: Decision
    created: float
    expires: float
    binding: bool = False  # a bind is in flight or done: never expire, the informer confirms it
    bound: bool = False


class Reservations:
    def __init__(self, state: ClusterState, ttl_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.ttl_s = ttl_s
        self.clock = clock
        self._by_uid: dict[str, Reservation] = {}
        self._on_node: dict[str, dict[str, str]] = {}  # node -> {uid: pod key}, kept with _by_uid

    def __contains__(self, uid: object) -> bool:
        return uid in self._by_uid

    def __len__(self) -> int:
        return len(self._by_uid)

    def get(self, uid: str) -> Reservation | None:
        return self._by_uid.get(uid)

    def reserve(self, decision: Decision) -> Reservation:
        """Account a placed decision (replacing any earlier reservation of the same pod)."""
        if decision.node is None:
            raise ValueError(f"{decision.pod.key}: cannot reserve an unplaced pod")
        self.release(decision.pod.uid)
        now = self.clock()
        self.state.add_pod(decision.record())
        reservation = Reservation(decision, now, now + self.ttl_s)
        self._by_uid[decision.pod.uid] = reservation
        self._on_node.setdefault(decision.node, {})[decision.pod.uid] = decision.pod.key
        return reservation

    def _forget(self, uid: str) -> Reservation | None:
        reservation = self._by_uid.pop(uid, None)
        if reservation is not None and reservation.decision.node is not None:
            pods = self._on_node.get(reservation.decision.node)
            if pods is not None:
                pods.pop(uid, None)
                if not pods:
                    del self._on_node[reservation.decision.node]
        return reservation

    def release(self, uid: str) -> Decision | None:
        """Forget the reservation and give its devices back (unless the informer already confirmed it)."""
        reservation = self._forget(uid)
        if reservation is None:
            return None
        record = self.state.pods.get(uid)
        if record is not None and record == reservation.decision.record():
            self.state.remove_pod(uid)
        return reservation.decision

    def confirm(self, uid: str) -> None:
        """The API server now holds the allocation; the informer's record replaces ours."""
        self._forget(uid)

    def expire(self) -> list[Decision]:
        """Release reservations whose bind never came; returns them (for logs and metrics)."""
        now = self.clock()
        stale = [uid for uid, r in self._by_uid.items() if not r.binding and r.expires <= now]
        return [d for uid in stale if (d := self.release(uid)) is not None]

    def pending_on_nodes(self) -> Mapping[str, Mapping[str, str]]:
        """node -> {uid: pod key (namespace/name)} of the pods reserved there and not yet confirmed. A live
        view kept as reservations come and go (filter reads it on every call): do not modify it."""
        return self._on_node

    def release_unbound(self) -> int:
        """Release every reservation no bind has started on (a replica that stops leading)."""
        uids = [uid for uid, r in self._by_uid.items() if not r.binding]
        for uid in uids:
            self.release(uid)
        return len(uids)

    def created_before(self, at: float) -> list[str]:
        """UIDs reserved before `at` (a re-list started then can tell which of them are gone)."""
        return [uid for uid, r in self._by_uid.items() if r.created < at]
