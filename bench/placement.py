"""Placement latency, state memory and rebuild time of the scheduling core at cluster scale.

    python bench/placement.py --nodes 5000 --gpus 8 --pods 40000 -o json

Builds a cluster of `nodes` x `gpus` devices (mixed models, two NUMA nodes), places `pods` shared-GPU
pods on it through the framework, then times `decisions` more placement decisions (each reserved, so
the cluster keeps filling), and finally rebuilds the whole state from the pods' allocation annotations
as a restarted extender would.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import sys
import time
from typing import Any

import numpy as np

from hami.protocol import annotations as anno
from hami.resources import ContainerRequest, Device, DeviceRequest, DeviceSelector, Node, PodRequest
from hami.scheduler.framework import Scheduler, SchedulerConfig
from hami.scheduler.snapshot import state_from_manifests
from hami.scheduler.state import ClusterState, PodRecord
from hami.vendors.registry import default_vendors

MODELS = [("NVIDIA-A100-SXM4-80GB", 81920), ("NVIDIA-H100", 81920), ("NVIDIA-Tesla T4", 15360),
          ("NVIDIA-L40S", 46080)]


def make_nodes(n: int, gpus: int) -> list[Node]:
    nodes = []
    for i in range(n):
        model, mem = MODELS[i % len(MODELS)]
        devs = tuple(Device(f"GPU-{i:05d}-{g}", g, 10, mem, 100, model, numa=g * 2 // gpus)
                     for g in range(gpus))
        nodes.append(Node(f"node-{i:05d}", devs, cpu_milli=128_000, memory_mib=1_048_576))
    return nodes


def random_pod(rng: random.Random, i: int) -> PodRequest:
    kind = rng.random()
    if kind < 0.7:
        req = DeviceRequest("NVIDIA", 1, memory_mib=rng.choice([1000, 2000, 4000, 8000]),
                            cores=rng.choice([0, 10, 20, 30]))
    elif kind < 0.9:
        req = DeviceRequest("NVIDIA", 1, memory_pct=rng.choice([25, 50]), cores=rng.choice([25, 50]))
    else:
        req = DeviceRequest("NVIDIA", rng.choice([1, 2]), memory_pct=100, cores=100)
    selector = DeviceSelector(use_types=("A100",)) if rng.random() < 0.05 else DeviceSelector()
    container = ContainerRequest("main", (req,), cpu_milli=1000, memory_mib=2048)
    return PodRequest("bench", f"pod-{i}", f"uid-{i}", (container,), selector=selector)


def node_manifest(node: Node) -> dict[str, Any]:
    return {"metadata": {"name": node.name,
                         "annotations": {anno.NODE_NVIDIA_REGISTER: anno.encode_node_devices(node.devices)}},
            "status": {"allocatable": {"cpu": f"{node.cpu_milli}m", "memory": f"{node.memory_mib}Mi"}}}


def pod_manifest(r: PodRecord) -> dict[str, Any]:
    """The Pod object the API server would hold: its device limits and the allocation annotation."""
    namespace, name = r.key.split("/")
    [devices] = r.allocation
    limits = {"nvidia.com/gpu": str(len(devices)), "nvidia.com/gpumem": str(devices[0].memory_mib),
              "nvidia.com/gpucores": str(devices[0].cores)}
    return {"metadata": {"name": name, "namespace": namespace, "uid": r.uid,
                         "annotations": {anno.VGPU_DEVICES_ALLOCATED: anno.encode_pod_allocation(r.allocation)}},
            "spec": {"nodeName": r.node, "schedulerName": "hami-scheduler", "containers": [{
                "name": "main", "resources": {
                    "limits": limits, "requests": {"cpu": f"{r.cpu_milli}m", "memory": f"{r.memory_mib}Mi"}}}]},
            "status": {"phase": "Running"}}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--pods", type=int, default=40000)
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--output", choices=["json", "text"], default="text")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    base_rss = rss_mb()

    state = ClusterState()
    nodes = make_nodes(args.nodes, args.gpus)
    for node in nodes:
        state.upsert_node(node)
    # Fill: spread the initial pods so the cluster is evenly loaded, as a long-running cluster is.
    filler = Scheduler(SchedulerConfig(node_policy="spread", device_policy=("spread",)))
    fill_start = time.perf_counter()
    placed = 0
    for i in range(args.pods):
        decision = filler.schedule(random_pod(rng, i), state)
        if decision.placed:
            filler.reserve(state, decision)
            placed += 1
    fill_s = time.perf_counter() - fill_start
    gc.collect()
    state_rss = rss_mb() - base_rss

    scheduler = Scheduler()
    times = []
    for i in range(args.decisions):
        pod = random_pod(rng, args.pods + i)
        t0 = time.perf_counter()
        decision = scheduler.schedule(pod, state)
        if decision.placed:
            scheduler.reserve(state, decision)
        times.append((time.perf_counter() - t0) * 1000)
        if decision.placed:  # keep the cluster at its fill level for comparable decisions
            state.remove_pod(pod.uid)

    # Rebuild from what the API server holds: Node objects with their registration annotation and Pod
    # objects with their allocation annotation, parsed exactly as the informer parses them on restart.
    node_objs = [node_manifest(n) for n in nodes]
    pod_objs = [pod_manifest(r) for r in state.pods.values()]
    t0 = time.perf_counter()
    rebuilt = state_from_manifests(node_objs, pod_objs, default_vendors())
    rebuild_s = time.perf_counter() - t0
    if rebuilt.device_usage() != state.device_usage():
        sys.exit("rebuilt state differs from the incremental one")

    arr = np.array(times)
    result = {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
        "rss_mb": round(state_rss, 1),
        "rebuild_s": round(rebuild_s, 3),
    }
    if args.output == "json":
        print(json.dumps(result))
    else:
        print(f"nodes={args.nodes} gpus/node={args.gpus} pods placed={placed}/{args.pods} "
              f"(fill {fill_s:.1f}s, {fill_s / args.pods * 1000:.2f} ms/pod)")
        for k, v in result.items():
            print(f"{k:>10}: {v}")


if __name__ == "__main__":
    main()
