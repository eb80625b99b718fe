"""The run folder contract: the only channel between a run and whatever watches or steers it."""
