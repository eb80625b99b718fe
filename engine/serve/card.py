"""The model card (README.md) every export carries, and its loss curve (loss.png).

From the run folder alone: the base model, the technique, the data as trained (the "model ready" event:
format, template, examples, tokens), the spec, the final train and validation losses, and the curve, drawn
here into a PNG with zlib (no plotting library is a dependency).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

from engine.runfolder import events as ev
from engine.runfolder import folder as runfolder
from engine.runfolder.redact import redact

CURVE = "loss.png"


def losses(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    """(train loss by step, validation loss by step); a rolled-back step keeps its latest value."""
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    for event in ev.read(run):
        if isinstance(event, ev.Metrics):
            train[event.step] = event.train_loss
        elif isinstance(event, ev.Eval):
            val[event.step] = event.eval_loss
    return dict(sorted(train.items())), dict(sorted(val.items()))


def data_summary(run: Path) -> dict[str, Any] | None:
    for event in ev.read(run):
        if isinstance(event, ev.State) and event.data is not None:
            return event.data
    return None


def png(series: list[tuple[list[tuple[int, float]], tuple[int, int, int]]], width: int = 640,
        height: int = 320) -> bytes:
    """Line plots on white with a grey frame: each series is (points, colour), scaled together."""
    pixels = [bytearray(b"\xff" * (3 * width)) for _ in range(height)]
    points = [p for s, _ in series for p in s]
    margin = 12

    def put(x: int, y: int, rgb: tuple[int, int, int]) -> None:
        if 0 <= x < width and 0 <= y < height:
            pixels[y][3 * x:3 * x + 3] = bytes(rgb)

    for x in range(margin, width - margin):  # the frame
        put(x, margin, (200, 200, 200))
        put(x, height - margin, (200, 200, 200))
    for y in range(margin, height - margin + 1):
        put(margin, y, (200, 200, 200))
        put(width - margin, y, (200, 200, 200))
    if points:
        x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
        y0, y1 = min(p[1] for p in points), max(p[1] for p in points)

        def at(p: tuple[int, float]) -> tuple[int, int]:
            fx = (p[0] - x0) / (x1 - x0) if x1 > x0 else 0.5
            fy = (p[1] - y0) / (y1 - y0) if y1 > y0 else 0.5
            return margin + round(fx * (width - 2 * margin)), height - margin - round(fy * (height - 2 * margin))

        for pts, rgb in series:
            for a, b in zip(pts, pts[1:] or pts):
                (ax, ay), (bx, by) = at(a), at(b)
                steps = max(abs(bx - ax), abs(by - ay), 1)
                for k in range(steps + 1):
                    x, y = ax + (bx - ax) * k // steps, ay + (by - ay) * k // steps
                    for dx, dy in ((0, 0), (1, 0), (0, 1)):  # two pixels thick
                        put(x + dx, y + dy, rgb)
            if len(pts) < 50:  # few points (validation): each marked, so a single one shows
                for p in pts:
                    px, py = at(p)
                    for dx in range(-2, 3):
                        for dy in range(-2, 3):
                            put(px + dx, py + dy, rgb)
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def write(run: Path, folder: Path, *, fmt: str, source: str, quant: str | None) -> None:
    """README.md (and loss.png when the run logged losses) into `folder`."""
    from engine import spec as spec_mod

    spec_text = (run / runfolder.SPEC).read_text(encoding="utf-8")
    spec = spec_mod.load(run / runfolder.SPEC)
    train, val = losses(run)
    if train:
        (folder / CURVE).write_bytes(png([(list(train.items()), (31, 119, 180)), (list(val.items()), (214, 39, 40))]))
    (folder / "README.md").write_text(text(run, spec, spec_text, train, val, fmt=fmt, source=source, quant=quant),
                                      encoding="utf-8")


def text(run: Path, spec: Any, spec_text: str, train: dict[int, float], val: dict[int, float], *, fmt: str,
         source: str, quant: str | None) -> str:
    base = spec.model.path if spec.technique != "scratch" else None
    tags = ["llm-wizard", spec.technique] + (["gguf"] if fmt == "gguf" else []) + (["peft"] if fmt == "adapter" else [])
    front = ["---", "library_name: " + ("peft" if fmt == "adapter" else "transformers" if fmt == "merged" else "gguf")]
    if base and not Path(base).expanduser().exists():  # a Hub id: the Hub links the card to its base
        front.append(f"base_model: {base}")
    front += ["tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    lines = [f"# {run.name}", "",
             f"Trained with llm-wizard: **{spec.technique}**" + (f" on `{base}`" if base else " from scratch")
             + f", exported as **{fmt}**" + (f" ({quant})" if quant else "") + f" from `{source}`.", ""]
    data = data_summary(run)
    if data:
        lines += ["## Data", ""]
        labels = {"format": "format", "template": "chat template", "examples": "examples", "tokens": "tokens",
                  "trained_tokens": "tokens trained on (replies)", "dropped": "examples dropped"}
        lines += [f"- {label}: {data[key]}" for key, label in labels.items() if data.get(key) is not None]
        lines.append("")
    if train:
        last = max(train)
        lines += ["## Losses", "", f"- final train loss: {train[last]:.4f} (step {last})"]
        if val:
            lines.append(f"- final validation loss: {val[max(val)]:.4f} (step {max(val)})")
        low, high = min(train.values()), max(train.values())
        lines += ["", f"![loss curve: train in blue, validation in red, steps {min(train)} to {last}, loss "
                      f"{low:.3g} to {high:.3g}]({CURVE})", ""]
    lines += ["## Run spec", "", "`llm-wizard train` this file to train it again:", "", "```toml",
              redact(spec_text).rstrip(), "```", ""]
    return "\n".join(front + lines)
