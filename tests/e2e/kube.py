"""A small synchronous admin client for e2e tests: fake GPU nodes, pods as a user submits them, waits.

It tracks what it created so each test leaves the cluster as it found it (without kube-controller-manager
namespaces never finish deleting, so pods and nodes are removed one by one, grace period 0).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from hami.protocol import annotations as anno
from hami.resources import Device


class Kube:
    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.pods: list[tuple[str, str]] = []
        self.nodes: list[str] = []
        self.namespaces: set[str] = {"default"}

    # -- writes -------------------------------------------------------------------------------------
    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post(path, json=obj)
        if r.status_code == 409:
            return dict(self.http.get(f"{path}/{obj['metadata']['name']}").json())
        if r.status_code >= 300:
            raise AssertionError(f"POST {path}: {r.status_code} {r.text}")
        return dict(r.json())

    def namespace(self, name: str) -> str:
        if name not in self.namespaces:
            self.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
            self.namespaces.add(name)
        return name

    def gpu_node(self, name: str, devices: list[Device], *, cpu: str = "64", memory: str = "256Gi",
                 cordon: str = "", extra_annotations: dict[str, str] | None = None,
                 allocatable_gpus: int | None = None) -> dict[str, Any]:
        """A node as its device plugin registered it; `allocatable_gpus` overrides what kubelet reports
        (0: the device plugin is gone)."""
        annotations = {anno.NODE_NVIDIA_REGISTER: anno.encode_node_devices(devices), **(extra_annotations or {})}
        if cordon:
            annotations[anno.DEVICE_CORDON] = cordon
        resources = {"cpu": cpu, "memory": memory, "pods": "110",
                     "nvidia.com/gpu": str(sum(d.count for d in devices) if allocatable_gpus is None
                                           else allocatable_gpus)}
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "annotations": annotations, "labels": {"e2e": "true"}},
                "status": {"capacity": resources, "allocatable": resources,
                           "conditions": [{"type": "Ready", "status": "True", "reason": "e2e",
                                           "lastHeartbeatTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]}}
        created = self.create("/api/v1/nodes", node)
        self.nodes.append(name)
        return created

    def submit(self, namespace: str, name: str, limits: dict[str, str] | None = None, *,
               annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None,
               containers: list[dict[str, Any]] | None = None, scheduler: str | None = None,
               extra_spec: dict[str, Any] | None = None) -> httpx.Response:
        """POST a pod as `kubectl apply` would: the response is what the user sees (denials included)."""
        self.namespace(namespace)
        if containers is None:
            containers = [{"name": "main", "image": "cuda:12", "resources": {"limits": limits or {}}}]
        spec: dict[str, Any] = {"containers": containers, "terminationGracePeriodSeconds": 0, **(extra_spec or {})}
        if scheduler:
            spec["schedulerName"] = scheduler
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {},
                            "labels": labels or {}},
               "spec": spec}
        r = self.http.post(f"/api/v1/namespaces/{namespace}/pods", json=pod)
        if r.status_code < 300:
            self.pods.append((namespace, name))
        return r

    def pod(self, namespace: str, name: str, limits: dict[str, str] | None = None, *, retry_s: float = 0,
            **kw: Any) -> dict[str, Any]:
        """Create a pod; with retry_s, retry while the webhook is unreachable (as a controller would)."""
        deadline = time.monotonic() + retry_s
        r = self.submit(namespace, name, limits, **kw)
        while r.status_code == 500 and "failed calling webhook" in r.text and time.monotonic() < deadline:
            time.sleep(0.5)
            r = self.submit(namespace, name, limits, **kw)
        assert r.status_code == 201, f"{r.status_code} {r.text}"
        return dict(r.json())

    def delete_pod(self, namespace: str, name: str) -> None:
        self.http.delete(f"/api/v1/namespaces/{namespace}/pods/{name}", params={"gracePeriodSeconds": 0})

    def cleanup(self) -> None:
        for ns, name in self.pods:
            self.delete_pod(ns, name)
        for name in self.nodes:
            self.http.delete(f"/api/v1/nodes/{name}")
        self.pods.clear()
        self.nodes.clear()

    # -- reads --------------------------------------------------------------------------------------
    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        r = self.http.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        r.raise_for_status()
        return dict(r.json())

    def list_pods(self, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else {}
        return list(self.http.get(f"/api/v1/namespaces/{namespace}/pods", params=params).json()["items"])

    def wait_bound(self, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            pod = self.get_pod(namespace, name)
            if pod["spec"].get("nodeName"):
                return pod
            if time.monotonic() > deadline:
                raise AssertionError(f"{namespace}/{name} not bound after {timeout}s: "
                                     f"{self.events(namespace, name)}")
            time.sleep(0.2)

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        r = self.http.get(f"/api/v1/namespaces/{namespace}/events",
                          params={"fieldSelector": f"involvedObject.name={name}"})
        return list(r.json()["items"])

    def wait_event(self, namespace: str, name: str, contains: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events(namespace, name):
                if contains in ev.get("message", ""):
                    return ev
            if time.monotonic() > deadline:
                raise AssertionError(f"no event with {contains!r} for {namespace}/{name}: "
                                     f"{[e.get('message') for e in self.events(namespace, name)]}")
            time.sleep(0.3)
