"""Knowledge distillation (book 5.3, listing 5.4): a student learns from a teacher's softened predictions.

The teacher (options.teacher, a pretrained causal LM) runs in eval mode without gradients and never
changes. The student is model.path (a pretrained causal LM) or, when model.path is empty, a new model
built from model.arch/size with the teacher's tokenizer. Per target token:

    loss = alpha * CE(student, next token) + (1 - alpha) * KL(softmax(teacher / T) || softmax(student / T)) * T^2

(T^2 keeps the soft term's gradient on the CE's scale as T grows: Hinton et al. 2015). The listing does
this for sequence classification with a HF Trainer subclass; here it is the causal LM case on the shared
loop; options.task = "classification" distils a sequence classifier on labelled rows, the listing's
own case (distill_classify.py). Both models must tokenize alike (the listing's sanity check):
`preflight` and `setup` compare their ids on sample texts and refuse with a UserError otherwise.
Options: teacher, alpha (0.5), temperature (2.0), task (causal). Checkpoints and final/ hold the
student only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.techniques.base import (
    Prepared, SetupContext, decay_groups, load_whole_model, save_whole_model, with_defaults,
)
from engine.models.pretrained import load_pretrained, load_tokenizer

DEFAULTS: dict[str, Any] = {"teacher": "", "alpha": 0.5, "temperature": 2.0, "task": "causal"}
TASKS = ("causal", "classification")
# The listing's sample, plus text that splits differently under different vocabularies.
SAMPLES = ("Here's our sanity check.", "def f(x):\n    return x ** 2  # 12345", "naïve café, 東京, emoji 🙂")


def options(spec: Any) -> dict[str, Any]:
    opts = with_defaults(spec, DEFAULTS, "distill")
    if not isinstance(opts["teacher"], str) or not opts["teacher"]:
        raise UserError("options.teacher: give the teacher model (a Hub id or a local folder)", field="options.teacher")
    if opts["task"] not in TASKS:
        raise UserError(f"options.task: {opts['task']!r} is not one of {', '.join(TASKS)}", field="options.task")
    for key, low, high in (("alpha", 0.0, 1.0), ("temperature", 1e-3, 100.0)):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise UserError(f"options.{key}: a number from {low:g} to {high:g}, got {value!r}", field=f"options.{key}")
    return opts


def check_tokenizers(teacher: Any, student: Any, texts: list[str]) -> None:
    """The listing's sanity check: the same ids for the same text, else the logits compare different tokens."""
    if teacher.eos_token_id != student.eos_token_id:
        raise UserError(f"the teacher's end-of-text id {teacher.eos_token_id} is not the student's "
                        f"{student.eos_token_id}: distillation needs both models to use the same tokenizer",
                        field="options.teacher")
    for text in texts:
        a = teacher(text, add_special_tokens=False)["input_ids"]
        b = student(text, add_special_tokens=False)["input_ids"]
        if a != b:
            raise UserError(f"the teacher's and the student's tokenizers differ on {text[:40]!r}: "
                            f"{a[:8]}... != {b[:8]}...; distillation compares their predictions token by token, "
                            "so both models must use the same tokenizer", field="options.teacher")


def _sample_texts(spec: Any) -> list[str]:
    """The fixed samples and the start of the user's own data (the text that will be compared)."""
    from engine.data.sources import DataSource, preview

    rows = preview(DataSource.from_spec(spec.data), n=3)
    return [*SAMPLES, *(("".join(r.values()))[:2000] for r in rows)]


def preflight(spec: Any) -> None:
    """Before the run folder exists: the options and the tokenizer check (tokenizers only, no weights)."""
    opts = options(spec)
    if spec.model.path:
        check_tokenizers(load_tokenizer(opts["teacher"], "options.teacher"),
                         load_tokenizer(spec.tokenizer.path or spec.model.path, "model.path", spec.model), _sample_texts(spec))


def setup(ctx: SetupContext) -> Prepared:
    import torch

    from engine.data.prepare import source_blocks

    spec = ctx.spec
    opts = options(spec)
    ctx.progress(f"loading the teacher {opts['teacher']}")
    # frozen: no fp32 copy needed
    dtype = {"bf16": torch.bfloat16, "bf16-pure": torch.bfloat16, "fp16": torch.float16}.get(spec.train.precision)
    if opts["task"] == "classification":
        return _setup_classifier(ctx, opts, dtype)
    teacher, tokenizer = load_pretrained(opts["teacher"], "options.teacher", **({"dtype": dtype} if dtype else {}))
    teacher.eval().requires_grad_(False)
    if spec.model.path:
        ctx.progress(f"loading the student {spec.model.path}")
        student, student_tokenizer = load_pretrained(spec.model.path, "model.path", model=spec.model)
        check_tokenizers(tokenizer, student_tokenizer, _sample_texts(spec))
        tokenizer = student_tokenizer
    else:
        student = _new_student(spec, tokenizer)
    rows_t, rows_s = teacher.get_output_embeddings().weight.shape[0], student.get_output_embeddings().weight.shape[0]
    if rows_t != rows_s:
        raise UserError(f"the teacher predicts {rows_t} tokens, the student {rows_s}: their outputs cannot be "
                        "compared", field="options.teacher")
    limit = getattr(student.config, "n_positions", None) or getattr(student.config, "max_position_embeddings", None)
    if limit and spec.train.seq_len > limit:
        raise UserError(f"train.seq_len {spec.train.seq_len} exceeds the student's {limit} positions",
                        field="train.seq_len")
    data = source_blocks(ctx, tokenizer, student)
    if data.added_tokens:  # the teacher has no rows for them: its logits would not line up with the student's
        raise UserError(f"data.template {spec.data.template!r} adds tokens the teacher does not know "
                        f"({', '.join(data.added_tokens)}); use the models' own template (data.template = \"auto\")",
                        field="data.template")
    student.config.use_cache = False
    student.train()
    if spec.train.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return Prepared(model=student, tokenizer=tokenizer, data=data.blocks, data_fingerprint=data.fingerprint,
                    param_groups=decay_groups(student, spec.train.weight_decay),
                    extra={"teacher": teacher, "alpha": float(opts["alpha"]), "T": float(opts["temperature"]),
                           "sums": None})


