"""An in-process Kubernetes API server stand-in (nodes, pods, bindings; list, watch, patch)
for testing code that uses the real kubernetes client over HTTP."""

from gpulet.standins.apiserver.standin import ApiServerStandIn
from gpulet.standins.apiserver.status import ApiError

__all__ = ["ApiError", "ApiServerStandIn"]
