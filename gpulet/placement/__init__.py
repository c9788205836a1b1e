"""The placement engine: which GPUs and NICs of one node a request gets, and how good that is.

Pure: a `Topology`, a `NodeState` and a `Request` in, a `Placement` or a `NoFit` out.
"""

from gpulet.api.share import GpuUsage
from gpulet.placement.engine import NoFit, Placement, Placer, place
from gpulet.placement.request import (
    Capacity,
    GpuPolicy,
    NodeState,
    Request,
    RequestError,
    TopologyPolicy,
)

__all__ = [
    "Capacity",
    "GpuPolicy",
    "GpuUsage",
    "NoFit",
    "NodeState",
    "Placement",
    "Placer",
    "Request",
    "RequestError",
    "TopologyPolicy",
    "place",
]
