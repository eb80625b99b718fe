"""GGUF for llama.cpp and Ollama: llama.cpp's own converter where its sources are on the machine, else (or
when it refuses the model, e.g. a tokenizer it does not know by hash) the `gguf` package's writer for the
architectures the product trains: llama, qwen2 and gpt2.

Both write the chat template (tokenizer.chat_template) and the end-of-turn token (tokenizer.ggml.eot_token_id)
into the metadata, so llama.cpp and Ollama format turns and stop as training did. f16, bf16 and q8_0 are
written directly; q4_k_m is a 16-bit GGUF quantized by llama.cpp's quantizer, offered only where it is.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.serve import llama_cpp

QUANTS = ("f16", "bf16", "q8_0", "q4_k_m")
DIRECT = ("f16", "bf16", "q8_0")  # written by the converter or the writer; the rest need the quantizer
WRITER_ARCHS = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "GPT2LMHeadModel": "gpt2"}
# pre-tokenizer regexes the writer recognises in tokenizer.json, by llama.cpp's name for them
PRE_TOKENIZERS = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def check_quant(quant: str) -> str:
    """The quantization, if it can be written here; else a UserError saying why and what can."""
    if quant not in QUANTS:
        raise UserError(f"--quant: one of {', '.join(QUANTS)}, got {quant!r}", field="quant")
    if quant not in DIRECT and not llama_cpp.locate().quantizer:
        raise UserError(f"--quant {quant} needs llama.cpp's quantizer, which this machine lacks (pip install "
                        f"llama-cpp-python builds it); {', '.join(DIRECT)} can be written here", field="quant")
    return quant


def available() -> dict[str, str | None]:
    """Each quantization and why it cannot be written here (None: it can), for the wizard and --help."""
    tools = llama_cpp.locate()
    return {q: None if q in DIRECT or tools.quantizer else "needs llama.cpp's quantizer (pip install llama-cpp-python)"
            for q in QUANTS}


def export_gguf(model: Any, tokenizer: Any, folder: Path, quant: str, name: str, progress: Any) -> dict[str, Any]:
    """model-<quant>.gguf and a Modelfile in `folder`; returns the Exported fields it fills."""
    from engine.serve import modelfile
    from engine.serve.merge import save_merged

    work = folder / ".work"
    merged = work / "merged"
    progress("saving the merged model for conversion")
    save_merged(model, tokenizer, merged)
    out = folder / f"model-{quant}.gguf"
    first = out if quant in DIRECT else work / "model-f16.gguf"
    writer, notes = convert(merged, first, quant if quant in DIRECT else "f16", name, progress)
    if quant not in DIRECT:
        progress(f"quantizing to {quant} with llama.cpp")
        llama_cpp.quantize(llama_cpp.locate(), first, out, quant)
    shutil.rmtree(work)
    progress("writing the Ollama Modelfile")
    try:
        text = modelfile.modelfile(out.name, tokenizer)
    except UserError as e:  # the GGUF is good without it: Ollama then reads the template from its metadata
        notes.append(f"Modelfile written without TEMPLATE: {e}")
        text = modelfile.modelfile(out.name, tokenizer, template=False)
    (folder / modelfile.FILENAME).write_text(text, encoding="utf-8")
    return {"gguf": str(out), "modelfile": str(folder / modelfile.FILENAME), "writer": writer, "notes": notes}


def convert(merged: Path, out: Path, outtype: str, name: str, progress: Any) -> tuple[str, list[str]]:
    """(which wrote it, notes): llama.cpp's converter first, the gguf package's writer where it is absent or refuses."""
    tools = llama_cpp.locate()
    notes: list[str] = []
    arch = json.loads((merged / "config.json").read_text()).get("architectures", ["?"])[0]
    if tools.converter:
        progress(f"converting with llama.cpp's {llama_cpp.CONVERTER} ({tools.converter_from})")
        try:
            llama_cpp.convert(tools, merged, out, outtype)
            return "llama.cpp", notes
        except llama_cpp.ConverterFailed as e:
            out.unlink(missing_ok=True)
            if arch not in WRITER_ARCHS:
                raise UserError(f"llama.cpp's converter failed on this {arch}: {e}", field="format") from None
            notes.append(f"llama.cpp's converter failed ({e}); written by the gguf package's writer instead")
    elif arch not in WRITER_ARCHS:
        raise UserError(f"GGUF for {arch} needs llama.cpp's converter, which this machine lacks: "
                        f"{llama_cpp.FETCH_HINT}", field="format")
    if importlib.util.find_spec("gguf") is None:
        raise UserError("GGUF export needs the gguf package (pip install gguf), or llama.cpp's converter: "
                        f"{llama_cpp.FETCH_HINT}", field="format")
    progress(f"writing {out.name} with the gguf package")
    write(merged, out, outtype, name, progress)
    return "gguf-py", notes


def pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for this byte-level BPE's pre-tokenizer, or a UserError (it would split text differently)."""
    model = tokenizer_json.get("model") or {}
    pre = tokenizer_json.get("pre_tokenizer") or {}
    normalizer = (tokenizer_json.get("normalizer") or {}).get("type")
    if model.get("type") != "BPE" or normalizer not in (None, "NFC"):  # Qwen2's NFC: llama.cpp's qwen2 too
        raise UserError("the gguf package's writer handles byte-level BPE tokenizers only; this one needs llama.cpp's "
                        f"converter: {llama_cpp.FETCH_HINT}", field="format")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "gpt-2"
    steps = pre.get("pretokenizers") or []
    if pre.get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Split":
        regex = (steps[0].get("pattern") or {}).get("Regex")
        for name, known in PRE_TOKENIZERS.items():
            if regex == known:
                return name
    raise UserError("the tokenizer's pre-tokenizer is not one the gguf package's writer knows (GPT-2, Qwen2, "
                    f"Llama 3): llama.cpp's converter is needed: {llama_cpp.FETCH_HINT}", field="format")


