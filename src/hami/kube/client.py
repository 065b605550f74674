"""`HttpKubeApi`: the KubeApi seam over raw httpx + orjson.

Raw JSON rather than the official client because the API server's answers are used as plain dicts anyway,
the official client cannot parse the 201 Status a Binding returns, and a watch is just a streaming GET
whose lines are JSON events. Credentials come from a kubeconfig (client cert/key as data or file, bearer
token or token file, CA) or from the in-cluster service account (whose token rotates, so it is re-read).
"""

from __future__ import annotations

import base64
import contextlib
import os
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import yaml

from hami.kube.api import ApiError, KubeObject, ObjectList, WatchEvent
from hami.resources import HamiError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")

# kind -> (API prefix, namespaced)
_RESOURCES: dict[str, tuple[str, bool]] = {
    "nodes": ("/api/v1", False),
    "namespaces": ("/api/v1", False),
    "pods": ("/api/v1", True),
    "events": ("/api/v1", True),
    "leases": ("/apis/coordination.k8s.io/v1", True),
}


@dataclass(frozen=True, slots=True)
class KubeConfig:
    """Where the API server is and how to prove who we are. Data fields hold PEM bytes."""

    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None
    cert_file: str | None = None
    cert_data: bytes | None = None
    key_file: str | None = None
    key_data: bytes | None = None
    token: str | None = None
    token_file: str | None = None
    insecure: bool = False


