"""Step 5: will it fit, is the data enough. The estimator's breakdown per GPU as a stacked bar
against the free memory, the book's rule of thumb beside it, the data verdict, and suggestions
that apply on Enter (the bars update)."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from tui.output import human_bytes
from tui.screens.base import WizardStep
from tui.widgets.bars import Segment, stacked_bar
from tui.wizard import apply_flags, estimate_request

PARTS = (  # breakdown field, legend, colour
    ("weights", "weights", "blue"), ("gradients", "grads", "magenta"), ("optimizer_states", "optimizer", "red"),
    ("activations", "activations", "green"), ("logits_and_loss", "logits", "yellow"),
)
VERDICT = {"fits": ("fits", "bold green"), "tight": ("tight", "bold yellow"), "no": ("does not fit", "bold red"),
           "enough": ("enough", "bold green"), "short": ("short", "bold yellow"), "too little": ("too little", "bold red")}


def segments(est: Any) -> list[Segment]:
    bd = est.breakdown
    segs = [Segment(label, getattr(bd, name), style) for name, label, style in PARTS]
    known = sum(s.value for s in segs)
    segs.append(Segment("other", max(est.total_bytes - known, 0), "#b2b2b2"))  # margins, context, temporaries
    return segs


def legend() -> Text:
    text = Text()
    for _, label, style in (*PARTS, ("", "other + margins", "#b2b2b2")):
        text.append("■ ", style=style)
        text.append(f"{label}  ")
    return text


def data_check(est: Any, choices: Any) -> Any:
    """The estimator's data verdict for the tokens counted on the data step (not counted twice)."""
    from engine.datacheck import TokenCount, data_rule

    tokens = choices.extra.get("data_tokens")
    if tokens is None:
        return None
    count = TokenCount(tokens, True, 0, choices.extra.get("data_method", ""), choices.extra.get("data_bytes", 0), 0)
    tps = choices.batch_size * choices.seq_len * choices.grad_accum
    return data_rule(choices.technique, est.model.params, count, tokens_per_step=tps, max_steps=choices.max_steps)


class Estimated(Message):
    def __init__(self, est: Any, data: Any, error: str | None = None) -> None:
        super().__init__()
        self.est, self.data, self.error = est, data, error


def estimate_choices(wizard: Any, *, with_suggestions: bool) -> Estimated:
    """The estimate for the wizard's choices on the probed GPUs (run from a worker thread: the checks
    step wants the suggestions, the options step re-estimates on every change and does not)."""
    from engine.errors import UserError
    from engine.estimate import estimate

    c = wizard.choices
    report = wizard.hardware
    gpus = [(g.index, g.name, g.memory_free_bytes) for g in report.gpus] if report else []
    try:
        est = estimate(estimate_request(c), gpus=gpus, with_suggestions=with_suggestions)
        return Estimated(est, data_check(est, c))
    except UserError as err:
        return Estimated(None, None, str(err))


def memory_view(est: Any, width: int) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    rows: list[tuple[str, float, Text]] = []
    if not est.gpus:
        rows.append(("CPU", est.total_bytes, Text(f"{human_bytes(est.total_bytes)} of system memory")))
    for g in est.gpus:
        label, style = VERDICT.get(g.verdict, (g.verdict, ""))
        rows.append((f"GPU {g.index}", g.free_bytes,
                     Text.assemble(f"{human_bytes(g.needed_bytes)} / {human_bytes(g.free_bytes)} ", (label, style))))
    bar_w = max(width - 12 - max(len(r[2]) for r in rows), 8)
    for name, capacity, right in rows:
        grid.add_row(name, stacked_bar(segments(est), capacity, bar_w), right)
    return grid


