"""The contract the extender and the node agent share: the resources and annotations a pod
uses (`resources`; docs/pod-spec.md), the `gpulet.io/assignment` format the extender writes and
the agent follows (`assignment`; docs/assignment.md), where an agent reports its node and how
the extender finds it (`nodetopology`), how a GPU's use is counted (`share`), and time stamps
as the API writes them (`stamps`)."""
