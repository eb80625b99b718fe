"""`llm-wizard --plain`: the same wizard as questionary prompts, for a serial console, a log, or a
terminal where a full-screen app is unwanted. It fills the same `Choices`, so it writes the same
spec as the Textual wizard, and can launch it (the run is the same detached job)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import UserError
from tui.output import human_bytes, out
from tui.wizard import Choices, apply_changes, estimate_request, settle, spec_dict, train_command

NO_INPUT = "no terminal input: pass a spec to train (`llm-wizard train SPEC.toml`), or run with a terminal"
STEPS_CHOICES = ("50", "100", "200", "500", "1000", "2000", "5000", "10000")


class Prompts:
    """questionary, with prompt_toolkit's input/output injectable (tests feed keys through a pipe)."""

    def __init__(self, **session: Any) -> None:
        self.session = session

    def select(self, message: str, choices: list[Any], default: Any = None) -> Any:
        import questionary

        self._check_input()
        return self._ask(questionary.select(message, choices=choices, default=default, **self.session))

    def text(self, message: str, default: str = "", validate: Any = None) -> str:
        import questionary

        self._check_input()
        return self._ask(questionary.text(message, default=default, validate=validate, **self.session))

    def confirm(self, message: str, default: bool = True) -> bool:
        import questionary

        self._check_input()
        return self._ask(questionary.confirm(message, default=default, **self.session))

    def _check_input(self) -> None:
        """No standard input at all (closed): prompt_toolkit would fail on it with an AttributeError."""
        import sys

        if "input" not in self.session and (sys.stdin is None or sys.stdin.closed):
            raise UserError(NO_INPUT, field="plain")

    @staticmethod
    def _ask(question: Any) -> Any:
        try:
            return question.unsafe_ask()  # Ctrl-C raises KeyboardInterrupt: the CLI exits 130
        except EOFError:  # input ended (/dev/null, a pipe run dry) before an answer
            raise UserError(NO_INPUT, field="plain") from None


def _check_model(value: str) -> bool | str:
    from engine.errors import UserError
    from engine.models.shape import load_dims

    try:
        load_dims(value.strip())
    except UserError as err:
        return str(err)
    return True


def _check_data(value: str) -> bool | str:
    from engine.errors import UserError
    from tui.corpus import make_source

    try:
        make_source(Choices(), value.strip())
    except UserError as err:
        return str(err)
    return True


def ask_data(ask: Prompts, c: Choices) -> None:
    """The Data step's questions: the format found shown; for a table the column mapping kept or edited, for a
    Slack export whose replies are learned (a numbered list with message counts); for chat data the template
    and which turns are trained. Settings that the data refuses are asked again, with the reason."""
    import questionary

    from engine import vocabulary
    from engine.errors import UserError
    from tui.corpus import (apply_mapping, chosen_mapping, describe, hosted, load_tokenizer, make_source,
                            mapping_text, parse_mapping, scratch_refusal, template_note)

    console = out()
    corpus = describe(make_source(c))
    if corpus.kind == "slack":
        users = [questionary.Choice(f"{k}. {name} ({n:,} messages)", value=uid)
                 for k, (uid, name, n) in enumerate(corpus.slack_users, 1)]
        c.slack_user = ask.select("Whose replies are learned (Slack user)", users, default=users[0].value)
    console.print(f"  format: {corpus.format}, {corpus.source}", markup=False, highlight=False)
    if (refusal := scratch_refusal(c, corpus)) is not None:
        raise UserError(refusal, field="data.path")
    if corpus.kind in ("table", "hub") and corpus.columns:
        if not ask.confirm(f"Columns: {mapping_text(corpus.columns)}. Keep them?", default=True):
            def valid(text: str) -> bool | str:
                try:
                    mapping = parse_mapping(text)
                    before = chosen_mapping(c)
                    apply_mapping(c, mapping)
                    try:
                        describe(make_source(c))
                    finally:
                        apply_mapping(c, before)
                except (ValueError, UserError) as err:
                    return str(err)
                return True

            apply_mapping(c, parse_mapping(ask.text("Columns as role=column (roles: text, messages, prompt, "
                                                    "response, system, label)", default=mapping_text(corpus.columns),
                                                    validate=valid)))
            corpus = describe(make_source(c))
            console.print(f"  format: {corpus.format}, {corpus.source}", markup=False, highlight=False)
    if corpus.is_chat and hosted(c.technique):  # the service applies its own template; it trains replies only
        c.train_on = ask.select("Which replies are trained", ["assistant", "last_assistant"], default="assistant")
    elif corpus.is_chat:
        note = template_note(load_tokenizer(c))
        templates = [questionary.Choice(note if t == "auto" else t, value=t) for t in vocabulary.CHAT_TEMPLATES]
        c.template = ask.select("Chat template", templates, default="auto")
        c.train_on = ask.select("Which tokens carry the loss", list(vocabulary.TRAIN_ON), default="assistant")


