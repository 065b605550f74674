"""Throughput without node-lock stalls, crash recovery without double allocation, and leader election,
against the real kube-apiserver and kube-scheduler."""

from __future__ import annotations

import signal
import ssl
import time
from collections import defaultdict

import httpx
import pytest

from hami.protocol import annotations as anno
from hami.resources import Device
from tests.e2e.cluster import Cluster
from tests.e2e.controlplane import free_port
from tests.e2e.kube import Kube

pytestmark = pytest.mark.e2e


def _gpus(node: str, model: str, n: int, mem: int = 16000, count: int = 10) -> list[Device]:
    return [Device(f"GPU-{node}-{i}", i, count, mem, 100, f"NVIDIA-{model}") for i in range(n)]


def _wait_all(kube: Kube, namespace: str, names: list[str], timeout: float) -> dict[str, dict]:  # type: ignore[type-arg]
    """Every pod bound, or still pending with an Event that explains it; returns the pods by name."""
    deadline = time.monotonic() + timeout
    while True:
        pods = {p["metadata"]["name"]: p for p in kube.list_pods(namespace)}
        unbound = [n for n in names if not pods[n]["spec"].get("nodeName")]
        if not unbound:
            return pods
        if time.monotonic() > deadline:
            unexplained = [n for n in unbound if not kube.events(namespace, n)]
            assert not unexplained, f"pending without an explanation: {unexplained}"
            return pods
        time.sleep(0.5)


def _assert_not_overcommitted(pods: dict[str, dict], devices: dict[str, Device]) -> None:  # type: ignore[type-arg]
    used: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for pod in pods.values():
        text = (pod["metadata"].get("annotations") or {}).get(anno.VGPU_DEVICES_ALLOCATED)
        if not text or not pod["spec"].get("nodeName"):
            continue
        for container in anno.decode_pod_allocation(text):
            for d in container:
                assert d.uuid.startswith(f"GPU-{pod['spec']['nodeName']}-"), "allocation on the bound node"
                u = used[d.uuid]
                u[0] += d.memory_mib
                u[1] += d.cores
                u[2] += 1
    for uuid, (mem, cores, tasks) in used.items():
        dev = devices[uuid]
        assert mem <= dev.memory_mib and cores <= dev.cores and tasks <= dev.count, (uuid, mem, cores, tasks)


def test_ten_pods_to_one_node_bind_without_lock_stalls(kube: Kube) -> None:
    kube.gpu_node("burst", _gpus("burst", "E2EBURST", 2))
    names = [f"p{i}" for i in range(10)]
    for n in names:
        kube.pod("burst", n, {"nvidia.com/gpumem": "1000", "nvidia.com/gpucores": "10"},
                 annotations={anno.NVIDIA_USE_GPUTYPE: "E2EBURST"})
    pods = _wait_all(kube, "burst", names, timeout=60)
    assert all(pods[n]["spec"].get("nodeName") == "burst" for n in names)
    # No bind was refused for a held node lock: HAMi's failure mode sends such pods into back-off.
    messages = [e.get("message", "") for n in names for e in kube.events("burst", n)]
    assert not [m for m in messages if "lock" in m.lower()], messages
    _assert_not_overcommitted(pods, {d.uuid: d for d in _gpus("burst", "E2EBURST", 2)})


