"""Step 3: which model. A Hub id or a local folder for fine-tuning, an architecture and a size for
scratch. Only config.json is read (from the Hub cache, else the Hub); for a Hub id the Hub's API adds the
size on disk, gated or not and cached or not, asked in the worker thread with a short timeout. Parameters
are counted by the estimator's config arithmetic (engine.models.shape), never by loading weights. A model
that needs its own Python code, or has only pickle weights, shows what would run and asks for consent (a
checkbox) before Next applies: the consent is written into the spec as the engine's opt-ins
(engine/models/trust.py, RELIABILITY M3 and S2)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Checkbox, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from engine.models.architectures import ARCHS, SIZES
from tui.screens.base import WizardStep
from tui.widgets.paths import PathSuggester

ARCH_TITLES = {"gpt2": "GPT-2 style", "llama": "Llama style"}


def human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def scratch_parameters(arch: str, size: str, vocab_size: int, seq_len: int) -> int:
    """Parameters of a scratch model, from the estimator's config arithmetic (microseconds)."""
    from engine.models.shape import load_dims

    return load_dims(arch=arch, size=size, vocab_size=vocab_size, max_seq_len=seq_len).params


def model_risks(source: str) -> tuple[Any, list[str]]:
    """(the code loading `source` would run, or None; its pickle weight files if it has no safetensors)."""
    from engine.models.trust import pickle_only, remote_code, resolve

    where = resolve(source)
    if where is None:
        return None, []
    return remote_code(where), pickle_only(where.folder)


def hub_facts(source: str) -> tuple[dict[str, Any] | None, str | None]:
    """(what the Hub says of a Hub id: size on disk, parameters, gated, cached; or None, and a note why not).
    Local folders ask nothing; a short timeout keeps a slow network from holding the step."""
    from engine.errors import UserError
    from engine.hub import repo as hubrepo

    if not hubrepo.is_hub_id(source):
        return None, None
    try:
        info = hubrepo.repo_info(source, timeout=5.0)
    except UserError as err:
        return None, str(err)
    return hubrepo.describe(info, hubrepo.model_files(info)), None


def hub_line(facts: dict[str, Any]) -> str:
    from engine.hub.download import human

    params = f", {human_count(facts['parameters'])} parameters (Hub)" if facts.get("parameters") else ""
    cached = "cached" if facts["cached"] else "not cached: the run downloads it before its first step"
    gated = "gated (needs an accepted licence and a token)" if facts["gated"] else "not gated"
    return f"{human(facts['bytes'])} on disk{params}; {gated}; {cached}"


def model_parameters(source: str) -> tuple[int, str]:
    """(parameters, architecture) of a folder or cached Hub id: only config.json is read."""
    from engine.models.shape import load_dims

    d = load_dims(source)
    return d.params, ", ".join(d.config.get("architectures") or [d.model_type])


class ModelCounted(Message):
    def __init__(self, key: str, params: int | None, kind: str, error: str | None = None, code: Any = None,
                 pickled: list[str] | None = None, hub: dict[str, Any] | None = None,
                 hub_note: str | None = None) -> None:
        super().__init__()
        self.key, self.params, self.kind, self.error = key, params, kind, error
        self.code, self.pickled = code, pickled or []
        self.hub, self.hub_note = hub, hub_note


