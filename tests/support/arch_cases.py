"""The estimate-accuracy cases of architectures from other families than the per-layer formulas were written for.

Shared by tests/unit/test_estimate_accuracy.py and bench/estimate_accuracy.py through memory_measure.CASES.
"""

from __future__ import annotations

from typing import Any

# Architectures of other families than the per-layer formulas were written for, measured under FakeTensorMode
# (nothing is allocated, so Gemma-2's 256K vocabulary costs nothing): a parallel block (GPT-NeoX), ALiBi with
# eager attention (BLOOM, and Falcon-RW's), soft-capped eager attention with sliding and global layers
# (Gemma-2), a sliding window under SDPA (Mistral), an MoE with a shared expert (Qwen2-MoE), OPT, Phi, Phi-3's
# fused qkv_proj, StableLM. Each config is the model's own numbers, shrunk.
_SMALL = dict(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4)
ARCHS: dict[str, dict[str, Any]] = {
    "gpt_neox": dict(model_type="gpt_neox", intermediate_size=512, use_parallel_residual=True, rotary_pct=0.25,
                     **_SMALL),
    "bloom": dict(model_type="bloom", vocab_size=512, hidden_size=128, n_layer=2, n_head=4),
    "gemma2": dict(model_type="gemma2", **{**_SMALL, "vocab_size": 256000}, intermediate_size=512,
                   num_key_value_heads=2, head_dim=32, sliding_window=64, final_logit_softcapping=30.0,
                   attn_logit_softcapping=50.0, query_pre_attn_scalar=32),
    "mistral": dict(model_type="mistral", intermediate_size=384, num_key_value_heads=2, sliding_window=64, **_SMALL),
    "qwen2_moe": dict(model_type="qwen2_moe", intermediate_size=384, moe_intermediate_size=64,
                      shared_expert_intermediate_size=256, num_experts=8, num_experts_per_tok=2,
                      num_key_value_heads=2, **_SMALL),
    "opt": dict(model_type="opt", ffn_dim=512, word_embed_proj_dim=128, **_SMALL),
    "phi": dict(model_type="phi", intermediate_size=512, partial_rotary_factor=0.5, hidden_act="gelu_new", **_SMALL),
    "phi3": dict(model_type="phi3", intermediate_size=384, pad_token_id=0, bos_token_id=1, eos_token_id=2, **_SMALL),
    "falcon_rw": dict(model_type="falcon", alibi=True, multi_query=False, parallel_attn=False, bias=True,
                      new_decoder_architecture=False, **_SMALL),
    "falcon": dict(model_type="falcon", multi_query=True, parallel_attn=True, **_SMALL),
    # twelve wider layers: autocast's copies of the layers' weights weigh on the peak (Falcon-RW-1B's shape)
    "falcon_rw_deep": dict(model_type="falcon", alibi=True, multi_query=False, parallel_attn=False, bias=True,
                           new_decoder_architecture=False, vocab_size=512, hidden_size=512, num_hidden_layers=12,
                           num_attention_heads=8),
    "stablelm": dict(model_type="stablelm", intermediate_size=384, num_key_value_heads=2, use_qkv_bias=True,
                     **_SMALL),
}


def _arch(key: str, technique: str, precision: str, batch: int, seq: int, **kw: Any) -> dict[str, Any]:
    return dict(model="{arch:" + key + "}", technique=technique, precision=precision, batch_size=batch,
                seq_len=seq, **kw)


ARCH_CASES: dict[str, dict[str, Any]] = {
    "neox full fp32 adamw b2 s256": _arch("gpt_neox", "full", "fp32", 2, 256),
    "neox lora bf16 adamw ckpt b4 s128": _arch("gpt_neox", "lora", "bf16", 4, 128, grad_checkpointing=True),
    "neox full bf16-pure sgd b1 s512": _arch("gpt_neox", "full", "bf16-pure", 1, 512, optimizer="sgd"),
    "bloom full fp32 adamw b2 s256": _arch("bloom", "full", "fp32", 2, 256),
    "bloom lora bf16-pure adamw b2 s512": _arch("bloom", "lora", "bf16-pure", 2, 512),
    "bloom full bf16 sgd ckpt b4 s128": _arch("bloom", "full", "bf16", 4, 128, optimizer="sgd",
                                              grad_checkpointing=True),
    "gemma2 full bf16-pure adamw b1 s512": _arch("gemma2", "full", "bf16-pure", 1, 512),
    "gemma2 lora bf16 adamw b2 s256": _arch("gemma2", "lora", "bf16", 2, 256),
    "gemma2 full fp32 sgd ckpt b1 s256": _arch("gemma2", "full", "fp32", 1, 256, optimizer="sgd",
                                               grad_checkpointing=True),
    "mistral full fp32 adamw b2 s256": _arch("mistral", "full", "fp32", 2, 256),
    "mistral lora bf16-pure ckpt b4 s256": _arch("mistral", "lora", "bf16-pure", 4, 256, grad_checkpointing=True),
    "qwen2_moe full fp32 adamw b2 s128": _arch("qwen2_moe", "full", "fp32", 2, 128),
    "qwen2_moe lora bf16-pure b2 s256": _arch("qwen2_moe", "lora", "bf16-pure", 2, 256,
                                              lora_targets=("q_proj", "v_proj")),
    "qwen2_moe full bf16 sgd ckpt b2 s256": _arch("qwen2_moe", "full", "bf16", 2, 256, optimizer="sgd",
                                                  grad_checkpointing=True),
    "opt full fp32 adamw b2 s256": _arch("opt", "full", "fp32", 2, 256),
    "opt lora bf16 adamw b4 s256": _arch("opt", "lora", "bf16", 4, 256),
    "phi full bf16-pure adamw b2 s256": _arch("phi", "full", "bf16-pure", 2, 256),
    "phi lora fp32 adamw b2 s256": _arch("phi", "lora", "fp32", 2, 256),
    "phi3 lora qkv_proj bf16-pure b2 s256": _arch("phi3", "lora", "bf16-pure", 2, 256, lora_targets=("qkv_proj",)),
    "falcon-rw full fp32 sgd b2 s256": _arch("falcon_rw", "full", "fp32", 2, 256, optimizer="sgd"),
    "falcon lora bf16-pure ckpt b2 s256": _arch("falcon", "lora", "bf16-pure", 2, 256, grad_checkpointing=True),
    "falcon-rw deep full bf16 adamw ckpt b2 s256": _arch("falcon_rw_deep", "full", "bf16", 2, 256,
                                                         grad_checkpointing=True),
    "stablelm full bf16 adamw b2 s256": _arch("stablelm", "full", "bf16", 2, 256),
    "stablelm lora fp32 adamw b4 s128": _arch("stablelm", "lora", "fp32", 4, 128),
}
# the arch cases the tests run: one of each family the estimator had no formula for, and a fused qkv LoRA
ARCH_TESTED = frozenset({"neox full fp32 adamw b2 s256", "bloom lora bf16-pure adamw b2 s512",
                         "gemma2 full bf16-pure adamw b1 s512", "mistral lora bf16-pure ckpt b4 s256",
                         "qwen2_moe lora bf16-pure b2 s256", "falcon lora bf16-pure ckpt b2 s256",
                         "falcon-rw deep full bf16 adamw ckpt b2 s256"})


def fake_case(name: str) -> bool:
    """The arch cases are measured under FakeTensorMode (realistic vocabularies, no allocation)."""
    return name in ARCH_CASES


