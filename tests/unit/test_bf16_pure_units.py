"""Pure bf16 as a run setting, piece by piece: the vocabulary and the spec take it, accelerate gets no
autocast for it (and the other precisions what they always got), the model's parameters turn bf16 in
place, and the fused AdamW on bf16 parameters keeps bf16 states and still skips a flagged step on the
device (engine/run/step_guard.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine import spec, vocabulary
from engine.errors import UserError
from engine.run import batch_finder, step_guard
from engine.run.distributed.launch import accelerate_config
from engine.run.train_state import build_optimizer, to_weight_dtype


def test_every_precision_maps_to_accelerate_as_before_and_pure_bf16_to_no_autocast() -> None:
    autocast = {p.name: p.autocast for p in vocabulary.PRECISIONS}
    assert autocast == {"fp32": "no", "bf16": "bf16", "fp16": "fp16", "bf16-pure": "no"}
    pure = vocabulary.precision("bf16-pure")
    assert pure.trains and not pure.mixed and (pure.weights, pure.compute) == ("bf16", "bf16")
    s = spec.from_dict({"train": {"precision": "bf16-pure"}, "distributed": {"num_processes": 2, "strategy": "fsdp"}})
    assert accelerate_config(s, cuda=True)["mixed_precision"] == "no"


@pytest.mark.parametrize("precision", vocabulary.names(vocabulary.PRECISIONS, trained=True))
@pytest.mark.parametrize("optimizer", vocabulary.names(vocabulary.OPTIMIZERS, trained=True))
def test_the_batch_finder_estimates_every_trained_setting_in_the_spec_vocabulary(precision: str, optimizer: str) -> None:
    from engine.estimate.memory import estimate
    from engine.estimate.request import request_from_spec

    s = spec.from_dict({"model": {"arch": "llama", "size": "10M"},
                        "train": {"precision": precision, "optimizer": optimizer, "batch_size": 8, "grad_accum": 2}})
    trainer = SimpleNamespace(spec=s, batch_size=8, grad_accum=2, prep=SimpleNamespace(model=None))
    got = batch_finder.estimate_for(trainer, 4, 2**40)
    assert got is not None, f"the batch finder cannot estimate {precision} / {optimizer}"
    want = estimate(request_from_spec(s, batch_size=4, grad_accum=4, gpus=1), gpus=[(0, "this device", 2**40)],
                    with_suggestions=False)
    assert got.peak_bytes == want.peak_bytes


def test_the_spec_takes_bf16_pure_but_not_under_deepspeed() -> None:
    assert spec.from_dict({"train": {"precision": "bf16-pure"}}).train.precision == "bf16-pure"
    assert "bf16-pure" in spec.from_dict({}).train.__dataclass_fields__["precision"].metadata["help"]
    for strategy in ("zero2", "zero3"):
        with pytest.raises(UserError, match="use bf16 \\(mixed precision\\)"):
            spec.from_dict({"train": {"precision": "bf16-pure"},
                            "distributed": {"num_processes": 2, "strategy": strategy}})
    # one process: no DeepSpeed engine, nothing to refuse
    spec.from_dict({"train": {"precision": "bf16-pure"}, "distributed": {"strategy": "zero3"}})


def _model():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8))
    model.register_buffer("scale", torch.ones(3))
    model[0].requires_grad_(False)  # a frozen part turns bf16 too
    return model


def test_parameters_turn_bf16_in_place_and_other_precisions_are_untouched() -> None:
    import torch

    for precision in ("fp32", "bf16", "fp16"):
        model = _model()
        assert to_weight_dtype(model, precision) == 0
        assert all(p.dtype == torch.float32 for p in model.parameters())
    model = _model()
    before = list(model.parameters())
    assert to_weight_dtype(model, "bf16-pure") == 3
    assert list(model.parameters()) == before  # the same objects: a technique's param groups stay valid
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.scale.dtype == torch.float32  # buffers keep theirs
    assert to_weight_dtype(model, "bf16-pure") == 0


def test_fused_adamw_on_bf16_parameters_keeps_bf16_states_and_skips_on_the_device() -> None:
    import torch

    model = _model()
    to_weight_dtype(model, "bf16-pure")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer([{"params": params}], SimpleNamespace(optimizer="adamw", lr=1e-2))
    assert all(g["fused"] for g in opt.param_groups) and step_guard.skips_on_device(opt)

    def step(bad: bool) -> list:
        for p in params:
            p.grad = torch.ones_like(p)
        before = [p.detach().clone() for p in params]
        step_guard.step_unless(opt, torch.tensor(bad))
        return before

    before = step(False)
    assert all(not torch.equal(a, p) for a, p in zip(before, params))
    states = [v for st in opt.state.values() for k, v in st.items() if k in ("exp_avg", "exp_avg_sq")]
    assert len(states) == 4 and all(v.dtype == torch.bfloat16 for v in states)
    moments = [v.clone() for v in states]
    steps = [st["step"].item() for st in opt.state.values()]
    before = step(True)  # flagged (a non-finite loss or norm): weights, moments and step count untouched
    assert all(torch.equal(a, p) for a, p in zip(before, params))
    assert all(torch.equal(a, v) for a, v in zip(moments, states))
    assert [st["step"].item() for st in opt.state.values()] == steps
