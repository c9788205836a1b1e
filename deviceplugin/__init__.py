"""The node's device plugins (kubelet's device-plugin API v1beta1, gRPC): what each resource
advertises, what an Allocate grants (following the extender's assignment), and its ledger."""
