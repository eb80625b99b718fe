"""One module per CLI command. Each defines HELP, add_arguments(parser) and run(args) -> exit code.

A command's module is its name with `-` as `_` (notify-test: notify_test.py). Modules are imported to build `--help`, so they import nothing heavy at module level: torch,
transformers and friends are imported inside run().
"""

COMMANDS = ("demo", "doctor", "estimate", "data", "train", "runs", "attach", "control", "generate", "chat",
            "export", "notify-test", "sweep", "lr-find", "cloud", "cache")
