"""`hami serve`: the extender, webhook, health and metrics in one process (a Typer sub-app).

Mounted in hami/cli.py with `app.add_typer(serve_app, name="serve")`. Talks to Kubernetes through
`--kubeconfig` (or the in-cluster service account), or serves a static cluster read from `--cluster-file`
(the format of `hami place`), binding in memory, for demos and tests without Kubernetes.

Who reaches what (docs/security.md): `--listen` serves the webhook, health and metrics; the extender verbs,
which bind pods with the service's cluster-wide right, get their own listener (`--extender-listen`), on
loopback (kube-scheduler runs in the same pod) or with mutual TLS (`--extender-client-ca`). A listener
that is reachable from outside the pod and has no client authentication is refused at start.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from hami.resources import HamiError

if TYPE_CHECKING:
    from hami.scheduler.framework import Scheduler
    from hami.services.app import ServiceConfig

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, help="Serve the scheduler extender and admission webhook.")


def parse_listen(text: str, flag: str = "--listen") -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` (all interfaces) or `[::1]:PORT`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise HamiError(flag, f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Listeners:
    """Where the service listens: `main` for the webhook, health and metrics; `extender` for the extender
    verbs (None: the main listener serves them too)."""

    main: tuple[str, int]
    extender: tuple[str, int] | None
    tls: bool
    extender_client_ca: bool


def plan_listeners(listen: str | None, extender_listen: str | None, *, tls: bool,
                   extender_client_ca: bool) -> Listeners:
    """Defaults: with TLS, `:8443` and the extender on `127.0.0.1:8444`; without, one plain listener on
    `127.0.0.1:8080`. An extender listener that is not loopback needs mutual TLS."""
    main = parse_listen(listen or (":8443" if tls else "127.0.0.1:8080"))
    if extender_listen is None:
        ext = parse_listen("127.0.0.1:8444") if tls else main
    else:
        ext = parse_listen(extender_listen, "--extender-listen")
    if extender_client_ca and not tls:
        raise HamiError("--extender-client-ca", "needs --tls-cert and --tls-key (mutual TLS)")
    if not is_loopback(ext[0]) and not extender_client_ca:
        flag = "--extender-listen" if ext != main or extender_listen else "--listen"
        raise HamiError(flag, f"the extender verbs would listen on {ext[0]}:{ext[1]}, reachable from outside "
                              "this pod, without client authentication: give --extender-client-ca (mutual TLS "
                              "with kube-scheduler's extender tlsConfig) or a loopback --extender-listen")
    return Listeners(main, None if ext == main else ext, tls, extender_client_ca)


def _split(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


@app.callback(invoke_without_command=True)
def serve(
    listen: Annotated[str | None, typer.Option(
        help="HOST:PORT of the webhook, /healthz, /readyz and /metrics [default: :8443 with TLS, 127.0.0.1:8080 "
             "without]")] = None,
    extender_listen: Annotated[str | None, typer.Option(
        help="HOST:PORT of the extender verbs, for kube-scheduler only: loopback, or any address with "
             "--extender-client-ca [default: 127.0.0.1:8444 with TLS, else --listen]")] = None,
    extender_client_ca: Annotated[Path | None, typer.Option(
        help="CA (PEM) whose client certificates the extender listener requires (mutual TLS)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="server certificate (PEM), reloaded when it changes")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="server private key (PEM)")] = None,
    cluster_file: Annotated[Path | None, typer.Option(
        help="serve a static cluster from this file (`kubectl get nodes,pods -A -o yaml`), binding in memory")
    ] = None,
    kubeconfig: Annotated[Path | None, typer.Option(help="kubeconfig [default: in-cluster, then $KUBECONFIG]")
                          ] = None,
    context: Annotated[str | None, typer.Option(help="kubeconfig context")] = None,
    scheduler_name: Annotated[str, typer.Option(help="schedulerName the webhook sets on device pods")
                              ] = "hami-scheduler",
    trusted_scheduler: Annotated[list[str] | None, typer.Option(
        help="another scheduler whose pods' allocation annotations count (repeatable; e.g. HAMi's own "
             "scheduler under another name); pods of any other scheduler hold nothing")] = None,
    namespace: Annotated[str | None, typer.Option(
        help="namespace of the leader Lease [default: $POD_NAMESPACE, the service account's, kube-system]")
    ] = None,
    leader_elect: Annotated[bool | None, typer.Option(
        "--leader-elect/--no-leader-elect", help="elect a leader on a Lease [default: on with Kubernetes]")
    ] = None,
    lease_name: Annotated[str, typer.Option(help="name of the leader Lease")] = "hami-scheduler",
    node_policy: Annotated[str | None, typer.Option(help="cluster default node policy (binpack, spread...)")
                           ] = None,
    device_policy: Annotated[str | None, typer.Option(help="cluster default device policy chain")] = None,
    reservation_ttl: Annotated[float, typer.Option(help="seconds a filter reservation waits for its bind")
                               ] = 30.0,
    node_lock: Annotated[bool, typer.Option(help="take HAMi's node lock before binding")] = True,
    node_queue_depth: Annotated[int, typer.Option(
        help="pods waiting for one node's lock before filter prefers the next-best node (0: never)")] = 1,
    lock_expiry: Annotated[float, typer.Option(help="seconds after which a node lock is stale")] = 300.0,
    bind_wait: Annotated[float, typer.Option(help="longest a bind waits for its node's lock, seconds")] = 20.0,
    registration_expiry: Annotated[float, typer.Option(
        help="seconds after its handshake a registration is stale; a stale one with no allocatable devices "
             "takes no new work")] = 60.0,
    simulate_device_plugin: Annotated[bool | None, typer.Option(
        "--simulate-device-plugin/--no-simulate-device-plugin",
        help="acknowledge allocations as HAMi's device plugin would [default: on with --cluster-file]")] = None,
    hami_metric_names: Annotated[bool, typer.Option(
        help="also export HAMi's own metric names (GPUDeviceMemoryAllocated...)")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Serve /filter /prioritize /bind /preempt, /webhook, /healthz /readyz and /metrics."""
    from hami.kube.leader import LeaseConfig
    from hami.kube.nodelock import LockConfig
    from hami.scheduler.framework import Scheduler, SchedulerConfig
    from hami.services.app import ServiceConfig

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call drowns everything else
    try:
        if (tls_cert is None) != (tls_key is None):
            raise HamiError("--tls-cert/--tls-key", "give both or neither")
        if cluster_file is not None and kubeconfig is not None:
            raise HamiError("--cluster-file", "cannot be combined with --kubeconfig")
        listeners = plan_listeners(listen, extender_listen, tls=tls_cert is not None,
                                   extender_client_ca=extender_client_ca is not None)
        static = cluster_file is not None
        defaults = SchedulerConfig()
        scheduler = Scheduler(SchedulerConfig(
            node_policy=node_policy or defaults.node_policy,
            device_policy=_split(device_policy) if device_policy else defaults.device_policy))
        elect = (not static) if leader_elect is None else leader_elect
        lease = None
        if elect:
            from hami.kube.client import in_cluster_namespace
            lease = LeaseConfig(
                namespace=namespace or os.environ.get("POD_NAMESPACE") or in_cluster_namespace() or "kube-system",
                name=lease_name, identity=f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}")
        config = ServiceConfig(
            scheduler_name=scheduler_name,
            trusted_schedulers=tuple(n for item in trusted_scheduler or () for n in _split(item)),
            reservation_ttl_s=reservation_ttl, node_lock=node_lock,
            node_queue_depth=node_queue_depth,
            lock=LockConfig(expiry_s=lock_expiry, max_wait_s=bind_wait), leader=lease,
            simulate_device_plugin=static if simulate_device_plugin is None else simulate_device_plugin,
            registration_expiry_s=registration_expiry,
            hami_legacy_metrics=hami_metric_names)
        asyncio.run(_serve(config, scheduler, listeners, tls_cert, tls_key, extender_client_ca, cluster_file,
                           kubeconfig, context, log_level))
    except HamiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


