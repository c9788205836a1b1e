"""The product contract both sides of the path share: resource names, annotations, and the
`gpulet.io/assignment` format the extender writes and the agent follows (DESIGN.md)."""
