"""An environment problem found by a check of this machine (the probe, logind), shown by doctor and the wizard."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" (training will not work), "warning" (slow or limited), "info"
    code: str
    message: str
    fix: str
