"""HAMi's node lock (SPEC §3), with waiting in line instead of HAMi's fail-fast.

The lock is the node annotation `hami.io/mutex.lock = <RFC3339>,<namespace>,<pod>`. The scheduler takes it
before binding and leaves it held: HAMi's device plugin releases it once it has allocated that pod's
containers, and uses it meanwhile to know which pod a kubelet Allocate call is for. So a second pod bound
to the same node must wait until the device plugin is done with the first.

HAMi fails such a bind at once, and kube-scheduler then backs the pod off for up to minutes. Here a bind
waits its turn instead: binds to one node queue in arrival order (an asyncio.Lock is FIFO), a bounded
number of them for a bounded time, while binds to different nodes never wait on each other. The lock is
taken with a conditional patch (the node's resourceVersion), so two writers can never both win. A lock
is stale, and taken over, when it is older than the expiry, its pod is gone or finished, or its pod's
`bind-phase` says the device plugin is done with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hami.kube.api import ApiError, KubeApi
from hami.protocol import annotations as anno
from hami.protocol.manifests import TERMINAL_PHASES, map_or_empty
from hami.resources import HamiError

log = logging.getLogger(__name__)

RELEASE_ATTEMPTS = 5  # conflicts in a row before a release gives up (each one is a fresh read of the node)


class NodeLockError(Exception):
    """The lock could not be had in time (or too many binds already wait for this node)."""


@dataclass(frozen=True, slots=True)
class LockConfig:
    expiry_s: float = 300.0  # HAMi's default: a lock this old is abandoned
    max_wait_s: float = 20.0  # below kube-scheduler's extender httpTimeout (30 s in our config)
    max_waiters: int = 256  # per node; more would wait longer than max_wait_s anyway
    poll_s: float = 0.5  # fallback re-check when no node event wakes us


def _now() -> datetime:
    return datetime.now(UTC)


class NodeLocks:
    def __init__(self, api: KubeApi, config: LockConfig | None = None,
                 clock: Callable[[], datetime] = _now) -> None:
        self.api = api
        self.config = config or LockConfig()
        self.clock = clock
        self._queues: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}
        self._changed: dict[str, asyncio.Event] = {}
        # node -> the lock as the informer last saw it, decoded once (filter reads them on every call);
        # None for a value that cannot be read
        self._locked: dict[str, anno.NodeLock | None] = {}
        self.takeovers = 0

    def notify(self, node: str, annotations: Mapping[str, str] | None = None) -> None:
        """The node object changed (the informer saw it): note its lock, wake whoever waits for it."""
        if annotations is not None:
            value = annotations.get(anno.NODE_LOCK)
            if value:
                try:
                    self._locked[node] = anno.decode_node_lock(value)
                except HamiError:
                    self._locked[node] = None
            else:
                self._locked.pop(node, None)
        event = self._changed.get(node)
        if event is not None:
            event.set()

    def held(self) -> dict[str, str]:
        """node -> `namespace/pod` of every live lock the informer has seen: pods a device plugin is still
        allocating, which the next bind to that node will wait for. Usually a handful."""
        out = {}
        now = self.clock()
        for node, lock in self._locked.items():
            if lock is not None and now - lock.at <= timedelta(seconds=self.config.expiry_s):
                out[node] = f"{lock.namespace}/{lock.pod}"
        return out

    def waiting(self, node: str) -> int:
        return self._waiting.get(node, 0)

    def turn(self, node: str, deadline: float) -> _Turn:
        """`async with locks.turn(node, deadline):` this bind's place in the node's queue, bounded in length
        and in time (loop time); NodeLockError when either bound is hit."""
        return _Turn(self, node, deadline)

    async def acquire(self, node: str, namespace: str, pod: str, deadline: float) -> None:
        """Take the API lock for `pod` on `node` (call within its turn). Raises NodeLockError at the deadline
        (loop time) and ApiError when the node is gone."""
        loop = asyncio.get_running_loop()
        checked_gone: set[str] = set()
        while True:
            changed = self._changed.setdefault(node, asyncio.Event())
            changed.clear()
            obj = await self.api.get("nodes", node)
            meta = obj.get("metadata") or {}
            current = (meta.get("annotations") or {}).get(anno.NODE_LOCK)
            if current:
                holder = await self._holder_alive(current, namespace, pod, checked_gone)
                if holder is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise NodeLockError(f"node {node} is locked by {holder}")
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
                    # arrives as the event fires.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min(remaining, self.config.poll_s)):
                            await changed.wait()
                    continue
                if not current.endswith(f",{namespace},{pod}"):
                    self.takeovers += 1
                    log.info("node %s: taking over stale lock %r", node, current)
            value = anno.encode_node_lock(self.clock(), namespace, pod)
            try:
                await self.api.patch_annotations("nodes", node, {anno.NODE_LOCK: value},
                                                 resource_version=str(meta.get("resourceVersion", "")))
                return
            except ApiError as exc:
                if exc.status != 409:
                    raise
                # Someone else wrote the node meanwhile (its agent, HAMi, another lock): look again.

    async def _holder_alive(self, value: str, namespace: str, pod: str, checked_gone: set[str]) -> str | None:
        """Who holds a live lock, or None when it is free for us (ours already, stale, or malformed)."""
        try:
            lock = anno.decode_node_lock(value)
        except HamiError:
            log.warning("malformed node lock %r, taking it over", value)
            return None
        if (lock.namespace, lock.pod) == (namespace, pod):
            return None  # a retried bind of the same pod
        if self.clock() - lock.at > timedelta(seconds=self.config.expiry_s):
            return None
        if not lock.pod:
            return "a pod-less lock"
        holder = f"{lock.namespace}/{lock.pod}"
        if value in checked_gone:
            return None
        if await self._pod_done(lock.namespace, lock.pod):
            checked_gone.add(value)
            return None
        return holder

    async def _pod_done(self, namespace: str, name: str) -> bool:
        try:
            obj = await self.api.get("pods", name, namespace=namespace)
        except ApiError as exc:
            return exc.status == 404
        phase = (obj.get("status") or {}).get("phase")
        bind_phase = ((obj.get("metadata") or {}).get("annotations") or {}).get(anno.BIND_PHASE)
        return phase in TERMINAL_PHASES or bind_phase in (anno.BIND_PHASE_SUCCESS, anno.BIND_PHASE_FAILED)

async def release_node_lock(api: KubeApi, node: str, namespace: str, pod: str, *,
                            attempts: int = RELEASE_ATTEMPTS) -> bool:
    """Remove `node`'s lock if `namespace/pod` holds it: after a failed bind (scheduler), once a pod's containers
    are served or its allocation failed (node agent, device-plugin stand-in).

    The patch is conditional on the node's resourceVersion, so a lock someone else took meanwhile survives; a
    409 means the node changed under us (its agent, another lock): look again. A lock held by another pod, or
    one that cannot be read, is left alone. Returns False only when the pod may still hold the lock (conflicts
    all the way, or another API error, logged with the node's name); a node that is gone holds no lock.
    """
    for _ in range(attempts):
        try:
            obj = await api.get("nodes", node)
            meta = map_or_empty(obj, "metadata")
            value = map_or_empty(meta, "annotations").get(anno.NODE_LOCK)
            if not value:
                return True
            try:
                lock = anno.decode_node_lock(str(value))
            except HamiError:
                return True  # not provably this pod's: the next bind takes it over when it is stale
            if (lock.namespace, lock.pod) != (namespace, pod):
                return True
            await api.patch_annotations("nodes", node, {anno.NODE_LOCK: None},
                                        resource_version=str(meta.get("resourceVersion", "")))
            return True
        except ApiError as exc:
            if exc.status == 404:
                return True
            if exc.status != 409:
                log.warning("node %s: could not release the lock of %s/%s: %s", node, namespace, pod, exc)
                return False
    log.warning("node %s: could not release the lock of %s/%s: the node kept changing (%d tries)", node,
                namespace, pod, attempts)
    return False


class _Turn:
    def __init__(self, locks: NodeLocks, node: str, deadline: float) -> None:
        self.locks, self.node, self.deadline = locks, node, deadline

    async def __aenter__(self) -> None:
        locks, node = self.locks, self.node
        if locks._waiting.get(node, 0) >= locks.config.max_waiters:
            raise NodeLockError(f"{locks._waiting[node]} binds already wait for node {node}")
        locks._waiting[node] = locks._waiting.get(node, 0) + 1
        queue = locks._queues.setdefault(node, asyncio.Lock())
        try:
            async with asyncio.timeout_at(self.deadline):
                await queue.acquire()
        except TimeoutError:
            self._leave()
            raise NodeLockError(f"timed out waiting behind {locks._waiting.get(node, 0)} binds for node "
                                f"{node}") from None
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.locks._queues[self.node].release()
        self._leave()

    def _leave(self) -> None:
        locks, node = self.locks, self.node
        locks._waiting[node] -= 1
        if not locks._waiting[node]:
            del locks._waiting[node]
            queue = locks._queues.get(node)
            if queue is not None and not queue.locked():
                del locks._queues[node]
                locks._changed.pop(node, None)
