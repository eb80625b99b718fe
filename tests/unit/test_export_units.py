"""Export's pure parts: the Ollama template translated from each chat template (held against
apply_chat_template), the loss-curve PNG, no half-written export folder, the quantizations offered, the
pre-tokenizers the GGUF writer knows, llama.cpp's tools found, and generate's prompt sources."""

from __future__ import annotations

import argparse
import io
import struct
import zlib
from pathlib import Path

import pytest

from chat_helpers import CONVERSATIONS, QWEN_TEMPLATE, train_bpe
from engine.errors import UserError
from engine.serve import card, export, gguf, llama_cpp, merge, modelfile


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return train_bpe(tmp_path_factory.mktemp("tok"))


def _strip_bos(tokenizer, text: str) -> str:
    bos = tokenizer.bos_token
    return text[len(bos):] if bos and text.startswith(bos) else text


@pytest.mark.parametrize("name", ["model", "chatml", "llama-3", "alpaca", "vicuna", "zephyr", "gemma", "mistral"])
def test_the_ollama_template_renders_as_the_chat_template(tokenizer, name: str) -> None:
    from engine.data.chat_templates import NAMED, apply, resolve

    tokenizer.chat_template = QWEN_TEMPLATE if name == "model" else NAMED[name]
    if name != "model":
        apply(resolve(name, tokenizer), tokenizer)
    lay = modelfile.layout(tokenizer)
    for conv in CONVERSATIONS:
        asked = conv[:-1]  # ends with the user's turn: the reply is next
        if lay.system is None:  # a template that folds the system prompt into a user turn: shown without one
            asked = [m for m in asked if m["role"] != "system"]
        want = tokenizer.apply_chat_template(asked, tokenize=False, add_generation_prompt=True)
        assert modelfile.render(lay, asked) == _strip_bos(tokenizer, want), (name, asked)
    assert "{{ .Content }}" in modelfile.go_template(lay)


def test_the_modelfile_names_the_gguf_template_default_system_and_stops(tokenizer) -> None:
    tokenizer.chat_template = QWEN_TEMPLATE
    text = modelfile.modelfile("model-f16.gguf", tokenizer)
    assert "FROM ./model-f16.gguf" in text
    assert 'TEMPLATE """{{ range $i, $_ := .Messages }}' in text and "<|im_start|>assistant\n" in text
    assert 'SYSTEM """You are a helpful assistant."""' in text  # the template's own default, kept
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|endoftext|>"' in text
    assert "{{-" not in text  # Go's trim markers would eat the template's own newlines


def test_the_loss_curve_is_a_png_with_the_lines_drawn() -> None:
    data = card.png([([(0, 5.0), (10, 3.0), (20, 2.5)], (31, 119, 180)), ([(20, 2.8)], (214, 39, 40))],
                    width=80, height=40)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    width, height = struct.unpack(">II", data[16:24])
    assert (kind, width, height) == (b"IHDR", 80, 40)
    idat = data.index(b"IDAT")
    raw = zlib.decompress(data[idat + 4:idat + 4 + struct.unpack(">I", data[idat - 4:idat])[0]])
    assert len(raw) == height * (1 + 3 * width)
    assert bytes((31, 119, 180)) in raw and bytes((214, 39, 40)) in raw  # both series drawn


def test_a_failed_export_leaves_nothing_and_an_existing_one_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "export" / "merged"
    with pytest.raises(RuntimeError):
        with export.staged(target, force=False) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("killed half-way")
    assert not target.exists() and list(target.parent.iterdir()) == []
    with export.staged(target, force=False) as tmp:
        (tmp / "README.md").write_text("one")
    with pytest.raises(UserError, match="already exists"):
        with export.staged(target, force=False):
            pass
    with pytest.raises(RuntimeError):
        with export.staged(target, force=True) as tmp:
            raise RuntimeError("failed")
    assert (target / "README.md").read_text() == "one"  # a failed --force keeps the old export
    with export.staged(target, force=True) as tmp:
        (tmp / "README.md").write_text("two")
    assert (target / "README.md").read_text() == "two" and sorted(p.name for p in target.parent.iterdir()) == ["merged"]


def test_quantizations_that_need_llama_cpp_are_refused_with_the_reason(monkeypatch) -> None:
    monkeypatch.setattr(llama_cpp, "locate", lambda: llama_cpp.Tools(None, None, None, None))
    assert gguf.check_quant("q8_0") == "q8_0"
    with pytest.raises(UserError, match="q4_k_m needs llama.cpp's quantizer.*f16, bf16, q8_0 can be written"):
        gguf.check_quant("q4_k_m")
    with pytest.raises(UserError, match="one of f16, bf16, q8_0, q4_k_m"):
        gguf.check_quant("q3")
    assert gguf.available()["q4_k_m"] and gguf.available()["f16"] is None
    monkeypatch.setattr(llama_cpp, "locate", lambda: llama_cpp.Tools(None, None, "llama-cpp-python 0.3", "0.3"))
    assert gguf.check_quant("q4_k_m") == "q4_k_m"


