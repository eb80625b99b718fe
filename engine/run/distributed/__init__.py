"""Several processes: the accelerate launch, the supervisor, each rank and its training loop."""
