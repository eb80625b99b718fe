"""Experiment trackers fed from the run's events: TensorBoard in every run folder, W&B, MLflow and trackio when named.

A tracker has torchtune's metric-logger shape: `log_dict(values, step, branch)`, `log_text(tag, text, step)`,
`close()`. `TrackerSink` maps the events onto it (metrics and eval events give scalars under the run's one
vocabulary, `train/loss`, `eval/loss`...; state changes, alerts and eval samples give text) and builds its
tracker on the hub's thread at the first event, so an import or a login never touches the loop. Packages are
imported only for the trackers a spec names; a missing one fails like any tracker: one alert, then off.

Branches: after a rollback the steps run again. TensorBoard writes each branch as a run of its own
(`tb/` for the run as started, `tb/branch-1/`...), so the abandoned curve stays beside the new one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from engine.runfolder import events as ev
from engine.spec import RunSpec

TB_DIR = "tb"


class Tracker(Protocol):
    def log_dict(self, values: dict[str, float], step: int, branch: int = 0) -> None: ...

    def log_text(self, tag: str, text: str, step: int) -> None: ...

    def close(self) -> None: ...


def scalars(event: ev.Event) -> dict[str, float]:
    """The numbers of a metrics or eval event under their JSON keys (lists and nulls left out)."""
    if not isinstance(event, (ev.Metrics, ev.Eval)):
        return {}
    data = event.to_dict()
    out = {k: float(v) for k, v in data.items()
           if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if isinstance(event, ev.Metrics):
        out["train/epoch"], out["train/tokens"] = float(event.epoch), float(event.tokens)
    return out


def samples_text(samples: list[dict[str, str]]) -> str:
    return "\n\n".join(f"**{s.get('prompt', '')}** → {s.get('text', '')}" for s in samples)


class TrackerSink:
    """One tracker as a hub sink; `make` builds it (on the hub's thread) at the first event."""

    def __init__(self, name: str, make: Callable[[], Tracker]) -> None:
        self.name, self.make = name, make
        self.tracker: Tracker | None = None
        self.branch = 0

    def on_event(self, event: ev.Event) -> None:
        if self.tracker is None:
            self.tracker = self.make()
        branch = getattr(event, "branch", None)
        if isinstance(branch, int) and not isinstance(event, ev.Alert):
            self.branch = branch
        step = getattr(event, "step", None) or 0
        if values := scalars(event):
            self.tracker.log_dict(values, step, self.branch)
        if isinstance(event, ev.Eval) and event.samples:
            self.tracker.log_text("eval/samples", samples_text(event.samples), step)
        elif isinstance(event, ev.State):
            self.tracker.log_text("run/state", f"{event.state}: {event.message}", step)
        elif isinstance(event, ev.Alert):
            self.tracker.log_text("run/alerts", f"{event.severity} {event.kind}: {event.message}", step)
        elif isinstance(event, ev.Done):
            self.tracker.log_text("run/state", f"{event.state} at step {event.step}", step)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()


class TensorBoard:
    """Event files under <run>/tb/ through torch.utils.tensorboard (tensorboard's own writer), one folder a branch."""

    def __init__(self, run: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.root, self._writer_cls = Path(run) / TB_DIR, SummaryWriter
        self.writers: dict[int, Any] = {}

    def writer(self, branch: int) -> Any:
        if branch not in self.writers:
            folder = self.root if branch == 0 else self.root / f"branch-{branch}"
            self.writers[branch] = self._writer_cls(log_dir=str(folder), flush_secs=10)
        return self.writers[branch]

    def log_dict(self, values: dict[str, float], step: int, branch: int = 0) -> None:
        w = self.writer(branch)
        for key, value in values.items():
            w.add_scalar(key, value, step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.writer(max(self.writers, default=0)).add_text(tag, text, step)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeError(f"log.trackers names {module}, which is not installed here (pip install {module})") from None


def _flat(spec: RunSpec) -> dict[str, Any]:
    out = {}
    for section, values in spec.to_dict().items():
        if section == "notify":  # its URLs may hold secrets
            continue
        if isinstance(values, dict):
            out.update({f"{section}.{k}": v for k, v in values.items() if not isinstance(v, (dict, list))})
        else:
            out[section] = values
    return out


class WandB:
    """Weights & Biases: the project llm-wizard, the run id as its name, the spec as its config."""

    def __init__(self, run: Path, spec: RunSpec, module: str = "wandb") -> None:
        self.lib = _need(module)
        self.handle = self.lib.init(project="llm-wizard", name=Path(run).name, config=_flat(spec), dir=str(run))

    def log_dict(self, values: dict[str, float], step: int, branch: int = 0) -> None:
        # steps must grow in W&B: a rollback's branch logs its own step and branch as metrics instead
        self.handle.log({**values, "step": step, "branch": branch})

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.handle.summary[tag] = text

    def close(self) -> None:
        self.handle.finish()


class Trackio(WandB):
    """trackio (Hugging Face's local-first tracker): W&B's API."""

    def __init__(self, run: Path, spec: RunSpec) -> None:
        self.lib = _need("trackio")
        self.handle = self.lib.init(project="llm-wizard", name=Path(run).name, config=_flat(spec))

    def log_dict(self, values: dict[str, float], step: int, branch: int = 0) -> None:
        self.lib.log({**values, "branch": branch}, step=step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        pass  # trackio keeps numbers only

    def close(self) -> None:
        self.lib.finish()


class MLflow:
    """MLflow: experiment llm-wizard, the run id as the run name, the spec as parameters."""

    def __init__(self, run: Path, spec: RunSpec) -> None:
        self.lib = _need("mlflow")
        self.lib.set_experiment("llm-wizard")
        self.handle = self.lib.start_run(run_name=Path(run).name)
        self.lib.log_params({k: str(v)[:500] for k, v in _flat(spec).items()})

    def log_dict(self, values: dict[str, float], step: int, branch: int = 0) -> None:
        prefix = f"branch-{branch}/" if branch else ""
        self.lib.log_metrics({prefix + k: v for k, v in values.items()}, step=step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.lib.log_text(text, f"{tag}/step-{step:06d}.txt")

    def close(self) -> None:
        self.lib.end_run()


# name -> factory(run folder, spec); tests register doubles here
FACTORIES: dict[str, Callable[[Path, RunSpec], Tracker]] = {
    "tensorboard": lambda run, spec: TensorBoard(run),
    "wandb": WandB,
    "mlflow": MLflow,
    "trackio": Trackio,
}


def sinks(run: Path, spec: RunSpec) -> list[TrackerSink]:
    names = (["tensorboard"] if spec.log.tensorboard else []) + list(spec.log.trackers)
    return [TrackerSink(name, lambda name=name: FACTORIES[name](run, spec)) for name in names]