def test_sigkill_mid_burst_then_restart_loses_nothing(cluster: Cluster, kube: Kube) -> None:
    devices: dict[str, Device] = {}
    for i in range(10):
        name = f"crash-{i}"
        gs = _gpus(name, "E2ECRASH", 4, mem=16000, count=10)
        devices.update({d.uuid: d for d in gs})
        kube.gpu_node(name, gs)
    names = [f"p{i:03d}" for i in range(200)]
    # 10 nodes x 4 GPUs x 16000 MiB = 640,000 MiB; 200 x 3000 = 600,000: everything fits, tightly.
    for i, n in enumerate(names):
        # While Hami is down its webhook is too: creation is retried, as a controller would.
        kube.pod("crash", n, {"nvidia.com/gpumem": "3000", "nvidia.com/gpucores": "10"}, retry_s=120,
                 annotations={anno.NVIDIA_USE_GPUTYPE: "E2ECRASH", anno.GPU_SCHEDULER_POLICY: "binpack"})
        if i == 80:
            assert cluster.hami is not None
            cluster.hami.stop(signal.SIGKILL)
            cluster.hami = cluster.start_hami("hami-restarted", wait=False)
    cluster.wait_hami_ready(cluster.hami, cluster.hami_port)
    pods = _wait_all(kube, "crash", names, timeout=240)
    bound = [n for n in names if pods[n]["spec"].get("nodeName")]
    assert len(bound) >= 190, f"only {len(bound)}/200 bound after the restart"
    _assert_not_overcommitted(pods, devices)
    for n in bound:
        a = pods[n]["metadata"]["annotations"]
        assert a[anno.VGPU_NODE] == pods[n]["spec"]["nodeName"]
        assert anno.VGPU_DEVICES_ALLOCATED in a
    # Pods bound just before the kill got their hami.io/vgpu-node label from the restarted replica.
    deadline = time.monotonic() + 30
    while True:
        labels = {p["metadata"]["name"]: (p["metadata"].get("labels") or {}).get(anno.VGPU_NODE)
                  for p in kube.list_pods("crash")}
        unlabelled = [n for n in bound if labels.get(n) != pods[n]["spec"]["nodeName"]]
        if not unlabelled or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not unlabelled, unlabelled


def _ctx(cluster: Cluster) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cluster.cp.pki.ca))


def _filter(port: int, cluster: Cluster, pod: dict, nodes: list[str]) -> dict:  # type: ignore[type-arg]
    with httpx.Client(verify=_ctx(cluster), timeout=10) as c:
        r = c.post(f"https://127.0.0.1:{port}/filter", json={"Pod": pod, "Nodes": None, "NodeNames": nodes})
        assert r.status_code == 200
        return dict(r.json())


def _ready(port: int, cluster: Cluster) -> int:
    with httpx.Client(verify=_ctx(cluster), timeout=5) as c:
        try:
            return c.get(f"https://127.0.0.1:{port}/readyz").status_code
        except httpx.HTTPError:
            return 0


def test_two_replicas_only_the_leader_decides(cluster: Cluster, kube: Kube) -> None:
    kube.gpu_node("leader-node", _gpus("leader-node", "E2ELEAD", 1))
    pending = kube.pod("lead", "probe", {"nvidia.com/gpumem": "1000"},
                       annotations={anno.NVIDIA_USE_GPUTYPE: "E2ENOPE"})  # never fits: stays pending
    port_b = free_port()
    b = cluster.cp.hami("hami-b", "serve", "--kubeconfig", str(cluster.cp.kubeconfig),
                        "--listen", f"127.0.0.1:{port_b}", "--extender-listen", f"127.0.0.1:{port_b}",
                        "--tls-cert", str(cluster.cp.pki.hami_cert),
                        "--tls-key", str(cluster.cp.pki.hami_key), "--simulate-device-plugin",
                        "--namespace", "default")
    try:
        deadline = time.monotonic() + 30
        while _ready(port_b, cluster) == 0 and time.monotonic() < deadline:
            assert b.alive(), b.tail()
            time.sleep(0.3)
        assert _ready(port_b, cluster) == 503, "a follower is not ready, so no traffic is routed to it"
        fits = dict(pending, metadata={**pending["metadata"], "annotations": {}})
        a_answer = _filter(cluster.hami_port, cluster, fits, ["leader-node"])
        b_answer = _filter(port_b, cluster, fits, ["leader-node"])
        assert a_answer["NodeNames"] == ["leader-node"] and not a_answer.get("Error")
        assert b_answer.get("Error") and not b_answer.get("NodeNames")
        # The leader dies: the follower takes over once the lease expires, and then decides.
        assert cluster.hami is not None
        cluster.hami.stop(signal.SIGKILL)
        deadline = time.monotonic() + 60
        while _ready(port_b, cluster) != 200:
            assert time.monotonic() < deadline, f"follower never took over:\n{b.tail()}"
            time.sleep(0.5)
        second = dict(fits, metadata={**fits["metadata"], "uid": "another-uid", "name": "probe-2"})
        assert _filter(port_b, cluster, second, ["leader-node"])["NodeNames"] == ["leader-node"]
    finally:
        b.stop()
        cluster.hami = cluster.start_hami("hami-after-election")
