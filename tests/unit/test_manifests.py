"""Kubernetes objects → core values, and manifest files → nodes and pods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hami.protocol.manifests import (
    load_manifests,
    node_from_manifest,
    pod_allocation,
    pod_is_terminal,
    pod_request,
)
from hami.resources import (
    ContainerDevice,
    ContainerRequest,
    Device,
    DeviceRequest,
    DeviceSelector,
    HamiError,
    Node,
    PodRequest,
)
from hami.vendors.nvidia import NvidiaVendor

VENDORS = (NvidiaVendor(),)


def training_pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "train-0", "namespace": "ml", "uid": "u-1", "annotations": {
            "nvidia.com/use-gputype": "A100",
            "hami.io/node-scheduler-policy": "Spread",
            "hami.io/gpu-scheduler-policy": "binpack, numa",
        }},
        "spec": {
            "initContainers": [
                {"name": "fetch", "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}}},
                {"name": "warm", "resources": {"limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1000"}}},
                {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
            ],
            "containers": [
                {"name": "main", "resources": {
                    "limits": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "2",
                               "nvidia.com/gpumem-percentage": "50"},
                    "requests": {"cpu": "1500m"}}},
                {"name": "sidecar"},
            ],
        },
    }


def test_pod_request() -> None:
    assert pod_request(training_pod(), VENDORS) == PodRequest(
        namespace="ml", name="train-0", uid="u-1",
        containers=(
            ContainerRequest("fetch", init=True, cpu_milli=500, memory_mib=256),
            ContainerRequest("warm", (DeviceRequest("NVIDIA", 1, memory_mib=1000),), init=True),
            ContainerRequest("proxy", init=False, cpu_milli=100),
            ContainerRequest("main", (DeviceRequest("NVIDIA", 2, memory_pct=50),), cpu_milli=1500,
                             memory_mib=8192),
            ContainerRequest("sidecar"),
        ),
        selector=DeviceSelector(use_types=("A100",)),
        node_policy="spread",
        device_policy=("binpack", "numa"),
    )


def test_pod_request_minimal_and_bound() -> None:
    pod = {"metadata": {"generateName": "job-"}, "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}}
    request = pod_request(pod, VENDORS)
    assert (request.namespace, request.name, request.uid, request.node_name) == ("default", "job-", "", "n1")
    assert not request.wants_devices


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda p: p["spec"].update(containers={"name": "c"}), "spec.containers"),
    (lambda p: p["spec"]["containers"].append("c"), "spec.containers[2]"),
    (lambda p: p["spec"]["containers"][0]["resources"]["limits"].update(memory="lots"),
     "spec.containers[0].resources.limits[memory]"),
    (lambda p: p["spec"]["containers"][0]["resources"]["limits"].update({"nvidia.com/gpumem-percentage": "0"}),
     "spec.containers[0].resources.limits[nvidia.com/gpumem-percentage]"),
    (lambda p: p["spec"]["initContainers"][0].update(resources=[]), "spec.initContainers[0].resources"),
    (lambda p: p["metadata"]["annotations"].update({"nvidia.com/vgpu-mode": "vgpu"}),
     "metadata.annotations[nvidia.com/vgpu-mode]"),
    (lambda p: p["metadata"]["annotations"].update({"x": 1}), "metadata.annotations[x]"),
])
def test_pod_request_errors(mutate: Any, field: str) -> None:
    pod = training_pod()
    mutate(pod)
    with pytest.raises(HamiError) as err:
        pod_request(pod, VENDORS)
    assert err.value.field == field


REGISTER = ('[{"id":"GPU-a","count":10,"devmem":40960,"devcore":100,"type":"NVIDIA-A100","mode":"hami-core",'
            '"health":true},{"id":"GPU-b","index":1,"count":10,"devmem":40960,"devcore":100,'
            '"type":"NVIDIA-A100","numa":1,"mode":"hami-core","health":true}]')


def gpu_node(**annotations: str) -> dict[str, Any]:
    return {"kind": "Node",
            "metadata": {"name": "n1", "annotations": {"hami.io/node-nvidia-register": REGISTER, **annotations}},
            "status": {"allocatable": {"cpu": "7910m", "memory": "32Gi", "nvidia.com/gpu": "20"}}}


def test_node_from_manifest() -> None:
    node = gpu_node(**{"hami.io/device-cordon": "GPU-b, ",
                       "hami.io/node-nvidia-score": '[{"uuid":"GPU-a","score":{"GPU-b":120}}]'})
    assert node_from_manifest(node, VENDORS) == Node(
        name="n1",
        devices=(Device("GPU-a", 0, 10, 40960, 100, "NVIDIA-A100"),
                 Device("GPU-b", 1, 10, 40960, 100, "NVIDIA-A100", numa=1)),
        cpu_milli=7910, memory_mib=32768, cordoned=frozenset({"GPU-b"}),
        topology=(("GPU-a", "GPU-b", 120),),
    )


def test_node_without_devices_or_status() -> None:
    assert node_from_manifest({"metadata": {"name": "cpu-1"}}, VENDORS) == Node("cpu-1")


@pytest.mark.parametrize(("node", "field"), [
    ({"metadata": {}}, "metadata.name"),
    (gpu_node(**{"hami.io/node-nvidia-register": "[{}]"}), "node/n1 hami.io/node-nvidia-register[0].id"),
    (gpu_node(**{"hami.io/node-nvidia-score": "{"}), "node/n1 hami.io/node-nvidia-score"),
    ({"metadata": {"name": "n1"}, "status": {"allocatable": {"memory": "lots"}}},
     "status.allocatable[memory]"),
])
def test_node_errors(node: dict[str, Any], field: str) -> None:
    with pytest.raises(HamiError) as err:
        node_from_manifest(node, VENDORS)
    assert err.value.field == field


def allocated_pod(text: str, node: str | None = "n1", vgpu_node: str | None = None) -> dict[str, Any]:
    pod = training_pod()
    pod["metadata"]["annotations"]["hami.io/vgpu-devices-allocated"] = text
    if vgpu_node:
        pod["metadata"]["annotations"]["hami.io/vgpu-node"] = vgpu_node
    if node:
        pod["spec"]["nodeName"] = node
    return pod


def test_pod_allocation() -> None:
    text = ";GPU-a,NVIDIA,1000,0:;;GPU-a,NVIDIA,20480,0:GPU-b,NVIDIA,20480,0:;;"
    assert pod_allocation(allocated_pod(text), VENDORS) == ("n1", (
        (), (ContainerDevice("GPU-a", "NVIDIA", 1000, 0),), (),
        (ContainerDevice("GPU-a", "NVIDIA", 20480, 0), ContainerDevice("GPU-b", "NVIDIA", 20480, 0)), (),
    ))


def test_pod_allocation_node_pad_and_trim() -> None:
    # Not bound yet: the node comes from hami.io/vgpu-node. Short annotations are padded.
    found = pod_allocation(allocated_pod(";GPU-a,NVIDIA,1,0:;", node=None, vgpu_node="n2"), VENDORS)
    assert found == ("n2", ((), (ContainerDevice("GPU-a", "NVIDIA", 1, 0),), (), (), ()))
    # Extra empty entries (as HAMi's device plugin leaves after blanking) are dropped.
    found = pod_allocation(allocated_pod(";GPU-a,NVIDIA,1,0:;;;;;;;;"), VENDORS)
    assert found is not None and len(found[1]) == 5
    assert pod_allocation(allocated_pod(";GPU-a,NVIDIA,1,0:;", node=None), VENDORS) is None
    assert pod_allocation(training_pod(), VENDORS) is None


def test_pod_allocation_errors() -> None:
    with pytest.raises(HamiError) as err:
        pod_allocation(allocated_pod(";;;;;GPU-a,NVIDIA,1,0:;"), VENDORS)
    assert err.value.field == "metadata.annotations[hami.io/vgpu-devices-allocated]"
    with pytest.raises(HamiError) as err:
        pod_allocation(allocated_pod("GPU-a,NVIDIA:;"), VENDORS)
    assert err.value.field == "hami.io/vgpu-devices-allocated[container 0][device 0]"


class DcuVendor(NvidiaVendor):
    """A second vendor with its own annotations, to check merging by container position."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "DCU"
        from hami.vendors.base import VendorAnnotations
        self.annotations = VendorAnnotations("hami.io/node-dcu-register", "hami.io/dcu-devices-allocated",
                                             "hami.io/dcu-devices-to-allocate", "hami.io/node-handshake-dcu")