def _setup_classifier(ctx: SetupContext, opts: dict[str, Any], dtype: Any) -> Prepared:
    from engine.techniques import distill_classify

    spec = ctx.spec
    if not spec.model.path:
        raise UserError("model.path: distilling a classifier needs a pretrained student (the listing's gpt2)",
                        field="model.path")
    tokenizer = load_tokenizer(spec.tokenizer.path or spec.model.path, "model.path", spec.model)
    check_tokenizers(load_tokenizer(opts["teacher"], "options.teacher"), tokenizer, _sample_texts(spec))
    pairs = distill_classify.rows(spec)
    classes = distill_classify.class_order(opts["teacher"], pairs)
    data = distill_classify.ClassRows(pairs, classes, tokenizer, spec.train.seq_len, spec.data.val_fraction, spec.seed)
    ctx.progress(f"loading the teacher {opts['teacher']} and the student {spec.model.path}")
    teacher, student, _ = distill_classify.load_classifiers(spec, opts["teacher"], data.classes, dtype)
    teacher.eval().requires_grad_(False)
    student.train()
    return Prepared(model=student, tokenizer=tokenizer, data=data, data_fingerprint=data.fingerprint,
                    param_groups=decay_groups(student, spec.train.weight_decay),
                    extra={"teacher": teacher, "alpha": float(opts["alpha"]), "T": float(opts["temperature"]),
                           "sums": None, "classify": True})


def _new_student(spec: Any, tokenizer: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from engine.models.architectures import build_config, shape_for

    m = spec.model
    shape = shape_for(m.size, layers=m.layers or None, width=m.width or None, heads=m.heads or None)
    config = build_config(m.arch, shape, vocab_size=len(tokenizer), max_seq_len=spec.train.seq_len)
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    torch.manual_seed(spec.seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def loss(prep: Prepared, batch: Any) -> Any:
    import torch

    teacher = prep.extra["teacher"]
    if teacher.device != batch.device:
        teacher.to(batch.device)  # the trainer moves the student only; the teacher follows once
    if prep.extra.get("classify"):
        from engine.techniques.distill_classify import loss as classify_terms

        ce, kl = classify_terms(prep, batch)
    else:
        ce, kl = _causal_terms(prep, batch)
    if torch.is_grad_enabled():  # training, not evaluation: keep the two terms for the metrics event
        # A non-finite micro-batch (a teacher overflowing in 16 bits) makes the trainer skip its step:
        # leave it out of the logged terms too, on the device (no sync), as the logged loss does.
        ok = torch.isfinite(ce) & torch.isfinite(kl)
        zero = torch.zeros((), device=ce.device)
        both = torch.stack([torch.where(ok, ce.detach(), zero), torch.where(ok, kl.detach(), zero), ok.float()])
        prep.extra["sums"] = both if prep.extra["sums"] is None else prep.extra["sums"] + both
    return prep.extra["alpha"] * ce + (1 - prep.extra["alpha"]) * kl


def _causal_terms(prep: Prepared, batch: Any) -> tuple[Any, Any]:
    """(CE on the next token, KL x T^2), each a mean over the trained target tokens."""
    import torch
    import torch.nn.functional as F

    from engine.data.pack import split_batch

    ids, mask, positions = split_batch(batch)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    where = {"position_ids": positions} if positions is not None else {}  # packed examples kept apart
    keep = torch.ones_like(targets, dtype=torch.bool) if mask is None else mask[:, 1:] != 0
    teacher, T = prep.extra["teacher"], prep.extra["T"]
    student_logits = prep.model(input_ids=inputs, **where).logits.float()
    with torch.no_grad():
        teacher_logits = teacher(input_ids=inputs, use_cache=False, **where).logits.float()
    n = keep.sum().clamp(min=1)
    vocab = student_logits.size(-1)
    ce = F.cross_entropy(student_logits.reshape(-1, vocab), targets.masked_fill(~keep, -100).reshape(-1),
                         ignore_index=-100, reduction="sum") / n
    kl_tokens = F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.log_softmax(teacher_logits / T, dim=-1),
                         log_target=True, reduction="none").sum(-1)
    return ce, (kl_tokens * keep).sum() / n * T * T


def metrics(prep: Prepared) -> dict[str, float]:
    """The two terms of the loss since the last metrics event (one device sync, at the logging interval)."""
    sums, prep.extra["sums"] = prep.extra["sums"], None
    if sums is None:
        return {}
    ce, kl, n = sums.tolist()
    return {"distill/ce": ce / n, "distill/kl": kl / n} if n else {}


def save(prep: Prepared, folder: Path, *, final: bool = False) -> None:
    save_whole_model(prep, folder, final=final)


def load(prep: Prepared, folder: Path) -> None:
    load_whole_model(prep, folder)
    prep.extra["sums"] = None  # after a rollback, the metrics restart from the restored step
