"""The kubelet device-plugin API v1beta1 (issue 4): not built yet."""
