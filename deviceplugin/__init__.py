"""The node's device plugins (kubelet's device-plugin API v1beta1, gRPC): what each resource
advertises, what an Allocate grants (following the extender's assignment), and its ledger.

Split as NVIDIA's k8s-device-plugin is (resource manager, allocation policy, servicer):
`inventory` (the node's devices) and `devicehealth` (which are sick); `assignment` (which
pending pod an Allocate is for, and whether its assignment gives exactly what the container
asks); `decisions` (what an Allocate grants, pure; `room`: whether an assignment fits what is
granted); `transaction` (applying a decision: region, ledger, checkpoint, rolled back
together); `ledger` and `checkpoint` (what is granted, and its files); `core` (the
thread-safe façade: lock, decide, apply); `server` (the gRPC servicer, against the
`PluginCore` protocol) and `manager` (serving and registering with kubelet). What each does:
docs/deviceplugin.md.
"""
