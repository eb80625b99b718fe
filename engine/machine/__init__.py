"""This machine: GPUs through NVML (or a fake for tests), live GPU readings, logind, peak FLOPs."""
