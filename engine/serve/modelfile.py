"""An Ollama Modelfile beside a GGUF: FROM the file, TEMPLATE in Go's template language translated from the
model's Jinja chat template, SYSTEM for a default system prompt the template inserts, PARAMETER stop for
each token that ends a reply.

The translation does not parse Jinja: it renders the template on probe conversations whose contents are
unique markers and reads the text around them (each role's prefix and suffix, the generation prompt), which
holds for every template that wraps each turn alike. `render` applies the same layout in Python as the Go
template does, so a test can hold it against apply_chat_template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import UserError

FILENAME = "Modelfile"
_S, _U1, _A1, _U2 = "SYSQZX0", "USRQZX1", "ASTQZX1", "USRQZX2"  # markers no template rewrites


@dataclass(frozen=True)
class Layout:
    """Each role's text before and after its content, as the chat template writes them."""
    system: tuple[str, str] | None  # None: the template folds a system prompt into a user turn (not carried)
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str  # after the last user turn, where the reply starts
    default_system: str | None  # the system prompt the template adds when a conversation has none


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    bos = tokenizer.bos_token
    return text[len(bos):] if bos and text.startswith(bos) else text  # llama.cpp adds the BOS token itself


def _between(text: str, a: str, b: str) -> str:
    return text[text.index(a) + len(a):text.index(b)]


def layout(tokenizer: Any) -> Layout:
    """The tokenizer's chat template read as a Layout; a UserError if it does not wrap turns alike."""
    u, a = {"role": "user", "content": _U1}, {"role": "assistant", "content": _A1}
    u2 = {"role": "user", "content": _U2}
    try:
        ends_user = _render(tokenizer, [u], False)
        ends_assistant = _render(tokenizer, [u, a], False)
        with_gen = _render(tokenizer, [u, a, u2], True)
        with_system = _render(tokenizer, [{"role": "system", "content": _S}, u, a, u2], True)
    except Exception as e:  # noqa: BLE001 - a template that raises on these turns (e.g. demands alternation)
        raise UserError(f"the chat template cannot be translated for Ollama: {e}", field="format") from None
    user_suffix = ends_user[ends_user.index(_U1) + len(_U1):]
    assistant_suffix = ends_assistant[ends_assistant.index(_A1) + len(_A1):]
    user_to_assistant = _between(with_gen, _U1, _A1)
    assistant_to_user = _between(with_gen, _A1, _U2)
    if not (user_to_assistant.startswith(user_suffix) and assistant_to_user.startswith(assistant_suffix)):
        raise UserError("the chat template does not wrap turns alike: write the Modelfile's TEMPLATE by hand",
                        field="format")
    assistant_prefix = user_to_assistant[len(user_suffix):]
    user_prefix = assistant_to_user[len(assistant_suffix):]
    generation = with_gen[with_gen.index(_U2) + len(_U2) + len(user_suffix):]
    head = ends_user[:ends_user.index(_U1)]
    system: tuple[str, str] | None = None
    system_to_user = _between(with_system, _S, _U1)
    if system_to_user.endswith(user_prefix) and with_system.index(_S) >= 0:
        system = (with_system[:with_system.index(_S)], system_to_user[:len(system_to_user) - len(user_prefix)])
    default = None
    if head != user_prefix and system and head.startswith(system[0]) and head.endswith(system[1] + user_prefix):
        default = head[len(system[0]):len(head) - len(system[1] + user_prefix)]
    return Layout(system, (user_prefix, user_suffix), (assistant_prefix, assistant_suffix), generation, default)


def render(lay: Layout, messages: list[dict[str, str]]) -> str:
    """What the Go template of `go_template(lay)` gives for `messages` (Ollama adds SYSTEM when none is given)."""
    if lay.default_system is not None and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": lay.default_system}, *messages]
    out = []
    for i, m in enumerate(messages):
        last = i == len(messages) - 1
        if m["role"] == "system" and lay.system:
            out.append(lay.system[0] + m["content"] + lay.system[1])
        elif m["role"] == "user":
            out.append(lay.user[0] + m["content"] + lay.user[1])
        elif m["role"] == "assistant":
            out.append(lay.assistant[0] + m["content"] + ("" if last else lay.assistant[1]))
        if last and m["role"] != "assistant":
            out.append(lay.generation)
    return "".join(out)


def go_template(lay: Layout) -> str:
    """The layout in Go's text/template as Ollama runs it: no whitespace trimming, the text is verbatim."""
    parts = ['{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}']
    if lay.system:
        parts.append('{{ if eq .Role "system" }}' + lay.system[0] + "{{ .Content }}" + lay.system[1] + "{{ else ")
    else:
        parts.append("{{ ")
    parts.append('if eq .Role "user" }}' + lay.user[0] + "{{ .Content }}" + lay.user[1])
    parts.append('{{ else if eq .Role "assistant" }}' + lay.assistant[0] + "{{ .Content }}"
                 + "{{ if not $last }}" + lay.assistant[1] + "{{ end }}{{ end }}")
    parts.append('{{ if and $last (ne .Role "assistant") }}' + lay.generation + "{{ end }}{{ end }}")
    return "".join(parts)


def stops(tokenizer: Any, lay: Layout) -> list[str]:
    """The tokens that end a reply; a layout without one stops where the next user turn would begin."""
    from engine.serve.generate import stop_ids

    found = [tokenizer.convert_ids_to_tokens(i) for i in stop_ids(tokenizer)]
    if len(found) == 1 and lay.user[0].strip():
        found.append(lay.user[0].strip())
    return list(dict.fromkeys(found))


def _quoted(text: str) -> str:
    if '"""' in text:
        raise UserError('the chat template holds """, which a Modelfile cannot quote: write it by hand', field="format")
    return f'"""{text}"""'


def modelfile(gguf_name: str, tokenizer: Any, *, template: bool = True) -> str:
    """The Modelfile text; `template=False` leaves TEMPLATE out (one that cannot be translated)."""
    lines = [f"# Ollama: ollama create NAME -f {FILENAME} (in this folder), then ollama run NAME",
             f"FROM ./{gguf_name}"]
    if template and getattr(tokenizer, "chat_template", None):
        lay = layout(tokenizer)
        if lay.system is None:
            lines.append("# the chat template folds a system prompt into the first user turn; not carried here")
        lines.append(f"TEMPLATE {_quoted(go_template(lay))}")
        if lay.default_system is not None:
            lines.append(f"SYSTEM {_quoted(lay.default_system)}")
        stop_list = stops(tokenizer, lay)
    else:
        from engine.serve.generate import stop_ids

        stop_list = [tokenizer.convert_ids_to_tokens(i) for i in stop_ids(tokenizer)]
    lines += [f"PARAMETER stop {_quote_param(s)}" for s in stop_list]
    return "\n".join(lines) + "\n"


def _quote_param(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
