"""The extender verbs over HTTP, on the in-memory API server (the `kube/` seam)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Any

import httpx
import pytest
from kube_kit import bind_body, filter_body, node_manifest, pod_manifest, running_service, settle

from hami.kube.memory import MemoryKubeApi
from hami.protocol import annotations as anno
from hami.scheduler.framework import Scheduler, SchedulerConfig
from hami.services.app import ServiceConfig

SIM = ServiceConfig(simulate_device_plugin=True)


def two_nodes(*pods: dict[str, Any]) -> MemoryKubeApi:
    return MemoryKubeApi.from_objects(
        [node_manifest("n1", ("GPU-a", 16000), ("GPU-b", 16000)), node_manifest("n2", ("GPU-c", 8000))], pods)


async def post(client: httpx.AsyncClient, path: str, body: Any) -> Any:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


# --- filter ------------------------------------------------------------------------------------------------


async def test_filter_answers_one_node_and_reserves_it() -> None:
    pod = pod_manifest("p", gpumem=4000, gpucores=20)
    async with running_service(two_nodes(pod)) as (service, client):
        reply = await post(client, "/filter", filter_body(pod, ["n1", "n2"]))
        chosen = reply["NodeNames"]
        assert chosen in (["n1"], ["n2"])  # which one is the default policy's call
        assert reply == {"Nodes": None, "NodeNames": chosen, "FailedNodes": {},
                         "FailedAndUnresolvableNodes": {}, "Error": ""}
        assert service.reservations.get("uid-p") is not None
        assert sum(use[0] for use in service.state.device_usage().values()) == 4000


async def test_filter_with_nodelist_replies_with_nodes() -> None:
    pod = pod_manifest("p", gpumem=12000)
    nodes = {"metadata": {}, "items": [{"metadata": {"name": "n1"}, "spec": {}}, {"metadata": {"name": "n2"}}]}
    async with running_service(two_nodes(pod)) as (_, client):
        reply = await post(client, "/filter", {"Pod": pod, "Nodes": nodes, "NodeNames": None})
        assert reply["NodeNames"] is None
        assert reply["Nodes"]["items"] == [{"metadata": {"name": "n1"}, "spec": {}}]
        assert set(reply["FailedNodes"]) | set(reply["FailedAndUnresolvableNodes"]) == set()


async def test_pods_without_managed_resources_pass_through() -> None:
    pod = pod_manifest("cpu", gpu=None)
    nodes = {"items": [{"metadata": {"name": "x"}}, {"metadata": {"name": "n1"}}]}
    async with running_service(two_nodes()) as (service, client):
        reply = await post(client, "/filter", filter_body(pod, ["x", "n1", "n2"]))
        assert reply["NodeNames"] == ["x", "n1", "n2"] and reply["FailedNodes"] == {}
        reply = await post(client, "/filter", {"Pod": pod, "Nodes": nodes, "NodeNames": None})
        assert reply["Nodes"]["items"] == nodes["items"]
        assert len(service.reservations) == 0


async def test_unschedulable_pod_gets_reasons_and_an_event() -> None:
    # n1 is full of another pod (preemption could help); n2 is too small (it never can); n3 has no GPUs.
    holder = pod_manifest("holder", gpu=2, node="n1", annotations={
        anno.VGPU_DEVICES_ALLOCATED: "GPU-a,NVIDIA,16000,100:GPU-b,NVIDIA,16000,100:;"})
    pod = pod_manifest("big", gpumem=12000)
    api = two_nodes(holder, pod)
    api.put("nodes", {"metadata": {"name": "n3"}})
    async with running_service(api) as (service, client):
        reply = await post(client, "/filter", filter_body(pod, ["n1", "n2", "n3", "ghost"]))
        assert reply["NodeNames"] == []
        assert set(reply["FailedNodes"]) == {"n1"}
        assert reply["FailedNodes"]["n1"].startswith("NodeInsufficientDevice: ")
        assert set(reply["FailedAndUnresolvableNodes"]) == {"n2", "n3", "ghost"}
        assert service.events is not None
        (event,) = service.events.pending()
        assert event["reason"] == "FilteringFailed" and event["involvedObject"]["name"] == "big"
        assert event["message"].startswith("0/4 nodes are available: ")


async def test_invalid_device_request_fails_every_node_with_the_reason() -> None:
    pod = pod_manifest("bad", gpucores=150)
    async with running_service(two_nodes()) as (_, client):
        reply = await post(client, "/filter", filter_body(pod, ["n1", "n2"]))
        assert reply["NodeNames"] == [] and set(reply["FailedAndUnresolvableNodes"]) == {"n1", "n2"}
        assert "gpucores" in reply["FailedAndUnresolvableNodes"]["n1"]


async def test_refilter_gives_the_old_reservation_back() -> None:
    pod = pod_manifest("p", gpumem=4000)
    async with running_service(two_nodes(pod)) as (service, client):
        for _ in range(3):
            await post(client, "/filter", filter_body(pod, ["n1", "n2"]))
        assert sum(use[0] for use in service.state.device_usage().values()) == 4000
        assert len(service.reservations) == 1


async def test_reservation_never_bound_expires() -> None:
    pod = pod_manifest("p", gpumem=4000)
    async with running_service(two_nodes(pod), ServiceConfig(reservation_ttl_s=0.05)) as (service, client):
        await post(client, "/filter", filter_body(pod, ["n1", "n2"]))
        assert service.state.device_usage()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not service.state.device_usage():
                break
        assert service.state.device_usage() == {} and len(service.reservations) == 0


async def test_follower_answers_with_an_error() -> None:
    pod = pod_manifest("p", gpumem=4000)
    async with running_service(two_nodes(pod)) as (service, client):
        service.extender.is_leader = lambda: False
        reply = await post(client, "/filter", filter_body(pod, ["n1"]))
        assert "not the leader" in reply["Error"]
        reply = await post(client, "/bind", bind_body(pod, "n1"))
        assert "not the leader" in reply["Error"]


# --- bind --------------------------------------------------------------------------------------------------


async def test_bind_writes_the_filtered_allocation_with_the_binding() -> None:
    pod = pod_manifest("p", gpumem=4000, gpucores=20)
    api = two_nodes(pod)
    async with running_service(api) as (service, client):
        await post(client, "/filter", filter_body(pod, ["n1", "n2"]))
        reply = await post(client, "/bind", bind_body(pod, "n1"))
        assert reply == {"Error": ""}
        bound = await api.get("pods", "p")
        a = bound["metadata"]["annotations"]
        assert bound["spec"]["nodeName"] == "n1"
        assert a[anno.VGPU_DEVICES_ALLOCATED] == a[anno.VGPU_DEVICES_TO_ALLOCATE] == "GPU-a,NVIDIA,4000,20:;"
        assert a[anno.VGPU_NODE] == "n1" and a[anno.BIND_PHASE] == "allocating"
        assert a[anno.VGPU_TIME].isdigit() and a[anno.BIND_TIME].isdigit()
        node = await api.get("nodes", "n1")
        assert node["metadata"]["annotations"][anno.NODE_LOCK].endswith(",default,p")
        assert api.bind_calls == 1
        await settle(service, api)
        assert len(service.reservations) == 0  # confirmed by the informer
        assert service.state.pods["uid-p"].allocation == ((anno.decode_pod_allocation("GPU-a,NVIDIA,4000,20:;")[0]),)


async def test_bind_without_a_filter_schedules_on_the_bind_node() -> None:
    pod = pod_manifest("p", gpumem=4000)
    api = two_nodes(pod)
    async with running_service(api) as (_, client):
        assert await post(client, "/bind", bind_body(pod, "n2")) == {"Error": ""}
        bound = await api.get("pods", "p")
        assert bound["metadata"]["annotations"][anno.VGPU_DEVICES_ALLOCATED].startswith("GPU-c,")


async def test_bind_to_a_node_where_the_pod_does_not_fit_fails_cleanly() -> None:
    pod = pod_manifest("p", gpumem=12000)
    api = two_nodes(pod)
    async with running_service(api) as (service, client):
        reply = await post(client, "/bind", bind_body(pod, "n2"))
        assert "no longer fits" in reply["Error"]
        assert api.bind_calls == 0 and service.state.device_usage() == {}
        assert service.events is not None and service.events.pending()[-1]["reason"] == "FailedBinding"


async def test_bind_of_an_already_bound_pod_releases_lock_and_reservation() -> None:
    pod = pod_manifest("p", gpumem=4000)
    api = two_nodes(pod)
    async with running_service(api) as (service, client):
        await post(client, "/filter", filter_body(pod, ["n1", "n2"]))
        # Someone else binds it first (another scheduler), with no allocation of ours.
        await api.bind("default", "p", "uid-p", "n2", {})
        await settle(service, api)
        reply = await post(client, "/bind", bind_body(pod, "n1"))
        assert "already" in reply["Error"]
        node = await api.get("nodes", "n1")
        assert anno.NODE_LOCK not in node["metadata"]["annotations"]
        assert service.state.device_usage() == {} and len(service.reservations) == 0


async def test_bind_of_a_deleted_pod_fails_with_404_reason() -> None:
    pod = pod_manifest("p", gpumem=4000)
    api = two_nodes(pod)
    async with running_service(api) as (service, client):
        await post(client, "/filter", filter_body(pod, ["n1", "n2"]))
        api._objects["pods"].pop("default/p")  # gone without the informer noticing yet
        reply = await post(client, "/bind", bind_body(pod, "n1"))
        assert "not found" in reply["Error"]
        node = await api.get("nodes", "n1")
        assert anno.NODE_LOCK not in node["metadata"]["annotations"]
        assert service.state.device_usage() == {}


async def test_retried_bind_that_already_landed_is_a_success() -> None:
    pod = pod_manifest("p", gpumem=4000)
    api = two_nodes(pod)
    async with running_service(api) as (_, client):
        await post(client, "/filter", filter_body(pod, ["n1", "n2"]))
        assert await post(client, "/bind", bind_body(pod, "n1")) == {"Error": ""}
        assert await post(client, "/bind", bind_body(pod, "n1")) == {"Error": ""}
        assert api.bind_calls == 2


# --- prioritize / preempt ----------------------------------------------------------------------------------


async def test_prioritize_gives_the_filtered_node_the_top_score() -> None:
    pod = pod_manifest("p", gpumem=4000)
    async with running_service(two_nodes(pod)) as (_, client):
        [chosen] = (await post(client, "/filter", filter_body(pod, ["n1", "n2"])))["NodeNames"]
        other = "n2" if chosen == "n1" else "n1"
        reply = await post(client, "/prioritize", filter_body(pod, ["n1", "n2"]))
        scores = {h["Host"]: h["Score"] for h in reply}
        assert scores[chosen] == 10 and 0 <= scores[other] <= 9
        reply = await post(client, "/prioritize", filter_body(pod_manifest("cpu", gpu=None), ["n1", "n2"]))
        assert reply == [{"Host": "n1", "Score": 0}, {"Host": "n2", "Score": 0}]


def tenant(name: str, node: str, uuid: str, mem: int, cores: int = 0) -> dict[str, Any]:
    return pod_manifest(name, gpumem=mem, node=node, annotations={
        anno.VGPU_DEVICES_ALLOCATED: f"{uuid},NVIDIA,{mem},{cores}:;"})


async def test_preempt_keeps_only_the_victims_the_devices_need() -> None:
    # n1: GPU-a 16000 with three 4000 MiB tenants (4000 free); GPU-b holds 12000 (4000 free).
    # The pod needs 7000 on one card: evicting one tenant of GPU-a is enough (fraction-aware).
    pods = [tenant("t1", "n1", "GPU-a", 4000), tenant("t2", "n1", "GPU-a", 4000), tenant("t3", "n1", "GPU-a", 4000),
            tenant("t4", "n1", "GPU-b", 12000), tenant("t5", "n2", "GPU-c", 4000)]
    cpu_only = pod_manifest("cpu", gpu=None, node="n1")
    pod = pod_manifest("p", gpumem=7000)
    async with running_service(two_nodes(*pods, cpu_only, pod)) as (service, client):
        before = service.state.device_usage()
        body = {"Pod": pod, "NodeNameToVictims": None, "NodeNameToMetaVictims": {
            "n1": {"Pods": [{"UID": u} for u in ("uid-t1", "uid-t2", "uid-t3", "uid-t4", "uid-cpu")],
                   "NumPDBViolations": 0},
            "n2": {"Pods": [{"UID": "uid-t5"}], "NumPDBViolations": 0}}}
        reply = await post(client, "/preempt", body)
        victims = reply["NodeNameToMetaVictims"]
        # n2's only card (8000 MiB) has 4000 free: its one tenant must go.
        assert victims["n2"]["Pods"] == [{"UID": "uid-t5"}]
        kept = [v["UID"] for v in victims["n1"]["Pods"]]
        assert "uid-cpu" in kept  # not ours to judge
        assert len([u for u in kept if u != "uid-cpu"]) == 1  # one 4000 tenant frees enough
        assert service.state.device_usage() == before  # the state is left as it was


async def test_preempt_drops_nodes_where_the_pod_never_fits() -> None:
    pod = pod_manifest("p", gpumem=12000)
    async with running_service(two_nodes(tenant("t5", "n2", "GPU-c", 4000), pod)) as (_, client):
        body = {"Pod": pod, "NodeNameToMetaVictims": {"n2": {"Pods": [{"UID": "uid-t5"}], "NumPDBViolations": 0}}}
        assert await post(client, "/preempt", body) == {"NodeNameToMetaVictims": {}}


# --- malformed requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/filter", "/prioritize", "/bind", "/preempt", "/webhook"])
@pytest.mark.parametrize("body", [b"", b"{", b"[1]", b'{"Pod": 5}', b"\xff\xfe", b'{"NodeNames": null}'])
async def test_malformed_bodies_are_400_not_500(path: str, body: bytes) -> None:
    async with running_service(two_nodes()) as (_, client):
        response = await client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        assert "error" in response.json()


async def test_wrong_methods_and_paths() -> None:
    async with running_service(two_nodes()) as (_, client):
        assert (await client.get("/filter")).status_code == 405
        assert (await client.post("/nope", json={})).status_code == 404


# --- concurrency -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["binpack", "spread"])
async def test_concurrent_filter_and_bind_never_over_allocate(policy: str) -> None:
    rng = random.Random(7)
    nodes = [node_manifest(f"n{i}", (f"GPU-{i}-0", 16000), (f"GPU-{i}-1", 16000), count=4) for i in range(6)]
    pods = [pod_manifest(f"p{i}", gpumem=rng.choice([2000, 3000, 5000]), gpucores=rng.choice([0, 10, 30]))
            for i in range(120)]
    api = MemoryKubeApi.from_objects(nodes, pods)
    names = [f"n{i}" for i in range(6)]
    scheduler = Scheduler(SchedulerConfig(node_policy=policy))
    async with running_service(api, SIM, scheduler=scheduler) as (service, client):
        async def one(pod: dict[str, Any]) -> bool:
            reply = await post(client, "/filter", filter_body(pod, names))
            if not reply["NodeNames"]:
                return False
            result = await post(client, "/bind", bind_body(pod, reply["NodeNames"][0]))
            assert result["Error"] == "", result
            return True

        placed = await asyncio.gather(*(one(p) for p in pods))
        assert 0 < sum(placed) < len(pods)  # the cluster filled up
        await settle(service, api)
        used: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for obj in (await api.list("pods")).items:
            text = obj["metadata"].get("annotations", {}).get(anno.VGPU_DEVICES_ALLOCATED)
            for container in anno.decode_pod_allocation(text or ""):
                for dev in container:
                    u = used[dev.uuid]
                    u[0] += dev.memory_mib
                    u[1] += dev.cores
                    u[2] += 1
        assert used and all(m <= 16000 and c <= 100 and n <= 4 for m, c, n in used.values())
        assert sum(1 for p in (await api.list("pods")).items if p["spec"].get("nodeName")) == sum(placed)
        # The cache equals the annotations: nothing double-counted, nothing forgotten.
        state_use = {uuid: use for (_, uuid), use in service.state.device_usage().items()}
        assert state_use == {uuid: tuple(u) for uuid, u in used.items()}
        assert len(service.reservations) == 0


@pytest.mark.parametrize(("depth", "expected"), [(2, ["n1", "n1", "n2", "n2"]), (0, ["n1"] * 4)])
async def test_filter_prefers_a_node_without_a_full_lock_line(depth: int, expected: list[str]) -> None:
    # Binpack keeps choosing n1; with a line of `depth` pods waiting for n1's lock, the next pod goes to the
    # best node with a shorter line instead of queueing (depth 0: always queue).
    pods = [pod_manifest(f"p{i}", gpumem=1000) for i in range(4)]
    api = MemoryKubeApi.from_objects([node_manifest("n1", ("GPU-a", 16000), ("GPU-b", 16000)),
                                      node_manifest("n2", ("GPU-c", 16000))], pods)
    scheduler = Scheduler(SchedulerConfig(node_policy="binpack"))
    async with running_service(api, ServiceConfig(node_queue_depth=depth), scheduler=scheduler) as (_, client):
        chosen = [(await post(client, "/filter", filter_body(p, ["n1", "n2"])))["NodeNames"][0] for p in pods]
        assert chosen == expected