class ModelScreen(WizardStep):
    STEP = 2
    BINDINGS = [Binding("t", "tokenizer", "Tokenizer", tooltip="Scratch: byte-level (256 symbols, nothing to "
                        "train) or BPE trained on your data")]

    def body(self) -> ComposeResult:
        scratch = self.wizard.choices.technique == "scratch"
        with Vertical(id="model"):
            if scratch:
                yield Label("Architecture and size (Tab switches lists; t switches the tokenizer)")
                with Horizontal(id="scratch-pick"):
                    yield OptionList(*(Option(ARCH_TITLES[a], id=a) for a in ARCHS), id="arch")
                    yield OptionList(*(Option(self._size_label(s), id=s) for s in SIZES), id="size")
            else:
                yield Label("A Hub id or a local folder with config.json:")
                yield Input(self.wizard.choices.model, placeholder="e.g. ./my-model or Qwen/Qwen2.5-0.5B",
                            suggester=PathSuggester(), id="model-path")
                if self.wizard.choices.technique == "distill":
                    yield Label("Teacher (same tokenizer as the student):")
                    yield Input(self.wizard.choices.teacher, placeholder="a larger model's folder or id",
                                suggester=PathSuggester(), id="teacher-path")
            yield Static("", id="model-info")
            if not scratch:
                yield Static("", id="model-risk")
                yield Checkbox("Run this model's code, pinned as shown", id="trust-code")
                yield Checkbox("Allow its pickle weights (read as plain tensors only)", id="allow-pickle")

    @staticmethod
    def _size_label(size: str) -> str:
        s = SIZES[size]
        return f"{size:>5}  {s.layers} layers x {s.width}"

    def on_mount(self) -> None:
        c = self.wizard.choices
        if c.technique == "scratch":
            self.query_one("#arch", OptionList).highlighted = list(ARCHS).index(c.arch)
            size = self.query_one("#size", OptionList)
            size.highlighted = list(SIZES).index(c.size)
            size.focus()
        else:
            self.query_one("#model-path", Input).focus()
            self._code = None
            for box in self.query(Checkbox):
                box.display = False  # shown once the model's files are known
        self.recount()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "tokenizer":
            return self.wizard.choices.technique == "scratch"
        return super().check_action(action, parameters)

    def action_tokenizer(self) -> None:
        c = self.wizard.choices
        c.tokenizer = "bpe" if c.tokenizer == "byte" else "byte"
        self.recount()

    def ready(self) -> bool:
        c = self.wizard.choices
        if c.technique == "scratch":
            return True
        if c.technique == "distill" and not c.teacher:
            return False
        needs = c.extra.get("model_needs", {})
        consent = c.extra.get("model_consent", {})
        return (bool(c.model) and c.extra.get("model_params") is not None
                and (not needs.get("code") or consent.get("trust_remote_code", False))
                and (not needs.get("pickle") or consent.get("allow_pickle_weights", False)))

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_list.id == "arch":
            self.wizard.choices.arch = event.option.id or "gpt2"
        elif event.option_list.id == "size":
            self.wizard.choices.size = event.option.id or "tiny"
        self.recount()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "model-path":
            self.wizard.choices.model = event.value.strip()
            self.wizard.choices.extra.pop("model_params", None)
            self.wizard.choices.extra["model_consent"] = {}  # a consent is for one model: another asks again
            self._show_risks(None, [])
            self.recount()
        elif event.input.id == "teacher-path":
            self.wizard.choices.teacher = event.value.strip()
        self.changed()

    def recount(self) -> None:
        c = self.wizard.choices
        key = f"{c.arch}/{c.size}" if c.technique == "scratch" else c.model
        if not key:
            self.query_one("#model-info", Static).update("")
            return
        if c.technique == "scratch":  # arithmetic: no worker needed
            n = scratch_parameters(c.arch, c.size, c.scratch_vocab(), c.seq_len)
            self.on_model_counted(ModelCounted(key, n, ARCH_TITLES[c.arch]))
            return
        self.query_one("#model-info", Static).update(Text("counting parameters…", style="italic"))
        self.count(key)

    @work(thread=True, exclusive=True, exit_on_error=False, group="count")
    def count(self, key: str) -> None:
        import time

        from engine.errors import UserError
        from engine.hub.repo import is_hub_id

        if is_hub_id(key):  # typing an id: ask the Hub once the typing pauses, not for every prefix
            time.sleep(0.4)
            if self.wizard.choices.model != key:
                return
        hub, hub_note = hub_facts(key)
        try:
            code, pickled = model_risks(key)  # shown even when the count fails (a model type only its code knows)
        except OSError:
            code, pickled = None, []
        facts = {"code": code, "pickled": pickled, "hub": hub, "hub_note": hub_note}
        try:
            n, kind = model_parameters(key)
        except UserError as err:
            self.post_message(ModelCounted(key, None, "", str(err), **facts))
        except Exception as err:  # a config transformers cannot build: say so, keep the wizard alive
            self.post_message(ModelCounted(key, None, "", f"cannot read this model's config: {err}", **facts))
        else:
            self.post_message(ModelCounted(key, n, kind, **facts))

    def on_model_counted(self, message: ModelCounted) -> None:
        c = self.wizard.choices
        current = f"{c.arch}/{c.size}" if c.technique == "scratch" else c.model
        if message.key != current:
            return  # an answer for what was typed before
        info = self.query_one("#model-info", Static)
        if message.error:
            error = message.error if message.code is None else (
                f"parameters unknown: model type {message.code.model_type!r} is defined only by its own code, "
                "which the estimator cannot count (train it with `llm-wizard train` and a spec)")
            info.update(Text(error[:300], style="red"))  # transformers lists every model type it knows
            c.extra.pop("model_params", None)
        else:
            c.extra["model_params"] = message.params
            note = f" (vocabulary of {c.scratch_vocab()}: {c.tokenizer})" if c.technique == "scratch" else ""
            hub = (f"\n{hub_line(message.hub)}" if message.hub else
                   f"\n{message.hub_note}" if message.hub_note else "")
            info.update(Text.assemble((f"{human_count(message.params or 0)} parameters", "bold green"),
                                      f"  {message.kind}{note}", (hub[:300], "dim" if message.hub else "yellow")))
        if c.technique != "scratch":
            self._show_risks(message.code, message.pickled)
        self.changed()

    def _show_risks(self, code: Any, pickled: list[str]) -> None:
        """What loading this model would run or unpickle, and the checkboxes that consent to it."""
        c = self.wizard.choices
        c.extra["model_needs"] = {"code": code is not None, "pickle": bool(pickled)}
        prior, kept = c.extra.get("model_consent", {}), {}
        self._code = code
        text = Text()
        if pickled and prior.get("allow_pickle_weights"):
            kept["allow_pickle_weights"] = True
        if code is not None:
            key, value = code.pin()
            if prior.get("trust_remote_code") and prior.get(key) == value:  # the same code as consented to
                kept.update({"trust_remote_code": True, key: value})
            text.append("This model runs its own Python code to load: ", style="bold yellow")
            text.append(", ".join(code.files) + f"\nin {code.source.folder}. Read them first; the consent is pinned "
                        f"to {key} {value} (a change to the files asks again).\n")
        if pickled:
            text.append("Only pickle weights: ", style="bold yellow")
            text.append(", ".join(pickled) + ". safetensors is preferred: a pickle file can run code when read.")
        self.query_one("#model-risk", Static).update(text)
        c.extra["model_consent"] = kept
        for box, shown, ticked in (("#trust-code", code is not None, "trust_remote_code" in kept),
                                   ("#allow-pickle", bool(pickled), "allow_pickle_weights" in kept)):
            widget = self.query_one(box, Checkbox)
            widget.display = shown
            with widget.prevent(Checkbox.Changed):
                widget.value = ticked

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        consent = self.wizard.choices.extra.setdefault("model_consent", {})
        if event.checkbox.id == "trust-code" and self._code is not None:
            key, value = self._code.pin()
            consent.pop("trust_remote_code", None), consent.pop("revision", None), consent.pop("code_sha256", None)
            if event.value:
                consent.update({"trust_remote_code": True, key: value})
        elif event.checkbox.id == "allow-pickle":
            consent.pop("allow_pickle_weights", None)
            if event.value:
                consent["allow_pickle_weights"] = True
        self.changed()
