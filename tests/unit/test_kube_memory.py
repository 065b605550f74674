"""The in-memory API server keeps the semantics the binder, informer and agent rely on."""

from __future__ import annotations

import asyncio

import pytest

from hami.kube.api import ApiError
from hami.kube.memory import MemoryKubeApi


def _pod(name: str, node: str | None = None) -> dict:  # type: ignore[type-arg]
    spec = {"containers": [{"name": "c"}]} | ({"nodeName": node} if node else {})
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": spec}


async def test_bind_sets_node_and_annotations_once() -> None:
    api = MemoryKubeApi.from_objects([{"metadata": {"name": "n1"}}], [_pod("p")])
    pod = await api.get("pods", "p", namespace="ns")
    await api.bind("ns", "p", pod["metadata"]["uid"], "n1", {"hami.io/vgpu-node": "n1"})
    pod = await api.get("pods", "p", namespace="ns")
    assert pod["spec"]["nodeName"] == "n1"
    assert pod["metadata"]["annotations"] == {"hami.io/vgpu-node": "n1"}
    with pytest.raises(ApiError) as err:
        await api.bind("ns", "p", pod["metadata"]["uid"], "n1", {})
    assert err.value.status == 409
    with pytest.raises(ApiError) as err:
        await api.bind("ns", "p", "other-uid", "n1", {})
    assert err.value.status == 404


async def test_conditional_patch_conflicts_on_stale_version() -> None:
    api = MemoryKubeApi.from_objects([{"metadata": {"name": "n1"}}], [])
    node = await api.get("nodes", "n1")
    rv = node["metadata"]["resourceVersion"]
    await api.patch_annotations("nodes", "n1", {"a": "1"}, resource_version=rv)
    with pytest.raises(ApiError) as err:
        await api.patch_annotations("nodes", "n1", {"a": "2"}, resource_version=rv)
    assert err.value.status == 409
    node = await api.patch_annotations("nodes", "n1", {"a": None})
    assert node["metadata"]["annotations"] == {}


async def test_watch_resumes_filters_and_expires() -> None:
    api = MemoryKubeApi.from_objects([], [_pod("a", "n1")])
    listed = await api.list("pods", field_selector="spec.nodeName=n1")
    assert [p["metadata"]["name"] for p in listed.items] == ["a"]
    assert (await api.list("pods", field_selector="spec.nodeName=n2")).items == []
    api.put("pods", _pod("b", "n2"))
    api.put("pods", _pod("c", "n1"))
    events = []
    async for ev in api.watch("pods", resource_version=listed.resource_version,
                              field_selector="spec.nodeName=n1", timeout_s=1):
        if ev.type != "BOOKMARK":
            events.append((ev.type, ev.object["metadata"]["name"]))
            break
    assert events == [("ADDED", "c")]
    api.compact()
    with pytest.raises(ApiError) as err:
        async for _ in api.watch("pods", resource_version=listed.resource_version):
            pass
    assert err.value.status == 410


async def test_watch_wakes_on_change() -> None:
    api = MemoryKubeApi()
    rv = (await api.list("nodes")).resource_version

    async def first_event() -> str:
        async for ev in api.watch("nodes", resource_version=rv, timeout_s=5):
            if ev.type == "ADDED":
                return str(ev.object["metadata"]["name"])
        return ""

    task = asyncio.create_task(first_event())
    await asyncio.sleep(0.05)
    await api.create("nodes", {"metadata": {"name": "late"}})
    assert await asyncio.wait_for(task, 2) == "late"


async def test_replace_uses_optimistic_concurrency_and_create_rejects_duplicates() -> None:
    api = MemoryKubeApi()
    lease = await api.create("leases", {"metadata": {"name": "hami"}, "spec": {"holderIdentity": "a"}},
                             namespace="kube-system")
    lease["spec"]["holderIdentity"] = "b"
    await api.replace("leases", "hami", lease, namespace="kube-system")
    lease["spec"]["holderIdentity"] = "c"
    with pytest.raises(ApiError) as err:
        await api.replace("leases", "hami", lease, namespace="kube-system")
    assert err.value.status == 409
    with pytest.raises(ApiError) as err:
        await api.create("leases", {"metadata": {"name": "hami"}}, namespace="kube-system")
    assert err.value.status == 409


async def test_watch_keeps_events_written_while_the_consumer_handles_one() -> None:
    api = MemoryKubeApi()
    rv = (await api.list("nodes")).resource_version
    await api.create("nodes", {"metadata": {"name": "a"}})
    seen = []
    async for ev in api.watch("nodes", resource_version=rv, timeout_s=3):
        if ev.type == "BOOKMARK":
            continue
        seen.append(ev.object["metadata"]["name"])
        if len(seen) == 1:  # the consumer writes while the watch is suspended in its yield
            await api.create("nodes", {"metadata": {"name": "b"}})
        if len(seen) == 2:
            break
    assert seen == ["a", "b"]
