"""Export end to end on runs the product trained (a tiny Llama and a tiny Qwen2, LoRA and full, on chat data):
merged folders that keep the template and stop tokens, GGUF f16 and q8_0 that transformers' GGUF loader and
llama.cpp itself (llama-cpp-python, where it is installed) read back with the same greedy tokens and the
same chat formatting, the Ollama Modelfile, the adapter alone, and no half-written output on failure."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.errors import UserError
from engine.serve import export as ex
from export_helpers import greedy_ids, trained_run

pytestmark = pytest.mark.slow

RUNS = [("llama", "lora"), ("llama", "full"), ("qwen2", "lora"), ("qwen2", "full")]
LORA_RUNS = [r for r in RUNS if r[1] == "lora"]  # the tests that need an adapter take these only (indirect)
CONVERSATION = [{"role": "system", "content": "You answer in one short sentence."},
                {"role": "user", "content": "What colour is the sky?"},
                {"role": "assistant", "content": "The sky is blue on a clear day."},
                {"role": "user", "content": "And at night?"}]


def llama_cpp_or_skip():
    try:
        import llama_cpp
    except ImportError as e:
        pytest.skip(f"llama-cpp-python is not importable here ({e}); `pip install llama-cpp-python` builds it "
                    "from source (about 22 minutes on a 2-core machine)")
    return llama_cpp


@pytest.fixture(scope="module", params=RUNS, ids=["-".join(r) for r in RUNS])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One trained run, exported to merged, GGUF f16 and GGUF q8_0; greedy prompt ids from its template."""
    from transformers import AutoTokenizer

    arch, technique = request.param
    root = tmp_path_factory.mktemp(f"{arch}-{technique}")
    # the Llama LoRA starts from a base tokenizer with no template and is given ChatML (tokens added)
    run = trained_run(root, arch, technique, template="chatml" if (arch, technique) == ("llama", "lora") else "auto",
                      lr=3e-3 if technique == "lora" else 5e-4)
    merged = ex.export(run, "merged")
    ggufs = {q: ex.export(run, "gguf", quant=q) for q in ("f16", "q8_0")}
    tok = AutoTokenizer.from_pretrained(merged.path)
    text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return SimpleNamespace(run=run, technique=technique, merged=merged, gguf=ggufs, tok=tok, text=text, ids=ids,
                           want=greedy_ids(Path(merged.path), ids))


