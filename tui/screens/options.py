"""Step 6: the speed/memory trade-offs of the book's table 5.2, the learning-rate schedule, the batch
finder and, on a machine with several GPUs, the layout (processes and strategy: the checks step's
proposal, which the user may change; strategies this machine cannot run are listed with the reason) and
the machines (shown with more than one process, or on `m`; machine 0's address, checked, with several).
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

from engine import vocabulary
from engine.spec import DistributedSpec
from tui.output import human_bytes
from tui.screens.base import WizardStep
from tui.screens.checks import VERDICT, Estimated, how_estimated, post_estimates
from tui.wizard import Choices, settle


@dataclass(frozen=True)
class Setting:
    key: str  # Choices attribute
    label: str
    values: tuple[Any, ...]
    effect: str  # table 5.2: speed / memory / difficulty, or what it does
    techniques: tuple[str, ...] = ()  # empty: every technique
    multi_gpu: bool = False  # shown only when the machine has several GPUs (values up to their number)
    hint: str = ""  # a line shown under the list while this setting is highlighted


def _hint(values: tuple[vocabulary.Name, ...], only: tuple[str, ...] = ()) -> str:
    """Each value offered, with its help (engine/vocabulary.py): the line under a highlighted setting."""
    return "; ".join(f"{v.name}: {v.help}" for v in values if v.trains and (v.name in only or not only)) + "."


STRATEGIES = vocabulary.names(vocabulary.STRATEGIES, trained=True)
_PLAIN = ("adamw", "adamw8bit", "sgd")
_QLORA = ("paged_adamw8bit", "adamw8bit", "adamw")


def _lr_values() -> tuple[float, ...]:
    return (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 3e-2)


SETTINGS: tuple[Setting, ...] = (
    Setting("batch_size", "batch size", (1, 2, 4, 8, 16, 32, 64, 128), "speed + memory, easy; powers of two"),
    Setting("grad_accum", "grad accumulation", (1, 2, 4, 8, 16, 32), "memory, medium: same effective batch"),
    Setting("grad_checkpointing", "grad checkpointing", (False, True), "memory, medium: ~30% slower"),
    Setting("precision", "precision", vocabulary.names(vocabulary.PRECISIONS, trained=True), "speed, hard",
            hint=_hint(vocabulary.PRECISIONS)),
    Setting("optimizer", "optimizer", _PLAIN, "speed + memory, easy",
            ("scratch", "full", "lora", "prompt-tuning", "distill", "moe"), hint=_hint(vocabulary.OPTIMIZERS, _PLAIN)),
    # QLoRA starts from paged 8-bit AdamW (its paper's choice; spikes page out to CPU memory)
    Setting("optimizer", "optimizer", _QLORA, "speed + memory, easy", ("qlora",),
            hint=_hint(vocabulary.OPTIMIZERS, _QLORA)),
    Setting("compile", "torch.compile", (False, True), "speed, easy: slow first step"),
    Setting("preload", "data preloading", ("mmap cache",), "speed, medium: tokenized once"),
    Setting("seq_len", "sequence length", (64, 128, 256, 512, 1024, 2048, 4096), "memory: activations grow with it"),
    Setting("lr", "learning rate", _lr_values(), "the peak, after warm-up"),
    Setting("schedule", "LR schedule", ("cosine", "linear", "constant"), "after warm-up, down to 10%"),
    Setting("warmup_steps", "warm-up steps", (0, 10, 20, 50, 100, 200, 500), "linear ramp from 0"),
    Setting("max_steps", "steps", (50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000), "optimizer steps"),
    Setting("lora_rank", "LoRA rank", (4, 8, 16, 32, 64), "adapter size", ("lora", "qlora")),
    Setting("num_virtual_tokens", "virtual tokens", (8, 20, 50, 100), "prompt length", ("prompt-tuning",)),
    Setting("find_batch", "batch finder", ("auto", "on", "off"), "advanced: the largest batch that fits",
            hint="Before step 1, real steps find the largest micro-batch that fits (same effective batch); "
                 "auto: on a GPU when the estimate is tight, on: always (one process), off: never."),
    Setting("num_processes", "GPUs (processes)", (1, 2, 4, 8, 16), "speed: N x the tokens a step", multi_gpu=True,
            hint="One training process per GPU, started by `accelerate launch`; with several machines, each "
                 "machine runs this many (the spec's num_processes is the total: GPUs x machines)."),
    Setting("num_machines", "machines", (1, 2, 3, 4, 8, 16), "speed: each runs the GPUs above",
            hint="Machines training together, each with the GPUs above (m shows this row). The run folder must be "
                 "on storage every machine sees at the same path; the review step shows each machine's command."),
    Setting("main_process_ip", "main machine", (), "space: this one's address[:port]",
            hint="Machine 0 is this one: its IP address or host name, reachable from every machine, and the "
                 "rendezvous port (29500 unless you add :PORT). Space to set it."),
    Setting("strategy", "multi-GPU strategy", STRATEGIES, "memory: fsdp/zero shard across the GPUs",
            multi_gpu=True, hint=_hint(vocabulary.STRATEGIES)),
)
LAYOUT_KEYS = ("num_processes", "num_machines", "strategy")


def visible_settings(c: Choices, report: Any) -> list[Setting]:
    """The settings shown for these choices on this machine: the technique's, the layout only with
    several GPUs (process counts up to their number; strategies this machine can run, with more than
    one process), the batch finder's `on` only with one process (the spec refuses it with several).
    Machines: with more than one process, or on request (`m`); machine 0's address with several."""
    from dataclasses import replace

    from engine.machine.strategies import strategy_unavailable
    from engine.estimate.layout import cuda_usable

    n_gpus = len(report.gpus) if report else 0
    out = []
    for s in SETTINGS:
        if s.techniques and c.technique not in s.techniques:
            continue
        if s.key == "num_machines" and not (c.world() > 1 or c.extra.get("machines_asked")):
            continue
        if s.key == "main_process_ip" and c.num_machines < 2:
            continue
        if s.multi_gpu and n_gpus < 2 and not (s.key == "strategy" and c.world() > 1):
            continue
        if s.key == "num_processes":
            s = replace(s, values=tuple(sorted({v for v in s.values if v <= n_gpus} | {n_gpus})))
        elif s.key == "strategy":
            if c.world() < 2:
                continue
            cuda = cuda_usable(report)
            s = replace(s, values=tuple(v for v in s.values if strategy_unavailable(v, cuda=cuda) is None))
        elif s.key == "find_batch" and c.world() > 1:
            s = replace(s, values=("auto", "off"))
        out.append(s)
    return out


