"""The service around the verbs: health and readiness, metrics, TLS reload, and the `serve` command line."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import httpx
import pytest
import typer
from kube_kit import bind_body, filter_body, node_manifest, pod_manifest, running_service, self_signed
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from hami.kube.leader import LeaseConfig
from hami.kube.memory import MemoryKubeApi
from hami.protocol import annotations as anno
from hami.resources import HamiError
from hami.services.app import HamiService, ServiceConfig
from hami.services.cli import app as serve_app
from hami.services.cli import parse_listen
from hami.services.tls import ReloadingTLS


def small_cluster() -> MemoryKubeApi:
    tenant = pod_manifest("t", node="n1", gpumem=3000, gpucores=25,
                          annotations={anno.VGPU_DEVICES_ALLOCATED: "GPU-a,NVIDIA,3000,25:;"})
    return MemoryKubeApi.from_objects([node_manifest("n1", ("GPU-a", 16000), ("GPU-b", 16000))], [tenant])


async def test_readyz_waits_for_the_first_sync() -> None:
    service = HamiService(small_cluster())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=service.app()), base_url="http://hami")
    assert (await client.get("/healthz")).text == "ok"
    response = await client.get("/readyz")
    assert response.status_code == 503 and "not synced" in response.text
    async with service.running():
        await asyncio.wait_for(service.informer.synced.wait(), 5)
        assert (await client.get("/readyz")).status_code == 200


async def test_followers_are_not_ready() -> None:
    api = small_cluster()
    leader = ServiceConfig(leader=LeaseConfig(namespace="kube-system", identity="a", retry_s=0.1))
    follower = ServiceConfig(leader=LeaseConfig(namespace="kube-system", identity="b", retry_s=0.1))
    async with running_service(api, leader) as (first, c1):
        for _ in range(200):
            if first.is_leader():
                break
            await asyncio.sleep(0.01)
        async with running_service(api, follower) as (second, c2):
            await asyncio.sleep(0.1)
            assert first.is_leader() and not second.is_leader()
            assert (await c1.get("/readyz")).status_code == 200
            response = await c2.get("/readyz")
            assert response.status_code == 503 and "leader: a" in response.text
            pod = pod_manifest("p", gpumem=100)
            assert "not the leader" in (await c2.post("/filter", json=filter_body(pod, ["n1"]))).json()["Error"]


async def test_metrics_have_hamis_names() -> None:
    api = small_cluster()
    pod = pod_manifest("p", gpumem=1000, gpucores=10, annotations={anno.NVIDIA_USE_GPUUUID: "GPU-a"})
    api.put("pods", pod)
    config = ServiceConfig(hami_legacy_metrics=True, simulate_device_plugin=True)
    async with running_service(api, config) as (_, client):
        await client.post("/filter", json=filter_body(pod, ["n1"]))
        await client.post("/bind", json=bind_body(pod, "n1"))
        text = (await client.get("/metrics")).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    dev = (("deviceidx", "0"), ("devicetype", "NVIDIA-Tesla T4"), ("deviceuuid", "GPU-a"), ("nodeid", "n1"),
           ("vendor", "NVIDIA"))
    assert samples[("hami_gpu_memory_allocated_bytes", dev)] == 4000 * 2**20
    assert samples[("hami_gpu_core_allocated_ratio", dev)] == 0.35
    assert samples[("hami_gpu_shared_count", dev)] == 2
    assert samples[("hami_gpu_memory_limit_bytes", dev)] == 16000 * 2**20
    assert samples[("hami_gpu_core_limit_ratio", dev)] == 1.0
    container = (("containeridx", "0"), ("deviceuuid", "GPU-a"), ("nodename", "n1"), ("podname", "p"),
                 ("podnamespace", "default"))
    assert samples[("hami_vgpu_memory_allocated_bytes", container)] == 1000 * 2**20
    assert samples[("hami_vgpu_core_allocated_ratio", container)] == 0.1
    legacy = (("deviceidx", "0"), ("deviceuuid", "GPU-a"), ("nodeid", "n1"))
    assert samples[("GPUDeviceCoreAllocated", legacy)] == 35
    assert samples[("GPUDeviceMemoryAllocated", legacy)] == 4000 * 2**20
    assert samples[("hami_extender_bind_duration_seconds_count", ())] == 1
    assert samples[("hami_extender_filter_total", (("result", "placed"),))] == 1
    assert ("hami_extender_filter_duration_seconds_bucket", (("le", "0.01"),)) in samples


def test_tls_context_reloads_changed_files(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "a")
    tls = ReloadingTLS(str(cert), str(key))
    assert not tls.reload_if_changed()
    new_cert, new_key = self_signed(tmp_path, "b")
    cert.write_bytes(new_cert.read_bytes())  # a half-written rotation: new cert, old key
    assert not tls.reload_if_changed() and tls.reloads == 0
    key.write_bytes(new_key.read_bytes())
    time.sleep(0.01)
    assert tls.reload_if_changed() and tls.reloads == 1
    assert isinstance(tls.context, ssl.SSLContext)


def test_parse_listen() -> None:
    assert parse_listen("0.0.0.0:8443") == ("0.0.0.0", 8443)
    assert parse_listen(":9000") == ("0.0.0.0", 9000)
    assert parse_listen("[::1]:80") == ("::1", 80)
    for bad in ("8443", "host:", "h:0", "h:99999", "h:x"):
        with pytest.raises(HamiError):
            parse_listen(bad)


def test_serve_mounts_as_a_subcommand_and_rejects_bad_flags(tmp_path: Path) -> None:
    root = typer.Typer()

    @root.command()
    def other() -> None:
        """Keeps `serve` a subcommand, as in hami's own CLI."""

    root.add_typer(serve_app, name="serve")
    runner = CliRunner()
    result = runner.invoke(root, ["serve", "--help"])
    assert result.exit_code == 0
    for flag in ("--listen", "--tls-cert", "--tls-key", "--cluster-file", "--kubeconfig"):
        assert flag in result.output
    result = runner.invoke(root, ["serve", "--tls-cert", str(tmp_path / "c")])
    assert result.exit_code == 2 and "give both or neither" in result.output
    result = runner.invoke(root, ["serve", "--listen", "nope", "--cluster-file", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2 and "HOST:PORT" in result.output
