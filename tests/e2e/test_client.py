"""HttpKubeApi against the real API server where a fake could hide a difference: paged lists."""

from __future__ import annotations

import asyncio

import pytest

from hami.kube.client import HttpKubeApi, load_kubeconfig
from hami.resources import Device
from tests.e2e.cluster import Cluster
from tests.e2e.kube import Kube

pytestmark = pytest.mark.e2e


def test_paged_list_equals_the_whole_list(cluster: Cluster, kube: Kube) -> None:
    for i in range(7):
        kube.gpu_node(f"page-{i}", [Device(f"GPU-page-{i}", 0, 10, 16000, 100, "NVIDIA-E2EPAGE")])

    async def both() -> tuple[list[str], list[str], str]:
        config = load_kubeconfig(cluster.cp.kubeconfig, None)
        paged, whole = HttpKubeApi(config, page_size=2), HttpKubeApi(config, page_size=0)
        try:
            a = await paged.list("nodes", label_selector="e2e=true")
            b = await whole.list("nodes", label_selector="e2e=true")
        finally:
            await paged.aclose()
            await whole.aclose()
        return [o["metadata"]["name"] for o in a.items], [o["metadata"]["name"] for o in b.items], a.resource_version

    paged, whole, version = asyncio.run(both())
    assert len(paged) >= 7 and paged == whole and version.isdigit()
