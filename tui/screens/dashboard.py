"""The live dashboard of one run: loss chart, throughput, GPUs, checkpoints, alerts, and controls.

A thread worker follows the run folder (events.jsonl by offset, status.json), another reads this
machine's GPUs through NVML every 2 s; both post Messages, and only the screen touches widgets.
Controls are appended to commands.jsonl with `engine.runfolder.folder.send_command` and confirmed when the
job's `control_ack` with the same id shows up in the events. The TUI never trains and never stops a
run unasked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult, SuspendNotSupported
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Static
from textual.worker import get_current_worker

from engine.runfolder import events as ev
from tui.modals.confirm import ConfirmModal
from tui.modals.export import ExportFlow
from tui.modals.lr import LrModal
from tui.modals.prompt import PromptModal
from tui.modals.rollback import RollbackModal
from tui.messages import Checkpoints, GpuReadings, RunEvents, RunStatus, SampleText
from tui.screens.dashboard_view import LIVE, STATE_STYLE, alert_lines, stats_table
from tui.screens.run_history import RunHistory
from tui.widgets.chart import LossChart
from tui.widgets.commands import CommandBlock
from tui.widgets.gpu_panel import GpuPanel

POLL_S = 0.5
HISTORY_BYTES = 16 << 20  # the loss history shown: the log's last 16 MiB (about 50,000 intervals)
GPU_POLL_S = 2.0


class DashboardScreen(ExportFlow):  # ExportFlow: a Screen with the `e` key's flow
    BINDINGS = [
        Binding("p", "pause", "Pause", tooltip="Pause at the next optimizer step (the process keeps its state)"),
        Binding("p", "resume", "Resume", tooltip="Resume a paused run at once"),
        Binding("s", "save", "Save", tooltip="Write a checkpoint now"),
        Binding("l", "lower_lr", "Lower LR", tooltip="Multiply the learning rate by 0.5 or 0.1, or set a value"),
        Binding("b", "rollback", "Roll back", tooltip="Reload a checkpoint (model, optimizer, data position)"),
        Binding("x", "rescue", "Rescue", show=False,
                tooltip="The book's local-minimum recipe: roll back, lower the LR for a while, restore it"),
        Binding("g", "generate", "Sample", show=False, tooltip="Generate text from the newest checkpoint"),
        Binding("t", "chat", "Chat", show=False,
                tooltip="Chat with the model (a paused run saves its current weights first)"),
        Binding("S", "stop", "Stop", show=False, tooltip="Save and stop the run (asks first)"),
        Binding("e", "export", "Export", tooltip="Export the model: merged, adapter or GGUF, optionally to the Hub"),
        Binding("d", "detach", "Detach", tooltip="Close the dashboard; the run goes on"),
        Binding("c", "copy_join", "Copy commands", tooltip="Copy the other machines' commands to the clipboard"),
    ]

    def __init__(self, run: str | Path) -> None:
        super().__init__()
        self.run = Path(run)
        self.history = RunHistory()
        self.pending: dict[str, str] = {}  # command id -> what was asked (until acknowledged)
        self.chat_after: str | None = None  # the save whose checkpoint `chat` opens once acknowledged
        self.checkpoint_items: list[tuple[str, int]] = []
        self.gpus: list[Any] = []
        self.gpu_status: str | None = None  # None until the first NVML reading
        self._keys_for: tuple[str, bool] | None = None
        self._alerts_for: tuple[int, int, bool] | None = None
        self.join: Any = None  # tui.machines.Plan of the other machines' commands (set on mount)
        self.joined = False  # several machines: every rank has joined (rank 0's state event with world_size)
        self.seen_live = False  # the run trained while this screen was open (its end is then announced)

    # --- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static("", id="run-title")
        yield CommandBlock(id="run-join")
        with Horizontal(id="run-main"):
            with Vertical(id="run-left"):
                yield LossChart(id="chart")
                yield Static("", id="run-tb")
                yield GpuPanel(id="run-gpus")
            with Vertical(id="run-side"):
                yield Static("", id="run-stats")
                yield Static("", id="run-checkpoints")
                yield Static("", id="run-samples")
        yield Static("", id="run-alert")
        yield Static("", id="run-message")
        yield Footer()

    def on_mount(self) -> None:
        from tui.machines import join_plan

        self.query_one("#run-alert", Static).display = False
        self.query_one("#run-samples", Static).display = False
        tb = self.query_one("#run-tb", Static)
        tb.display = (self.run / "tb").is_dir()  # written by the job's TensorBoard tracker (log.tensorboard)
        tb.update(Text.assemble(("TensorBoard: ", "#9e9e9e"), f"tensorboard --logdir {self.run / 'tb'}"))
        self.join = join_plan(self.run)  # several machines: the commands the others run, until they join
        if self.join is not None:
            self.query_one(CommandBlock).show(Text.assemble(
                ("Waiting for the other machines to join. ", "bold"),
                "Run on each, with the run folder at this same path there (shared storage; c copies):"),
                self.join.commands)
        self.redraw()
        self.follow()
        self.watch_gpus()

    # --- the follower (thread) -----------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="follow")
    def follow(self) -> None:
        from engine.runfolder.folder import current_status

        from engine.errors import UserError
        from engine.runfolder import files

        worker = get_current_worker()
        last_status = None
        offset: int | None = None  # None: the history is still to be found
        while not worker.is_cancelled:
            try:  # the history: the log's last HISTORY_BYTES (it grows with the run, the view must not)
                if offset is None:
                    offset = files.tail_start(self.run / ev.EVENTS, HISTORY_BYTES)
                batch = ev.read(self.run, offset, limit=files.CHUNK)
            except UserError:  # a FIFO or a link in its place: nothing read (status.json still shows the state)
                batch = ev.Batch([], [], offset or 0)
            offset = batch.offset
            status = current_status(self.run)
            key = status.to_dict() if status is not None else {}
            key.pop("updated", None)
            if batch.events or batch.skipped:
                events = list(batch)
                self.post_message(RunEvents(events, batch.skipped, status))
                if any(isinstance(e, (ev.Checkpoint, ev.ControlAck)) for e in events):
                    self.post_message(Checkpoints(self._lineage()))
            elif key != last_status:
                self.post_message(RunStatus(status))
            last_status = key
            time.sleep(POLL_S)

    @work(thread=True, exclusive=True, exit_on_error=False, group="gpus")
    def watch_gpus(self) -> None:
        """Every local GPU every GPU_POLL_S, NVML kept open; one reading and done on a machine without."""
        from engine.machine.monitor import GpuMonitor

        worker = get_current_worker()
        monitor = GpuMonitor(getattr(self.app, "nvml", None))
        try:
            while not worker.is_cancelled:
                try:
                    self.post_message(GpuReadings(monitor.read(), monitor.status))
                except Exception as err:  # a GPU reading is a nicety: a failing board must not end the view
                    self.post_message(GpuReadings([], f"NVML failed: {err}"))
                    return
                if not monitor.active:
                    return
                until = time.monotonic() + GPU_POLL_S
                while not worker.is_cancelled and time.monotonic() < until:
                    time.sleep(0.25)  # short naps: leaving the screen ends the thread soon after
        finally:
            monitor.close()

    def _lineage(self) -> list[tuple[str, int]]:
        """Checkpoints on the active branch, newest first, as the engine sees them on disk."""
        try:
            from engine.checkpoints.store import lineage

            return [(c.name, c.step) for c in lineage(self.run)]
        except Exception:  # no checkpoint folder (a hand-written run) or an engine mid-change
            return []

    # --- messages ------------------------------------------------------------------------------

    def on_run_events(self, message: RunEvents) -> None:
        for e in message.events:
            self.history.apply(e)
            self.joined = self.joined or (isinstance(e, ev.State) and e.world_size is not None)
            if isinstance(e, ev.ControlAck) and e.id in self.pending:
                asked = self.pending.pop(e.id)
                self.query_one("#run-message", Static).update(
                    Text(f"{asked}: {e.message or 'done'}", style="" if e.ok else "red"))
                if not e.ok:
                    self.notify(e.message or asked, title=asked, severity="error")
                if e.id == self.chat_after:
                    self.chat_after = None
                    if e.ok:
                        self.open_chat(str(e.step))
        for problem in message.skipped:  # a damaged or foreign line: said once, never a traceback
            self.history.skip(problem)
            self.notify(problem.describe(), title="events.jsonl", severity="warning", markup=False)
        self.history.apply_status(message.status)
        self.redraw()

    def on_run_status(self, message: RunStatus) -> None:
        self.history.apply_status(message.status)
        self.redraw()

    def on_gpu_readings(self, message: GpuReadings) -> None:
        self.gpus, self.gpu_status = message.gpus, message.status
        self.update_gpus()

    def update_gpus(self) -> None:
        h = self.history
        self.query_one(GpuPanel).update(self.gpus if self.gpu_status is not None else None, rss=h.rss,
                                        gpu_mem=h.peak_mem if h.on_cpu is False else None,
                                        status=self.gpu_status or "ok")

    def on_checkpoints(self, message: Checkpoints) -> None:
        self.checkpoint_items = message.items
        self.redraw()

    def on_sample_text(self, message: SampleText) -> None:
        self.query_one("#run-message", Static).update(
            Text.assemble(("sample: ", "bold"), (message.text, "" if message.ok else "red")))

    # --- drawing -------------------------------------------------------------------------------

    def checkpoints(self) -> list[tuple[str, int]]:
        if self.checkpoint_items:
            return self.checkpoint_items
        return sorted(self.history.checkpoints.items(), key=lambda kv: -kv[1])

    def loss_at(self, step: int) -> float | None:
        before = [loss for s, loss in self.history.train if s <= step]
        return before[-1] if before else None

    def redraw(self) -> None:
        h = self.history
        title = Text()
        title.append(f" {h.state.upper()} ", style=f"reverse {STATE_STYLE.get(h.state, '')}")
        title.append(f"  {self.run.name}", style="bold")
        if h.error:
            title.append(f"  error: {h.error}", style="red")
        elif h.state in ("starting", "stopping", "stalled") and h.message:
            if h.download:  # a Hub model arriving: a bar beside the bytes, rate and ETA
                done, total = h.download.get("done_bytes") or 0, h.download.get("total_bytes") or 0
                filled = round(20 * min(1.0, done / total)) if total else 20
                title.append("  " + "█" * filled, style="cyan").append("░" * (20 - filled), style="#585858")
            title.append(f"  {h.message}", style="italic")
        self.query_one("#run-title", Static).update(title)
        self.query_one(CommandBlock).display = self.join is not None and not self.joined and h.state in LIVE
        self.query_one(LossChart).update(h.chart())
        self.query_one("#run-stats", Static).update(stats_table(h))
        cps = Text("checkpoints", style="#9e9e9e")
        for name, step in self.checkpoints()[:4]:
            loss = self.loss_at(step)
            cps.append(f"\n◆ {step:>6}", style="blue")
            cps.append(f"  {loss:.3f}" if loss is not None else "")
            if name == h.best:
                cps.append("  ★ best", style="bold yellow")
        if h.best and h.best not in [name for name, _ in self.checkpoints()[:4]]:
            cps.append(f"\n★ best {h.best}", style="bold yellow")
        if not self.checkpoints():
            cps.append("\n  none yet", style="#9e9e9e")
        self.query_one("#run-checkpoints", Static).update(cps)
        self.show_samples()
        count = 5 if self.app.size.height >= 30 else 3
        alerts = (len(h.alerts), count, h.state in LIVE)
        if alerts != self._alerts_for:  # re-laid out only when an alert came or what applies changed
            self._alerts_for = alerts
            alert = self.query_one("#run-alert", Static)
            alert.display = bool(h.alerts)
            if h.alerts:
                alert.update(alert_lines(h, count, h.state in LIVE))
        if self.gpu_status is not None and not self.gpus:
            self.update_gpus()  # the CPU line shows the run's memory from its metrics
        keys = (h.state, bool(self.checkpoints()), self.joined)
        if keys != self._keys_for:  # the footer is rebuilt only when what applies has changed
            self.seen_live = self.seen_live or (h.state in LIVE and self._keys_for is not None)  # not the blank start
            self._keys_for = keys
            if self.seen_live and self.finished():
                self.query_one("#run-message", Static).update(Text(f"run {h.state}: e exports its model"))
            self.refresh_bindings()

    def show_samples(self) -> None:
        """eval.prompts' generations at the newest evaluation, beside the loss (from the eval event)."""
        h, box = self.history, self.query_one("#run-samples", Static)
        box.display = bool(h.samples)
        if h.samples:
            text = Text(f"samples at step {h.samples_step:,}", style="#9e9e9e")
            for sample in h.samples[:3]:
                text.append(f"\n{sample.get('prompt', '')}", style="bold")
                text.append(" → " + " ".join(sample.get("text", "").split())[:120])
            box.update(text)

    # --- keys ----------------------------------------------------------------------------------

    def finished(self) -> bool:
        """Done, or stopped with a model on disk: what `e` can export."""
        state = self.history.state
        return state == "done" or (state == "stopped" and (bool(self.checkpoints()) or (self.run / "final").is_dir()))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        state = self.history.state
        live = state in LIVE
        if action == "pause":
            return live and state != "paused"
        if action == "resume":
            return state == "paused"
        if action in ("save", "lower_lr", "stop"):
            return True if live else None
        if action in ("rollback", "rescue"):
            return True if live and self.checkpoints() else None
        if action == "copy_join":
            return self.join is not None and not self.joined and state in LIVE
        if action == "chat":
            return True if state == "paused" or (not live and (self.run / "final").is_dir()) else None
        if action == "export":
            return (None if self.exporting else True) if self.finished() else False  # hidden until finished
        if action == "generate":
            return True if self.checkpoints() or (self.run / "final").is_dir() else None
        return True

    def send(self, cmd: str, label: str, **args: Any) -> str | None:
        from engine.errors import UserError
        from engine.runfolder.folder import send_command

        try:
            cid = send_command(self.run, cmd, **args)
        except (UserError, OSError) as err:
            self.notify(str(err), severity="error")
            return None
        self.pending[cid] = label
        self.query_one("#run-message", Static).update(Text(f"{label}: sent, waiting for the next step…",
                                                           style="italic"))
        return cid

    def action_pause(self) -> None:
        self.send("pause", "pause")

    def action_resume(self) -> None:
        self.send("resume", "resume")

    def action_save(self) -> None:
        self.send("save", "save")

    def action_lower_lr(self) -> None:
        def chosen(args: dict[str, float] | None) -> None:
            if args:
                what = f"LR x{args['factor']:g}" if "factor" in args else f"LR = {args['value']:g}"
                self.send("set_lr", what, **args)

        self.app.push_screen(LrModal(self.history.lr), chosen)

    def action_rollback(self) -> None:
        items = [(name, step, self.loss_at(step)) for name, step in self.checkpoints()]

        def chosen(step: int | None) -> None:
            if step is not None:
                self.send("rollback", f"roll back to {step}", step=step)

        self.app.push_screen(RollbackModal(items), chosen)

    def action_rescue(self) -> None:
        self.send("rescue", "rescue")

    def action_stop(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.send("stop", "stop")

        self.app.push_screen(ConfirmModal("Stop this run?", "It saves a checkpoint and exits; "
                                          "`llm-wizard train --resume` continues it later."), answered)

    def action_copy_join(self) -> None:
        if self.join is not None:
            self.app.copy_to_clipboard("\n".join(self.join.commands) + "\n")
            self.notify("copied the other machines' commands")

    def action_detach(self) -> None:
        self.app.detach(self.run)

    def action_chat(self) -> None:
        if self.history.state == "paused":  # the weights as they are now: saved, then chatted with
            self.chat_after = self.send("save", "save for chat")
        else:
            self.open_chat(None)

    def open_chat(self, checkpoint: str | None) -> None:
        """`llm-wizard chat` in this terminal while the app steps aside; the model never loads into the TUI."""
        cmd = [sys.executable, "-m", "tui.cli", "chat", str(self.run)]
        cmd += ["--checkpoint", checkpoint] if checkpoint else []
        try:
            with self.app.suspend():
                subprocess.run(cmd, check=False)
        except SuspendNotSupported:
            self.notify(f"chat needs a terminal: {' '.join(cmd[2:])}", title="chat")

    def action_generate(self) -> None:
        def chosen(prompt: str | None) -> None:
            if prompt is not None:
                self.query_one("#run-message", Static).update(Text("sampling…", style="italic"))
                self.sample(prompt)

        self.app.push_screen(PromptModal("Sample from the newest checkpoint; prompt:", "def "), chosen)

    @work(thread=True, exclusive=True, exit_on_error=False, group="sample")
    def sample(self, prompt: str) -> None:
        """`llm-wizard generate` in its own process: the model never loads into the TUI."""
        cmd = [sys.executable, "-m", "tui.cli", "generate", str(self.run), prompt, "--json"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as err:
            self.post_message(SampleText(str(err), False))
            return
        if done.returncode == 0:  # {"text", "source", "chat"}: a reply alone, a continuation after its prompt
            got = json.loads(done.stdout)
            out = f"from {got['source']}: " + (got["text"] if got["chat"] else prompt + got["text"])
        else:
            out = done.stderr.strip()
        self.post_message(SampleText(" ".join(out.split())[:400], done.returncode == 0))
