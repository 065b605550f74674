"""Kubernetes Events on pods and nodes, so `kubectl describe` says why a pod is pending or failed to bind, or
why a node takes no work.

Emitting never blocks a filter or a bind: events go into a bounded queue that a background task writes
out (dropping, with a count, when the API server cannot keep up). The same message for the same pod is
not repeated within `dedup_s`: kube-scheduler retries a pending pod often, and one line per reason is
what a reader wants.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from hami.kube.api import ApiError, KubeApi, KubeObject

log = logging.getLogger(__name__)

COMPONENT = "hami-scheduler"
MAX_MESSAGE = 1024  # the API server truncates longer messages anyway
CLUSTER_EVENTS_NAMESPACE = "default"  # where Events about cluster-scoped objects (nodes) go


@dataclass(frozen=True, slots=True)
class PodRef:
    namespace: str
    name: str
    uid: str = ""


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A Node as an Event's subject. Nodes have no namespace; their Events live in `default`, as kubelet's do."""

    name: str
    uid: str = ""


EventSubject = PodRef | NodeRef

_DEVICE_REASON = re.compile(r"\d+/\d+ ([A-Za-z]+)")


def coarse_reason(reason: str) -> str:
    """A per-node reason without its per-node counts, so equal causes add up across nodes:
    `NodeInsufficientDevice: need 1, 0/8 fit, 8/8 CardInsufficientMemory` →
    `NodeInsufficientDevice (CardInsufficientMemory)`."""
    head, sep, detail = reason.partition(": ")
    names = [n for n in _DEVICE_REASON.findall(detail) if n != "fit"] if sep else []
    return f"{head} ({', '.join(dict.fromkeys(names))})" if names else reason


def summarize(reasons: Mapping[str, str], total: int, limit: int = 6, names: int = 4) -> str:
    """kube-scheduler's style, `0/8 nodes are available: 5 NodeInsufficientDevice (CardInsufficientMemory)
    [n1, n2, n3, n4, ...], 3 ...`, from per-node reasons, the most frequent first. The node names make
    `kubectl describe pod` say where it looked, not only how often it failed."""
    by_reason: dict[str, list[str]] = {}
    for node in sorted(reasons):
        by_reason.setdefault(coarse_reason(reasons[node]), []).append(node)
    ranked = sorted(by_reason.items(), key=lambda item: -len(item[1]))
    parts = []
    for reason, nodes in ranked[:limit]:
        shown = ", ".join(nodes[:names]) + (", ..." if len(nodes) > names else "")
        parts.append(f"{len(nodes)} {reason} [{shown}]")
    if len(ranked) > limit:
        parts.append(f"{sum(len(nodes) for _, nodes in ranked[limit:])} other")
    fit = total - len(reasons)
    head = f"{fit}/{total} nodes are available"
    return f"{head}: {', '.join(parts)}." if parts else f"{head}."


def _timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(self, api: KubeApi, *, component: str = COMPONENT, instance: str | None = None,
                 action: str = "Scheduling", max_queue: int = 1000, dedup_s: float = 60.0) -> None:
        self.api = api
        self.component = component
        self.action = action  # what the component was doing: Scheduling (extender), Allocating (agent)
        self.instance = instance or socket.gethostname()
        self.dedup_s = dedup_s
        self._queue: asyncio.Queue[KubeObject] = asyncio.Queue(max_queue)
        self._recent: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self.dropped = 0
        self.sent = 0

    def emit(self, subject: EventSubject, reason: str, message: str, event_type: str = "Warning") -> None:
        key = (subject.uid or repr(subject), reason, message)
        now = time.monotonic()
        last = self._recent.get(key)
        if last is not None and now - last < self.dedup_s:
            return
        self._recent[key] = now
        self._recent.move_to_end(key)
        while len(self._recent) > 10_000:
            self._recent.popitem(last=False)
        try:
            self._queue.put_nowait(self._event(subject, reason, message, event_type))
        except asyncio.QueueFull:
            self.dropped += 1

    def _event(self, subject: EventSubject, reason: str, message: str, event_type: str) -> KubeObject:
        at = datetime.now(UTC)
        if isinstance(subject, NodeRef):
            namespace = CLUSTER_EVENTS_NAMESPACE
            involved = {"apiVersion": "v1", "kind": "Node", "name": subject.name}
        else:
            namespace = subject.namespace
            involved = {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": subject.name}
        if subject.uid:
            involved["uid"] = subject.uid
        return {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{subject.name}.", "namespace": namespace},
            "involvedObject": involved,
            "reason": reason, "message": message[:MAX_MESSAGE], "type": event_type,
            "source": {"component": self.component},
            "firstTimestamp": _timestamp(at), "lastTimestamp": _timestamp(at),
            "count": 1, "action": self.action,
            "reportingComponent": self.component, "reportingInstance": self.instance,
        }

    def pending(self) -> Iterable[KubeObject]:
        """Events not yet written (tests, shutdown)."""
        return list(self._queue._queue)  # type: ignore[attr-defined]

    async def run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self.api.create("events", event, namespace=event["metadata"]["namespace"])
                self.sent += 1
            except ApiError as exc:
                log.warning("could not record event %s for %s: %s", event["reason"],
                            event["involvedObject"]["name"], exc)
            except Exception:  # an event is never worth stopping the recorder for
                log.exception("could not record event")
