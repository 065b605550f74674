"""Regression tests for the hardening of the service edge: bounded quantities, the webhook refusing what
filter would refuse, limiter-bypass env, /bind and /filter abuse, 500s that keep the connection, and
readiness that follows every background task."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import orjson
import pytest
from kube_kit import bind_body, filter_body, node_manifest, pod_manifest, running_service

from hami.kube.memory import MemoryKubeApi
from hami.kube.reservations import Reservations
from hami.resources import HamiError, cpu_milli, memory_mib, parse_quantity, quantity_int
from hami.scheduler.state import ClusterState
from hami.services.app import HamiService, ServiceConfig
from hami.services.cli import plan_listeners


def cluster(*pods: dict[str, Any]) -> MemoryKubeApi:
    return MemoryKubeApi.from_objects(
        [node_manifest("n1", ("GPU-a", 16000), ("GPU-b", 16000)), node_manifest("n2", ("GPU-c", 8000))], list(pods))


def review(pod: dict[str, Any], operation: str = "CREATE", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "r1", "operation": operation, "kind": {"kind": "Pod"}, "object": pod, **extra}}


# -- bounded quantities ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1e999999", "1e-999999", "9" * 65, "1e9999999999", "1e40", "NaN", "Infinity"])
def test_absurd_quantities_are_refused_at_once(text: str) -> None:
    started = time.perf_counter()
    with pytest.raises(HamiError):
        parse_quantity(text, "f")
    assert time.perf_counter() - started < 0.5  # a hang bound, not a speed target: 1e999999 took 36 s


@pytest.mark.parametrize(("fn", "text"), [(cpu_milli, "1e16"), (memory_mib, "1e30"), (quantity_int, "1e16"),
                                           (cpu_milli, "-1"), (memory_mib, "-5Gi")])
def test_amounts_beyond_any_machine_or_negative_are_refused(fn: Any, text: str) -> None:
    with pytest.raises(HamiError, match=r"^f: "):
        fn(text, "f")


def test_ordinary_quantities_are_exact() -> None:
    assert cpu_milli("1500m") == 1500 and cpu_milli(2) == 2000 and memory_mib("2Gi") == 2048
    assert quantity_int("1e3") == 1000 and quantity_int("-3") == -3 and quantity_int(2**53) == 2**53


# -- the webhook -------------------------------------------------------------------------------------------


async def webhook(body: Any) -> tuple[int, dict[str, Any]]:
    async with running_service(cluster()) as (_, client):
        response = await client.post("/webhook", content=orjson.dumps(body))
        return response.status_code, response.json()


@pytest.mark.parametrize(("limits", "field"), [
    ({"nvidia.com/gpumem": "1e999999"}, "nvidia.com/gpumem"),
    ({"nvidia.com/gpu": "1", "cpu": "1e16"}, "[cpu]"),
    ({"nvidia.com/gpu": "1", "memory": "-1Gi"}, "[memory]"),
])
async def test_webhook_denies_what_filter_would_refuse(limits: dict[str, str], field: str) -> None:
    pod = pod_manifest("p", gpu=None)
    pod["spec"]["containers"][0]["resources"]["limits"] = limits
    status, reply = await webhook(review(pod))
    assert status == 200 and reply["response"]["allowed"] is False
    assert field in reply["response"]["status"]["message"]


async def test_webhook_denies_unknown_policy_names() -> None:
    pod = pod_manifest("p", gpumem=1000, annotations={"hami.io/gpu-scheduler-policy": "no-such-policy"})
    _, reply = await webhook(review(pod))
    assert reply["response"]["allowed"] is False and "no-such-policy" in reply["response"]["status"]["message"]


@pytest.mark.parametrize(("env", "device", "allowed"), [
    ({"name": "CUDA_DISABLE_CONTROL", "value": "true"}, True, False),
    ({"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}, False, False),
    ({"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}, True, False),
    ({"name": "NVIDIA_VISIBLE_DEVICES", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "y"}}}, False, False),
    ({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}, False, True),
    ({"name": "OTHER", "value": "all"}, True, True),
])
async def test_webhook_denies_limiter_bypass_env_even_with_the_ignore_label(
        env: dict[str, Any], device: bool, allowed: bool) -> None:
    pod = pod_manifest("p", gpu=1 if device else None, labels={"hami.io/webhook": "ignore"})
    pod["spec"]["containers"][0]["env"] = [env]
    _, reply = await webhook(review(pod))
    assert reply["response"]["allowed"] is allowed
    if not allowed:
        assert "spec.containers[0].env[0]" in reply["response"]["status"]["message"]


@pytest.mark.parametrize("api_version", [["x"], {"a": 1}, 5])
async def test_webhook_answers_400_for_odd_review_envelopes(api_version: Any) -> None:
    body = review(pod_manifest("p"))
    body["apiVersion"] = api_version
    status, reply = await webhook(body)
    assert status == 400 and "apiVersion" in reply["error"]


async def test_a_bug_in_admission_denies_and_keeps_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    from hami.services import webhook as webhook_module

    calls = {"n": 0}
    real = webhook_module.admit

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(webhook_module, "admit", flaky)
    pod = pod_manifest("p", gpumem=1000)
    del pod["spec"]["schedulerName"]  # the webhook has something to patch
    async with running_service(cluster()) as (_, client):
        first = (await client.post("/webhook", json=review(pod))).json()
        assert first["response"]["allowed"] is False and first["response"]["status"]["code"] == 500
        second = (await client.post("/webhook", json=review(pod))).json()
        patch = orjson.loads(base64.b64decode(second["response"]["patch"]))
        assert second["response"]["allowed"] is True and patch


# -- extender verbs ----------------------------------------------------------------------------------------


async def test_prioritize_is_finite_when_the_pod_fits_only_some_nodes() -> None:
    async with running_service(cluster()) as (_, client):
        pod = pod_manifest("big", gpumem=12000)  # fits n1's 16 GB cards, not n2's 8 GB one
        reply = (await client.post("/prioritize", json=filter_body(pod, ["n1", "n2"]))).json()
        scores = {r["Host"]: r["Score"] for r in reply}
        assert set(scores) == {"n1", "n2"} and all(0 <= s <= 10 for s in scores.values())


async def test_an_internal_error_is_a_500_and_the_next_request_works(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_service(cluster()) as (service, client):
        real = service.scheduler.schedule
        calls = {"n": 0}

        def flaky(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise ZeroDivisionError("bug")
            return real(*args, **kwargs)

        monkeypatch.setattr(service.scheduler, "schedule", flaky)
        pod = pod_manifest("p", gpumem=1000)
        first = await client.post("/filter", json=filter_body(pod, ["n1"]))
        assert first.status_code == 500 and "internal error" in first.json()["error"]
        second = await client.post("/filter", json=filter_body(pod, ["n1"]))
        assert second.status_code == 200 and second.json()["NodeNames"] == ["n1"]


async def test_bind_refuses_device_less_and_foreign_pods() -> None:
    plain = pod_manifest("plain", gpu=None)
    foreign = pod_manifest("foreign", gpumem=1000)
    foreign["spec"]["schedulerName"] = "default-scheduler"
    api = cluster(plain, foreign)
    async with running_service(api) as (_, client):
        for pod, why in ((plain, "requests no device"), (foreign, "schedulerName")):
            reply = (await client.post("/bind", json=bind_body(pod, "n1"))).json()
            assert why in reply["Error"]
            assert not (await api.get("pods", pod["metadata"]["name"], namespace="default"))["spec"].get(
                "nodeName")


async def test_filters_for_made_up_pods_cannot_crowd_out_real_ones() -> None:
    real = pod_manifest("real", gpu=1, gpucores=100)
    api = cluster(real)
    config = ServiceConfig()
    async with running_service(api, config) as (service, client):
        service.reservations.max_provisional = 3
        for i in range(6):  # made-up pods, each wanting a whole card: there are 3 cards
            fake = pod_manifest(f"fake{i}", gpu=1, gpucores=100)
            await client.post("/filter", json=filter_body(fake, ["n1", "n2"]))
        assert len(service.reservations) == 3  # the cap: the other filters were told to retry
        reply = (await client.post("/filter", json=filter_body(pod_manifest("fake9", gpu=1), ["n1"]))).json()
        assert "not in the cluster cache" in reply["Error"]
        # The real pod is known to the cache: it is not refused, only short of cards while fakes hold them.
        assert "real" not in reply["Error"]
        clock = {"now": time.monotonic() + 10}  # past the provisional TTL, before the ordinary one
        service.reservations.clock = lambda: clock["now"]
        service.reservations.expire()
        assert len(service.reservations) == 0
        placed = (await client.post("/filter", json=filter_body(real, ["n1", "n2"]))).json()
        assert placed["NodeNames"] and not service.reservations.get("uid-real").provisional  # type: ignore[union-attr]


def test_a_seen_pod_promotes_its_provisional_reservation() -> None:
    from hami.kube.reservations import SeenPods
    from hami.protocol.manifests import node_from_manifest, pod_request
    from hami.scheduler.framework import Scheduler
    from hami.vendors.registry import default_vendors

    vendors = default_vendors()
    state = ClusterState()
    state.upsert_node(node_from_manifest(node_manifest("n1", ("GPU-a", 16000)), vendors))
    now = {"t": 0.0}
    reservations = Reservations(state, ttl_s=30, clock=lambda: now["t"], provisional_ttl_s=5)
    seen = SeenPods(reservations)
    pod = pod_manifest("p", gpumem=1000)
    decision = Scheduler().schedule(pod_request(pod, vendors), state)
    reservations.reserve(decision, provisional=True)
    seen.observe("ADDED", pod)
    assert "uid-p" in seen
    now["t"] = 10.0
    assert reservations.expire() == []  # promoted: the full TTL applies
    seen.observe("MODIFIED", {**pod, "spec": {**pod["spec"], "nodeName": "n1"}})
    assert "uid-p" not in seen


# -- readiness follows every background task ----------------------------------------------------------------


def _failing_once(method: Any) -> tuple[Any, dict[str, int]]:
    calls = {"n": 0}

    async def run(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            await asyncio.sleep(0.05)
            raise RuntimeError("killed by the test")
        await method(*args, **kwargs)

    return run, calls


@pytest.mark.parametrize("task", ["informer", "reservation-expiry", "pod-labeler", "events",
                                  "device-plugin-simulator"])
async def test_a_dead_background_task_fails_readiness_until_it_is_back(task: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from hami.kube.devicesim import DevicePluginSimulator

    service = HamiService(cluster(), ServiceConfig(restart_backoff_s=0.3, simulate_device_plugin=True))
    owner, attribute = {
        "informer": (service.informer, "run"), "reservation-expiry": (service, "_expire_reservations"),
        "pod-labeler": (service.labeler, "run"), "events": (service.events, "run"),
        "device-plugin-simulator": (DevicePluginSimulator, "run"),
    }[task]
    failing, calls = _failing_once(getattr(owner, attribute))
    monkeypatch.setattr(owner, attribute, failing)
    async with service.running():
        deadline = time.monotonic() + 5
        while task not in service.down:
            assert time.monotonic() < deadline, "the failure was never noticed"
            await asyncio.sleep(0.01)
        ok, why = service.ready()
        assert not ok and f"background task {task} is down" in why and "killed by the test" in why
        while not service.ready()[0]:
            assert time.monotonic() < deadline + 5, service.ready()[1]
            await asyncio.sleep(0.01)
        assert calls["n"] == 2 and service.metrics.background_failures.labels(task)._value.get() == 1


async def test_a_bad_object_does_not_end_the_watch() -> None:
    api = cluster()
    async with running_service(api) as (service, _):
        # An event the informer cannot apply (a bug provoked on purpose) is skipped; the next one applies.
        real = service.informer.apply_pod
        calls = {"n": 0}

        def flaky(event_type: str, obj: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise OverflowError("bug")
            real(event_type, obj)

        service.informer.apply_pod = flaky  # type: ignore[method-assign]
        await api.create("pods", pod_manifest("first", gpumem=1000, node="n1",
                                              annotations={"hami.io/vgpu-devices-allocated": "GPU-a,NVIDIA,1000,0:;"}))
        await api.create("pods", pod_manifest("second", gpumem=1000, node="n1",
                                              annotations={"hami.io/vgpu-devices-allocated": "GPU-b,NVIDIA,1000,0:;"}))
        for _ in range(200):
            if "uid-second" in service.state.pods:
                break
            await asyncio.sleep(0.01)
        assert "uid-second" in service.state.pods and service.informer.object_failures == 1
        assert service.ready()[0]


# -- listeners ---------------------------------------------------------------------------------------------


def test_listener_plan() -> None:
    tls = plan_listeners(None, None, tls=True, extender_client_ca=False)
    assert tls.main == ("0.0.0.0", 8443) and tls.extender == ("127.0.0.1", 8444)
    plain = plan_listeners(None, None, tls=False, extender_client_ca=False)
    assert plain.main == ("127.0.0.1", 8080) and plain.extender is None
    mtls = plan_listeners(":8443", ":8444", tls=True, extender_client_ca=True)
    assert mtls.extender == ("0.0.0.0", 8444)
    with pytest.raises(HamiError, match="--extender-listen"):
        plan_listeners(":8443", "0.0.0.0:8444", tls=True, extender_client_ca=False)
    with pytest.raises(HamiError, match="--listen"):
        plan_listeners(":8080", None, tls=False, extender_client_ca=False)  # plain, reachable, one server
    with pytest.raises(HamiError, match="--extender-client-ca"):
        plan_listeners(None, None, tls=False, extender_client_ca=True)


def test_a_pod_with_too_many_device_containers_is_refused() -> None:
    from hami.protocol.manifests import MAX_DEVICE_CONTAINERS, pod_request
    from hami.vendors.registry import default_vendors

    pod = pod_manifest("p", gpumem=10)
    pod["spec"]["containers"] = [dict(pod["spec"]["containers"][0], name=f"c{i}")
                                 for i in range(MAX_DEVICE_CONTAINERS + 1)]
    with pytest.raises(HamiError, match="containers request devices"):
        pod_request(pod, default_vendors())
    pod["spec"]["containers"].pop()
    assert len(pod_request(pod, default_vendors()).containers) == MAX_DEVICE_CONTAINERS


@pytest.mark.parametrize("limits", [{"nvidia.com/gpumem": "1e999999"}, {"nvidia.com/gpu": "1", "cpu": "1e16"},
                                    {"nvidia.com/gpu": "1", "cpu": ["not", "a", "quantity"]}])
async def test_a_pod_with_an_absurd_quantity_neither_ends_the_watch_nor_counts(limits: dict[str, Any]) -> None:
    api = cluster()
    async with running_service(api) as (service, client):
        bad = pod_manifest("bad", gpu=None, node="n1",
                           annotations={"hami.io/vgpu-devices-allocated": "GPU-a,NVIDIA,1000,0:;"})
        bad["spec"]["containers"][0]["resources"]["limits"] = limits
        await api.create("pods", bad)
        await api.create("pods", pod_manifest("good", gpumem=1000, node="n1",
                                              annotations={"hami.io/vgpu-devices-allocated": "GPU-b,NVIDIA,1000,0:;"}))
        for _ in range(200):
            if "uid-good" in service.state.pods:
                break
            await asyncio.sleep(0.01)
        assert "uid-good" in service.state.pods and "uid-bad" not in service.state.pods
        assert service.ready()[0] and (await client.get("/readyz")).status_code == 200
