"""Generated kubelet device plugin v1beta1 stubs (api.proto → api_pb2*.py by tools/gen_proto.sh). Nothing
hand-written lives here; the server and client code is in hami.agent.deviceplugin."""
