"""gpulet: fine GPU slices and topology-aware GPU+NIC placement for Kubernetes.

This package holds the command line (`gpulet.cli`) and the pure topology core
(`gpulet.topology`) shared by the agent, the device plugin and the scorer.
"""

__version__ = "0.1.0"
