"""One module per CLI command. Each defines HELP, add_arguments(parser) and run(args) -> exit code.

Modules are imported to build `--help`, so they import nothing heavy at module level: torch,
transformers and friends are imported inside run().
"""

COMMANDS = ("demo", "doctor", "estimate", "train", "runs", "attach", "control", "generate", "chat", "export")
