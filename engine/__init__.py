"""llm-wizard's engine, in wings layered top to bottom (pyproject.toml's import-linter contracts keep it so):

    run/ serve/       the job process and its training loop; using what a run trained
    techniques/       one module per technique, the same shape each
    runfolder/        the typed contract between a run and whatever watches or steers it
    estimate/ checkpoints/   will it fit, is the data enough; the on-disk checkpoint format
    data/ models/     data sources to token blocks; architectures, pretrained loading, remote-code trust
    machine/          GPUs, the software stack, which strategies can run here
    errors paths processes spec fields vocabulary   the base: the spec and its one vocabulary

Never imports textual, rich, questionary or tui (an import-linter contract and a test enforce it).
Heavy libraries (torch, transformers, peft, bitsandbytes) are imported inside functions only.
"""

__version__ = "0.1.0"
