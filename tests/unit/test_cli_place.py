"""`hami place`: admission defaults applied, JSON contract, exit codes 0/1/2."""

from __future__ import annotations

from pathlib import Path

import orjson
import yaml
from typer.testing import CliRunner

from hami import demo
from hami.cli import app
from hami.protocol import annotations as anno

runner = CliRunner()


def write_cluster(tmp_path: Path, pods: list[dict] | None = None) -> Path:  # type: ignore[type-arg]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": demo.cluster() + (pods or [])}))
    return path


def write_pod(tmp_path: Path, limits: dict[str, str], annotations: dict[str, str] | None = None,
              name: str = "p") -> Path:
    path = tmp_path / f"{name}.yaml"
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "ns", "annotations": annotations or {}},
           "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]}}
    path.write_text(yaml.safe_dump(pod))
    return path


def test_place_json_contract_and_annotations(tmp_path: Path) -> None:
    res = runner.invoke(app, ["place", "--cluster", str(write_cluster(tmp_path)),
                              "--pod", str(write_pod(tmp_path, {"nvidia.com/gpumem": "3000"})), "-o", "json"])
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.stdout)
    assert set(out) == {"node", "containers", "annotations", "rejected"}
    assert out["node"] in {"a100-node", "t4-node-1", "t4-node-2", "l40s-node"}
    [[dev]] = out["containers"]
    assert dev["vendor"] == "NVIDIA" and dev["memory"] == 3000 and dev["cores"] == 0
    assert out["annotations"][anno.VGPU_DEVICES_ALLOCATED] == f"{dev['uuid']},NVIDIA,3000,0:;"
    assert out["annotations"][anno.VGPU_DEVICES_TO_ALLOCATE] == out["annotations"][anno.VGPU_DEVICES_ALLOCATED]
    assert out["annotations"][anno.VGPU_NODE] == out["node"]
    assert out["annotations"][anno.BIND_PHASE] == "allocating"


def test_place_gpu_only_gets_exclusive_card_via_admission_defaults(tmp_path: Path) -> None:
    res = runner.invoke(app, ["place", "--cluster", str(write_cluster(tmp_path)),
                              "--pod", str(write_pod(tmp_path, {"nvidia.com/gpu": "1"},
                                                     {anno.NVIDIA_USE_GPUTYPE: "T4"})), "-o", "json"])
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.stdout)
    [[dev]] = out["containers"]
    assert out["node"].startswith("t4-node") and dev["memory"] == 15360 and dev["cores"] == 100
    assert "CardTypeMismatch" in out["rejected"]["a100-node"]


def test_place_respects_existing_allocations(tmp_path: Path) -> None:
    # Every T4 already carries an exclusive pod: a T4-only request is unschedulable.
    existing = []
    for n in ("t4-node-1", "t4-node-2"):
        for i in range(2):
            existing.append({"apiVersion": "v1", "kind": "Pod",
                             "metadata": {"name": f"{n}-{i}", "namespace": "ns", "uid": f"{n}-{i}",
                                          "annotations": {anno.VGPU_DEVICES_ALLOCATED:
                                                          f"GPU-{n}-{i},NVIDIA,15360,100:;"}},
                             "spec": {"nodeName": n, "schedulerName": "hami-scheduler", "containers": [
                                 {"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
                             "status": {"phase": "Running"}})
    res = runner.invoke(app, ["place", "--cluster", str(write_cluster(tmp_path, existing)),
                              "--pod", str(write_pod(tmp_path, {"nvidia.com/gpumem": "1000"},
                                                     {anno.NVIDIA_USE_GPUTYPE: "T4"})), "-o", "json"])
    assert res.exit_code == 1, res.output
    out = orjson.loads(res.stdout)
    assert out["node"] is None and out["containers"] == [] and out["annotations"] == {}
    assert out["rejected"]["t4-node-1"] == ("NodeInsufficientDevice: need 1, 0/2 fit, "
                                            "2/2 CardComputeUnitsExhausted")


def test_place_skips_a_node_it_cannot_read_and_still_decides(tmp_path: Path) -> None:
    # One node's registration is not valid JSON: that node is left out, said on stderr, the rest decide.
    broken = demo.cluster()[0]
    broken["metadata"]["annotations"][anno.NODE_NVIDIA_REGISTER] = '[{"id": "GPU-a100-node-0", '
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [broken, *demo.cluster()[1:]]}))
    res = runner.invoke(app, ["place", "--cluster", str(cluster), "--pod",
                              str(write_pod(tmp_path, {"nvidia.com/gpumem": "3000"})), "-o", "json"])
    assert res.exit_code == 0, res.output
    assert orjson.loads(res.stdout)["node"] in {"t4-node-1", "t4-node-2", "l40s-node"}
    [line] = res.stderr.splitlines()
    assert line.startswith("warning: node a100-node takes no work: hami.io/node-nvidia-register: invalid JSON")
    res = runner.invoke(app, ["place", "--cluster", str(cluster), "--pod",
                              str(write_pod(tmp_path, {"nvidia.com/gpu": "1"}, {anno.NVIDIA_USE_GPUTYPE: "A100"}))])
    assert res.exit_code == 1 and "a100-node" in res.stderr


def test_place_text_explains(tmp_path: Path) -> None:
    res = runner.invoke(app, ["place", "--cluster", str(write_cluster(tmp_path)),
                              "--pod", str(write_pod(tmp_path, {"nvidia.com/gpumem": "999999"}))])
    assert res.exit_code == 1
    assert "unschedulable" in res.stdout and "CardInsufficientMemory" in res.stdout


def test_place_bad_input_exit_2_names_the_problem(tmp_path: Path) -> None:
    cluster = write_cluster(tmp_path)
    bad = write_pod(tmp_path, {"nvidia.com/gpumem-percentage": "150"})
    res = runner.invoke(app, ["place", "--cluster", str(cluster), "--pod", str(bad)])
    assert res.exit_code == 2
    assert "gpumem-percentage" in res.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: List\nitems: [\n")
    res = runner.invoke(app, ["place", "--cluster", str(broken), "--pod", str(bad)])
    assert res.exit_code == 2 and "broken.yaml" in res.output
    res = runner.invoke(app, ["place", "--cluster", str(cluster), "--pod", str(cluster)])
    assert res.exit_code == 2 and "exactly one Pod" in res.output


def test_demo_runs_and_shows_pending_reasons() -> None:
    res = runner.invoke(app, ["demo"])
    assert res.exit_code == 0, res.output
    assert "too-big stays Pending" in res.stdout and "CardInsufficientMemory" in res.stdout