def test_pod_allocation_merges_vendors_by_position() -> None:
    pod = allocated_pod(";GPU-a,NVIDIA,1,0:;")
    pod["metadata"]["annotations"]["hami.io/dcu-devices-allocated"] = ";DCU-1,DCU,2,0:;;DCU-2,DCU,3,0:;"
    node, alloc = pod_allocation(pod, (*VENDORS, DcuVendor())) or ("", ())
    assert node == "n1"
    assert alloc == ((), (ContainerDevice("GPU-a", "NVIDIA", 1, 0), ContainerDevice("DCU-1", "DCU", 2, 0)),
                     (), (ContainerDevice("DCU-2", "DCU", 3, 0),), ())


@pytest.mark.parametrize(("status", "metadata", "terminal"), [
    ({"phase": "Succeeded"}, {}, True),
    ({"phase": "Failed"}, {}, True),
    ({"phase": "Running"}, {}, False),
    ({"phase": "Running"}, {"deletionTimestamp": "2026-11-29T22:14:32Z"}, False),
    ({}, {}, False),
])
def test_pod_is_terminal(status: dict[str, str], metadata: dict[str, str], terminal: bool) -> None:
    assert pod_is_terminal({"metadata": metadata, "status": status}) is terminal


# --- files ------------------------------------------------------------------------------------------------

