"""kubelet's gRPC APIs: the .proto files, and the modules generated from them (make proto)."""
