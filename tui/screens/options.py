"""Step 6: the speed/memory trade-offs of the book's table 5.2 and the learning-rate schedule.
←/→ changes the highlighted setting; every change re-runs the estimate (arithmetic: instant)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from tui.output import human_bytes
from tui.screens.base import WizardStep
from tui.screens.checks import VERDICT, Estimated, estimate_choices
from tui.wizard import Choices


@dataclass(frozen=True)
class Setting:
    key: str  # Choices attribute
    label: str
    values: tuple[Any, ...]
    effect: str  # table 5.2: speed / memory / difficulty, or what it does
    techniques: tuple[str, ...] = ()  # empty: every technique
    multi_gpu: bool = False  # shown only when the machine has several GPUs (values up to their number)


def _lr_values() -> tuple[float, ...]:
    return (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 3e-2)


SETTINGS: tuple[Setting, ...] = (
    Setting("batch_size", "batch size", (1, 2, 4, 8, 16, 32, 64, 128), "speed + memory, easy; powers of two"),
    Setting("grad_accum", "grad accumulation", (1, 2, 4, 8, 16, 32), "memory, medium: same effective batch"),
    Setting("grad_checkpointing", "grad checkpointing", (False, True), "memory, medium: ~30% slower"),
    Setting("precision", "precision", ("fp32", "mixed-bf16", "mixed-fp16", "bf16"), "speed, hard"),
    Setting("optimizer", "optimizer", ("adamw", "adamw-8bit", "sgd"), "speed + memory, easy",
            ("scratch", "full", "lora", "prompt-tuning", "distill", "moe")),
    # QLoRA starts from paged 8-bit AdamW (its paper's choice; spikes page out to CPU memory)
    Setting("optimizer", "optimizer", ("paged-adamw-8bit", "adamw-8bit", "adamw"), "speed + memory, easy", ("qlora",)),
    Setting("compile", "torch.compile", (False, True), "speed, easy: slow first step"),
    Setting("preload", "data preloading", ("mmap cache",), "speed, medium: tokenized once"),
    Setting("seq_len", "sequence length", (64, 128, 256, 512, 1024, 2048, 4096), "memory: activations grow with it"),
    Setting("lr", "learning rate", _lr_values(), "the peak, after warm-up"),
    Setting("schedule", "LR schedule", ("cosine", "linear", "constant"), "after warm-up, down to 10%"),
    Setting("warmup_steps", "warm-up steps", (0, 10, 20, 50, 100, 200, 500), "linear ramp from 0"),
    Setting("max_steps", "steps", (50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000), "optimizer steps"),
    Setting("lora_rank", "LoRA rank", (4, 8, 16, 32, 64), "adapter size", ("lora", "qlora")),
    Setting("num_virtual_tokens", "virtual tokens", (8, 20, 50, 100), "prompt length", ("prompt-tuning",)),
    Setting("num_processes", "GPUs (DDP)", (1, 2, 4, 8, 16), "speed: a full copy per GPU, N x the tokens a step",
            multi_gpu=True),
)


def value_of(c: Choices, s: Setting) -> Any:
    if len(s.values) == 1:  # fixed by the engine, shown so the whole of table 5.2 is here
        return s.values[0]
    if s.key == "lr":
        return c.learning_rate()
    return c.optimizer_name() if s.key == "optimizer" else getattr(c, s.key)


def shown(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def step_value(c: Choices, s: Setting, delta: int) -> None:
    """Move the setting to the next/previous value in its list (nearest, for a value not in it)."""
    current = value_of(c, s)
    values = list(s.values)
    if len(values) == 1:
        return
    if current in values:
        i = values.index(current) + delta
    elif isinstance(current, str):  # a name this technique does not offer (picked under another): the first
        i = 0
    else:
        nearest = min(range(len(values)), key=lambda k: abs(float(values[k]) - float(current)))
        i = nearest + (delta if (float(values[nearest]) - float(current)) * delta <= 0 else 0)
    setattr(c, s.key, values[max(0, min(i, len(values) - 1))])


class OptionsScreen(WizardStep):
    STEP = 5
    BINDINGS = [
        Binding("right", "change(1)", "Next value", key_display="→", priority=True, tooltip="The next value of this setting"),
        Binding("left", "change(-1)", "Previous", key_display="←", priority=True, tooltip="The previous value of this setting"),
    ]

    def body(self) -> ComposeResult:
        with Vertical(id="options"):
            yield OptionList(id="settings")
            yield Static("", id="options-estimate")

    def settings(self) -> list[Setting]:
        from dataclasses import replace

        t = self.wizard.choices.technique
        report = self.wizard.hardware
        n_gpus = len(report.gpus) if report else 0
        return [replace(s, values=tuple(v for v in s.values if v <= n_gpus)) if s.multi_gpu else s
                for s in SETTINGS if (not s.techniques or t in s.techniques) and (not s.multi_gpu or n_gpus > 1)]

    def on_mount(self) -> None:
        self.fill()
        settings = self.query_one("#settings", OptionList)
        settings.highlighted = 0
        settings.focus()
        self.estimate()

    def fill(self) -> None:
        settings = self.query_one("#settings", OptionList)
        keep = settings.highlighted
        settings.clear_options()
        c = self.wizard.choices
        for s in self.settings():
            settings.add_option(Option(Text.assemble((f"{s.label:<19}", "bold"), (f"‹ {shown(value_of(c, s)):^10} ›", "cyan"),
                                                     (f"  {s.effect}", "#9e9e9e")), id=s.key))
        if keep is not None:
            settings.highlighted = keep

    def action_change(self, delta: int) -> None:
        settings = self.query_one("#settings", OptionList)
        if settings.highlighted is None:
            return
        step_value(self.wizard.choices, self.settings()[settings.highlighted], delta)
        self.fill()
        self.estimate()

    @work(thread=True, exclusive=True, exit_on_error=False, group="estimate")
    def estimate(self) -> None:
        self.post_message(estimate_choices(self.wizard, with_suggestions=False))

    def on_estimated(self, message: Estimated) -> None:
        out = self.query_one("#options-estimate", Static)
        if message.est is None:
            out.update(Text(message.error or "?", style="red"))
            return
        est, c = message.est, self.wizard.choices
        c.extra["estimate"] = est
        text = Text.assemble(("Estimate: ", "bold"), f"{human_bytes(est.total_bytes)} a GPU")
        for g in est.gpus:
            label, style = VERDICT.get(g.verdict, (g.verdict, ""))
            text.append(f"  GPU {g.index} ")
            text.append(label, style=style)
        tps = c.batch_size * c.seq_len * c.grad_accum * c.num_processes
        gpus = f" x {c.num_processes} GPUs" if c.num_processes > 1 else ""
        text.append(f"\n{tps:,} tokens a step (batch {c.batch_size} x {c.seq_len} x {c.grad_accum} accumulation{gpus})")
        if message.data is not None and message.data.projected_epochs:
            text.append(f"; {message.data.projected_epochs:.2f} passes over the data in {c.max_steps:,} steps")
        out.update(text)
