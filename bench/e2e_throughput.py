"""End-to-end scheduling throughput on a real kube-apiserver + kube-scheduler, Hami vs plain.

    python bench/e2e_throughput.py -o json      # {"hami_pods_per_s", "plain_pods_per_s", "ratio"}

Starts the same control plane as the e2e tests (etcd, kube-apiserver, kube-scheduler with our extender,
`hami serve` with its webhook), registers `--nodes` fake nodes with `--gpus` GPUs each (HAMi registration
annotation and, for the baseline, an `example.com/gpu` extended resource of the same count), then:
  plain: `--pods` whole-GPU pods asking `example.com/gpu: 1`, scheduled by kube-scheduler alone;
  hami:  `--pods` shared-GPU pods asking `nvidia.com/gpumem` + `gpucores`, admitted by the webhook and
         placed by the extender (filter + bind with the allocation annotations, node lock, device plugin
         acknowledgement simulated).
Rate = pods / (last pod bound - first pod created). Creation runs from a thread pool so the client is
not the bottleneck. Needs the binaries of tools/k8s/build.sh.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hami.resources import Device
from tests.e2e.cluster import Cluster
from tests.e2e.controlplane import ControlPlane


def make_nodes(cluster: Cluster, n: int, gpus: int) -> None:
    def one(i: int) -> None:
        name = f"bench-{i:04d}"
        devices = [Device(f"GPU-{name}-{g}", g, 10, 24000, 100, "NVIDIA-BENCH") for g in range(gpus)]
        cluster.kube.gpu_node(name, devices)
        node = cluster.kube.http.get(f"/api/v1/nodes/{name}").json()
        for key in ("capacity", "allocatable"):
            node["status"][key]["example.com/gpu"] = str(gpus)
        r = cluster.kube.http.put(f"/api/v1/nodes/{name}/status", json=node)
        r.raise_for_status()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(n)))


def run_phase(cluster: Cluster, namespace: str, pods: int, limits: dict[str, str], scheduler: str | None) -> float:
    kube = cluster.kube
    kube.namespace(namespace)

    def create(i: int) -> None:
        r = kube.submit(namespace, f"p{i:05d}", limits, scheduler=scheduler)
        if r.status_code != 201:
            raise RuntimeError(f"create failed: {r.status_code} {r.text}")

    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(pods)))
    created = time.monotonic()
    deadline = created + 600
    while True:
        r = kube.http.get(f"/api/v1/namespaces/{namespace}/pods",
                          params={"fieldSelector": "spec.nodeName=", "limit": 1})
        body = r.json()
        remaining = len(body["items"]) + int(body["metadata"].get("remainingItemCount") or 0)
        if remaining == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{namespace}: {remaining} pods still unbound after 600 s")
        time.sleep(0.1)
    elapsed = time.monotonic() - start
    print(f"{namespace}: {pods} pods created in {created - start:.1f}s, all bound after {elapsed:.1f}s",
          file=sys.stderr)
    return pods / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--pods", type=int, default=2000)
    ap.add_argument("-o", "--output", choices=["json", "text"], default="text")
    args = ap.parse_args()
    cp = ControlPlane(Path(tempfile.mkdtemp(prefix="hami-e2e-bench-")))
    try:
        cluster = Cluster.start(cp)
        make_nodes(cluster, args.nodes, args.gpus)
        time.sleep(2)  # let the informers see every node
        plain = run_phase(cluster, "plain", args.pods, {"example.com/gpu": "1"}, None)
        hami = run_phase(cluster, "shared", args.pods, {"nvidia.com/gpumem": "2000", "nvidia.com/gpucores": "10"},
                         None)
    finally:
        cp.cleanup()
    result = {"hami_pods_per_s": round(hami, 1), "plain_pods_per_s": round(plain, 1),
              "ratio": round(hami / plain, 3)}
    if args.output == "json":
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>18}: {v}")


if __name__ == "__main__":
    main()
