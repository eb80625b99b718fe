"""The techniques: one module each with the same shape (base.py says it), found by name (base.get)."""