def _hparams(w: Any, arch: str, c: dict[str, Any]) -> tuple[int, int, int]:
    """Write the architecture's numbers; (layers, heads, kv heads)."""
    if arch == "gpt2":
        w.add_context_length(c["n_positions"])
        w.add_embedding_length(c["n_embd"])
        w.add_feed_forward_length(c.get("n_inner") or 4 * c["n_embd"])
        w.add_block_count(c["n_layer"])
        w.add_head_count(c["n_head"])
        w.add_layer_norm_eps(c["layer_norm_epsilon"])
        return c["n_layer"], c["n_head"], c["n_head"]
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"rope scaling {rope.get('rope_type')!r} needs llama.cpp's converter: {llama_cpp.FETCH_HINT}",
                        field="format")
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_freq_base(float(rope.get("rope_theta") or c.get("rope_theta") or 10000.0))
    w.add_rope_dimension_count(head_dim)
    if head_dim != c["hidden_size"] // heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    return c["num_hidden_layers"], heads, kv


def _vocab(w: Any, merged: Path, n_vocab: int) -> None:
    """Tokens, their types, merges, special ids, the chat template and the end-of-turn id."""
    import gguf
    from transformers import AutoTokenizer

    from engine.serve.generate import stop_ids

    tok = AutoTokenizer.from_pretrained(merged)
    pre = pre_tokenizer(json.loads((merged / "tokenizer.json").read_text(encoding="utf-8")))
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(reverse[i])
        types.append(gguf.TokenType.NORMAL if i not in added else
                     gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(merged, load_merges=True, n_vocab=n_vocab)
    special.add_to_gguf(w, quiet=True)
    if "bos" not in special.add_special_token:  # llama.cpp would otherwise guess from the tokenizer type
        probe = tok("a")["input_ids"]
        w.add_add_bos_token(bool(tok.bos_token_id is not None and probe and probe[0] == tok.bos_token_id))
    if special.chat_template is None and tok.chat_template:
        w.add_chat_template(tok.chat_template)
    stops = stop_ids(tok)
    if len(stops) > 1:  # the end-of-turn token a chat layout added: llama.cpp ends a reply there
        w.add_eot_token_id(stops[1])


def _permute(t: Any, heads: int) -> Any:
    """transformers' rotate-half q/k rows back to llama.cpp's interleaved RoPE layout (as its converter does)."""
    return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)


def write(merged: Path, out: Path, outtype: str, name: str, progress: Any) -> None:
    """A GGUF of a saved llama/qwen2/gpt2 folder, written by the gguf package."""
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    config = json.loads((merged / "config.json").read_text())
    arch = WRITER_ARCHS[config["architectures"][0]]
    kind = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "gpt2": gguf.MODEL_ARCH.GPT2}[arch]
    w = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[kind])
    w.add_name(name)
    layers, heads, kv = _hparams(w, arch, config)
    w.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
    if outtype == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    names = gguf.get_tensor_name_map(kind, layers)
    tensors: dict[str, Any] = {}
    for file in sorted(merged.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    n_vocab = next(t.shape[0] for k, t in tensors.items() if k.endswith(("embed_tokens.weight", "wte.weight")))
    w.add_vocab_size(n_vocab)
    _vocab(w, merged, n_vocab)
    written: set[str] = set()
    for key, t in tensors.items():
        if key.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue  # buffers, not weights
        target = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise UserError(f"the gguf package's writer does not know {arch}'s tensor {key}: llama.cpp's converter "
                            f"is needed: {llama_cpp.FETCH_HINT}", field="format")
        t = t.to(torch.float32)
        if arch == "llama" and key.endswith("q_proj.weight"):
            t = _permute(t, heads)
        elif arch == "llama" and key.endswith("k_proj.weight"):
            t = _permute(t, kv)
        elif arch == "gpt2" and key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            t = t.T.contiguous()  # GPT-2's Conv1D stores (in, out)
        _add(w, target, t.numpy(), outtype, gguf, np)
        written.add(target)
    if "output.weight" not in written and arch == "gpt2":  # GPT-2 ties its head to the embedding: llama.cpp wants both
        _add(w, "output.weight", tensors["transformer.wte.weight" if "transformer.wte.weight" in tensors
                                         else "wte.weight"].to(torch.float32).numpy(), outtype, gguf, np)
    progress(f"writing {len(written)} tensors")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _add(w: Any, name: str, data: Any, outtype: str, gguf: Any, np: Any) -> None:
    """Norms and biases stay f32 (as llama.cpp's converter keeps them); matrices in the chosen type."""
    if data.ndim < 2:
        w.add_tensor(name, data.astype(np.float32))
    elif outtype == "f16":
        w.add_tensor(name, data.astype(np.float16))
    else:
        qtype = gguf.GGMLQuantizationType.BF16 if outtype == "bf16" else gguf.GGMLQuantizationType.Q8_0
        if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
            w.add_tensor(name, data.astype(np.float16))  # rows not a whole number of 32-value blocks
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