def test_merged_keeps_the_template_and_the_stop_tokens(exported) -> None:
    from transformers import AutoModelForCausalLM

    folder = Path(exported.merged.path)
    assert exported.merged.source == "final" and exported.merged.dtype == "float32"  # the tiny bases are fp32
    assert not (folder / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(folder)  # a plain model: no peft needed
    assert model.get_input_embeddings().weight.shape[0] >= len(exported.tok)
    assert "<|im_start|>" in exported.tok.chat_template
    im_end = exported.tok.convert_tokens_to_ids("<|im_end|>")
    eos = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    assert im_end in eos and exported.tok.eos_token_id in eos  # a server stops where training ended replies
    card = (folder / "README.md").read_text()
    assert f"**{exported.technique}**" in card and "final train loss" in card and "```toml" in card
    assert "- format: messages" in card and (folder / "loss.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("exported", LORA_RUNS, indirect=True, ids=["-".join(r) for r in LORA_RUNS])
def test_a_lora_merge_equals_the_adapter_on_its_base(exported) -> None:
    import torch

    from engine.serve.generate import load_for_inference

    adapted, _, _ = load_for_inference(exported.run)
    with torch.no_grad():
        logits = adapted(torch.tensor([exported.ids])).logits[0, -1]
    assert int(logits.argmax()) == exported.want[0]
    adapter = ex.export(exported.run, "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(adapter.files)


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_transformers_reads_the_gguf_back(exported, quant: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = exported.gguf[quant]
    folder, name = Path(result.path), Path(result.gguf).name
    assert result.writer in ("llama.cpp", "gguf-py") and (folder / "Modelfile").is_file()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([exported.ids]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(exported.ids):].tolist()
    same = sum(a == b for a, b in zip(out, exported.want))
    print(f"transformers on {quant} GGUF: {same}/16 greedy tokens as the merged model")
    assert same == 16 if quant == "f16" else out[0] == exported.want[0]
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    assert tok.chat_template == exported.tok.chat_template
    assert tok(exported.text, add_special_tokens=False)["input_ids"] == exported.ids


def test_the_gguf_metadata_and_the_modelfile_hold_the_template_and_stops(exported) -> None:
    import gguf

    result = exported.gguf["f16"]
    reader = gguf.GGUFReader(result.gguf)
    fields = {name: reader.fields[name] for name in ("tokenizer.chat_template", "tokenizer.ggml.eot_token_id")}
    template = bytes(fields["tokenizer.chat_template"].parts[-1]).decode()
    assert template == exported.tok.chat_template
    assert int(fields["tokenizer.ggml.eot_token_id"].parts[-1][0]) == exported.tok.convert_tokens_to_ids("<|im_end|>")
    text = Path(result.modelfile).read_text()
    assert f"FROM ./{Path(result.gguf).name}" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert "<|im_start|>assistant\n{{ .Content }}" in text


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_llama_cpp_generates_as_transformers(exported, quant: str) -> None:
    llama_cpp = llama_cpp_or_skip()
    llm = llama_cpp.Llama(exported.gguf[quant].gguf, n_ctx=256, n_threads=1, seed=0, verbose=False)
    try:
        assert llm.tokenize(exported.text.encode(), add_bos=False, special=True) == exported.ids
        out = []
        for token in llm.generate(exported.ids, top_k=1, temp=0.0, reset=True):
            out.append(token)
            if len(out) == 16:
                break
    finally:
        llm.close()
    same = sum(a == b for a, b in zip(out, exported.want))
    print(f"llama.cpp on {quant} GGUF: {same}/16 greedy tokens as transformers on the merged folder "
          f"({len(set(exported.want))} distinct)")
    assert same == 16 if quant == "f16" else out[0] == exported.want[0]


def test_llama_cpp_formats_a_conversation_as_apply_chat_template(exported) -> None:
    llama_cpp = llama_cpp_or_skip()
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = llama_cpp.Llama(exported.gguf["f16"].gguf, n_ctx=256, n_threads=1, verbose=False)
    try:
        template = llm.metadata["tokenizer.chat_template"]  # from the GGUF, as llama-cpp-python's server reads it
        eos = llm._model.token_get_text(llm.token_eos())
        formatted = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token="")(messages=CONVERSATION)
        ids = llm.tokenize(formatted.prompt.encode(), add_bos=False, special=True)
    finally:
        llm.close()
    assert ids == exported.ids


def test_a_failed_gguf_export_leaves_no_folder(exported, monkeypatch) -> None:
    from engine.serve import gguf

    def fail(*args, **kwargs):
        raise UserError("the writer failed half-way")

    monkeypatch.setattr(gguf, "convert", fail)
    target = Path(exported.run) / "export" / "broken"
    with pytest.raises(UserError, match="half-way"):
        ex.export(exported.run, "gguf", quant="f16", out=target)
    assert not target.exists() and not [p for p in target.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("exported", LORA_RUNS, indirect=True, ids=["-".join(r) for r in LORA_RUNS])
def test_q4_k_m_through_llama_cpps_quantizer(exported) -> None:  # one quantizer check per architecture
    from engine.serve import gguf, llama_cpp

    if gguf.available()["q4_k_m"]:
        pytest.skip(f"q4_k_m is not offered here: {gguf.available()['q4_k_m']}")
    result = ex.export(exported.run, "gguf", quant="q4_k_m")
    assert llama_cpp.locate().quantizer and Path(result.gguf).stat().st_size > 0
    llm = llama_cpp_or_skip().Llama(result.gguf, n_ctx=256, n_threads=1, verbose=False)
    try:
        out = [t for _, t in zip(range(16), llm.generate(exported.ids, top_k=1, temp=0.0, reset=True))]
    finally:
        llm.close()
    print(f"llama.cpp on q4_k_m GGUF: {sum(a == b for a, b in zip(out, exported.want))}/16 greedy tokens as transformers")
    assert len(out) == 16


def test_llama_cpps_converter_is_tried_first_where_its_sources_are(exported, tmp_path: Path) -> None:
    from engine.serve import llama_cpp

    tools = llama_cpp.locate()
    if not tools.converter:
        pytest.skip(f"no llama.cpp sources here (set {llama_cpp.ENV}: {llama_cpp.FETCH_HINT})")
    result = ex.export(exported.run, "gguf", quant="f16", out=tmp_path / "converted")
    # the converter knows tokenizers by a hash of their output: these freshly trained ones it refuses, and
    # the gguf package's writer takes over, saying so
    assert result.writer == "llama.cpp" or any("llama.cpp's converter failed" in n for n in result.notes), result


def test_a_qlora_merge_is_the_dequantized_base_with_the_adapter(tmp_path: Path) -> None:
    import torch

    from engine.serve.generate import load_for_inference
    from engine.techniques import qlora

    problem = qlora.check_support()
    if problem:
        pytest.skip(problem)
    run = trained_run(tmp_path, "llama", "qlora")  # 64 wide: bitsandbytes packs 64-value blocks on the CPU
    merged = ex.export(run, "merged")
    assert merged.dtype == "bfloat16"  # the fp32 tiny base: its 4-bit weights dequantized to 16 bits
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged.path)
    ids = torch.tensor([tok(tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True),
                            add_special_tokens=False)["input_ids"]])
    trained, _, _ = load_for_inference(run)  # the adapter on the 4-bit base, as training saw it
    model = AutoModelForCausalLM.from_pretrained(merged.path, dtype=torch.float32).eval()
    with torch.no_grad():
        want, got = trained(ids).logits[0].float(), model(ids).logits[0]
    assert (want.argmax(-1) == got.argmax(-1)).float().mean() > 0.9
    assert torch.allclose(want.softmax(-1), got.softmax(-1), atol=0.05)