def ask_layout(ask: Prompts, c: Choices, gpus: list[tuple[int, str, int]], cuda: bool) -> None:
    """Processes and strategy on a machine with several GPUs, starting from engine.estimate.layout's proposal;
    strategies this machine cannot run are listed, disabled, with the reason."""
    from dataclasses import replace

    import questionary

    from engine.estimate.layout import NAMES, gib, layout_options, propose

    proposal = propose(estimate_request(replace(c, num_processes=1, num_machines=1)), gpus, cuda=cuda)
    out().print(f"\n[bold]Layout:[/] {proposal.message}", highlight=False)
    counts = sorted({v for v in (1, 2, 4, 8, 16) if v <= len(gpus)} | {len(gpus)})
    c.num_processes = int(ask.select("GPUs (one training process each)", [str(v) for v in counts],
                                     default=str(proposal.num_processes)))
    c.layout_chosen = True
    if c.num_processes < 2:
        return
    ask_machines(ask, c)
    options = layout_options(estimate_request(replace(c, strategy="ddp")), gpus, c.world(), cuda=cuda)
    usable = [o.strategy for o in options if o.unavailable is None]
    choices = [questionary.Choice(f"{NAMES[o.strategy]}: {gib(o.total_bytes)}/GPU ({o.verdict})", value=o.strategy,
                                  disabled=o.unavailable) for o in options]
    c.strategy = ask.select("Strategy", choices, default=proposal.strategy if proposal.strategy in usable else "ddp")
    if note := settle(c):
        out().print(f"  {note}")


def ask_machines(ask: Prompts, c: Choices) -> None:
    """How many machines (each runs the GPUs just chosen) and, with several, machine 0's address."""
    from engine.spec import DistributedSpec
    from tui.machines import parse_address

    c.num_machines = int(ask.select(f"Machines (each runs {c.num_processes} processes; the run folder must be on "
                                    "storage every machine sees at the same path)", ["1", "2", "3", "4", "8", "16"],
                                    default="1"))
    if c.num_machines < 2:
        return
    port = DistributedSpec().main_process_port

    def valid(text: str) -> bool | str:
        try:
            parse_address(text, port)
        except ValueError as err:
            return str(err)
        return True

    c.main_process_ip, c.main_process_port = parse_address(
        ask.text(f"Address of machine 0 (this one), reachable from every machine: host or IP[:port, default {port}]",
                 validate=valid), port)


