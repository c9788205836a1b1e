"""gpulet: fine GPU slices and topology-aware GPU+NIC placement for Kubernetes.

This package holds the core the agent, the device plugin and the extender share (`topology`,
`api`, `placement`, `kube`, `httpd`) and what sits on top of them all (`cli`, `demo`, `sim`).
"""

__version__ = "0.1.0"
