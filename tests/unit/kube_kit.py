"""Manifests as the API server holds them, and a running service on the in-memory API, for service tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from hami.kube.memory import MemoryKubeApi
from hami.protocol.annotations import NODE_NVIDIA_REGISTER, encode_node_devices
from hami.resources import Device
from hami.services.app import HamiService, ServiceConfig


def node_manifest(name: str, *gpus: tuple[str, int], count: int = 10, model: str = "NVIDIA-Tesla T4",
                  annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A Node with HAMi's registration; gpus are (uuid, memory MiB)."""
    devices = [Device(uuid, i, count, mem, 100, model) for i, (uuid, mem) in enumerate(gpus)]
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {NODE_NVIDIA_REGISTER: encode_node_devices(devices),
                                                   **(annotations or {})}},
        "status": {"allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"}},
    }


def pod_manifest(name: str, *, uid: str | None = None, namespace: str = "default", gpu: int | None = 1,
                 gpumem: int | None = None, gpucores: int | None = None, node: str | None = None,
                 annotations: dict[str, str] | None = None, init: dict[str, Any] | None = None,
                 labels: dict[str, str] | None = None) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if gpu is not None:
        limits["nvidia.com/gpu"] = str(gpu)
    if gpumem is not None:
        limits["nvidia.com/gpumem"] = str(gpumem)
    if gpucores is not None:
        limits["nvidia.com/gpucores"] = str(gpucores)
    spec: dict[str, Any] = {"schedulerName": "hami-scheduler",
                            "containers": [{"name": "main", "image": "busybox", "resources": {"limits": limits}}]}
    if init is not None:
        spec["initContainers"] = [init]
    if node is not None:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}",
                     "annotations": annotations or {}, "labels": labels or {}},
        "spec": spec, "status": {"phase": "Pending"},
    }


def filter_body(pod: dict[str, Any], nodes: Sequence[str]) -> dict[str, Any]:
    return {"Pod": pod, "Nodes": None, "NodeNames": list(nodes)}


def bind_body(pod: dict[str, Any], node: str) -> dict[str, Any]:
    meta = pod["metadata"]
    return {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node}


@contextlib.asynccontextmanager
async def running_service(api: MemoryKubeApi, config: ServiceConfig | None = None, **kwargs: Any
                          ) -> AsyncIterator[tuple[HamiService, httpx.AsyncClient]]:
    """The service with its background tasks running and its cache synced, and an HTTP client on it."""
    service = HamiService(api, config or ServiceConfig(), **kwargs)
    async with service.running():
        await asyncio.wait_for(service.informer.synced.wait(), 5)
        transport = httpx.ASGITransport(app=service.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://hami") as client:
            yield service, client


async def settle(service: HamiService, api: MemoryKubeApi, timeout: float = 5.0) -> None:
    """Wait until the informer has seen every write made so far."""
    target = {kind: max((rv for rv, k, _ in api._log if k == kind), default=0) for kind in ("nodes", "pods")}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(int(service.informer.resource_version[k] or 0) < rv for k, rv in target.items()):
        if loop.time() > deadline:
            raise TimeoutError(f"informer at {service.informer.resource_version}, API at {target}")
        await asyncio.sleep(0.005)


def self_signed(directory: Path, name: str = "hami", hosts: Sequence[str] = ("127.0.0.1", "localhost")
                ) -> tuple[Path, Path]:
    """A self-signed server certificate (it is its own CA) with the given SANs; returns (cert, key) paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
