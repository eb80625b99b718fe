"""Models: scratch architectures, shapes from a config alone, loading pretrained models, remote-code trust."""
