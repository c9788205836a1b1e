"""`gpulet demo`: the whole path of gpulet on simulated nodes, in one process tree."""
