"""The Helm chart (deploy/helm/hami), rendered by the real helm binary: `helm lint`, then `helm template` with
default and changed values, parsed and checked for what the processes need (flags, env, mounts, RBAC, the
kube-scheduler extender config). The node agent's rendered args are run through `hami node-agent` itself.

helm comes from tools/k8s/build.sh (the directory it prints); when it is missing, the script builds it.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hami.agent.config import NodeConfig, load_node_config
from hami.cli import app
from hami.protocol import annotations as anno
from tests.agent_support import DEVICES_YAML, GPU0, GPU2, NODE

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/hami"
BUILD = ROOT / "tools/k8s/build.sh"
RELEASE = "r"
NAMESPACE = "hami-system"
FULLNAME = f"{RELEASE}-hami"
AGENT = f"{FULLNAME}-node-agent"

Doc = dict[str, Any]

# The first test may build helm (tools/k8s/build.sh, minutes on a fresh machine): room for that.
pytestmark = pytest.mark.timeout(1800)


@functools.cache
def helm() -> Path:
    out = subprocess.run(["bash", str(BUILD), "--print-dir"], check=True, capture_output=True, text=True)
    binary = Path(out.stdout.strip()) / "helm"
    if not binary.is_file():
        subprocess.run(["bash", str(BUILD)], check=True, timeout=1700)
    assert binary.is_file(), f"tools/k8s/build.sh did not build {binary}"
    return binary


def helm_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm()), *args], capture_output=True, text=True, timeout=120)


def set_args(values: Mapping[str, Any]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


@functools.cache
def _render(values_json: str) -> tuple[Doc, ...]:
    result = helm_run("template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                      *set_args(json.loads(values_json)))
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def render(**values: Any) -> list[Doc]:
    """`helm template` with `--set-json key=value` for each value (keys dotted, e.g. nodeAgent.enabled)."""
    return list(_render(json.dumps(values, sort_keys=True)))


def render_error(**values: Any) -> str:
    result = helm_run("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *set_args(values))
    assert result.returncode != 0, "expected helm template to fail"
    return result.stderr


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered; have {sorted(kinds(docs))}"
    return found[0]


def kinds(docs: list[Doc]) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


def agent_container(docs: list[Doc]) -> Doc:
    pod = find(docs, "DaemonSet", AGENT)["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "node-agent"]
    return dict(container)


def agent_pod(docs: list[Doc]) -> Doc:
    return dict(find(docs, "DaemonSet", AGENT)["spec"]["template"]["spec"])


def host_mounts(docs: list[Doc]) -> dict[str, tuple[str, str]]:
    """Container mount path -> (host path, hostPath type) for the agent's hostPath volumes."""
    pod = agent_pod(docs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    out: dict[str, tuple[str, str]] = {}
    for mount in agent_container(docs)["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            out[mount["mountPath"]] = (volume["hostPath"]["path"], volume["hostPath"].get("type", ""))
    return out


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def rules_of(role: Doc) -> Iterator[tuple[str, str, str]]:
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    yield group, resource, verb


# --- lint -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"nodeAgent.enabled": False}], ids=["default", "no-node-agent"])
def test_helm_lint_passes(overrides: dict[str, Any]) -> None:
    result = helm_run("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *set_args(overrides))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


# --- the scheduler side (always rendered) -----------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"nodeAgent.enabled": False}], ids=["default", "no-node-agent"])
def test_scheduler_deployment_webhook_and_kube_scheduler_config(overrides: dict[str, Any]) -> None:
    docs = render(**overrides)
    deployment = find(docs, "Deployment", FULLNAME)
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert containers["hami"]["args"][0] == "serve"
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert containers["hami"]["image"] == f"ghcr.io/hami-py/hami:{app_version}"
    assert containers["kube-scheduler"]["command"][:2] == ["kube-scheduler", "--config=/config/config.yaml"]

    webhook = find(docs, "MutatingWebhookConfiguration", FULLNAME)["webhooks"][0]
    assert webhook["clientConfig"]["service"] == {"name": FULLNAME, "namespace": NAMESPACE, "path": "/webhook",
                                                  "port": 443}
    assert webhook["rules"][0]["resources"] == ["pods"]

    config_map = find(docs, "ConfigMap", f"{FULLNAME}-scheduler-config")
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["kind"] == "KubeSchedulerConfiguration"
    assert [p["schedulerName"] for p in config["profiles"]] == ["hami-scheduler"]
    (extender,) = config["extenders"]
    assert extender["urlPrefix"] == f"https://{FULLNAME}.{NAMESPACE}.svc:443"
    assert extender["nodeCacheCapable"] is True
    assert extender["filterVerb"] == "filter" and extender["bindVerb"] == "bind"
    managed = {r["name"]: r["ignoredByScheduler"] for r in extender["managedResources"]}
    assert {"nvidia.com/gpu", "nvidia.com/gpumem", "nvidia.com/gpucores"} <= set(managed)
    assert managed["nvidia.com/gpumem"] is True
    # One CA behind the webhook, the extender's TLS config and the serving certificate.
    secret = find(docs, "Secret", f"{FULLNAME}-tls")
    assert extender["tlsConfig"]["caData"] == webhook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]


def test_scheduler_rbac_allows_every_call_the_service_makes() -> None:
    rules = set(rules_of(find(render(), "ClusterRole", FULLNAME)))
    needed = {("", "nodes", v) for v in ("get", "list", "watch", "patch")}  # cache, node lock
    needed |= {("", "pods", v) for v in ("get", "list", "watch", "patch")}  # cache, hami.io/vgpu-node label
    needed |= {("", "pods/binding", "create"), ("", "events", "create")}
    assert needed <= rules, needed - rules
    assert not any(verb in ("*", "delete") or resource == "secrets" for _, resource, verb in rules)


# --- the node agent -----------------------------------------------------------------------------------


def test_node_agent_daemonset_runs_node_agent_on_gpu_nodes() -> None:
    docs = render()
    daemonset = find(docs, "DaemonSet", AGENT)
    assert daemonset["metadata"]["namespace"] == NAMESPACE
    pod = agent_pod(docs)
    container = agent_container(docs)
    args = container["args"]
    assert args[0] == "node-agent"
    assert "--backend=nvml" in args
    assert "--socket-dir=/var/lib/kubelet/device-plugins" in args
    assert "--resource-name=nvidia.com/gpu" in args
    assert "--config=/etc/hami/config/config.json" in args
    assert container["image"] == find(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0][
        "image"]

    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["HOOK_PATH"]["value"] == "/usr/local"
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"

    assert container["securityContext"]["privileged"] is True
    assert container["securityContext"]["runAsUser"] == 0
    assert pod["serviceAccountName"] == AGENT
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["nodeSelector"] == {"gpu": "on"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= daemonset["spec"]["template"]["metadata"][
        "labels"].items()


def test_node_agent_host_paths_are_mounted_where_the_agent_uses_them() -> None:
    docs = render()
    mounts = host_mounts(docs)
    # kubelet's plugin dir (the agent's socket, kubelet.sock), HAMi-core's dir (libvgpu.so, ld.so.preload,
    # containers/<uid>_<name> created at Allocate) and the shared lock dir: each at its host path.
    assert mounts["/var/lib/kubelet/device-plugins"] == ("/var/lib/kubelet/device-plugins", "Directory")
    assert mounts["/usr/local/vgpu"] == ("/usr/local/vgpu", "DirectoryOrCreate")
    assert mounts["/tmp/vgpulock"] == ("/tmp/vgpulock", "DirectoryOrCreate")
    assert all(path == host for path, (host, _) in mounts.items())
    paths = [m["mountPath"] for m in agent_container(docs)["volumeMounts"]]
    assert len(paths) == len(set(paths))


def test_node_agent_extra_limiter_dirs_are_mounted_once_at_their_host_paths() -> None:
    docs = render(**{"nodeAgent.libvgpu": "/opt/hami-core/libvgpu.so",
                              "nodeAgent.cacheDir": "/var/lib/hami/caches",
                              "nodeAgent.hookPath": "/usr/local/"})
    args = agent_container(docs)["args"]
    assert "--libvgpu=/opt/hami-core/libvgpu.so" in args
    assert "--cache-dir=/var/lib/hami/caches" in args
    mounts = host_mounts(docs)
    assert mounts["/opt/hami-core"] == ("/opt/hami-core", "DirectoryOrCreate")
    assert mounts["/var/lib/hami/caches"] == ("/var/lib/hami/caches", "DirectoryOrCreate")
    assert "/usr/local/vgpu" in mounts
    # Inside <hookPath>/vgpu already: covered by that mount, not mounted again.
    docs = render(**{"nodeAgent.libvgpu": "/usr/local/vgpu/libvgpu.so",
                              "nodeAgent.cacheDir": "/usr/local/vgpu/caches"})
    assert set(host_mounts(docs)) == {"/var/lib/kubelet/device-plugins", "/usr/local/vgpu", "/tmp/vgpulock"}


def test_node_agent_rbac_lets_it_register_allocate_and_post_events() -> None:
    docs = render()
    role = find(docs, "ClusterRole", AGENT)
    rules = set(rules_of(role))
    for verb in ("get", "list", "watch", "patch"):
        assert ("", "nodes", verb) in rules
        assert ("", "pods", verb) in rules
    assert ("", "events", "create") in rules
    assert not any(verb in ("*", "delete") or resource == "secrets" for _, resource, verb in rules)
    binding = find(docs, "ClusterRoleBinding", AGENT)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AGENT}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": AGENT, "namespace": NAMESPACE}]
    assert find(docs, "ServiceAccount", AGENT)["metadata"]["namespace"] == NAMESPACE


def test_node_agent_pods_are_not_selected_by_the_scheduler_service_or_deployment() -> None:
    docs = render()
    agent_labels = find(docs, "DaemonSet", AGENT)["spec"]["template"]["metadata"]["labels"]
    assert not matches(find(docs, "Service", FULLNAME)["spec"]["selector"], agent_labels)
    assert not matches(find(docs, "Deployment", FULLNAME)["spec"]["selector"]["matchLabels"], agent_labels)
    deployment_labels = find(docs, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    assert not matches(find(docs, "DaemonSet", AGENT)["spec"]["selector"]["matchLabels"], deployment_labels)


def test_node_agent_config_map_is_hami_config_json() -> None:
    entries = [{"name": NODE, "devicesplitcount": 4, "devicememoryscaling": 1.5, "filterdevices": {"index": [2]}}]
    docs = render(**{"nodeAgent.config.nodeconfig": entries})
    data = find(docs, "ConfigMap", f"{AGENT}-config")["data"]["config.json"]
    assert json.loads(data) == {"nodeconfig": entries}
    assert find(docs, "DaemonSet", AGENT)["spec"]["template"]["spec"]["volumes"][-1]["configMap"]["name"] == (
        f"{AGENT}-config")


def test_node_agent_config_map_choices() -> None:
    docs = render(**{"nodeAgent.config.existingConfigMap": "hami-device-plugin"})
    assert ("ConfigMap", f"{AGENT}-config") not in kinds(docs)
    volumes = {v["name"]: v for v in agent_pod(docs)["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "hami-device-plugin"
    assert "--config=/etc/hami/config/config.json" in agent_container(docs)["args"]

    docs = render(**{"nodeAgent.config.create": False})
    assert ("ConfigMap", f"{AGENT}-config") not in kinds(docs)
    assert not any(a.startswith("--config") for a in agent_container(docs)["args"])
    assert "config" not in {v["name"] for v in agent_pod(docs)["volumes"]}


def test_node_agent_placement_is_configurable() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]}]}}}
    tolerations = [{"operator": "Exists"}]
    # Helm merges maps into the defaults: the default gpu=on label goes only when set to null.
    docs = render(**{"nodeAgent.nodeSelector": {"accelerator": "nvidia", "gpu": None}, "nodeAgent.affinity": affinity,
                              "nodeAgent.tolerations": tolerations, "nodeAgent.runtimeClassName": "nvidia"})
    pod = agent_pod(docs)
    assert pod["nodeSelector"] == {"accelerator": "nvidia"}
    assert pod["affinity"] == affinity
    assert pod["tolerations"] == tolerations
    assert pod["runtimeClassName"] == "nvidia"
    # The scheduler's own placement values do not leak into the agent, nor the agent's into the scheduler.
    assert "nodeSelector" not in find(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]