MULTI_DOC = """\
apiVersion: v1
kind: Node
metadata: {name: n1}
---
---
apiVersion: v1
kind: PodList
items:
- metadata: {name: p1}
  spec: {containers: [{name: c}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: p2}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
"""


def test_load_multi_document_yaml() -> None:
    nodes, pods = load_manifests(MULTI_DOC)
    assert [n["metadata"]["name"] for n in nodes] == ["n1"]
    assert [p["metadata"]["name"] for p in pods] == ["p1", "p2"]


def test_load_kubectl_json_list(tmp_path: Path) -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1"}},
        {"kind": "NodeList", "items": [{"metadata": {"name": "n2"}}]},
    ]}
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(listing, indent=2))
    for source in (path, str(path), json.dumps(listing)):
        nodes, pods = load_manifests(source)
        assert [n["metadata"]["name"] for n in nodes] == ["n1", "n2"]
        assert [p["metadata"]["name"] for p in pods] == ["p1"]


def test_load_single_object() -> None:
    assert load_manifests('{"kind": "Pod", "metadata": {"name": "p"}}') == ([], [{"kind": "Pod",
                                                                                 "metadata": {"name": "p"}}])


@pytest.mark.parametrize(("text", "field"), [
    ("kind: Node\n---\n- 1\n- 2\n", "<text>[document 1][0]"),
    ("kind: Node\n---\nmetadata: {}\n", "<text>[document 1]"),
    ("kind: List\nitems: {a: 1}\n", "<text>[document 0].items"),
    ("kind: PodList\nitems: [3]\n", "<text>[document 0].items[0]"),
    ("kind: [unclosed\n", "<text>"),
    ('{"kind": "Pod",', "<text>"),
])
def test_load_errors_name_document(text: str, field: str) -> None:
    with pytest.raises(HamiError) as err:
        load_manifests(text)
    assert err.value.field == field


def test_load_missing_file_is_text_and_unreadable_path_errors(tmp_path: Path) -> None:
    with pytest.raises(HamiError) as err:
        load_manifests(tmp_path / "absent.yaml")
    assert err.value.field == str(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Node\n---\n42\n")
    with pytest.raises(HamiError) as err:
        load_manifests(str(bad))
    assert err.value.field == f"{bad}[document 1]"
