"""A running e2e cluster: the control plane, `hami serve` (extender + webhook, registered through a
MutatingWebhookConfiguration with its caBundle) and kube-scheduler configured with our extender.
Shared by the e2e tests and bench/e2e_throughput.py."""

from __future__ import annotations

import base64
import ssl
import string
import time

import httpx
import yaml

from tests.e2e.controlplane import ROOT, ControlPlane, Process, free_port
from tests.e2e.kube import Kube

SCHEDULER_NAME = "hami-scheduler"


class Cluster:
    """The running control plane plus handles to restart Hami (SIGKILL tests) and add replicas."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.kube = Kube(cp.client())
        self.hami_port = free_port()
        self.hami: Process | None = None

    @property
    def hami_url(self) -> str:
        return f"https://127.0.0.1:{self.hami_port}"

    def start_hami(self, name: str = "hami", port: int | None = None, *extra: str, wait: bool = True) -> Process:
        p = self.cp.pki
        proc = self.cp.hami(name, "serve", "--kubeconfig", str(self.cp.kubeconfig),
                            "--listen", f"127.0.0.1:{port or self.hami_port}",
                            "--extender-listen", f"127.0.0.1:{port or self.hami_port}",
                            "--tls-cert", str(p.hami_cert), "--tls-key", str(p.hami_key),
                            "--simulate-device-plugin", "--namespace", "default", "--log-level", "info",
                            *extra)
        if wait:
            self.wait_hami_ready(proc, port or self.hami_port)
        return proc

    def wait_hami_ready(self, proc: Process, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(verify=ssl.create_default_context(cafile=str(self.cp.pki.ca)), timeout=2) as c:
            while time.monotonic() < deadline:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
                try:
                    if c.get(f"https://127.0.0.1:{port}/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
        raise RuntimeError(f"{proc.name} not ready:\n{proc.tail()}")

    def register_webhook(self) -> None:
        ca = base64.b64encode(self.cp.pki.ca.read_bytes()).decode()
        config = {
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "hami-webhook"},
            "webhooks": [{
                "name": "vgpu.hami.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Fail", "timeoutSeconds": 10,
                "clientConfig": {"url": f"{self.hami_url}/webhook", "caBundle": ca},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                           "resources": ["pods"], "scope": "*"}],
                "namespaceSelector": {"matchExpressions": [
                    {"key": "hami.io/webhook", "operator": "NotIn", "values": ["ignore"]}]},
                "objectSelector": {"matchExpressions": [
                    {"key": "hami.io/webhook", "operator": "NotIn", "values": ["ignore"]}]},
            }],
        }
        self.kube.create("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", config)
        # The API server picks up a new webhook configuration after a moment: wait until it calls us.
        deadline = time.monotonic() + 30
        probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "webhook-probe"},
                 "spec": {"containers": [{"name": "c", "image": "x", "resources": {
                     "limits": {"nvidia.com/gpumem-percentage": "500"}}}]}}
        while time.monotonic() < deadline:
            r = self.kube.http.post("/api/v1/namespaces/default/pods?dryRun=All", json=probe)
            if r.status_code >= 400 and "gpumem-percentage" in r.text:
                return
            time.sleep(0.5)
        raise RuntimeError("the API server never called the webhook")

    def start_scheduler(self) -> Process:
        text = string.Template((ROOT / "deploy/kube-scheduler-config.yaml").read_text()).substitute(
            KUBECONFIG=str(self.cp.kubeconfig), URL_PREFIX=self.hami_url, ENABLE_HTTPS="true",
            CA_DATA=base64.b64encode(self.cp.pki.ca.read_bytes()).decode(), SCHEDULER_NAME=SCHEDULER_NAME,
            LEADER_ELECT="false")
        config = yaml.safe_load(text)
        # A second profile schedules plain pods (and the benchmark's whole-GPU baseline) without Hami.
        config["profiles"].append({"schedulerName": "default-scheduler"})
        return self.cp.start_scheduler(config)


    @classmethod
    def start(cls, cp: ControlPlane) -> Cluster:
        cp.start()
        c = cls(cp)
        c.hami = c.start_hami()
        c.register_webhook()
        c.start_scheduler()
        return c
