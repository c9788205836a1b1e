"""The node agent: discovery of the node's hardware, and (later) publication, allocation
state, usage feedback, pinning, health and metrics."""
