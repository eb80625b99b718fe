"""Secrets never reach a run folder (RELIABILITY S6): Hub tokens by their shape, and the values of this
process's secret-looking environment variables wherever they appear (an error message quoting a URL
with a token, a traceback showing a header)."""

from __future__ import annotations

import os
import re

HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}")
BEARER = re.compile(r"(?i)(authorization:\s*bearer\s+|token=)[^\s&'\"]+")
SECRET_NAMES = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY", re.IGNORECASE)
MASK = "***"


def _env_secrets() -> list[str]:
    return sorted((v for k, v in os.environ.items() if SECRET_NAMES.search(k) and len(v) >= 8), key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every known secret replaced by ***."""
    for value in _env_secrets():
        text = text.replace(value, MASK)
    text = HF_TOKEN.sub(MASK, text)
    return BEARER.sub(lambda m: m.group(1) + MASK, text)
