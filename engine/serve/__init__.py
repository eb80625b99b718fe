"""Using what a run trained: sampling text from a checkpoint or final/."""