def test_the_writer_knows_byte_level_pre_tokenizers_and_refuses_others() -> None:
    byte_level = {"model": {"type": "BPE"}, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False}}
    assert gguf.pre_tokenizer(byte_level) == "gpt-2"
    qwen = {"model": {"type": "BPE"}, "normalizer": {"type": "NFC"}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": gguf.PRE_TOKENIZERS["qwen2"]}}, {"type": "ByteLevel", "use_regex": False}]}}
    assert gguf.pre_tokenizer(qwen) == "qwen2"
    with pytest.raises(UserError, match="needs llama.cpp's converter|llama.cpp's converter is needed"):
        gguf.pre_tokenizer({"model": {"type": "Unigram"}, "pre_tokenizer": {"type": "Metaspace"}})
    with pytest.raises(UserError, match="llama.cpp's converter is needed"):
        gguf.pre_tokenizer({"model": {"type": "BPE"}, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True}})


def test_llama_cpp_sources_are_found_where_the_variable_points(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLM_WIZARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv(llama_cpp.ENV, raising=False)
    assert llama_cpp.locate().converter is None
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / llama_cpp.CONVERTER).write_text("# llama.cpp's converter\n")
    monkeypatch.setenv(llama_cpp.ENV, str(tmp_path / "src"))
    found = llama_cpp.locate()
    assert found.converter == str(tmp_path / "src" / llama_cpp.CONVERTER) and found.converter_from == f"${llama_cpp.ENV}"
    assert "converter" in found.describe()


def test_prompt_tuning_has_nothing_to_merge(tmp_path: Path) -> None:
    source = merge.Source(tmp_path, "final", "prompt_tuning", adapter=True)
    with pytest.raises(UserError, match="virtual tokens.*--format adapter"):
        merge.merged_model(tmp_path, source, None, lambda _: None)


def test_push_checks_the_repo_name_and_refuses_offline(tmp_path: Path, monkeypatch) -> None:
    from engine.serve import push

    for bad in ("noslash", "a/b/c", "../x", "org/na me", "/name"):
        with pytest.raises(UserError, match="ORG/NAME"):
            push.check_repo_id(bad)
    assert push.check_repo_id("my-org/tiny.model_1") == "my-org/tiny.model_1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        push.push(tmp_path, "org/name")


def test_generate_reads_its_prompt_from_an_argument_a_file_or_stdin(tmp_path: Path, monkeypatch) -> None:
    from tui.commands.generate import read_prompt

    def args(prompt=None, file=None) -> argparse.Namespace:
        return argparse.Namespace(prompt=prompt, file=file)

    assert read_prompt(args("hello")) == "hello"
    (tmp_path / "p.txt").write_text("from a file\ntwo lines", encoding="utf-8")
    assert read_prompt(args(file=str(tmp_path / "p.txt"))) == "from a file\ntwo lines"
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin"))
    assert read_prompt(args("-")) == "from stdin"
    with pytest.raises(UserError, match="not both"):
        read_prompt(args("x", str(tmp_path / "p.txt")))
    with pytest.raises(UserError, match="no prompt"):
        read_prompt(args())
    with pytest.raises(UserError, match="--prompt-file .*missing"):
        read_prompt(args(file=str(tmp_path / "missing")))
    monkeypatch.setattr("sys.stdin", io.BytesIO(b"piped"))
    assert read_prompt(args(file="-")) == "piped"
    (tmp_path / "big.txt").write_bytes(b"x" * ((1 << 20) + 1))
    with pytest.raises(UserError, match="over 1 MiB"):
        read_prompt(args(file=str(tmp_path / "big.txt")))
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(UserError, match="not UTF-8 text"):
        read_prompt(args(file=str(tmp_path / "latin1.txt")))
    monkeypatch.setattr("sys.stdin", None)
    with pytest.raises(UserError, match="standard input is closed"):
        read_prompt(args("-"))


def test_a_template_that_cannot_be_translated_is_said_and_left_out(tokenizer) -> None:
    tokenizer.chat_template = ("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system') }}"
                               "{% endif %}{{ m.content }}{% endfor %}")
    with pytest.raises(UserError, match="cannot be translated for Ollama"):
        modelfile.modelfile("model-f16.gguf", tokenizer)
    text = modelfile.modelfile("model-f16.gguf", tokenizer, template=False)
    assert "TEMPLATE" not in text and "FROM ./model-f16.gguf" in text and "PARAMETER stop" in text
