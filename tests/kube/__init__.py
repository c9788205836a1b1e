"""Real Kubernetes for the end-to-end tests: kubebox (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kubelet's device manager, built from their
published source: box/, build.py) and a control plane started from it (cluster.py)."""