def _b64(value: Any, where: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError as exc:
        raise HamiError(where, f"not base64: {exc}") from None


def load_kubeconfig(path: str | Path | None = None, context: str | None = None) -> KubeConfig:
    """The cluster and user of a kubeconfig context (default: $KUBECONFIG, then ~/.kube/config).

    Relative file references are resolved against the kubeconfig's directory, as kubectl does.
    """
    if path is None:
        path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or Path.home() / ".kube" / "config"
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise HamiError(str(path), f"cannot read kubeconfig: {exc}") from None
    if not isinstance(doc, dict):
        raise HamiError(str(path), "not a kubeconfig")

    def named(section: str, name: str) -> dict[str, Any]:
        for entry in doc.get(section) or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                value = entry.get(section.rstrip("s")) or {}
                if isinstance(value, dict):
                    return value
        raise HamiError(f"{path}: {section}", f"no entry named {name!r}")

    context_name = context or doc.get("current-context")
    if not context_name:
        raise HamiError(str(path), "no context given and no current-context")
    ctx = named("contexts", str(context_name))
    cluster = named("clusters", str(ctx.get("cluster", "")))
    user = named("users", str(ctx.get("user", ""))) if ctx.get("user") else {}
    base = path.parent

    def file(value: Any) -> str | None:
        return str(base / str(value)) if value else None

    server = cluster.get("server")
    if not server:
        raise HamiError(f"{path}: cluster", "has no server")
    return KubeConfig(
        server=str(server),
        ca_file=file(cluster.get("certificate-authority")),
        ca_data=_b64(cluster["certificate-authority-data"], "certificate-authority-data")
        if cluster.get("certificate-authority-data") else None,
        cert_file=file(user.get("client-certificate")),
        cert_data=_b64(user["client-certificate-data"], "client-certificate-data")
        if user.get("client-certificate-data") else None,
        key_file=file(user.get("client-key")),
        key_data=_b64(user["client-key-data"], "client-key-data") if user.get("client-key-data") else None,
        token=str(user["token"]) if user.get("token") else None,
        token_file=file(user.get("tokenFile")),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


def in_cluster_config(root: Path = SERVICE_ACCOUNT) -> KubeConfig:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise HamiError("in-cluster config", "KUBERNETES_SERVICE_HOST is not set (not running in a pod?)")
    if ":" in host:
        host = f"[{host}]"
    return KubeConfig(server=f"https://{host}:{port}", ca_file=str(root / "ca.crt"),
                      token_file=str(root / "token"))


def in_cluster_namespace(root: Path = SERVICE_ACCOUNT) -> str | None:
    try:
        return (root / "namespace").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def ssl_context(config: KubeConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(
        cafile=config.ca_file, cadata=config.ca_data.decode("ascii") if config.ca_data else None)
    if config.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if config.cert_file or config.cert_data:
        # load_cert_chain only reads files: PEM data goes through a private temp dir, removed at once.
        with tempfile.TemporaryDirectory(prefix="hami-kube-") as tmp:
            cert = config.cert_file
            key = config.key_file
            if config.cert_data:
                cert = os.path.join(tmp, "cert.pem")
                Path(cert).write_bytes(config.cert_data)
            if config.key_data:
                key = os.path.join(tmp, "key.pem")
                fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(config.key_data)
            assert cert is not None
            ctx.load_cert_chain(cert, key)
    return ctx


class _Token:
    """A bearer token, re-read from its file once a minute (projected service-account tokens rotate)."""

    def __init__(self, token: str | None, file: str | None) -> None:
        self._token, self._file, self._read_at = token, file, 0.0

    def header(self) -> dict[str, str]:
        if self._file and time.monotonic() - self._read_at > 60:
            with contextlib.suppress(OSError):
                self._token = Path(self._file).read_text(encoding="utf-8").strip()
                self._read_at = time.monotonic()
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}


def _path(kind: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    try:
        prefix, namespaced = _RESOURCES[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}") from None
    path = prefix
    if namespaced and namespace is not None:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{kind}"
    if name is not None:
        path += f"/{quote(name, safe='')}"
    if sub is not None:
        path += f"/{sub}"
    return path


def _error(status: int, body: bytes) -> ApiError:
    """ApiError from a Status body (or whatever text came back)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and data.get("kind") == "Status":
        return ApiError(int(data.get("code") or status), str(data.get("message", "")), str(data.get("reason", "")))
    return ApiError(status, body[:500].decode("utf-8", "replace"))


def _list_version(data: Mapping[str, Any]) -> str:
    return str((data.get("metadata") or {}).get("resourceVersion", ""))


class HttpKubeApi:
    """KubeApi over HTTP/1.1. One connection pool; watches hold a connection each while they stream."""

    def __init__(self, config: KubeConfig, *, timeout_s: float = 30.0, page_size: int = 500,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._token = _Token(config.token, config.token_file)
        self.page_size = page_size  # list in pages, as client-go's informers do: no 100k-pod response
        verify: ssl.SSLContext | bool = ssl_context(config) if config.server.startswith("https") else False
        self._timeout_s = timeout_s
        self._client = httpx.AsyncClient(
            base_url=config.server.rstrip("/"), verify=verify, timeout=timeout_s, transport=transport,
            headers={"Accept": "application/json", "User-Agent": "hami-scheduler"},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                       body: Any = None, content_type: str = "application/json") -> Any:
        headers = self._token.header()
        content = None
        if body is not None:
            content = orjson.dumps(body)
            headers["Content-Type"] = content_type
        try:
            resp = await self._client.request(method, path, params=params, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise ApiError(503, f"{method} {path}: {exc!r}", "ServiceUnavailable") from exc
        if resp.status_code >= 300:
            raise _error(resp.status_code, resp.content)
        return orjson.loads(resp.content) if resp.content else None

    async def list(self, kind: str, *, namespace: str | None = None, field_selector: str | None = None,
                   label_selector: str | None = None) -> ObjectList:
        """Every object, `page_size` at a time. All pages come from the snapshot of the first (its
        resourceVersion is the list's); if that snapshot is compacted away mid-list (410), list again in one
        piece, which is what client-go's pager does."""
        params: dict[str, str] = {}
        if field_selector:
            params["fieldSelector"] = field_selector
        if label_selector:
            params["labelSelector"] = label_selector
        path = _path(kind, namespace)
        items: list[KubeObject] = []
        token, version = "", ""
        paged = {**params, "limit": str(self.page_size)} if self.page_size > 0 else params
        while True:
            try:
                data = await self._request("GET", path, params={**paged, "continue": token} if token else paged)
            except ApiError as exc:
                if exc.status != 410 or not token:
                    raise
                data = await self._request("GET", path, params=params)
                return ObjectList(list(data.get("items") or []), _list_version(data))
            items.extend(data.get("items") or [])
            version = version or _list_version(data)
            token = str((data.get("metadata") or {}).get("continue") or "")
            if not token:  # the last page (an unpaged list never carries a continue token)
                return ObjectList(items, version)

    async def watch(self, kind: str, *, resource_version: str, namespace: str | None = None,
                    field_selector: str | None = None, timeout_s: int = 300) -> AsyncIterator[WatchEvent]:
        params = {"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": resource_version,
                  "timeoutSeconds": str(timeout_s)}
        if field_selector:
            params["fieldSelector"] = field_selector
        timeout = httpx.Timeout(self._timeout_s, read=timeout_s + 30)
        path = _path(kind, namespace)
        try:
            async with self._client.stream("GET", path, params=params, headers=self._token.header(),
                                           timeout=timeout) as resp:
                if resp.status_code >= 300:
                    raise _error(resp.status_code, await resp.aread())
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    event = orjson.loads(line)
                    type_, obj = event.get("type", ""), event.get("object") or {}
                    if type_ == "ERROR":  # a Status, e.g. 410 Gone when the resourceVersion is too old
                        raise ApiError(int(obj.get("code") or 500), str(obj.get("message", "")),
                                       str(obj.get("reason", "")))
                    yield WatchEvent(type_, obj)
        except httpx.HTTPError as exc:
            raise ApiError(503, f"watch {path}: {exc!r}", "ServiceUnavailable") from exc

    async def get(self, kind: str, name: str, *, namespace: str | None = None) -> KubeObject:
        result: KubeObject = await self._request("GET", _path(kind, namespace or "default", name))
        return result

    async def patch_annotations(self, kind: str, name: str, annotations: Mapping[str, str | None], *,
                                namespace: str | None = None, resource_version: str | None = None
                                ) -> KubeObject:
        meta: dict[str, Any] = {"annotations": dict(annotations)}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version  # makes the merge patch conditional: 409 if changed
        result: KubeObject = await self._request(
            "PATCH", _path(kind, namespace or "default", name), body={"metadata": meta},
            content_type="application/merge-patch+json")
        return result

    async def patch_labels(self, kind: str, name: str, labels: Mapping[str, str | None], *,
                           namespace: str | None = None) -> KubeObject:
        result: KubeObject = await self._request(
            "PATCH", _path(kind, namespace or "default", name), body={"metadata": {"labels": dict(labels)}},
            content_type="application/merge-patch+json")
        return result

    async def bind(self, namespace: str, name: str, uid: str, node: str,
                   annotations: Mapping[str, str]) -> None:
        meta: dict[str, Any] = {"name": name, "annotations": dict(annotations)}
        if uid:
            meta["uid"] = uid  # the API server refuses the binding if the pod was replaced meanwhile
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": meta,
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        await self._request("POST", _path("pods", namespace, name, "binding"), body=body)

    async def create(self, kind: str, obj: KubeObject, *, namespace: str | None = None) -> KubeObject:
        ns = namespace or obj.get("metadata", {}).get("namespace") or "default"
        result: KubeObject = await self._request("POST", _path(kind, ns), body=obj)
        return result

    async def replace(self, kind: str, name: str, obj: KubeObject, *,
                      namespace: str | None = None) -> KubeObject:
        result: KubeObject = await self._request("PUT", _path(kind, namespace or "default", name), body=obj)
        return result

    async def delete(self, kind: str, name: str, *, namespace: str | None = None) -> None:
        await self._request("DELETE", _path(kind, namespace or "default", name))
