"""An in-process Kubernetes API server stand-in (nodes, pods, bindings, events, Leases,
CustomResourceDefinitions and their custom resources; list, watch, patch, selectors, garbage
collection) for testing code that uses the real kubernetes client over HTTP."""

from gpulet.standins.apiserver.standin import ApiServerStandIn
from gpulet.standins.apiserver.status import ApiError
from gpulet.standins.apiserver.traffic import Traffic

__all__ = ["ApiError", "ApiServerStandIn", "Traffic"]
