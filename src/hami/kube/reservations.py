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

A reservation for a pod the cluster cache has not seen (`provisional`) lives `provisional_ttl_s` only, and
at most `max_provisional` of them exist at once: a `/filter` for a made-up pod can hold devices for a few
seconds but cannot crowd out real pods. The race it allows for (kube-scheduler's watch delivering a new
pod before ours does) ends when the informer sees the pod, which `promote`s its reservation.

Not thread-safe, like the state: everything runs on the event loop, and `reserve` must follow the
scheduling decision with no await in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hami.protocol.manifests import TERMINAL_PHASES, map_or_empty
from hami.scheduler.framework import Decision
from hami.scheduler.state import ClusterState


@dataclass(slots=True)
class Reservation:
    decision: Decision
    created: float
    expires: float
    binding: bool = False  # a bind is in flight or done: never expire, the informer confirms it
    bound: bool = False
    provisional: bool = False  # made for a pod the cluster cache has not seen (yet)


class Reservations:
    def __init__(self, state: ClusterState, ttl_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, *, provisional_ttl_s: float = 5.0,
                 max_provisional: int = 64) -> None:
        self.state = state
        self.ttl_s = ttl_s
        self.provisional_ttl_s = provisional_ttl_s
        self.max_provisional = max_provisional
        self.clock = clock
        self._provisional: set[str] = set()
        self._by_uid: dict[str, Reservation] = {}
        self._on_node: dict[str, dict[str, str]] = {}  # node -> {uid: pod key}, kept with _by_uid

    def __contains__(self, uid: object) -> bool:
        return uid in self._by_uid

    def __len__(self) -> int:
        return len(self._by_uid)

    def get(self, uid: str) -> Reservation | None:
        return self._by_uid.get(uid)

    def reserve(self, decision: Decision, *, provisional: bool = False) -> Reservation:
        """Account a placed decision (replacing any earlier reservation of the same pod)."""
        if decision.node is None:
            raise ValueError(f"{decision.pod.key}: cannot reserve an unplaced pod")
        self.release(decision.pod.uid)
        now = self.clock()
        self.state.add_pod(decision.record())
        ttl = self.provisional_ttl_s if provisional else self.ttl_s
        reservation = Reservation(decision, now, now + ttl, provisional=provisional)
        if provisional:
            self._provisional.add(decision.pod.uid)
        self._by_uid[decision.pod.uid] = reservation
        self._on_node.setdefault(decision.node, {})[decision.pod.uid] = decision.pod.key
        return reservation

    def provisional_full(self) -> bool:
        """Whether no further reservation for a pod the cache has not seen may be made now."""
        return len(self._provisional) >= self.max_provisional

    def promote(self, uid: str) -> None:
        """The cluster cache now knows the pod: its reservation lives the full TTL from now on."""
        reservation = self._by_uid.get(uid)
        if reservation is not None and reservation.provisional:
            reservation.provisional = False
            reservation.expires = self.clock() + self.ttl_s
            self._provisional.discard(uid)

    def _forget(self, uid: str) -> Reservation | None:
        self._provisional.discard(uid)
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


class SeenPods:
    """UIDs of the pending pods the informer has seen (not bound, not finished, not deleted): a filter for
    any other pod gets only a provisional reservation. Fed from the informer's pod events."""

    def __init__(self, reservations: Reservations) -> None:
        self.reservations = reservations
        self._pending: set[str] = set()

    def __contains__(self, uid: object) -> bool:
        return uid in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def observe(self, event_type: str, pod: Mapping[str, Any]) -> None:
        meta = map_or_empty(pod, "metadata")
        uid = meta.get("uid")
        if not isinstance(uid, str) or not uid:
            return
        phase = map_or_empty(pod, "status").get("phase")
        if event_type == "DELETED" or map_or_empty(pod, "spec").get("nodeName") or phase in TERMINAL_PHASES:
            self._pending.discard(uid)
        else:
            self._pending.add(uid)
        self.reservations.promote(uid)
