"""The service over real sockets: uvicorn with TLS in-process, and `hami serve --cluster-file` as a process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from kube_kit import bind_body, filter_body, node_manifest, pod_manifest, self_signed
from prometheus_client.parser import text_string_to_metric_families

from hami.kube.memory import MemoryKubeApi
from hami.protocol import annotations as anno
from hami.services.app import HamiService, ServiceConfig
from hami.services.tls import ReloadingTLS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def tls_server(service: HamiService, tls: ReloadingTLS) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(service.app(), host="127.0.0.1", port=port, log_level="warning", access_log=False,
                            http="h11", lifespan="on", ssl_context_factory=lambda cfg, default: tls.context)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_https_filter_bind_and_webhook_under_concurrency(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    nodes = [node_manifest(f"n{i}", (f"GPU-{i}-0", 16000), (f"GPU-{i}-1", 16000), count=6) for i in range(10)]
    pods = [pod_manifest(f"p{i}", gpumem=[1500, 2500, 4000][i % 3], gpucores=[0, 10, 20][i % 3])
            for i in range(300)]
    api = MemoryKubeApi.from_objects(nodes, pods)
    service = HamiService(api, ServiceConfig(simulate_device_plugin=True))
    names = [f"n{i}" for i in range(10)]
    async with tls_server(service, ReloadingTLS(str(cert), str(key))) as url, \
            httpx.AsyncClient(base_url=url, verify=ssl.create_default_context(cafile=str(cert))) as client:
        for _ in range(500):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.01)

        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                  "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                              "operation": "CREATE", "namespace": "default", "object": pod_manifest("w", gpu=1)}}
        reply = (await client.post("/webhook?timeout=10s", json=review)).json()
        assert reply["response"]["allowed"] is True and reply["response"]["patchType"] == "JSONPatch"

        async def one(pod: dict[str, Any]) -> bool:
            reply = (await client.post("/filter", json=filter_body(pod, names))).json()
            if not reply["NodeNames"]:
                assert set(reply["FailedNodes"]) | set(reply["FailedAndUnresolvableNodes"]) == set(names)
                return False
            result = (await client.post("/bind", json=bind_body(pod, reply["NodeNames"][0]))).json()
            assert result == {"Error": ""}
            return True

        sem = asyncio.Semaphore(32)

        async def limited(pod: dict[str, Any]) -> bool:
            async with sem:
                return await one(pod)

        placed = sum(await asyncio.gather(*(limited(p) for p in pods)))
        assert 100 < placed < 300  # 10 nodes x 2 cards x 6 tasks = 120 slots, memory binds first

        used: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for obj in (await api.list("pods")).items:
            for container in anno.decode_pod_allocation(
                    obj["metadata"]["annotations"].get(anno.VGPU_DEVICES_ALLOCATED, "")):
                for dev in container:
                    used[dev.uuid][0] += dev.memory_mib
                    used[dev.uuid][1] += dev.cores
                    used[dev.uuid][2] += 1
        assert all(m <= 16000 and c <= 100 and n <= 6 for m, c, n in used.values())
        for _ in range(500):
            if not len(service.reservations):
                break
            await asyncio.sleep(0.01)
        state_use = {uuid: use for (_, uuid), use in service.state.device_usage().items()}
        assert state_use == {uuid: tuple(u) for uuid, u in used.items()}


def test_hami_serve_on_a_cluster_file(tmp_path: Path) -> None:
    """The real command line: `hami serve --cluster-file` on plain HTTP, then SIGTERM."""
    cluster = {"apiVersion": "v1", "kind": "List", "items": [
        node_manifest("n1", ("GPU-a", 16000)), pod_manifest("p", gpumem=2000)]}
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(cluster))
    port = free_port()
    code = "import sys; from hami.services.cli import app; sys.argv[0] = 'serve'; app()"
    proc = subprocess.Popen([sys.executable, "-c", code, "--cluster-file", str(path), "--listen",
                             f"127.0.0.1:{port}", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline
            time.sleep(0.1)
        pod = pod_manifest("p", gpumem=2000)
        reply = httpx.post(f"{url}/filter", json=filter_body(pod, ["n1"])).json()
        assert reply["NodeNames"] == ["n1"]
        assert httpx.post(f"{url}/bind", json=bind_body(pod, "n1")).json() == {"Error": ""}
        # The static cluster has no device plugin; the stand-in acknowledges the allocation.
        text = ""
        for _ in range(50):
            text = httpx.get(f"{url}/metrics").text
            if 'hami_extender_bind_total{result="bound"} 1.0' in text:
                break
            time.sleep(0.05)
        samples = {(s.name, s.labels.get("podname")): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert samples[("hami_vgpu_memory_allocated_bytes", "p")] == 2000 * 2**20
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully (lifespan, lease release), then re-raises the signal.
        assert proc.wait(15) in (0, -signal.SIGTERM)


def test_extender_verbs_only_on_their_mutual_tls_listener(tmp_path: Path) -> None:
    """The real command line with TLS: the webhook listener does not serve /filter, and the extender
    listener refuses a client without a certificate from --extender-client-ca."""
    from tests.e2e.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    cluster = {"apiVersion": "v1", "kind": "List", "items": [node_manifest("n1", ("GPU-a", 16000))]}
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(cluster))
    main_port, ext_port = free_port(), free_port()
    code = "import sys; from hami.services.cli import app; sys.argv[0] = 'serve'; app()"
    proc = subprocess.Popen([sys.executable, "-c", code, "--cluster-file", str(path), "--listen",
                             f"127.0.0.1:{main_port}", "--extender-listen", f"0.0.0.0:{ext_port}",
                             "--extender-client-ca", str(pki.ca), "--tls-cert", str(pki.hami_cert),
                             "--tls-key", str(pki.hami_key), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    server_only = ssl.create_default_context(cafile=str(pki.ca))
    with_cert = ssl.create_default_context(cafile=str(pki.ca))
    with_cert.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    pod = pod_manifest("p", gpumem=2000)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"https://127.0.0.1:{main_port}/readyz", verify=server_only).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline
            time.sleep(0.1)
        main = httpx.post(f"https://127.0.0.1:{main_port}/filter", json=filter_body(pod, ["n1"]), verify=server_only)
        assert main.status_code == 404
        try:
            anonymous = httpx.post(f"https://127.0.0.1:{ext_port}/filter", json=filter_body(pod, ["n1"]),
                                   verify=server_only)
            refused = anonymous.status_code >= 400
        except (httpx.TransportError, ssl.SSLError):
            refused = True  # TLS 1.3 reports the missing certificate on the first read
        assert refused
        reply = httpx.post(f"https://127.0.0.1:{ext_port}/filter", json=filter_body(pod, ["n1"]), verify=with_cert)
        assert reply.json()["NodeNames"] == ["n1"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) in (0, -signal.SIGTERM)


def test_an_open_extender_listener_is_refused_at_start(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    result = subprocess.run([sys.executable, "-c", "import sys; from hami.services.cli import app; "
                             "sys.argv[0] = 'serve'; app()", "--cluster-file", str(tmp_path / "none.yaml"),
                             "--tls-cert", str(cert), "--tls-key", str(key), "--extender-listen", "0.0.0.0:1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--extender-client-ca" in result.stderr
