"""`HamiService`: one ASGI app serving the extender verbs, the webhook, health and metrics, fed by a watch.

This is wiring: one ClusterState, the informer that fills it, the reservations and binder that write
through it, and the background tasks (informer, events, leader election, reservation expiry, TLS reload,
the device-plugin stand-in for static clusters) tied to the app's lifespan.

Health: `/healthz` (alive), `/readyz` (cache synced, every background task running and, with leader
election, leader). Readiness follows leadership on purpose: the Service then sends kube-scheduler and the
API server to the leader only, which is what kube-scheduler handles best (a follower's Error would fail the
pod's cycle). A background task that fails is logged, shown by /readyz and restarted after a back-off; the
informer restarts with a full re-list, and /readyz stays failed until that list is done.

Two apps: `app()` serves the webhook, health and metrics (for the API server, probes and Prometheus), and
`extender_app()` the extender verbs, which only kube-scheduler may call (services/cli.py puts them on a
loopback or mutual-TLS listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from hami.kube.api import KubeApi
from hami.kube.binder import Binder
from hami.kube.devicesim import DevicePluginSimulator
from hami.kube.events import EventRecorder
from hami.kube.informer import ClusterInformer
from hami.kube.leader import LeaderElector, LeaseConfig
from hami.kube.nodelock import LockConfig, NodeLocks
from hami.kube.podlabel import VgpuNodeLabeler
from hami.kube.reservations import Reservations, SeenPods
from hami.scheduler.framework import Scheduler
from hami.scheduler.state import ClusterState
from hami.services import extender as extender_routes
from hami.services import webhook as webhook_routes
from hami.services.extender import Extender
from hami.services.metrics import ServiceMetrics
from hami.services.tls import ReloadingTLS
from hami.vendors.base import Vendor
from hami.vendors.registry import default_vendors

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    scheduler_name: str = "hami-scheduler"
    trusted_schedulers: tuple[str, ...] = ()  # other schedulers whose allocations count (e.g. HAMi's, renamed)
    reservation_ttl_s: float = 30.0
    node_lock: bool = True
    node_queue_depth: int = 1  # pods in line for one node's lock before filter prefers another (0: never)
    lock: LockConfig = field(default_factory=LockConfig)
    leader: LeaseConfig | None = None  # None: no election, this replica always decides
    simulate_device_plugin: bool = False
    track_node_resources: bool = False
    registration_expiry_s: float = 60.0  # protocol/liveness: a stale registration with no allocatable devices
    hami_legacy_metrics: bool = False
    events: bool = True
    # An AdmissionReview of an UPDATE carries two pods of at most 1.5 MiB (etcd's object limit); extender
    # bodies are node names (nodeCacheCapable). 4 MiB bounds what one request can make the process hold.
    max_body_bytes: int = 4 << 20
    restart_backoff_s: float = 1.0  # first wait before a failed background task is restarted (doubles, <= 30 s)


class HamiService:
    def __init__(self, api: KubeApi, config: ServiceConfig | None = None, *, scheduler: Scheduler | None = None,
                 vendors: Sequence[Vendor] | None = None, tls: ReloadingTLS | None = None) -> None:
        self.api = api
        self.config = config = config or ServiceConfig()
        self.vendors = tuple(default_vendors() if vendors is None else vendors)
        self.scheduler = scheduler or Scheduler()
        self.state = ClusterState()
        self.reservations = Reservations(self.state, config.reservation_ttl_s)
        self.locks = NodeLocks(api, config.lock) if config.node_lock else None
        self.events = EventRecorder(api, component=config.scheduler_name) if config.events else None
        self.metrics = ServiceMetrics(self.state, hami_legacy_names=config.hami_legacy_metrics)
        self.labeler = VgpuNodeLabeler(api, self.is_leader)
        self.seen = SeenPods(self.reservations)
        self.informer = ClusterInformer(api, self.state, self.vendors, self.reservations,
                                        track_node_resources=config.track_node_resources,
                                        on_node=self.locks.notify if self.locks else None,
                                        on_pod=self._on_pod,
                                        registration_expiry_s=config.registration_expiry_s,
                                        events=self.events, tell=self.is_leader,
                                        trusted_schedulers=(config.scheduler_name, *config.trusted_schedulers))
        self.leader = LeaderElector(api, config.leader, on_change=self._leader_changed) if config.leader else None
        self.binder = Binder(api, self.scheduler, self.reservations, self.vendors, self.locks, self.events,
                             max_wait_s=config.lock.max_wait_s, scheduler_name=config.scheduler_name)
        self.extender = Extender(self.state, self.scheduler, self.reservations, self.binder, self.vendors,
                                 events=self.events, metrics=self.metrics, is_leader=self.is_leader,
                                 locks=self.locks, queue_depth=config.node_queue_depth, seen=self.seen,
                                 synced=self.informer.synced.is_set)
        self.tls = tls
        self.down: dict[str, str] = {}  # background task -> why it is not running
        self.metrics.leader.set(1 if self.is_leader() else 0)

    # -- state --------------------------------------------------------------------------------------
    def is_leader(self) -> bool:
        return self.leader is None or self.leader.is_leader

    def _on_pod(self, event_type: str, pod: Any) -> None:
        self.labeler.observe(event_type, pod)
        self.seen.observe(event_type, pod)

    def _leader_changed(self, leader: bool) -> None:
        self.metrics.leader.set(1 if leader else 0)
        if not leader:
            # Reservations of a former leader would pin devices nobody is going to bind.
            self.reservations.release_unbound()

    def ready(self) -> tuple[bool, str]:
        if self.down:
            return False, "; ".join(f"background task {name} is down ({why})" for name, why in self.down.items())
        if not self.informer.synced.is_set():
            return False, "cluster cache not synced yet"
        if not self.is_leader():
            holder = self.leader.holder if self.leader else ""
            return False, f"not the leader (leader: {holder or 'none'})"
        return True, "ok"

    # -- background ---------------------------------------------------------------------------------
    async def _expire_reservations(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            expired = self.reservations.expire()
            if expired:
                self.metrics.reservations_expired.inc(len(expired))
                log.info("released %d reservations never bound: %s", len(expired),
                         ", ".join(d.pod.key for d in expired[:10]))
            self.metrics.reservations.set(len(self.reservations))

    def _background(self) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        """name -> a factory for the task's coroutine (called again for each restart)."""
        tasks: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "informer": self.informer.run, "reservation-expiry": self._expire_reservations,
            "pod-labeler": self.labeler.run}
        if self.events is not None:
            tasks["events"] = self.events.run
        if self.leader is not None:
            tasks["leader-election"] = self.leader.run
        if self.tls is not None:
            tasks["tls-reload"] = self.tls.watch
        if self.config.simulate_device_plugin:
            simulator = DevicePluginSimulator(self.api, self.vendors)
            tasks["device-plugin-simulator"] = simulator.run
        return tasks

    async def _supervise(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a background task for ever: when it fails (or returns, which none should), mark it down for
        /readyz, log it, and start it again after a back-off that doubles up to 30 s."""
        backoff = self.config.restart_backoff_s
        while True:
            started = time.monotonic()
            try:
                await factory()
                why = "it stopped"
                log.error("background task %s stopped; restarting", name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("background task %s failed; restarting", name)
            self.down[name] = why
            self.metrics.background_failures.labels(name).inc()
            if name == "leader-election" and self.leader is not None:
                self.leader.step_down()  # nobody renews the Lease now: stop deciding before another leads
            if time.monotonic() - started > 60:
                backoff = self.config.restart_backoff_s  # it ran a good while: a fresh failure
            await asyncio.sleep(backoff)
            backoff = min(30.0, backoff * 2)
            del self.down[name]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HamiService]:
        """Run the background tasks for the duration of the block, each supervised (see _supervise)."""
        tasks = [asyncio.create_task(self._supervise(name, factory), name=name)
                 for name, factory in self._background().items()]
        try:
            yield self
        finally:
            await _cancel_all(tasks)
            if self.leader is not None:
                await self.leader.release()

    # -- HTTP ---------------------------------------------------------------------------------------
    def app(self, *, with_extender: bool = True) -> Starlette:
        """Webhook, health, metrics, and the extender verbs unless they get a listener of their own."""
        async def healthz(request: Request) -> Response:
            return PlainTextResponse("ok")

        async def readyz(request: Request) -> Response:
            ok, why = self.ready()
            return PlainTextResponse(why, status_code=200 if ok else 503)

        async def metrics(request: Request) -> Response:
            return Response(await self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with self.running():
                yield

        return Starlette(
            routes=[
                *(extender_routes.routes(self.extender, self.metrics) if with_extender else ()),
                *webhook_routes.routes(self.vendors, self.config.scheduler_name, self.metrics, self.scheduler),
                Route("/healthz", healthz), Route("/livez", healthz), Route("/readyz", readyz),
                Route("/metrics", metrics),
            ],
            lifespan=lifespan,
            max_body_size=self.config.max_body_bytes,
        )

    def extender_app(self) -> Starlette:
        """The extender verbs alone, for kube-scheduler's listener (the background tasks run with `app()`)."""
        return Starlette(routes=extender_routes.routes(self.extender, self.metrics),
                         max_body_size=self.config.max_body_bytes)


async def _cancel_all(tasks: list[asyncio.Task[None]], attempts: int = 50) -> None:
    """Cancel and wait, cancelling again what is still running: Python 3.11's asyncio.wait_for (used inside
    some watches) swallows a cancellation that arrives just as its inner wait completes."""
    pending = {t for t in tasks if not t.done()}
    for _ in range(attempts):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    log.warning("background tasks did not stop: %s", ", ".join(repr(t.get_coro()) for t in pending))