def test_node_agent_disabled_renders_no_agent_objects() -> None:
    default = kinds(render())
    disabled = kinds(render(**{"nodeAgent.enabled": False}))
    agent_objects = {(k, n) for k, n in default if n.startswith(AGENT)}
    assert agent_objects == {("DaemonSet", AGENT), ("ServiceAccount", AGENT), ("ClusterRole", AGENT),
                             ("ClusterRoleBinding", AGENT), ("ConfigMap", f"{AGENT}-config")}
    assert disabled == default - agent_objects


def test_hami_core_installer_init_container() -> None:
    docs = render(**{"nodeAgent.hamiCore.install.enabled": True,
                              "nodeAgent.hamiCore.install.image": "projecthami/hami:v2.5.0"})
    (init,) = agent_pod(docs)["initContainers"]
    assert init["image"] == "projecthami/hami:v2.5.0"
    assert {"name": "VGPU_DIR", "value": "/usr/local/vgpu"} in init["env"]
    assert [m["mountPath"] for m in init["volumeMounts"]] == ["/usr/local/vgpu"]
    assert "initContainers" not in agent_pod(render())


def test_bad_backend_values_fail_to_render() -> None:
    assert "nvml or fake" in render_error(**{"nodeAgent.backend": "cuda"})
    assert "fakeDevices" in render_error(**{"nodeAgent.backend": "fake"})


