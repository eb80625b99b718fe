"""The one exception type that reaches the user as a message instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unmet precondition, said in one line: what is wrong and what to do.

    The CLI prints `str(err)` and exits with `exit_code` (2 for bad input, as argparse does).
    `field` names the spec field or flag at fault, when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None, exit_code: int = 2) -> None:
        super().__init__(message)
        self.field = field
        self.exit_code = exit_code
