"""Shared by the cloud tests: the published Llama 2 configs served by a local Hub, and a throw-away gcloud."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ROOT / "presets"

# config.json of meta-llama/Llama-2-{7b,13b}-hf as published (the fields the estimator reads).
LLAMA2 = {
    "meta-llama/Llama-2-7b-hf": {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
                                 "num_hidden_layers": 32, "num_key_value_heads": 32},
    "meta-llama/Llama-2-13b-hf": {"hidden_size": 5120, "intermediate_size": 13824, "num_attention_heads": 40,
                                  "num_hidden_layers": 40, "num_key_value_heads": 40},
}
COMMON = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000,
          "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": False,
          "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"}


def serve_llama2(hub: Any) -> None:
    for repo, shape in LLAMA2.items():
        hub.add_files(repo, {"config.json": json.dumps({**COMMON, **shape}).encode()})


def gcloud_env(tmp: Path) -> dict[str, str]:
    """A gcloud with no account and no network: its own empty configuration and home (no ~/.ssh touched)."""
    env = dict(os.environ)
    (tmp / "gcloud").mkdir(exist_ok=True)
    env.update(CLOUDSDK_CONFIG=str(tmp / "gcloud"), HOME=str(tmp), CLOUDSDK_CORE_CHECK_GCE_METADATA="false",
               CLOUDSDK_CORE_DISABLE_PROMPTS="1", CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="true")
    for key in list(env):
        if key.startswith(("GOOGLE_", "CLOUDSDK_AUTH", "CLOUDSDK_CORE_ACCOUNT", "CLOUDSDK_CORE_PROJECT")):
            env.pop(key)
    return env
