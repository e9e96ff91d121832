#!/usr/bin/env bash
# Import the committed caffe_pb2 under several protobuf runtimes (4.21 .. 7.x) in throwaway venvs and
# round-trip a NetParameter. Usage: bash tools/check_protobuf_versions.sh [VERSION ...]
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(4.21.12 5.29.5 6.33.6 7.36.2)
for v in "${versions[@]}"; do
  env=$(mktemp -d)
  python3 -m venv "$env" && "$env/bin/pip" install -q "protobuf==$v"
  "$env/bin/python" - <<'PY'
import importlib.util, sys
import google.protobuf
spec = importlib.util.spec_from_file_location("caffe_pb2", "caffeinit/proto/caffe_pb2.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
net = m.NetParameter(name="x"); net.layer.add(name="p", type="Pooling").pooling_param.round_mode = 1
assert m.NetParameter.FromString(net.SerializeToString()) == net
print(f"protobuf {google.protobuf.__version__}: ok, {len(m.DESCRIPTOR.message_types_by_name)} messages")
PY
  rm -rf "$env"
done