def value_of(c: Choices, s: Setting) -> Any:
    if s.key == "main_process_ip":
        from tui.machines import shown_address

        return shown_address(c.main_process_ip, c.main_process_port)
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
    if len(values) <= 1:
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
        Binding("space", "choose", "Choose", tooltip="Pick this setting's value from a list"),
        Binding("m", "machines", "Machines", tooltip="Train on several machines (shows the machines setting)"),
    ]
    layouts: tuple[Any, ...] = ()  # the last estimate's LayoutOption per strategy (for the strategy list)

    def body(self) -> ComposeResult:
        with Vertical(id="options"):
            yield OptionList(id="settings")
            yield Static("", id="options-hint")
            yield Static("", id="options-estimate")
            yield Static("", id="options-layout")

    def settings(self) -> list[Setting]:
        return visible_settings(self.wizard.choices, self.wizard.hardware)

    def on_mount(self) -> None:
        # the hint keeps its two lines when empty: a list that changed height under the highlight would
        # leave the highlighted row out of view
        self.query_one("#options-hint", Static).styles.height = 2
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
        setting = self.settings()[settings.highlighted]
        step_value(self.wizard.choices, setting, delta)
        self.changed_setting(setting)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "machines":  # offered while the row is hidden
            return not any(s.key == "num_machines" for s in self.settings())
        return super().check_action(action, parameters)

    def action_machines(self) -> None:
        self.wizard.choices.extra["machines_asked"] = True
        self.fill()
        keys = [s.key for s in self.settings()]
        self.query_one("#settings", OptionList).highlighted = keys.index("num_machines")
        self.refresh_bindings()

    def ask_address(self) -> None:
        """Machine 0's address as text, checked (an IP address or a host name, an optional :port)."""
        import socket

        from tui.machines import parse_address, shown_address
        from tui.modals.prompt import PromptModal

        c = self.wizard.choices
        current = shown_address(c.main_process_ip, c.main_process_port) if c.main_process_ip else socket.gethostname()

        def entered(text: str | None) -> None:
            if text is None:
                return
            try:
                c.main_process_ip, c.main_process_port = parse_address(text, DistributedSpec().main_process_port)
            except ValueError as err:
                self.notify(f"main machine: {err}", severity="error")
                return
            self.fill()
            self.estimate()

        self.app.push_screen(PromptModal("Machine 0 (this one): IP address or host name, optionally :port", current),
                             entered)

    def action_choose(self) -> None:
        """The highlighted setting's values as a list; for the strategy every one, those this machine
        cannot run disabled with the reason, each with its per-GPU estimate."""
        from engine.machine.strategies import strategy_unavailable
        from engine.estimate.layout import cuda_usable, gib
        from tui.modals.choose import Choice, ChooseModal

        settings = self.query_one("#settings", OptionList)
        if settings.highlighted is None:
            return
        setting, c = self.settings()[settings.highlighted], self.wizard.choices
        if setting.key == "main_process_ip":
            self.ask_address()
            return
        values = list(setting.values)
        if setting.key == "strategy":
            values = list(STRATEGIES)
            cuda = cuda_usable(self.wizard.hardware)
            need = {o.strategy: f"  {gib(o.total_bytes)}/GPU {VERDICT.get(o.verdict, (o.verdict,))[0]}"
                    for o in self.layouts}
            choices = [Choice(f"{v:<6}{need.get(v, '')}", strategy_unavailable(v, cuda=cuda)) for v in values]
        else:
            choices = [Choice(shown(v)) for v in values]
        current = value_of(c, setting)

        def picked(index: int | None) -> None:
            if index is not None:
                setattr(c, setting.key, values[index])
                self.changed_setting(setting)

        self.app.push_screen(ChooseModal(setting.label, choices, values.index(current) if current in values else None),
                             picked)

    def changed_setting(self, setting: Setting) -> None:
        if setting.key in LAYOUT_KEYS:
            self.wizard.choices.layout_chosen = True  # the checks step proposes no other from now on
        if note := settle(self.wizard.choices):
            self.notify(note)
        self.fill()
        self.estimate()

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        hint = next((s.hint for s in self.settings() if s.key == event.option.id), "")
        self.query_one("#options-hint", Static).update(Text(hint, style="italic #9e9e9e"))

    @work(thread=True, exclusive=True, exit_on_error=False, group="estimate")
    def estimate(self) -> None:
        post_estimates(self, with_suggestions=False)

    def on_estimated(self, message: Estimated) -> None:
        out = self.query_one("#options-estimate", Static)
        if message.est is None:
            out.update(Text(message.error or "?", style="red"))
            return
        est, c = message.est, self.wizard.choices
        c.extra["estimate"] = est
        text = Text.assemble(("Estimate: ", "bold"), f"{human_bytes(est.total_bytes)} a GPU",
                             (how_estimated(message), "#9e9e9e"))
        verdicts = {g.verdict for g in est.gpus}
        if len(est.gpus) > 2 and len(verdicts) == 1:  # eight alike say no more than one
            label, style = VERDICT.get(verdicts.pop(), ("", ""))
            text.append(f"  all {len(est.gpus)} GPUs: ")
            text.append(label, style=style)
        for g in est.gpus if len(est.gpus) <= 2 or len({g.verdict for g in est.gpus}) > 1 else ():
            label, style = VERDICT.get(g.verdict, (g.verdict, ""))
            text.append(f"  GPU {g.index} ")
            text.append(label, style=style)
        tps = c.batch_size * c.seq_len * c.grad_accum * c.world()
        gpus = f" x {c.world()} GPUs" if c.world() > 1 else ""
        gpus += f" on {c.num_machines} machines" if c.num_machines > 1 else ""
        text.append(f"\n{tps:,} tokens a step (batch {c.batch_size} x {c.seq_len} x {c.grad_accum} accumulation{gpus})")
        if message.data is not None and message.data.projected_epochs:
            text.append(f"; {message.data.projected_epochs:.2f} passes over the data in {c.max_steps:,} steps")
        out.update(text)
        self.layouts = message.layouts
        layout = self.query_one("#options-layout", Static)
        layout.update(layout_text(message.layouts))
        layout.display = bool(message.layouts)


def layout_text(layouts: tuple[Any, ...]) -> Text:
    """Each strategy at the chosen process count: its per-GPU total and verdict, or why it is off here."""
    from engine.estimate.layout import NAMES, gib

    text = Text.assemble(("Strategies: ", "bold"))
    for i, o in enumerate(layouts):
        text.append(" · " if i else "")
        per_gpu = f"{NAMES[o.strategy]} {gib(o.total_bytes)}/GPU "
        if o.unavailable:
            text.append(per_gpu + f"(off: {o.unavailable})", style="#808080")
        else:
            label, style = VERDICT.get(o.verdict, (o.verdict, ""))
            text.append(per_gpu, style="bold")
            text.append(label, style=style)
    return text
