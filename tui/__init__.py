"""llm-wizard's user-facing side: the CLI (tui.cli), its commands (tui.commands) and the Textual app."""
