"""gpulet: fine GPU slices and topology-aware GPU+NIC placement for Kubernetes.

This package holds the floors below the parts (the agent, the device plugin, the extender):
the pure core (`placement` over `topology` and `api`, where `api.share` counts a GPU's use)
and the adapters (`kube`, `httpd`); and the roof above them: the command line (`cli`), the
demo (`demo`) and the control plane's stand-ins (`standins`).
"""

__version__ = "0.1.0"
