"""The inflation run end to end on tiny traces: every pod goes through the scheduling framework."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hami.resources import HamiError
from hami.sim.cli import app, parse_seeds
from hami.sim.engine import run_seed, simulate, target_workload, trace_name
from hami.sim.policies import POLICIES, policy
from hami.sim.trace import TaskShape, TraceNode, TraceTask

NODES = "sn,cpu_milli,memory_mib,gpu,model\na,16000,65536,2,T4\nb,32000,131072,4,V100M16\n"
PODS = ("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,"
        "scheduled_time\n"
        "p0,4000,8192,1,1000,,LS,Running,0,100,0\n"
        "p1,2000,4096,1,500,,LS,Running,5,50,5\n"
        "p2,4000,8192,2,1000,V100M16,LS,Running,9,99,9\n"
        "p3,1000,1024,0,0,,BE,Running,9,20,9\n"
        "p4,2000,4096,1,250,T4,LS,Running,12,40,12\n")


@pytest.fixture
def trace(tmp_path: Path) -> tuple[Path, Path]:
    nodes, pods = tmp_path / "openb_node_list_gpu_node.csv", tmp_path / "openb_pod_list_tiny.csv"
    nodes.write_text(NODES)
    pods.write_text(PODS)
    return nodes, pods


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_runs_the_protocol(trace: tuple[Path, Path], name: str) -> None:
    result = simulate(*trace, name, [42, 43], 1.3, jobs=1)
    data = result.to_json()
    assert data["trace"] == "tiny" and data["policy"] == name and data["seeds"] == [42, 43]
    assert set(data["unallocated_gpu_pct"]) == {"90", "95", "100", "130"}
    for seed in data["per_seed"]:
        assert 0.0 <= seed["unallocated_gpu_pct"]["130"] <= seed["unallocated_gpu_pct"]["90"] <= 100.0
        assert seed["failed_pods"] > 0  # 130% of the capacity arrived: some of it cannot fit


def test_run_seed_accounts_what_the_framework_placed() -> None:
    nodes = [TraceNode("n", 8000, 8192, 2, "T4")]
    tasks = [TraceTask("whole", TaskShape(1000, 1, 1, 1000)), TraceTask("tenth", TaskShape(100, 1, 1, 100))]
    run = run_seed(nodes, tasks, policy("bestfit"), seed=1, ratio=1.3)
    # 2000 capacity, 2600 target, 1100 per pair: arrivals go on until 2600 is reached
    assert run.curve.arrived_pct[-1] >= 130.0 > run.curve.arrived_pct[-2]
    allocated = run.curve.allocated_pct
    assert list(allocated) == sorted(allocated) and allocated[-1] <= 100.0
    assert run.placements - run.failed_pods == round(sum(
        b - a > 0 for a, b in zip([0.0, *allocated[:-1]], allocated, strict=True)))


def test_parallel_seeds_match_serial(trace: tuple[Path, Path]) -> None:
    serial = simulate(*trace, "frag-aware", [1, 2, 3], 1.3, jobs=1).to_json()
    parallel = simulate(*trace, "frag-aware", [1, 2, 3], 1.3, jobs=2).to_json()
    assert serial["per_seed"] == parallel["per_seed"]


def test_oracle_workload_only_for_fgd() -> None:
    tasks = [TraceTask(f"t{i}", TaskShape(1000, 1, 1, 500 if i % 4 else 1000)) for i in range(20)]
    wl = target_workload(tasks)
    assert sum(wl.weights) == pytest.approx(1.0)
    assert {s.gpu_milli for s in wl.shapes} == {500, 1000}
    assert policy("fgd").oracle and not policy("frag-aware").oracle
    assert trace_name("/x/openb_pod_list_gpuspec10.csv") == "gpuspec10"
    with pytest.raises(HamiError, match="unknown policy"):
        policy("nope")


def test_seed_parsing() -> None:
    assert parse_seeds("42-44,50") == [42, 43, 44, 50]
    assert parse_seeds("7") == [7]
    with pytest.raises(HamiError):
        parse_seeds("x")
    with pytest.raises(HamiError):
        parse_seeds("5-3")


def test_cli_json_text_report_and_errors(trace: tuple[Path, Path], tmp_path: Path) -> None:
    nodes, pods = trace
    runner = CliRunner()
    args = ["--nodes", str(nodes), "--pods", str(pods), "--seeds", "42-43"]
    res = runner.invoke(app, [*args, "--policy", "fgd", "--report", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["policy"] == "fgd" and len(data["per_seed"]) == 2
    assert (tmp_path / "r" / "index.html").exists()
    res = runner.invoke(app, [*args, "--policy", "frag-aware", "-o", "text"])
    assert res.exit_code == 0 and "tiny / frag-aware" in res.stdout
    res = runner.invoke(app, [*args, "--policy", "nope"])
    assert res.exit_code == 2 and "unknown policy" in res.stderr
    res = runner.invoke(app, [*args, "--policy", "fgd", "-o", "yaml"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["--nodes", str(nodes), "--pods", str(pods), "--policy", "fgd", "--replay"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["mode"] == "replay"
