"""POST /webhook with AdmissionReviews as the API server sends them."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest
from kube_kit import node_manifest, pod_manifest, running_service

from hami.admission import apply_patch
from hami.kube.memory import MemoryKubeApi
from hami.protocol import annotations as anno


def review(pod: dict[str, Any] | None, *, operation: str = "CREATE", kind: str = "Pod",
           api_version: str | None = "admission.k8s.io/v1") -> dict[str, Any]:
    body: dict[str, Any] = {"request": {
        "uid": "0df28fbd-5f5f-11e8-b4e1-42010a800002",
        "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": kind},
        "namespace": "team", "operation": operation,
        "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
        "object": pod, "oldObject": None, "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
    }}
    if api_version is not None:
        body["apiVersion"] = api_version
        body["kind"] = "AdmissionReview"
    return body


def new_pod(**kwargs: Any) -> dict[str, Any]:
    """A pod as the API server hands it to a webhook on CREATE: no uid or nodeName yet."""
    pod = pod_manifest("p", **kwargs)
    del pod["metadata"]["uid"]
    del pod["spec"]["schedulerName"]
    pod["metadata"]["namespace"] = "team"
    return pod


async def admit(client: httpx.AsyncClient, body: dict[str, Any], query: str = "?timeout=10s") -> dict[str, Any]:
    response = await client.post(f"/webhook{query}", json=body)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    assert reply["response"]["uid"] == "0df28fbd-5f5f-11e8-b4e1-42010a800002"
    assert reply["kind"] == "AdmissionReview"
    return reply


def patched(pod: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
    response = reply["response"]
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    return apply_patch(pod, orjson.loads(base64.b64decode(response["patch"])))


@pytest.fixture
def api() -> MemoryKubeApi:
    return MemoryKubeApi.from_objects([node_manifest("n1", ("GPU-a", 16000))], [])


async def test_device_pod_gets_scheduler_name_and_defaults(api: MemoryKubeApi) -> None:
    pod = new_pod(gpu=None, gpumem=3000)
    async with running_service(api) as (_, client):
        reply = await admit(client, review(pod))
        assert reply["apiVersion"] == "admission.k8s.io/v1" and reply["response"]["allowed"] is True
        out = patched(pod, reply)
        assert out["spec"]["schedulerName"] == "hami-scheduler"
        assert out["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


async def test_review_without_kind_and_api_version(api: MemoryKubeApi) -> None:
    async with running_service(api) as (_, client):
        reply = await admit(client, review(new_pod(), api_version=None), query="")
        assert reply["apiVersion"] == "admission.k8s.io/v1" and reply["response"]["allowed"] is True


async def test_v1beta1_review_is_answered_in_kind(api: MemoryKubeApi) -> None:
    async with running_service(api) as (_, client):
        reply = await admit(client, review(new_pod(), api_version="admission.k8s.io/v1beta1"))
        assert reply["apiVersion"] == "admission.k8s.io/v1beta1"


async def test_pod_without_devices_is_allowed_unchanged(api: MemoryKubeApi) -> None:
    async with running_service(api) as (_, client):
        reply = await admit(client, review(new_pod(gpu=None)))
        assert reply["response"] == {"uid": "0df28fbd-5f5f-11e8-b4e1-42010a800002", "allowed": True}


@pytest.mark.parametrize(("limits", "needle"), [
    ({"nvidia.com/gpumem-percentage": "150"}, "memory percentage must be 1-100"),
    ({"nvidia.com/gpumem": "-5"}, "must not be negative"),
    ({"nvidia.com/gpucores": "101"}, "cores must be 0-100"),
])
async def test_bad_requests_are_denied_with_a_clear_message(api: MemoryKubeApi, limits: dict[str, str],
                                                            needle: str) -> None:
    pod = new_pod()
    pod["spec"]["containers"][0]["resources"]["limits"].update(limits)
    async with running_service(api) as (_, client):
        reply = await admit(client, review(pod))
        response = reply["response"]
        assert response["allowed"] is False and "patch" not in response
        assert response["status"]["code"] == 400 and needle in response["status"]["message"]
        assert "spec.containers[0]" in response["status"]["message"]


async def test_privileged_device_container_is_denied(api: MemoryKubeApi) -> None:
    pod = new_pod()
    pod["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    async with running_service(api) as (_, client):
        reply = await admit(client, review(pod))
        assert reply["response"]["allowed"] is False
        assert "privileged" in reply["response"]["status"]["message"]


async def test_preset_node_name_is_denied(api: MemoryKubeApi) -> None:
    pod = new_pod(node="n1")
    async with running_service(api) as (_, client):
        reply = await admit(client, review(pod))
        assert reply["response"]["allowed"] is False
        assert "nodeName" in reply["response"]["status"]["message"]


async def test_forged_allocation_annotations_are_removed(api: MemoryKubeApi) -> None:
    forged = {anno.VGPU_DEVICES_ALLOCATED: "GPU-a,NVIDIA,16000,100:;", anno.VGPU_NODE: "n1",
              anno.BIND_PHASE: "success", "team": "ml"}
    pod = new_pod(annotations=forged)
    async with running_service(api) as (_, client):
        out = patched(pod, await admit(client, review(pod)))
        assert out["metadata"]["annotations"] == {"team": "ml"}


async def test_ignore_label_skips_the_pod(api: MemoryKubeApi) -> None:
    pod = new_pod(gpucores=500, labels={"hami.io/webhook": "ignore"})
    async with running_service(api) as (_, client):
        reply = await admit(client, review(pod))
        assert reply["response"] == {"uid": "0df28fbd-5f5f-11e8-b4e1-42010a800002", "allowed": True}


@pytest.mark.parametrize(("operation", "kind"), [("UPDATE", "Pod"), ("DELETE", "Pod"), ("CREATE", "Deployment")])
async def test_other_operations_and_kinds_pass(api: MemoryKubeApi, operation: str, kind: str) -> None:
    pod = new_pod(gpucores=500)
    async with running_service(api) as (_, client):
        reply = await admit(client, review(pod, operation=operation, kind=kind))
        assert reply["response"]["allowed"] is True and "patch" not in reply["response"]


async def test_null_object_is_allowed(api: MemoryKubeApi) -> None:
    async with running_service(api) as (_, client):
        reply = await admit(client, review(None))
        assert reply["response"]["allowed"] is True


async def test_malformed_pod_shape_is_denied_not_500(api: MemoryKubeApi) -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": "oops"}}
    async with running_service(api) as (_, client):
        reply = await admit(client, review(pod))
        assert reply["response"]["allowed"] is False


async def test_webhook_metrics_count_results(api: MemoryKubeApi) -> None:
    async with running_service(api) as (_, client):
        await admit(client, review(new_pod()))
        await admit(client, review(new_pod(gpucores=500)))
        text = (await client.get("/metrics")).text
        assert 'hami_webhook_admission_total{result="mutated"} 1.0' in text
        assert 'hami_webhook_admission_total{result="denied"} 1.0' in text
        assert "hami_webhook_duration_seconds_count 2.0" in text
