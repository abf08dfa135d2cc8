"""Engine stage: the GPU table, the trtllm-build plan (flags, refusals, memory) and the build itself."""