class ChecksScreen(WizardStep):
    STEP = 4
    BINDINGS = [Binding("space", "apply", "Apply suggestion", tooltip="Make the highlighted change; the bars update")]

    def body(self) -> ComposeResult:
        with VerticalScroll(id="checks"):
            yield Static(Text("estimating…", style="italic"), id="checks-model")
            yield Static("", id="checks-memory")
            yield Static(legend(), id="checks-legend")
            yield Static("", id="checks-rule")
            yield Static("", id="checks-data")
            yield Static("", id="checks-suggest-title")
            yield OptionList(id="suggestions")

    def on_mount(self) -> None:
        self.query_one("#suggestions", OptionList).display = False
        self.recompute()

    def ready(self) -> bool:
        return "estimate" in self.wizard.choices.extra

    def on_screen_resume(self) -> None:
        self.recompute()  # options may have changed on the next step and come back

    def recompute(self) -> None:
        self.wizard.choices.extra.pop("estimate", None)
        self.estimate()

    @work(thread=True, exclusive=True, exit_on_error=False, group="estimate")
    def estimate(self) -> None:
        self.post_message(estimate_choices(self.wizard, with_suggestions=True))

    def on_estimated(self, message: Estimated) -> None:
        c = self.wizard.choices
        if message.error or message.est is None:
            self.query_one("#checks-model", Static).update(Text(message.error or "no estimate", style="red"))
            return
        est = message.est
        c.extra["estimate"] = est
        m = est.model
        self.query_one("#checks-model", Static).update(Text.assemble(
            (f"{c.technique}", "bold"), f"  {m.params:,} parameters, {m.trainable_params:,} trained  ",
            (f"peak {human_bytes(est.peak_bytes)} ({est.peak_phase}), total {human_bytes(est.total_bytes)}", "")))
        self.query_one("#checks-memory", Static).update(memory_view(est, self.size.width or 80))
        rule = est.rule_of_thumb
        self.query_one("#checks-rule", Static).update(Text.assemble(
            ("Book: ", "bold"), f"{human_bytes(rule.bytes)}: {rule.rule}", (f"  ({rule.label})", "#9e9e9e")))
        data = message.data
        if data is not None:
            label, style = VERDICT.get(data.verdict, (data.verdict, ""))
            epochs = f", {data.projected_epochs:.2f} epochs planned" if data.projected_epochs else ""
            self.query_one("#checks-data", Static).update(Text.assemble(
                ("Data: ", "bold"), (label, style), f"  {data.tokens:,} tokens, {data.tokens_per_param:.1f} per "
                f"parameter{epochs}. ", (data.advice, "#b2b2b2")))
        suggestions = self.query_one("#suggestions", OptionList)
        suggestions.clear_options()
        for i, s in enumerate(est.suggestions):
            label, style = VERDICT.get(s.verdict, (s.verdict, ""))
            suggestions.add_option(Option(Text.assemble(
                f"{s.change}: ", (human_bytes(s.total_bytes), "bold"), " ", (label, style),
                (f"  speed {s.speed}, {s.difficulty}", "#9e9e9e")), id=str(i)))
        suggestions.display = bool(est.suggestions)
        if est.suggestions:
            suggestions.highlighted = 0
        self.query_one("#checks-suggest-title", Static).update(
            Text("Suggestions (space applies):", style="bold") if est.suggestions else
            Text("No change needed." if est.gpus else "No GPU: the run uses system memory.", style="green"))
        self.changed()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "apply":
            est = self.wizard.choices.extra.get("estimate")
            return True if est is not None and est.suggestions else None
        return super().check_action(action, parameters)

    def action_apply(self) -> None:
        est = self.wizard.choices.extra.get("estimate")
        options = self.query_one("#suggestions", OptionList)
        if est is None or options.highlighted is None:
            return
        s = est.suggestions[options.highlighted]
        if apply_flags(self.wizard.choices, s.flags):
            self.notify(f"applied: {s.change}")
            self.recompute()
        else:
            self.notify(f"{s.change}: needs more GPUs than this machine has", severity="warning")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.action_apply()
