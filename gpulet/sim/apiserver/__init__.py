"""An in-process Kubernetes API server stand-in (nodes, pods, bindings; list, watch, patch)
for testing code that uses the real kubernetes client over HTTP."""

from gpulet.sim.apiserver.standin import ApiServerStandIn
from gpulet.sim.apiserver.status import ApiError

__all__ = ["ApiError", "ApiServerStandIn"]
