"""The node agent (`gpulet agent run`): discovers the node and publishes its topology, serves
the device plugins, pins containers, watches usage and health, and frees what pods leave."""
