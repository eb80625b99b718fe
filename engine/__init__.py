"""llm-wizard's engine: hardware probe, estimator, run spec, job process, checkpoints, techniques.

Never imports textual, rich, questionary or tui (an import-linter contract and a test enforce it).
Heavy libraries (torch, transformers, peft, bitsandbytes) are imported inside functions only.
"""

__version__ = "0.1.0"
