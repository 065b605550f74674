#!/usr/bin/env bash
# Regenerate the kubelet device plugin stubs (src/hami/protocol/deviceplugin/api_pb2*.py[i]) from api.proto.
# Needs grpcio-tools (in the dev extras): `.venv/bin/pip install -e '.[dev]'`. The output is committed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
out="$root/src/hami/protocol/deviceplugin"
# -I at src/ makes the generated import `from hami.protocol.deviceplugin import api_pb2`, so the stubs
# work as a package without sys.path tricks.
"$py" -m grpc_tools.protoc -I "$root/src" \
  --python_out="$root/src" --pyi_out="$root/src" --grpc_python_out="$root/src" \
  "$out/api.proto"
# The .pyi is generated text too; ruff's exclude names only *_pb2*.py, so mark it here.
pyi="$out/api_pb2.pyi"
{ echo "# ruff: noqa"; cat "$pyi"; } > "$pyi.tmp" && mv "$pyi.tmp" "$pyi"
echo "generated: $(cd "$out" && ls api_pb2*)"
