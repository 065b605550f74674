"""The device plugin .proto is the wire (SPEC §5): names, field numbers, and committed stubs in sync with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hami.protocol.deviceplugin import api_pb2 as pb

PACKAGE = Path(pb.__file__).parent

FIELDS = {
    "RegisterRequest": {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4},
    "DevicePluginOptions": {"pre_start_required": 1, "get_preferred_allocation_available": 2},
    "ListAndWatchResponse": {"devices": 1},
    "Device": {"ID": 1, "health": 2, "topology": 3},
    "TopologyInfo": {"nodes": 1},
    "NUMANode": {"ID": 1},
    "PreferredAllocationRequest": {"container_requests": 1},
    "ContainerPreferredAllocationRequest": {"available_deviceIDs": 1, "must_include_deviceIDs": 2,
                                            "allocation_size": 3},
    "PreferredAllocationResponse": {"container_responses": 1},
    "ContainerPreferredAllocationResponse": {"deviceIDs": 1},
    "AllocateRequest": {"container_requests": 1},
    "ContainerAllocateRequest": {"devices_ids": 1},
    "AllocateResponse": {"container_responses": 1},
    "ContainerAllocateResponse": {"envs": 1, "mounts": 2, "devices": 3, "annotations": 4, "cdi_devices": 5},
    "Mount": {"container_path": 1, "host_path": 2, "read_only": 3},
    "DeviceSpec": {"container_path": 1, "host_path": 2, "permissions": 3},
    "CDIDevice": {"name": 1},
    "PreStartContainerRequest": {"devices_ids": 1},
}


@pytest.mark.parametrize("message", sorted(FIELDS))
def test_field_numbers(message: str) -> None:
    descriptor = pb.DESCRIPTOR.message_types_by_name[message]
    assert descriptor.full_name == f"v1beta1.{message}"
    assert {f.name: f.number for f in descriptor.fields} == FIELDS[message]


def test_services() -> None:
    services = {s.full_name: [m.name for m in s.methods] for s in pb.DESCRIPTOR.services_by_name.values()}
    assert services == {
        "v1beta1.Registration": ["Register"],
        "v1beta1.DevicePlugin": ["GetDevicePluginOptions", "ListAndWatch", "GetPreferredAllocation", "Allocate",
                                 "PreStartContainer"],
    }
    assert pb.DESCRIPTOR.services_by_name["DevicePlugin"].methods_by_name["ListAndWatch"].server_streaming


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    """tools/gen_proto.sh output is committed; regenerate into a temp dir and compare."""
    protoc = pytest.importorskip("grpc_tools.protoc")
    src = PACKAGE.parents[2]
    rc = protoc.main(["protoc", f"-I{src}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                      str(PACKAGE / "api.proto")])
    assert rc == 0
    generated = tmp_path / "hami" / "protocol" / "deviceplugin"
    for name in ("api_pb2.py", "api_pb2_grpc.py"):
        assert (generated / name).read_text() == (PACKAGE / name).read_text(), f"run tools/gen_proto.sh ({name})"
