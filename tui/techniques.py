"""The techniques of the book's chapter 5 as the wizard presents them (what each needs, when to choose it) and
the recommendation from the hardware and the data. Headless: the Textual step and --plain share it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.machine.probe import HardwareReport

GIB = 1024**3


@dataclass(frozen=True)
class TechniqueInfo:
    key: str
    title: str
    book: str
    memory: str  # memory need, as the book's multiplier of the parameter count
    data: str
    when: str
    caveat: str = ""  # what the book warns about it (preference tuning: 5.3.3)


TECHNIQUES: tuple[TechniqueInfo, ...] = (
    TechniqueInfo("scratch", "From scratch", "5.2.1, listing 5.1",
                  "more than 4x the parameter count in bytes (weights, gradients, Adam states), plus "
                  "activations for batch and context: a 1B model wants 5-6 GB at least",
                  "a lot: about 20 tokens per parameter (Chinchilla: 20B tokens for 1B parameters)",
                  "a new language or domain no model covers, or a small model to learn how training "
                  "works (the demo trains one on Python's own source)"),
    TechniqueInfo("full", "Full fine-tune", "5.2.2, listing 5.2",
                  "every weight trains: weights + gradients + optimizer states, about 4x the parameters "
                  "in fp32 (16 bytes a parameter with AdamW), less with 8-bit Adam",
                  "more than about 1e-5 x parameters tokens (10K tokens for 1B) or it does little",
                  "you have the memory and plenty of task data, and want the most change in the model"),
    TechniqueInfo("lora", "LoRA", "5.3.5, listing 5.6",
                  "the frozen base once (2 bytes a parameter in 16-bit) plus small adapters: 1-2x",
                  "a few thousand examples are enough to shift style or task",
                  "most fine-tunes: a fraction of full fine-tuning's memory; the adapter is megabytes"),
    TechniqueInfo("qlora", "QLoRA", "5.3.5",
                  "the base in 4-bit NF4 (about half a byte a parameter) plus adapters: about 1x",
                  "as LoRA",
                  "the model does not fit for LoRA in 16-bit; needs bitsandbytes with CUDA"),
    TechniqueInfo("prompt-tuning", "Prompt tuning", "5.3.1, listing 5.3",
                  "about inference memory: only N virtual-token embeddings train",
                  "small labelled sets (text : ... Label : ...)",
                  "many tasks on one frozen model, each stored as a few kilobytes"),
    TechniqueInfo("distill", "Distillation", "5.3.2, listing 5.4",
                  "teacher and student together (the teacher without gradients)",
                  "unlabelled text: the teacher's soft labels are the signal",
                  "a smaller, faster model that imitates a large one; tokenizers must agree"),
    TechniqueInfo("moe", "MoE fine-tune", "5.3.4, listing 5.5",
                  "every expert is in memory although few run per token",
                  "as a full fine-tune; the router's load-balancing loss is logged",
                  "you start from a mixture-of-experts model (Switch, Mixtral, Qwen-MoE)"),
    TechniqueInfo("dpo", "Preference tuning (DPO)", "5.3.3, figure 5.6",
                  "two sequences a pair (chosen and rejected) and a reference model: under LoRA the base with the "
                  "adapter switched off (LoRA's 1-2x), for every weight a full fine-tune's 4x plus a frozen copy or "
                  "reference log-probs computed once",
                  "pairs: a prompt with a chosen and a rejected answer (TRL or LLaMA-Factory layouts)",
                  "a model that already follows instructions should prefer some answers over others (style, "
                  "safety, helpfulness); RLHF's reward model and PPO replaced by one loss",
                  "the book advises against RLHF: costly, and the gain is often smaller than that of better "
                  "supervised data; fine-tune on good examples first"),
    TechniqueInfo("orpo", "Preference tuning (ORPO)", "5.3.3",
                  "as DPO without a reference model: supervised learning on the chosen answer plus an odds-ratio "
                  "term, two sequences a pair",
                  "preference pairs, as DPO",
                  "supervised fine-tuning and preference tuning in one pass, from a base or an instruct model",
                  "as DPO: costly, and better supervised data often gains more"),
    TechniqueInfo("openai", "Hosted: OpenAI", "5.2.2 (its last step)",
                  "none here: the training runs on OpenAI's machines (or OPENAI_BASE_URL's service)",
                  "at least 10 chat or instruction examples; billed per trained token (tokens x epochs)",
                  "OpenAI fine-tuning: a fine-tuned GPT model without a GPU; caveat: your data leaves this "
                  "machine, every trained token is billed, and it needs OPENAI_API_KEY"),
)
PREFERENCE = ("dpo", "orpo")
BY_KEY = {t.key: t for t in TECHNIQUES}


def hosted_key_note() -> tuple[bool, str]:
    """(whether OPENAI_API_KEY is set, a line saying so and where the service is); never the key itself."""
    import os

    service = os.environ.get("OPENAI_BASE_URL") or "api.openai.com"
    if os.environ.get("OPENAI_API_KEY", "").strip():
        return True, f"OPENAI_API_KEY is set (read at launch, never written); service: {service}"
    return False, "OPENAI_API_KEY is not set: export it in the shell that launches the run"


def recommend(report: HardwareReport | None, data_tokens: int | None = None) -> tuple[str, str]:
    """(technique, why) from the hardware and, when known, the data size."""
    if report is None:
        return "lora", "the usual choice while the hardware is being read"
    if not report.gpus:
        return "scratch", ("no GPU: a tiny model from scratch trains in minutes on the CPU; "
                           "LoRA of a small model also works")
    free = min(g.memory_free_bytes for g in report.gpus)
    if data_tokens is not None and data_tokens < 10_000:
        return "prompt-tuning", f"only {data_tokens:,} tokens of data: too few to change many weights"
    if free < 12 * GIB:
        return "qlora", f"{free / GIB:.0f} GiB free per GPU: a 4-bit base keeps 7B models within reach"
    return "lora", f"{free / GIB:.0f} GiB free per GPU: LoRA fits 7B models in 16-bit with room for batch"


def preference_advice(report: HardwareReport | None) -> str:
    """How to run DPO/ORPO on this machine: LoRA-DPO (the default) on small GPUs, QLoRA on the smallest."""
    if report is None or not report.gpus:
        return ("no GPU: LoRA-DPO of a small model on the CPU (presets/dpo-tiny.toml); the default "
                "options.finetuning = \"lora\" keeps one copy of the weights")
    free = min(g.memory_free_bytes for g in report.gpus)
    if free < 24 * GIB:
        return (f"{free / GIB:.0f} GiB free per GPU: LoRA-DPO on a 4-bit base (options.finetuning = \"qlora\") "
                "keeps an 8B model within reach; the reference is the base with the adapter switched off")
    if free < 80 * GIB:
        return (f"{free / GIB:.0f} GiB free per GPU: LoRA-DPO (the default, options.finetuning = \"lora\"): one "
                "copy of the weights serves as both model and reference")
    return (f"{free / GIB:.0f} GiB free per GPU: LoRA-DPO is still the cheaper; options.finetuning = \"full\" "
            "trains every weight (the reference then precomputed once, or a frozen copy)")
