"""Will it fit, is the data enough: memory by arithmetic, activations, suggestions, the multi-GPU layout."""