def test_rendered_node_agent_args_are_accepted_by_hami_node_agent(tmp_path: Path) -> None:
    """The DaemonSet's args, with the files of its ConfigMaps, run `hami node-agent --registration-only`:
    every flag exists, every value parses, and the nodeconfig entry for the node applies."""
    entries = [{"name": NODE, "devicesplitcount": 4, "filterdevices": {"uuid": [GPU2]}}]
    docs = render(**{"nodeAgent.backend": "fake", "nodeAgent.fakeDevices": yaml.safe_load(DEVICES_YAML),
                              "nodeAgent.config.nodeconfig": entries, "nodeAgent.deviceMemoryScaling": 1.5,
                              "nodeAgent.numaTopology": False})
    files = {"/etc/hami/config/config.json": find(docs, "ConfigMap", f"{AGENT}-config")["data"]["config.json"],
             "/etc/hami/devices/devices.yaml": find(docs, "ConfigMap", f"{AGENT}-devices")["data"]["devices.yaml"]}
    local: dict[str, str] = {}
    for path, text in files.items():
        local[path] = str(tmp_path / Path(path).name)
        Path(local[path]).write_text(text)
    args = []
    for arg in agent_container(docs)["args"]:
        flag, _, value = arg.partition("=")
        args.append(f"{flag}={local[value]}" if value in local else arg)
    assert "--memory-scaling=1.5" in args and "--no-numa-topology" in args

    result = CliRunner().invoke(app, [*args, "--registration-only", "-o", "json"], env={"NODE_NAME": NODE})
    assert result.exit_code == 0, result.output
    registered = json.loads(json.loads(result.stdout)[anno.NODE_NVIDIA_REGISTER])
    assert [d["id"] for d in registered] == [GPU0, registered[1]["id"]] and GPU2 not in str(registered)
    assert {d["count"] for d in registered} == {4}
    assert registered[0]["devmem"] == 32768 * 1.5
    config = load_node_config(local["/etc/hami/config/config.json"], NODE, NodeConfig(memory_scaling=1.5))
    assert config.split_count == 4 and config.hide_uuids == {GPU2}
