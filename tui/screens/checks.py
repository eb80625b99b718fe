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
from tui.wizard import apply_changes, apply_proposal, estimate_request, settle

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
    from engine.estimate.data_size import TokenCount, data_rule

    tokens = choices.extra.get("data_tokens")
    if tokens is None:
        return None
    count = TokenCount(tokens, True, 0, choices.extra.get("data_method", ""), choices.extra.get("data_bytes", 0), 0)
    tps = choices.batch_size * choices.seq_len * choices.grad_accum
    return data_rule(choices.technique, est.model.params, count, tokens_per_step=tps, max_steps=choices.max_steps)


class Estimated(Message):
    def __init__(self, est: Any, data: Any, error: str | None = None, *, proposal: Any = None,
                 layouts: tuple[Any, ...] = (), pending: bool = False) -> None:
        super().__init__()
        self.est, self.data, self.error = est, data, error
        self.pending = pending  # the formulas' answer while the model's activations are being measured
        self.proposal, self.layouts = proposal, layouts  # engine.estimate.layout.Proposal, LayoutOption per strategy


def post_estimates(screen: Any, **options: Any) -> None:
    """The formulas' answer at once; where the model's activations are not measured yet, the measured answer
    after it (seconds, once an architecture: it is cached)."""
    first = estimate_choices(screen.wizard, measure=False, **options)
    screen.post_message(first)
    if first.pending:
        screen.post_message(estimate_choices(screen.wizard, **options))


def how_estimated(message: Estimated) -> str:
    """'  activations measured' / '  activations: formula, measuring the model...' (empty for scratch shapes)."""
    source = message.est.sources.get("activations", "") if message.est is not None else ""
    if message.pending:
        return "  activations: formula, measuring the model..."
    return "  activations measured" if source.startswith("measured") else ""


def machine(wizard: Any) -> tuple[list[tuple[int, str, int]], bool]:
    """The probed GPUs as the estimator takes them, and whether torch can use CUDA there."""
    from engine.estimate.layout import cuda_usable

    report = wizard.hardware
    if report is None:
        return [], False
    return [(g.index, g.name, g.memory_free_bytes) for g in report.gpus], cuda_usable(report)


def estimate_choices(wizard: Any, *, with_suggestions: bool, propose_layout: bool = False,
                     measure: bool = True) -> Estimated:
    """The estimate for the wizard's choices on the probed GPUs (run from a worker thread: the checks
    step wants the suggestions and the proposed layout, the options step re-estimates on every change
    and does not). With `propose_layout`, the estimate is for the proposed layout unless the user chose
    one; the handler applies it to the choices (on the UI thread)."""
    from dataclasses import replace

    from engine.errors import UserError
    from engine.estimate.memory import estimate, measurable
    from engine.estimate.layout import layout_options, propose

    c = wizard.choices
    gpus, cuda = machine(wizard)
    try:
        proposal = None
        if propose_layout:
            proposal = propose(estimate_request(replace(c, num_processes=1, num_machines=1)), gpus, cuda=cuda)
            if not c.layout_chosen:
                c = replace(c, num_processes=proposal.num_processes, strategy=proposal.strategy)
        req = estimate_request(c)
        est = estimate(req, gpus=gpus, with_suggestions=with_suggestions, measure=measure)
        layouts = layout_options(req, gpus, c.world(), cuda=cuda) if c.world() > 1 and gpus else ()
        return Estimated(est, data_check(est, c), proposal=proposal, layouts=layouts,
                         pending=not measure and measurable(req, est))
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


def layout_line(c: Any, proposal: Any) -> Text:
    """`Layout (proposed): DDP 92 GiB/GPU: does not fit 80 GiB; FSDP x8: 21 GiB/GPU fits`."""
    from engine.estimate.layout import NAMES

    if proposal is None or not proposal.options:  # no GPU or one: the bars below say it all
        return Text("")
    style = {"ddp": "green", "single": "green", "sharded": "yellow", "none": "bold red"}[proposal.kind]
    if c.layout_chosen and (c.num_processes, c.strategy) != (proposal.num_processes, proposal.strategy):
        layout = f"{NAMES[c.strategy]} x{c.num_processes}" if c.num_processes > 1 else "one process"
        layout += f" on each of {c.num_machines} machines" if c.num_machines > 1 else ""
        return Text.assemble(("Layout: ", "bold"), f"{layout} (yours); proposed: ", (proposal.message, style))
    label = "Layout: " if proposal.kind == "none" else "Layout (proposed): "  # "Nothing fits: ..." says it
    return Text.assemble((label, "bold"), (proposal.message, style))


class ChecksScreen(WizardStep):
    STEP = 4
    BINDINGS = [Binding("space", "apply", "Apply suggestion", tooltip="Make the highlighted change; the bars update")]

    def body(self) -> ComposeResult:
        with VerticalScroll(id="checks"):
            yield Static(Text("estimating…", style="italic"), id="checks-model")
            yield Static("", id="checks-layout")
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
        post_estimates(self, with_suggestions=True, propose_layout=True)

    def on_estimated(self, message: Estimated) -> None:
        c = self.wizard.choices
        if message.error or message.est is None:
            self.query_one("#checks-model", Static).update(Text(message.error or "no estimate", style="red"))
            return
        est = message.est
        if message.proposal is not None:
            apply_proposal(c, message.proposal)
            if note := settle(c):
                self.notify(note)
        c.extra["estimate"] = est
        line = layout_line(c, message.proposal)
        self.query_one("#checks-layout", Static).update(line)
        self.query_one("#checks-layout", Static).display = bool(line)
        m = est.model
        self.query_one("#checks-model", Static).update(Text.assemble(
            (f"{c.technique}", "bold"), f"  {m.params:,} parameters, {m.trainable_params:,} trained  ",
            (f"peak {human_bytes(est.peak_bytes)} ({est.peak_phase}), total {human_bytes(est.total_bytes)}", ""),
            (how_estimated(message), "#9e9e9e")))
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
        gpus, cuda = machine(self.wizard)
        refused = apply_changes(self.wizard.choices, s.changes, gpus=len(gpus), cuda=cuda)
        if refused is None:
            self.notify(f"applied: {s.change}")
            if note := settle(self.wizard.choices):
                self.notify(note)
            self.recompute()
        else:
            self.notify(f"{s.change}: {refused}", severity="warning")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.action_apply()
