"""HttpKubeApi: the requests it makes and how it reads the API server's answers (httpx MockTransport)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hami.kube.api import ApiError
from hami.kube.client import HttpKubeApi, KubeConfig, in_cluster_config, load_kubeconfig
from hami.resources import HamiError


class Recorder:
    def __init__(self, *responses: httpx.Response) -> None:
        self.requests: list[httpx.Request] = []
        self.responses = list(responses)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.responses.pop(0)


def api_with(*responses: httpx.Response, token: str | None = "t0k") -> tuple[HttpKubeApi, Recorder]:
    recorder = Recorder(*responses)
    api = HttpKubeApi(KubeConfig(server="http://api:6443", token=token), transport=httpx.MockTransport(recorder))
    return api, recorder


def status(code: int, reason: str, message: str) -> httpx.Response:
    return httpx.Response(code, json={"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                      "message": message, "reason": reason, "code": code})


async def test_bind_posts_a_raw_binding_and_accepts_the_201_status() -> None:
    created = httpx.Response(201, json={"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                        "code": 201})
    api, rec = api_with(created)
    await api.bind("team", "p", "u1", "n1", {"hami.io/vgpu-node": "n1"})
    (req,) = rec.requests
    assert req.method == "POST" and req.url.path == "/api/v1/namespaces/team/pods/p/binding"
    assert req.headers["Authorization"] == "Bearer t0k"
    assert orjson.loads(req.content) == {
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "p", "annotations": {"hami.io/vgpu-node": "n1"}, "uid": "u1"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}}


@pytest.mark.parametrize("code", [404, 409, 422])
async def test_errors_carry_the_status(code: int) -> None:
    api, _ = api_with(status(code, "Conflict", 'pod p is already assigned to node "n2"'))
    with pytest.raises(ApiError) as info:
        await api.bind("team", "p", "u1", "n1", {})
    assert info.value.status == code and "already assigned" in info.value.message


async def test_conditional_annotation_patch_is_a_merge_patch_with_resource_version() -> None:
    api, rec = api_with(httpx.Response(200, json={"metadata": {"name": "n1"}}))
    await api.patch_annotations("nodes", "n1", {"hami.io/mutex.lock": None}, resource_version="42")
    (req,) = rec.requests
    assert req.method == "PATCH" and req.url.path == "/api/v1/nodes/n1"
    assert req.headers["Content-Type"] == "application/merge-patch+json"
    assert orjson.loads(req.content) == {"metadata": {"annotations": {"hami.io/mutex.lock": None},
                                                      "resourceVersion": "42"}}


async def test_paths_per_kind() -> None:
    ok = httpx.Response(200, json={"items": [{"metadata": {"name": "a"}}], "metadata": {"resourceVersion": "7"}})
    api, rec = api_with(ok, httpx.Response(200, json={}), httpx.Response(200, json={}), httpx.Response(201, json={}),
                        httpx.Response(200, json={}), httpx.Response(200, json={}))
    listed = await api.list("pods", field_selector="spec.nodeName=n1")
    assert listed.items == [{"metadata": {"name": "a"}}] and listed.resource_version == "7"
    await api.get("leases", "hami", namespace="kube-system")
    await api.get("nodes", "n/1")
    await api.create("events", {"metadata": {"namespace": "team", "generateName": "p."}})
    await api.replace("leases", "hami", {"metadata": {}}, namespace="kube-system")
    await api.delete("pods", "p", namespace="team")
    assert [(r.method, r.url.raw_path.decode().split("?")[0]) for r in rec.requests] == [
        ("GET", "/api/v1/pods"),
        ("GET", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/hami"),
        ("GET", "/api/v1/nodes/n%2F1"),
        ("POST", "/api/v1/namespaces/team/events"),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/hami"),
        ("DELETE", "/api/v1/namespaces/team/pods/p"),
    ]
    assert rec.requests[0].url.params["fieldSelector"] == "spec.nodeName=n1"


def page(names: list[str], version: str, token: str = "") -> httpx.Response:
    meta = {"resourceVersion": version, **({"continue": token} if token else {})}
    return httpx.Response(200, json={"items": [{"metadata": {"name": n}} for n in names], "metadata": meta})


async def test_lists_come_in_pages_from_one_snapshot() -> None:
    api, rec = api_with(page(["a", "b"], "7", "tok1"), page(["c", "d"], "7", "tok2"), page(["e"], "7"))
    api.page_size = 2
    listed = await api.list("pods", label_selector="app=x")
    assert [o["metadata"]["name"] for o in listed.items] == ["a", "b", "c", "d", "e"]
    assert listed.resource_version == "7"
    assert [dict(r.url.params) for r in rec.requests] == [
        {"labelSelector": "app=x", "limit": "2"},
        {"labelSelector": "app=x", "limit": "2", "continue": "tok1"},
        {"labelSelector": "app=x", "limit": "2", "continue": "tok2"}]


async def test_a_list_whose_snapshot_expires_midway_is_taken_again_whole() -> None:
    expired = status(410, "Expired", "The provided continue parameter is too old")
    api, rec = api_with(page(["a", "b"], "7", "tok1"), expired, page(["a", "b", "c"], "9"))
    api.page_size = 2
    listed = await api.list("nodes")
    assert [o["metadata"]["name"] for o in listed.items] == ["a", "b", "c"] and listed.resource_version == "9"
    assert [dict(r.url.params) for r in rec.requests] == [{"limit": "2"}, {"limit": "2", "continue": "tok1"}, {}]
    first_page_gone, _ = api_with(expired)
    with pytest.raises(ApiError):  # a 410 on the first page is not a paging problem: the caller decides
        await first_page_gone.list("nodes")


async def test_watch_streams_events_bookmarks_and_410() -> None:
    lines = [
        {"type": "ADDED", "object": {"kind": "Pod", "metadata": {"name": "a", "resourceVersion": "11"}}},
        {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "12"}}},
        {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                     "message": "too old resource version: 1 (12)"}},
    ]
    body = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"
    api, rec = api_with(httpx.Response(200, content=body))
    seen = []
    with pytest.raises(ApiError) as info:
        async for event in api.watch("pods", resource_version="10", timeout_s=60):
            seen.append((event.type, event.object["metadata"]["resourceVersion"]))
    assert seen == [("ADDED", "11"), ("BOOKMARK", "12")] and info.value.status == 410
    params = rec.requests[0].url.params
    assert (params["watch"], params["allowWatchBookmarks"], params["resourceVersion"], params["timeoutSeconds"]) == (
        "1", "true", "10", "60")


async def test_watch_refused_up_front() -> None:
    api, _ = api_with(status(410, "Expired", "too old"))
    with pytest.raises(ApiError) as info:
        async for _ in api.watch("nodes", resource_version="1"):
            pass
    assert info.value.status == 410


async def test_connection_errors_become_503() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    api = HttpKubeApi(KubeConfig(server="http://api"), transport=httpx.MockTransport(refuse))
    with pytest.raises(ApiError) as info:
        await api.get("nodes", "n1")
    assert info.value.status == 503


def test_kubeconfig_with_embedded_credentials(tmp_path: Path) -> None:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "admin",
        "clusters": [{"name": "local", "cluster": {"server": "https://127.0.0.1:6443",
                                                    "certificate-authority": "pki/ca.crt"}}],
        "users": [{"name": "admin", "user": {"client-certificate-data": base64.b64encode(b"CERT").decode(),
                                             "client-key-data": base64.b64encode(b"KEY").decode()}},
                  {"name": "robot", "user": {"tokenFile": "/var/token"}}],
        "contexts": [{"name": "admin", "context": {"cluster": "local", "user": "admin"}},
                     {"name": "bot", "context": {"cluster": "local", "user": "robot"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    cfg = load_kubeconfig(path)
    assert cfg.server == "https://127.0.0.1:6443" and cfg.ca_file == str(tmp_path / "pki/ca.crt")
    assert (cfg.cert_data, cfg.key_data, cfg.token) == (b"CERT", b"KEY", None)
    bot = load_kubeconfig(path, context="bot")
    assert bot.token_file == "/var/token" and bot.cert_data is None
    with pytest.raises(HamiError, match="no entry named"):
        load_kubeconfig(path, context="nope")


def test_in_cluster_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    cfg = in_cluster_config(tmp_path)
    assert cfg.server == "https://[fd00::1]:443" and cfg.token_file == str(tmp_path / "token")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(HamiError):
        in_cluster_config(tmp_path)


async def test_token_file_is_read(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("rotating\n")
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json={})

    api = HttpKubeApi(KubeConfig(server="http://api", token_file=str(token)), transport=httpx.MockTransport(handler))
    await api.get("nodes", "n1")
    assert seen == ["Bearer rotating"]
    await api.aclose()