async def _serve(config: ServiceConfig, scheduler: Scheduler, listeners: Listeners, tls_cert: Path | None,
                 tls_key: Path | None, client_ca: Path | None, cluster_file: Path | None, kubeconfig: Path | None,
                 context: str | None, log_level: str) -> None:
    import contextlib
    import ssl
    from collections.abc import Callable, Iterator

    import uvicorn

    class _SignalFreeServer(uvicorn.Server):
        """The extender's server: the main server handles SIGTERM/SIGINT and then stops this one."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    from hami.kube.api import KubeApi
    from hami.services.app import HamiService
    from hami.services.tls import ReloadingTLS

    api: KubeApi
    close = None
    if cluster_file is not None:
        from hami.kube.memory import MemoryKubeApi
        from hami.protocol.manifests import load_manifests

        nodes, pods = load_manifests(cluster_file)
        api = MemoryKubeApi.from_objects(nodes, pods)
    else:
        from hami.kube.client import HttpKubeApi, in_cluster_config, load_kubeconfig

        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kube_config = in_cluster_config()
        else:
            kube_config = load_kubeconfig(kubeconfig, context)
        http_api = HttpKubeApi(kube_config)
        api, close = http_api, http_api.aclose
    tls = None
    if tls_cert and tls_key:
        tls = ReloadingTLS(str(tls_cert), str(tls_key), str(client_ca) if client_ca else None)
    service = HamiService(api, config, scheduler=scheduler, tls=tls)

    def factory_for(context: ssl.SSLContext | None
                    ) -> Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext] | None:
        if context is None:
            return None
        return lambda cfg, default: context

    def server_config(app: Any, where: tuple[str, int], context: ssl.SSLContext | None, lifespan: Literal["on", "off"]
                      ) -> uvicorn.Config:
        # limit_concurrency bounds what concurrent bodies (max_body_bytes each) can make the process hold.
        return uvicorn.Config(app, host=where[0], port=where[1], log_level=log_level.lower(), access_log=False,
                              http="h11", ssl_context_factory=factory_for(context), timeout_keep_alive=75,
                              lifespan=lifespan, limit_concurrency=256)

    for name, where in (("webhook/health/metrics", listeners.main), ("extender", listeners.extender)):
        if where is not None and not listeners.tls:
            log.warning("PLAIN HTTP on %s:%d (%s): for tests and demos only; anyone who reaches this port can "
                        "read and drive the scheduler. Give --tls-cert/--tls-key in a cluster.", *where, name)
    extender_tls = tls.client_auth_context or tls.context if tls is not None else None
    main = uvicorn.Server(server_config(service.app(with_extender=listeners.extender is None), listeners.main,
                                        tls.context if tls else None, "on"))
    servers = [main.serve()]
    extender = None
    if listeners.extender is not None:
        extender = _SignalFreeServer(server_config(service.extender_app(), listeners.extender, extender_tls, "off"))
        servers.append(extender.serve())

    async def main_then_extender() -> None:
        try:
            await servers[0]
        finally:
            if extender is not None:
                extender.should_exit = True  # the main server owns the signals; the extender follows it

    try:
        await asyncio.gather(main_then_extender(), *servers[1:])
    finally:
        if close is not None:
            await close()
