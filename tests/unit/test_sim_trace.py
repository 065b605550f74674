"""Loading the openb CSVs and mapping them onto the core's values."""

from __future__ import annotations

from pathlib import Path

import pytest

from hami.resources import DeviceSelector
from hami.sim.trace import (
    TaskShape,
    TraceError,
    TraceNode,
    TraceTask,
    check_models,
    cluster_nodes,
    gpu_capacity,
    load_nodes,
    load_pods,
)

OPENB = Path(__file__).resolve().parents[3] / "shared" / "data" / "openb"
NODE_HEAD = "sn,cpu_milli,memory_mib,gpu,model\n"
POD_HEAD = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time," \
           "scheduled_time\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_loads_nodes_and_both_pod_shapes(tmp_path: Path) -> None:
    nodes = load_nodes(write(tmp_path, "n.csv", NODE_HEAD + "n1,64000,262144,2,P100\nn0,32000,131072,0,\n"))
    assert nodes == [TraceNode("n1", 64000, 262144, 2, "P100"), TraceNode("n0", 32000, 131072, 0, "")]
    full = load_pods(write(tmp_path, "p.csv", POD_HEAD
                           + "p0,6000,12288,1,460,T4|G2|T4,LS,Running,10,70,10\n"
                           + "p1,8000,30517,0,0,,BE,Running,0,5,0\n"))
    assert full[0].shape == TaskShape(6000, 12288, 1, 460, ("T4", "G2"))
    assert (full[0].creation_time, full[0].deletion_time) == (10, 70)
    short = load_pods(write(tmp_path, "m.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n"
                            "p0,12000,16384,8,1000\n"))
    assert short[0].shape == TaskShape(12000, 16384, 8, 1000)
    assert short[0].creation_time is None


@pytest.mark.parametrize(("row", "message"), [
    ("p0,abc,1,1,500,,LS,Running,0,1,0", "cpu_milli: not an integer"),
    ("p0,1000,1,1,1500,,LS,Running,0,1,0", "gpu_milli: 1500 is not in [0, 1000]"),
    ("p0,1000,1,2,500,,LS,Running,0,1,0", "multi-GPU task must take whole GPUs"),
    ("p0,1000,1,0,500,,LS,Running,0,1,0", "on a task without GPUs"),
    ("p0,1000,1,1,505,,LS,Running,0,1,0", "not a whole percentage"),
    ("p0,1000,1,1,500,,LS,Running,9,1,0", "deletion_time 1 is before creation_time 9"),
    ("p0,1000,1,1,500", "expected 11 fields"),
])
def test_bad_pod_row_names_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    path = write(tmp_path, "p.csv", POD_HEAD + "ok,1000,1,1,500,,LS,Running,0,1,0\n" + row + "\n")
    with pytest.raises(TraceError) as err:
        load_pods(path)
    assert f"{path}:3" in str(err.value)
    assert message in str(err.value)


def test_bad_node_rows(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"n\.csv:3: sn: duplicate node 'a'"):
        load_nodes(write(tmp_path, "n.csv", NODE_HEAD + "a,1,1,0,\na,1,1,0,\n"))
    with pytest.raises(TraceError, match="has 2 GPU"):
        load_nodes(write(tmp_path, "n.csv", NODE_HEAD + "a,1,1,2,\n"))
    with pytest.raises(TraceError, match="missing column"):
        load_nodes(write(tmp_path, "n.csv", "sn,cpu_milli\na,1\n"))
    with pytest.raises(TraceError, match="cannot read"):
        load_nodes(tmp_path / "absent.csv")


def test_cluster_mapping() -> None:
    nodes = cluster_nodes([TraceNode("b", 8000, 100, 2, "V100M16"), TraceNode("a", 4000, 50, 0, "")])
    assert [n.name for n in nodes] == ["a", "b"]  # name order: the artifact's tie-break
    assert nodes[0].devices == ()
    d = nodes[1].devices[1]
    assert (d.uuid, d.index, d.type, d.cores, d.count) == ("b-gpu1", 1, "NVIDIA-V100M16", 100, 64)
    assert d.memory_mib % 100 == 0
    assert (nodes[1].cpu_milli, nodes[1].memory_mib) == (8000, 100)
    assert gpu_capacity([TraceNode("b", 1, 1, 2, "T4"), TraceNode("c", 1, 1, 8, "G2")]) == 10000


def test_task_requests() -> None:
    share = TaskShape(6000, 12288, 1, 460, ("V100M16",)).request("p", "u")
    (container,) = share.containers
    (req,) = container.devices
    assert (req.count, req.memory_pct, req.cores, req.exclusive) == (1, 46, 46, False)
    assert (container.cpu_milli, container.memory_mib) == (6000, 12288)
    assert share.selector.use_types == ("NVIDIA-V100M16",)
    whole = TaskShape(1000, 1, 4, 1000).request("p", "u").containers[0].devices[0]
    assert (whole.count, whole.memory_pct, whole.cores, whole.exclusive) == (4, 100, 100, True)
    assert TaskShape(1000, 1, 0, 0).request("p", "u").wants_devices is False


def test_models_do_not_match_each_other() -> None:
    models = ("P100", "T4", "V100M16", "V100M32", "A10", "G2", "G3")
    for a in models:
        sel = DeviceSelector(use_types=(f"NVIDIA-{a}",))
        assert [b for b in models if sel.type_allowed(f"NVIDIA-{b}")] == [a]
    with pytest.raises(TraceError, match="'A10' would also match 'A100'"):
        check_models([TraceNode("n", 1, 1, 1, "A100")], [TraceTask("p", TaskShape(1, 1, 1, 500, ("A10",)))])


@pytest.mark.skipif(not OPENB.exists(), reason="openb data not present")
def test_real_files_load() -> None:
    nodes = load_nodes(OPENB / "openb_node_list_gpu_node.csv")
    assert len(nodes) == 1213
    assert gpu_capacity(nodes) == 6_212_000
    assert len(load_pods(OPENB / "openb_pod_list_multigpu20.csv")) == 8324