def print_plan(spec: Any, run: Path) -> None:
    """Several machines: each machine's exact command for the run about to be created, one a line."""
    from tui.machines import node_plan

    plan = node_plan(run, spec)
    console = out()
    console.print("\n" + "\n".join(plan.about), markup=False, highlight=False)
    console.print("Launching starts machine 0's command here; then run each other machine's there:",
                  markup=False, highlight=False)
    for line in plan.commands:  # never wrapped: a command must copy as one line
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def run_plain(*, runs_dir: str | None = None, prompts: Prompts | None = None, cwd: Path | None = None) -> int:
    from engine.machine.probe import probe
    from engine.spec import from_dict, to_toml
    from tui.commands.doctor import render
    from tui.corpus import hosted
    from tui.techniques import BY_KEY, TECHNIQUES, recommend

    ask = prompts or Prompts()
    if isinstance(ask, Prompts):
        ask._check_input()  # before the hardware report, not after it
    console = out()
    report = probe(runs=runs_dir)
    render(report)
    c = Choices()

    best, why = recommend(report)
    console.print(f"\n[bold]Recommended:[/] {BY_KEY[best].title} ({why})")
    import questionary

    c.technique = ask.select("Technique", [questionary.Choice(f"{t.title}: {t.when}"[:90], value=t.key)
                                           for t in TECHNIQUES], default=best)
    info = BY_KEY[c.technique]
    console.print(f"  memory: {info.memory}\n  data: {info.data}")
    if c.technique == "scratch":
        from engine.models.architectures import ARCHS, SIZES

        c.arch = ask.select("Architecture", list(ARCHS), default=c.arch)
        c.size = ask.select("Size", list(SIZES), default=c.size)
    elif hosted(c.technique):
        from engine.techniques.openai import DEFAULTS
        from tui.techniques import hosted_key_note

        console.print("  caveat: your data leaves this machine, and every trained token is billed")
        console.print(f"  {hosted_key_note()[1]}", markup=False, highlight=False)
        c.model = ask.text("Base model to fine-tune", default=DEFAULTS["model"]).strip()
        epochs = ask.text("Epochs (auto, or 1 to 50)", default="auto",
                          validate=lambda t: t == "auto" or (t.isdigit() and 1 <= int(t) <= 50) or "auto or 1 to 50")
        c.extra["hosted_options"] = {"n_epochs": int(epochs) if epochs.isdigit() else "auto"}
    else:
        c.model = ask.text("Model (a local folder with config.json, or a cached Hub id)", validate=_check_model).strip()
        if c.technique == "distill":
            c.teacher = ask.text("Teacher model (same tokenizer)", validate=_check_model).strip()
    c.dataset = ask.text("Data (a text file or folder, .jsonl/.json/.csv/.parquet, a dataset folder, a Slack export, "
                         "or stdlib)", default="stdlib", validate=_check_data).strip()
    ask_data(ask, c)
    console.print("counting tokens…")
    from tui.corpus import count_tokens

    c.extra["data_tokens"], method = count_tokens(c)
    console.print(f"  {c.extra['data_tokens']:,} tokens ({method})")
    if not hosted(c.technique):  # a hosted run: no local steps, memory or layout to choose
        _ask_training(ask, c, report)

    spec = from_dict(spec_dict(c, runs_dir=None))
    toml = to_toml(spec)
    console.print("\n" + toml, markup=False, highlight=False)
    folder = cwd or Path.cwd()
    path = folder / f"{c.run_name()}.toml"
    if ask.confirm(f"Save the spec as {path}?", default=True):
        path.write_text(toml, encoding="utf-8")
        console.print(f"saved; the same run from a shell: {train_command(str(path))}")
    from engine.run import job
    from engine.paths import runs_dir as resolve_runs

    planned = None
    if spec.distributed.num_machines > 1:
        from tui.machines import planned_run

        planned = planned_run(resolve_runs(runs_dir or spec.runs_dir or None), spec.name)
        print_plan(spec, planned)
    if not ask.confirm("Launch the run now?", default=True):
        return 0
    from tui.wizard import preflight

    preflight(spec)  # the technique's own checks, before a run folder exists (as `llm-wizard train`)
    if planned is not None:  # the folder whose commands were printed
        run = job.create(spec, planned.parent, run_id=planned.name)
    else:
        run = job.create(spec, resolve_runs(runs_dir or spec.runs_dir or None))
    pid = job.launch(run)
    console.print(f"started run [bold]{run.name}[/] (pid {pid})\n  dashboard: llm-wizard attach {run.name}\n"
                  f"  text:      llm-wizard attach {run.name} --follow")
    if planned is not None:
        console.print("  machines 1 and up: run their commands above there (the dashboard shows them until they "
                      "join)", markup=False, highlight=False)
    return 0


def _ask_training(ask: Prompts, c: Choices, report: Any) -> None:
    """The steps, the layout over several GPUs, and the estimate with its suggestions until kept."""
    import questionary

    from engine.estimate.layout import cuda_usable
    from engine.estimate.memory import estimate

    console = out()
    c.max_steps = int(ask.select("Optimizer steps", list(STEPS_CHOICES), default=str(c.max_steps)))
    gpus = [(g.index, g.name, g.memory_free_bytes) for g in report.gpus]
    cuda = cuda_usable(report)
    if len(gpus) > 1:
        ask_layout(ask, c, gpus, cuda)
    while True:
        est = estimate(estimate_request(c), gpus=gpus)
        console.print(f"\n[bold]Estimate:[/] peak {human_bytes(est.peak_bytes)} ({est.peak_phase}), total "
                      f"{human_bytes(est.total_bytes)}; book's rule of thumb {human_bytes(est.rule_of_thumb.bytes)}")
        for g in est.gpus:
            console.print(f"  GPU {g.index} {g.name}: {human_bytes(g.needed_bytes)} of {human_bytes(g.free_bytes)} "
                          f"free: [bold]{g.verdict}[/]")
        if not est.suggestions:
            break
        options = [questionary.Choice(f"{s.change} -> {human_bytes(s.total_bytes)} ({s.verdict})", value=i)
                   for i, s in enumerate(est.suggestions)] + [questionary.Choice("keep these settings", value=-1)]
        picked = ask.select("Apply a suggestion?", options, default=-1)
        if picked is None or picked < 0:
            break
        refused = apply_changes(c, est.suggestions[picked].changes, gpus=len(gpus), cuda=cuda)
        if refused:
            console.print(f"  not applied: {refused}", markup=False, highlight=False)
        elif note := settle(c):
            console.print(f"  {note}")
