"""The `hami.io/vgpu-node` pod label HAMi's vGPU monitor selects pods by: set after every bind, mended
after a restart, written by the leader only."""

from __future__ import annotations

import asyncio
from typing import Any

from kube_kit import bind_body, filter_body, node_manifest, pod_manifest, running_service, settle

from hami.kube.api import ApiError
from hami.kube.memory import MemoryKubeApi
from hami.kube.podlabel import VgpuNodeLabeler
from hami.protocol import annotations as anno


def ours(name: str, node: str, **kwargs: Any) -> dict[str, Any]:
    """A pod we placed and bound: allocation annotations, hami.io/vgpu-node, spec.nodeName."""
    return pod_manifest(name, node=node, gpumem=1000, gpucores=0,
                        annotations={anno.VGPU_DEVICES_ALLOCATED: "GPU-a,NVIDIA,1000,0:;", anno.VGPU_NODE: node},
                        **kwargs)


async def label_of(api: MemoryKubeApi, name: str) -> str | None:
    value: str | None = ((await api.get("pods", name))["metadata"].get("labels") or {}).get(anno.VGPU_NODE)
    return value


async def eventually(check: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def cluster(*pods: dict[str, Any]) -> MemoryKubeApi:
    return MemoryKubeApi.from_objects([node_manifest("n1", ("GPU-a", 16000))], pods)


async def test_a_bound_pod_gets_the_label_of_its_node() -> None:
    pod = pod_manifest("p", gpumem=4000)
    api = cluster(pod)
    async with running_service(api) as (service, client):
        await client.post("/filter", json=filter_body(pod, ["n1"]))
        assert (await client.post("/bind", json=bind_body(pod, "n1"))).json() == {"Error": ""}

        async def labelled() -> bool:
            return await label_of(api, "p") == "n1"
        await eventually(labelled)
        await settle(service, api)
        assert service.labeler.labelled == 1 and not service.labeler.pending  # once, not once per event


async def test_restart_labels_what_an_earlier_run_left_unlabelled_and_only_that() -> None:
    done = {**ours("done", "n1"), "status": {"phase": "Succeeded"}}
    other = pod_manifest("other", node="n1", gpumem=1000)  # bound by someone else: no vgpu-node annotation
    already = ours("already", "n1", labels={anno.VGPU_NODE: "n1"})
    api = cluster(ours("a", "n1"), done, other, already)
    writes = len(api._log)
    async with running_service(api) as (service, _):
        async def labelled() -> bool:
            return await label_of(api, "a") == "n1"
        await eventually(labelled)
        await settle(service, api)
        assert service.labeler.labelled == 1
    assert len(api._log) == writes + 1  # one patch: finished, foreign and labelled pods untouched
    assert await label_of(api, "done") is None and await label_of(api, "other") is None


async def test_a_follower_keeps_the_list_and_writes_once_it_leads() -> None:
    leading = [False]
    api = cluster(ours("a", "n1"), ours("b", "n1"))
    labeler = VgpuNodeLabeler(api, lambda: leading[0], retry_s=0.01)
    for obj in (await api.list("pods")).items:
        labeler.observe("ADDED", obj)
    task = asyncio.create_task(labeler.run())
    try:
        await asyncio.sleep(0.05)
        assert await label_of(api, "a") is None and len(labeler.pending) == 2
        leading[0] = True

        async def both() -> bool:
            return await label_of(api, "a") == await label_of(api, "b") == "n1"
        await eventually(both)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_gone_and_refused_pods_are_dropped_and_busy_errors_retried() -> None:
    api = cluster(ours("refused", "n1"), ours("gone", "n1"), ours("flaky", "n1"))
    calls: dict[str, int] = {}
    patch = api.patch_labels

    async def answer(kind: str, name: str, labels: Any, *, namespace: str | None = None) -> Any:
        calls[name] = calls.get(name, 0) + 1
        if name == "refused":  # e.g. a node name longer than a label value may be
            raise ApiError(422, "must be no more than 63 characters", "Invalid")
        if name == "flaky" and calls[name] <= 2:
            raise ApiError(500, "etcd timeout", "InternalError")
        return await patch(kind, name, labels, namespace=namespace)

    api.patch_labels = answer  # type: ignore[method-assign]
    labeler = VgpuNodeLabeler(api, retry_s=0.01)
    for obj in (await api.list("pods")).items:
        labeler.observe("ADDED", obj)
    await api.delete("pods", "gone")
    task = asyncio.create_task(labeler.run())
    try:
        async def flaky_labelled() -> bool:
            return await label_of(api, "flaky") == "n1"
        await eventually(flaky_labelled)
        await asyncio.sleep(0.05)
        assert calls == {"refused": 1, "gone": 1, "flaky": 3} and not labeler.pending
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_events_older_than_our_patch_do_not_queue_the_pod_again() -> None:
    # The informer can lag: events written before the label patch may reach the labeler after it.
    api = cluster(ours("a", "n1"))
    stale = (await api.list("pods")).items[0]
    labeler = VgpuNodeLabeler(api)
    labeler.observe("ADDED", stale)
    assert await labeler._label("default", "a", "n1")
    labeler.observe("MODIFIED", stale)
    assert not labeler.pending
    labeler.observe("MODIFIED", await api.get("pods", "a"))  # the patch's own event
    unlabelled = await api.patch_labels("pods", "a", {anno.VGPU_NODE: None})
    labeler.observe("MODIFIED", unlabelled)  # someone removed it later: label again
    assert labeler.pending == {("default", "a"): "n1"}
