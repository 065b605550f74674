"""Time replay: a pod that does not fit waits in the queue until capacity frees."""

from __future__ import annotations

from pathlib import Path

import pytest

from hami.resources import HamiError
from hami.sim import report
from hami.sim.engine import simulate
from hami.sim.replay import replay

HEAD = ("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,"
        "scheduled_time\n")


def files(tmp_path: Path, pods: str) -> tuple[Path, Path]:
    n, p = tmp_path / "nodes.csv", tmp_path / "openb_pod_list_t.csv"
    n.write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,8000,16384,1,T4\n")
    p.write_text(HEAD + pods)
    return n, p


def test_a_pod_waits_for_the_one_that_holds_the_gpu(tmp_path: Path) -> None:
    nodes, pods = files(tmp_path, "a,1000,1024,1,1000,,LS,Running,0,100,0\n"
                                  "b,1000,1024,1,1000,,LS,Running,10,60,10\n"  # runs 50 s once started
                                  "c,1000,1024,2,1000,,LS,Running,20,30,20\n"  # 2 GPUs: never fits
                                  "d,1000,1024,0,0,,LS,Running,20,30,20\n")
    r = replay(nodes, pods, "frag-aware")
    assert (r.pods, r.ran, r.never_ran, r.waited) == (4, 3, 1, 2)
    assert sorted(r.delays) == [0.0, 0.0, 90.0]  # b started at 100, when a left
    assert r.allocated_max == pytest.approx(100.0)
    assert r.timeline[-1].allocated_pct == pytest.approx(0.0)  # everything that ran has left
    data = r.to_json()
    assert data["queueing_delay_seconds"]["p99"] == pytest.approx(88.2)
    assert data["never_ran"] == 1


def test_bounded_retries_still_drain_the_queue(tmp_path: Path) -> None:
    rows = "".join(f"p{i},100,100,1,1000,,LS,Running,{i},{i + 5},{i}\n" for i in range(200))
    nodes, pods = files(tmp_path, rows)
    r = replay(nodes, pods, "bestfit", retry_budget=2)
    assert r.ran == 200 and r.never_ran == 0  # one GPU, 200 pods of 5 s: a long but finite queue
    assert max(r.delays) > 100


def test_replay_needs_times(tmp_path: Path) -> None:
    n = tmp_path / "n.csv"
    n.write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,8000,16384,1,T4\n")
    p = tmp_path / "m.csv"
    p.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1,1,1,1000\n")
    with pytest.raises(HamiError, match="needs creation_time and deletion_time"):
        replay(n, p, "fgd")


def test_report_collects_every_run(tmp_path: Path) -> None:
    nodes, pods = files(tmp_path, "a,1000,1024,1,500,,LS,Running,0,100,0\n"
                                  "b,1000,1024,1,1000,,LS,Running,10,60,10\n")
    out = tmp_path / "report"
    for name in ("fgd", "frag-aware"):
        report.write_inflation(out, simulate(nodes, pods, name, [1, 2], 1.3, jobs=1))
    index = report.write_replay(out, replay(nodes, pods, "fgd"))
    html = index.read_text()
    assert html.count("<svg") == 2  # one inflation chart for the trace, one replay chart
    assert "frag-aware" in html and "fgd" in html and "replay" in html
    head = (out / "t__fgd.csv").read_text().splitlines()[0]
    assert head == "arrival_pct,unallocated_median,unallocated_q25,unallocated_q75,seed_1,seed_2"
    assert (out / "t__fgd__replay.csv").read_text().startswith("time_s,allocated_gpu_pct,queued")
