"""Step 3: which model. A Hub id or a local folder for fine-tuning, an architecture and a size for
scratch. Only config.json is read; parameters are counted by the estimator's config arithmetic
(engine.model_count), never by loading weights."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from engine.architectures import ARCHS, SIZES
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
    from engine.model_count import load_dims

    return load_dims(arch=arch, size=size, vocab_size=vocab_size, max_seq_len=seq_len).params


def model_parameters(source: str) -> tuple[int, str]:
    """(parameters, architecture) of a folder or cached Hub id: only config.json is read."""
    from engine.model_count import load_dims

    d = load_dims(source)
    return d.params, ", ".join(d.config.get("architectures") or [d.model_type])


class ModelCounted(Message):
    def __init__(self, key: str, params: int | None, kind: str, error: str | None = None) -> None:
        super().__init__()
        self.key, self.params, self.kind, self.error = key, params, kind, error


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
                yield Label("A Hub id (cached) or a local folder with config.json:")
                yield Input(self.wizard.choices.model, placeholder="e.g. ./my-model or Qwen/Qwen2.5-0.5B",
                            suggester=PathSuggester(), id="model-path")
                if self.wizard.choices.technique == "distill":
                    yield Label("Teacher (same tokenizer as the student):")
                    yield Input(self.wizard.choices.teacher, placeholder="a larger model's folder or id",
                                suggester=PathSuggester(), id="teacher-path")
            yield Static("", id="model-info")

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
        return bool(c.model) and c.extra.get("model_params") is not None

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
        from engine.errors import UserError

        try:
            n, kind = model_parameters(key)
        except UserError as err:
            self.post_message(ModelCounted(key, None, "", str(err)))
        except Exception as err:  # a config transformers cannot build: say so, keep the wizard alive
            self.post_message(ModelCounted(key, None, "", f"cannot read this model's config: {err}"))
        else:
            self.post_message(ModelCounted(key, n, kind))

    def on_model_counted(self, message: ModelCounted) -> None:
        c = self.wizard.choices
        current = f"{c.arch}/{c.size}" if c.technique == "scratch" else c.model
        if message.key != current:
            return  # an answer for what was typed before
        info = self.query_one("#model-info", Static)
        if message.error:
            info.update(Text(message.error, style="red"))
            c.extra.pop("model_params", None)
        else:
            c.extra["model_params"] = message.params
            note = f" (vocabulary of {c.scratch_vocab()}: {c.tokenizer})" if c.technique == "scratch" else ""
            info.update(Text.assemble((f"{human_count(message.params or 0)} parameters", "bold green"),
                                      f"  {message.kind}{note}"))
        self.changed()
