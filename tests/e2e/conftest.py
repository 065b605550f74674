"""One real control plane per e2e session: etcd + kube-apiserver + kube-scheduler (with our extender) +
`hami serve` (extender and webhook, registered through a MutatingWebhookConfiguration with its caBundle).

Nodes are fake (Node objects with capacity and HAMi registration annotations, no kubelet). `hami serve`
runs with `--simulate-device-plugin`, which plays HAMi's device plugin protocol steps (bind-phase success,
node lock release) since there is no kubelet to call a real one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster
from tests.e2e.controlplane import ControlPlane
from tests.e2e.kube import Kube

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cp = ControlPlane(Path(tmp_path_factory.mktemp("e2e")))
    try:
        yield Cluster.start(cp)
    finally:
        for proc in cp.processes:
            if proc.name.startswith("hami") and not proc.alive() and proc.popen.returncode not in (0, -9, -15):
                print(f"--- {proc.name} log ---\n{proc.tail(80)}")
        cp.cleanup()


@pytest.fixture
def kube(cluster: Cluster) -> Iterator[Kube]:
    """The admin client; everything a test creates in its namespace and its nodes is removed after it."""
    yield cluster.kube
    cluster.kube.cleanup()
