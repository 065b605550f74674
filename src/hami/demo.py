"""`make demo`: a small mixed-GPU cluster and a handful of pods placed one after another.

The cluster and pods are plain Kubernetes objects (as `kubectl get -o yaml` prints them), so the demo runs
the same path as `hami place`: admission defaults, the framework, the annotations the extender writes.
"""

from __future__ import annotations

from typing import Any

from hami.protocol import annotations as anno
from hami.resources import Device

_MODELS = {"A100": ("NVIDIA-A100-SXM4-80GB", 81920), "T4": ("NVIDIA-Tesla T4", 15360),
           "L40S": ("NVIDIA-L40S", 46080)}


def _node(name: str, model: str, gpus: int, cordon: str = "") -> dict[str, Any]:
    kind, mem = _MODELS[model]
    devices = [Device(f"GPU-{name}-{i}", i, 10, mem, 100, kind, numa=i * 2 // gpus) for i in range(gpus)]
    annotations = {anno.NODE_NVIDIA_REGISTER: anno.encode_node_devices(devices)}
    if cordon:
        annotations[anno.DEVICE_CORDON] = cordon
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": annotations},
            "status": {"allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"}}}


def _pod(name: str, limits: dict[str, str], annotations: dict[str, str] | None = None,
         why: str = "") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "demo", "uid": f"uid-{name}",
                         "annotations": {**(annotations or {}), "demo/why": why}},
            "spec": {"containers": [{"name": "main", "image": "cuda",
                                     "resources": {"limits": limits, "requests": {"cpu": "2"}}}]}}


def cluster() -> list[dict[str, Any]]:
    return [_node("a100-node", "A100", 4), _node("t4-node-1", "T4", 2), _node("t4-node-2", "T4", 2),
            _node("l40s-node", "L40S", 2, cordon="GPU-l40s-node-1")]


def pods() -> list[dict[str, Any]]:
    return [
        _pod("notebook-1", {"nvidia.com/gpumem": "3000", "nvidia.com/gpucores": "20"},
             why="3 GB slice of a card"),
        _pod("notebook-2", {"nvidia.com/gpumem": "3000", "nvidia.com/gpucores": "20"},
             why="same shape: shares a card or takes another, per the device policy"),
        _pod("train-a100", {"nvidia.com/gpu": "2"}, {anno.NVIDIA_USE_GPUTYPE: "A100"},
             why="2 whole A100s (exclusive)"),
        _pod("infer-half", {"nvidia.com/gpumem-percentage": "50", "nvidia.com/gpucores": "50"},
             {anno.NVIDIA_NOUSE_GPUTYPE: "A100"}, why="half a card, not an A100"),
        _pod("numa-pair", {"nvidia.com/gpu": "2", "nvidia.com/gpumem": "10000"},
             {anno.NVIDIA_NUMA_BIND: "true"}, why="two GPUs on one NUMA node"),
        _pod("spread-me", {"nvidia.com/gpumem": "2000"}, {anno.NODE_SCHEDULER_POLICY: "spread"},
             why="asks for the emptiest node"),
        _pod("too-big", {"nvidia.com/gpumem": "100000"}, why="more memory than any card has"),
        _pod("five-gpus", {"nvidia.com/gpu": "5"}, why="no node has five free GPUs"),
    ]
