"""Start-up refusal of a torch whose `torch.load(weights_only=True)` is known to be unsafe (RELIABILITY S3).

Checkpoints hold optimizer and RNG state read with `weights_only=True`; that restricted unpickler had
remote-code-execution bypasses in older torch releases, so a job refuses to start on one of them.
"""

from __future__ import annotations

import re

from engine.errors import UserError

MIN_TORCH = (2, 10)  # the version RELIABILITY.md S3 names as the one with the fixes


def check_torch(version: str | None = None) -> None:
    if version is None:
        import torch

        version = torch.__version__
    m = re.match(r"(\d+)\.(\d+)", version)
    if m and (int(m.group(1)), int(m.group(2))) < MIN_TORCH:
        raise UserError(f"torch {version} is too old to load checkpoints safely (torch.load's weights_only "
                        f"checks were bypassable before {MIN_TORCH[0]}.{MIN_TORCH[1]}): upgrade torch "
                        "(pip install -U torch)", field="torch")
