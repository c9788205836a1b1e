"""The scheduler extender (`gpulet scorer serve`): filters, scores and binds pods that ask for
gpulet resources, deciding each with the shared placement engine (`gpulet.placement`)."""
