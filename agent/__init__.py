"""The node agent (`gpulet agent run`): discovers the node, publishes its topology (a
`NodeTopology`) and renews its heartbeat Lease, serves the device plugins, pins containers,
watches usage and health, and frees what pods leave (docs/agent.md)."""
