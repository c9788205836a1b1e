"""kubelet's gRPC APIs: the .proto files, and the modules the build generates from them
(generate.py, run by setup.py's build_py: docs/build.md)."""
