"""Hosted fine-tuning through the OpenAI API (the book's 5.2.2 ends with it): the data leaves this machine and
the training is billed per token.

The run checks and converts the data with the same data path as every technique (engine/techniques/
openai_files.py writes <run>/openai/train.jsonl and validation.jsonl), estimates the billed tokens and the
cost, uploads the files and creates the job; the job process then follows it (engine/run/remote.py), and
`poll` turns the job's events, metrics and checkpoints into the run's events. When it succeeds,
final/openai.json names the `ft:` model, which `llm-wizard chat` talks to (engine/serve/openai_chat.py).

Never billed twice: every id the API returns (uploaded files, the job) is written into the run folder at once
(remote.json, through ctx.remember), and a restarted job reads them back: it re-attaches to its job and
uploads nothing again. A job whose creation answer was lost (the process killed in between) is found again
by the run id in its metadata. Events already written are recognised by the remote id they carry.

The API key is read from OPENAI_API_KEY only and never written (errors are redacted before they reach the
run folder); OPENAI_BASE_URL points the client at an OpenAI-compatible service.

    [options]
    model = "gpt-4o-mini-2024-07-18"   # the base model to fine-tune
    suffix = ""                        # a name part of the ft: model (up to 64 characters)
    n_epochs = "auto"                  # or 1 to 50
    learning_rate_multiplier = "auto"  # or a positive number
    batch_size = "auto"                # or 1 to 256
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from engine.data.sources import DataSource
from engine.errors import UserError
from engine.runfolder import events as ev
from engine.techniques import openai_files
from engine.techniques.openai_api import FINAL, calling, client, service
from engine.techniques.base import RemoteContext, RemoteStatus, with_defaults

DEFAULTS: dict[str, Any] = {"model": "gpt-4o-mini-2024-07-18", "suffix": "", "n_epochs": "auto",
                            "learning_rate_multiplier": "auto", "batch_size": "auto"}
FILES = "openai"  # <run>/openai/: the files exactly as uploaded
RUN_TAG = "llm_wizard_run"  # the job's metadata key holding the run id (to find a job whose creation answer was lost)
REMOTE_ID = "remote_id"  # the key in an event's extra naming the remote event or checkpoint it came from
# Once the job exists the run follows it: "running" for us, while the message says what the service is doing.
STATES = {"validating_files": "running", "queued": "running", "running": "running", "paused": "paused",
          "succeeded": "done", "failed": "failed", "cancelled": "stopped"}
REFUSED = {
    "pause": "a hosted OpenAI job is not paused from here: it is billed by trained tokens, not by time; "
             "`stop` cancels it",
    "resume": "a hosted OpenAI job is never paused from here",
    "set_lr": "a hosted OpenAI job's learning rate is fixed when it is created (options.learning_rate_multiplier)",
    "save": "OpenAI keeps its own checkpoints (listed as checkpoint events, each a model you can chat with)",
    "rollback": "a hosted OpenAI job cannot be rolled back; start a new run from its data instead",
    "rescue": "a hosted OpenAI job cannot be rolled back; start a new run with a lower learning_rate_multiplier",
}
STOP_QUESTION = ("Cancel the OpenAI fine-tuning job? The tokens trained so far are billed, and a cancelled job "
                 "cannot be resumed.")


def options(spec: Any) -> dict[str, Any]:
    """The [options] over DEFAULTS, checked: UserError naming the option."""
    opts = with_defaults(spec, DEFAULTS, "openai")

    def bad(name: str, why: str) -> UserError:
        return UserError(f"options.{name}: {why}, got {opts[name]!r}", field=f"options.{name}")

    if not isinstance(opts["model"], str) or not opts["model"].strip():
        raise bad("model", "the OpenAI model to fine-tune, e.g. \"gpt-4o-mini-2024-07-18\"")
    if not isinstance(opts["suffix"], str) or len(opts["suffix"]) > 64:
        raise bad("suffix", "text of up to 64 characters")
    for name, low, high in (("n_epochs", 1, 50), ("batch_size", 1, 256)):
        v = opts[name]
        if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high):
            raise bad(name, f"\"auto\" or a whole number from {low} to {high}")
    v = opts["learning_rate_multiplier"]
    if v != "auto" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 100):
        raise bad("learning_rate_multiplier", "\"auto\" or a positive number")
    return opts


def preflight(spec: Any) -> None:
    """Before a run folder exists: the options, the data has turns to learn, the client and the key are here."""
    options(spec)
    if spec.model.path:
        raise UserError("model.path: a hosted OpenAI fine-tune names its model in options.model "
                        f"(e.g. \"{DEFAULTS['model']}\"); leave model.path empty", field="model.path")
    openai_files.check_layout(DataSource.from_spec(spec.data), spec.data.train_on)
    client()


def remote(ctx: RemoteContext) -> OpenAIJob:
    return OpenAIJob(ctx)


class OpenAIJob:
    """One run's OpenAI fine-tuning job: start() creates or finds it, poll() follows it, cancel() ends it."""

    def __init__(self, ctx: RemoteContext) -> None:
        self.ctx, self.spec = ctx, ctx.spec
        self.opts = options(ctx.spec)
        self.api = client()
        self.job_id: str | None = None
        self.remembered = ctx.recall()  # file_tokens and epochs, for the metrics' token and epoch counts
        self.step, self.total_steps, self.loss, self.eval_loss = 0, None, None, None
        self.seen: set[str] = set()  # remote ids of the events and checkpoints already written
        self.metric_steps: set[int] = set()
        for e in ev.read(ctx.run):  # a restart goes on from what the run folder holds
            if REMOTE_ID in e.extra:
                self.seen.add(e.extra[REMOTE_ID])
            if isinstance(e, ev.Metrics):
                self.step, self.loss = max(self.step, e.step), e.train_loss
                self.metric_steps.add(e.step)
            elif isinstance(e, ev.Eval):
                self.eval_loss = e.eval_loss
            elif isinstance(e, ev.State) and e.total_steps:
                self.total_steps = e.total_steps
        self.last_metric: tuple[int, int] | None = None  # (step, created_at) of the newest metrics event
        self.status = RemoteStatus("starting", "starting")
        self.unreachable = False

    # ---- creating, or finding again ------------------------------------------------------------------

    def start(self) -> None:
        ctx, state = self.ctx, self.ctx.recall()
        if state.get("job_id"):
            self.job_id = state["job_id"]
            ctx.emit(ev.State(state="starting", step=0, message=f"following OpenAI job {self.job_id} again"))
            return
        if state.get("creating") and self._find_created():
            return
        if not state.get("training_file"):
            self._write_files()
        if ctx.should_stop():
            return
        self._upload(ctx.recall())
        if ctx.should_stop():
            return
        self._create(ctx.recall())

    def _write_files(self) -> None:
        ctx, spec = self.ctx, self.spec
        ctx.say("checking and converting the data to OpenAI's chat format")
        written = openai_files.write_files(DataSource.from_spec(spec.data), ctx.run / FILES, model=self.opts["model"],
                                           train_on=spec.data.train_on, val_fraction=spec.data.val_fraction,
                                           seed=spec.seed)
        cost = openai_files.estimate(written, self.opts["model"], self.opts["n_epochs"])
        ctx.remember(file_tokens=written.tokens, epochs=cost.epochs)
        self.remembered = ctx.recall()
        data = {"format": DataSource.from_spec(spec.data).layout().format, "examples": written.examples,
                "val_examples": written.val_examples, "tokens": written.tokens, "billed_tokens": cost.billed_tokens,
                "cost_usd": cost.usd, "counted_by": written.counted_by, "price_date": openai_files.PRICES_DATE,
                "skipped_rows": written.skipped}
        ctx.emit(ev.State(state="starting", step=0, data=data,
                          message=f"{written.examples} training and {written.val_examples} validation examples "
                                  f"in OpenAI's chat format ({ctx.run / FILES})"),
                 ev.Alert(kind="cost", severity="info", message=cost.describe()))

    def _upload(self, state: dict[str, Any]) -> None:
        """Each file written and not uploaded yet (a restart uploads only what an earlier process did not)."""
        for key, name in (("training_file", "train.jsonl"), ("validation_file", "validation.jsonl")):
            path = self.ctx.run / FILES / name
            if state.get(key) or not path.is_file():
                continue
            self.ctx.say(f"uploading {path.name} to {service()}")
            with calling(f"uploading {path.name}"), open(path, "rb") as f:
                uploaded = self.api.files.create(file=f, purpose="fine-tune")
            self.ctx.remember(**{key: uploaded.id})  # at once: a restart never uploads it again

    def _find_created(self) -> bool:
        """A job created by an earlier process whose answer was lost, found by the run id in its metadata."""
        with calling("looking for this run's job"):
            page = self.api.fine_tuning.jobs.list(metadata={RUN_TAG: self.ctx.run.name}, limit=10)
        found = [j for j in page.data if (j.metadata or {}).get(RUN_TAG) == self.ctx.run.name]
        if not found:
            return False
        self.job_id = found[0].id
        self.ctx.remember(job_id=self.job_id, creating=False)
        self.ctx.emit(ev.State(state="starting", step=0, message=f"found OpenAI job {self.job_id} again"))
        return True

    def _create(self, state: dict[str, Any]) -> None:
        o = self.opts
        hyper = {k: o[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
        kwargs: dict[str, Any] = {"model": o["model"], "training_file": state["training_file"], "seed": self.spec.seed,
                                  "metadata": {RUN_TAG: self.ctx.run.name},
                                  "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}}}
        if o["suffix"]:
            kwargs["suffix"] = o["suffix"]
        if state.get("validation_file"):
            kwargs["validation_file"] = state["validation_file"]
        self.ctx.say(f"creating the fine-tuning job for {o['model']}")
        self.ctx.remember(creating=True)  # a restart looks for the job before creating another
        with calling(f"creating the fine-tuning job for {o['model']}"):
            job = self.api.fine_tuning.jobs.create(**kwargs)
        self.job_id = job.id
        self.ctx.remember(job_id=job.id, creating=False)  # the first thing after creation: never created twice
        self.ctx.emit(ev.State(state="starting", step=0, message=f"created OpenAI job {job.id} ({job.status})"))

    # ---- following ---------------------------------------------------------------------------------

    def poll(self) -> RemoteStatus:
        import openai

        if self.job_id is None:
            return RemoteStatus("stopped", "stopped before the OpenAI job was created: nothing was billed")
        try:
            with calling(f"reading OpenAI job {self.job_id}", retry_later=True):
                job = self.api.fine_tuning.jobs.retrieve(self.job_id)
                self._epochs_chosen(job)
                # checkpoints listed before the events: every metrics event of a listed checkpoint's step is
                # then among the events read next, so a checkpoint's own metrics are used only when none came
                checkpoints = self.api.fine_tuning.jobs.checkpoints.list(self.job_id, limit=100).data
                self._events()
                self._checkpoints(checkpoints)
        except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError) as e:
            if not self.unreachable:  # said once; the job goes on remotely meanwhile
                self.ctx.emit(ev.Alert(step=self.step, kind="remote", message=f"{service()} is not answering "
                                       f"({type(e).__name__}); the job goes on there, following it again shortly"))
            self.unreachable = True
            return self.status
        self.unreachable = False
        self.status = self._status(job)
        return self.status

    def _status(self, job: Any) -> RemoteStatus:
        state = STATES.get(job.status, "running")
        common = {"step": self.step, "total_steps": self.total_steps, "loss": self.loss, "eval_loss": self.eval_loss,
                  "epoch": self._epoch()}
        if state == "done":
            final = self._write_final(job)
            tokens = job.trained_tokens or 0
            price = openai_files.price(job.model)
            cost = f" (about ${tokens * price / 1e6:,.2f} at the table's price)" if price is not None and tokens else ""
            summary = (f"fine-tuned model {job.fine_tuned_model}; {tokens:,} tokens trained{cost}; talk to it with "
                       f"`llm-wizard chat {self.ctx.run.name}`")
            return RemoteStatus("done", summary, final=str(final), summary=summary, **common)
        if state == "failed":
            err = job.error
            if err is not None and err.message:
                where = f" ({err.param})" if err.param else ""
                code = f" [{err.code}]" if err.code else ""
                return RemoteStatus("failed", "the OpenAI job failed", error=f"OpenAI refused the job: {err.message}"
                                    f"{where}{code}", error_kind="user", **common)
            return RemoteStatus("failed", "the OpenAI job failed", error=f"OpenAI job {job.id} failed without a "
                                "reason; see it on platform.openai.com", **common)
        if state == "stopped":
            return RemoteStatus("stopped", f"OpenAI job {job.id} was cancelled", **common)
        step = f", step {self.step}" + (f"/{self.total_steps}" if self.total_steps else "") if self.step else ""
        return RemoteStatus(state, f"OpenAI job {job.id}: {job.status.replace('_', ' ')}{step}", **common)

    def _epochs_chosen(self, job: Any) -> None:
        """n_epochs = "auto" becomes a number once the service picks it: the share of data seen follows it."""
        method = getattr(getattr(job, "method", None), "supervised", None)
        hyper = getattr(method, "hyperparameters", None) or getattr(job, "hyperparameters", None)
        epochs = getattr(hyper, "n_epochs", None)
        if isinstance(epochs, int) and epochs != self.remembered.get("epochs"):
            self.ctx.remember(epochs=epochs)
            self.remembered["epochs"] = epochs

    def _epoch(self) -> float | None:
        epochs = self.remembered.get("epochs")
        return self.step / self.total_steps * epochs if self.total_steps and epochs else None

    def _events(self) -> None:
        """The job's events not yet in events.jsonl, oldest first (the API lists them newest first)."""
        new: list[Any] = []
        page = self.api.fine_tuning.jobs.list_events(self.job_id, limit=100)
        while True:
            fresh = [e for e in page.data if e.id not in self.seen]
            new += fresh
            if len(fresh) < len(page.data) or not page.has_more or not page.data:
                break
            page = self.api.fine_tuning.jobs.list_events(self.job_id, limit=100, after=page.data[-1].id)
        for e in reversed(new):
            self.ctx.emit(*self._translate(e))
            self.seen.add(e.id)

    def _translate(self, e: Any) -> list[ev.Event]:
        tag = {REMOTE_ID: e.id}
        data = e.data if isinstance(e.data, dict) else {}
        if e.type == "metrics" or "train_loss" in data:
            return self._metrics(data, e.created_at, tag)
        if e.level in ("warn", "error"):
            return [ev.Alert(step=self.step, kind="remote", message=f"OpenAI: {e.message}",
                             severity="error" if e.level == "error" else "warning", extra=tag)]
        return [ev.State(state=self.status.state, step=self.step, message=f"OpenAI: {e.message}", extra=tag)]

    def _metrics(self, data: dict[str, Any], created: int, tag: dict[str, Any]) -> list[ev.Event]:
        step = int(data.get("step") or self.step)
        self.total_steps = int(data["total_steps"]) if data.get("total_steps") else self.total_steps
        step_ms = None
        if self.last_metric and step > self.last_metric[0] and created > self.last_metric[1]:
            step_ms = (created - self.last_metric[1]) * 1000 / (step - self.last_metric[0])
        self.last_metric = (step, created)
        self.step = max(self.step, step)
        self.metric_steps.add(step)
        loss = float(data.get("train_loss", math.nan))
        self.loss = loss if math.isfinite(loss) else self.loss
        epoch = self._epoch() or 0.0
        remaining = (self.total_steps or step) - step
        extra = {**tag, **({"train/token_accuracy": data["train_mean_token_accuracy"]}
                           if isinstance(data.get("train_mean_token_accuracy"), (int, float)) else {})}
        out: list[ev.Event] = [ev.Metrics(
            step=step, epoch=epoch, tokens=int(epoch * self.remembered.get("file_tokens", 0)),
            eta_s=remaining * step_ms / 1000 if step_ms else 0.0, branch=0, train_loss=loss, train_lr=None,
            train_grad_norm=None, train_tok_per_s=None, train_step_ms=step_ms, train_mfu=None,
            train_loss_smooth=None, extra=extra)]
        valid = data.get("full_valid_loss", data.get("valid_loss"))
        if isinstance(valid, (int, float)) and math.isfinite(valid):
            self.eval_loss = float(valid)
            out.append(ev.Eval(step=step, eval_loss=float(valid), eval_ppl=math.exp(min(float(valid), 50.0))))
        return out

    def _checkpoints(self, listed: list[Any]) -> None:
        for cp in sorted(listed, key=lambda c: c.step_number):
            if cp.id in self.seen:
                continue
            events: list[ev.Event] = [ev.Checkpoint(step=cp.step_number, name=cp.id, branch=0,
                                                    path=cp.fine_tuned_model_checkpoint, reason="remote", deleted=[],
                                                    extra={REMOTE_ID: cp.id})]
            m = cp.metrics
            if m is not None and m.train_loss is not None and cp.step_number not in self.metric_steps:
                events += self._metrics({"step": cp.step_number, "train_loss": m.train_loss,
                                         "valid_loss": m.full_valid_loss or m.valid_loss}, cp.created_at, {})
            self.ctx.emit(*events)
            self.seen.add(cp.id)

    def _write_final(self, job: Any) -> Path:
        from engine.runfolder.status import write_text_atomic

        final = self.ctx.run / "final"
        final.mkdir(exist_ok=True)
        body = {"model": job.fine_tuned_model, "job_id": job.id, "base_model": job.model, "service": service(),
                "trained_tokens": job.trained_tokens, "suffix": self.opts["suffix"], "finished_at": job.finished_at,
                "checkpoints": sorted(i for i in self.seen if i.startswith("ftckpt"))}
        write_text_atomic(final / FINAL, json.dumps(body, indent=2) + "\n")
        return final / FINAL

    # ---- steering -------------------------------------------------------------------------------------

    def cancel(self) -> str:
        if self.job_id is None:
            return "stopping before the OpenAI job is created: nothing is billed"
        with calling(f"cancelling OpenAI job {self.job_id}"):
            job = self.api.fine_tuning.jobs.cancel(self.job_id)
        return f"cancelling OpenAI job {job.id} ({job.status}); tokens trained so far are billed"
