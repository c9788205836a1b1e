"""Stand-ins for what a laptop has not got, speaking the real protocols: a Kubernetes API
server (HTTP, the real REST paths, watches), a kubelet (the device-plugin and pod-resources
gRPC APIs), and the Kubernetes objects kube-scheduler sends. For `gpulet demo` and the
tests; the agent and the extender never import them."""
