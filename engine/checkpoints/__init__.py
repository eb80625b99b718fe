"""The on-disk checkpoint format: the atomic store, save guards, fingerprints, FSDP and ZeRO layouts."""
