"""Packing without contamination: whole examples per block, position ids restarting per example, so no
example attends to another and no reply trains without its prompt (engine/data/pack.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.data.prepare import prepare
from engine.data.sources import DataSource
from chat_helpers import many, qwen2_model, train_bpe, write_jsonl


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("chat")
    tok = train_bpe(root / "tok")
    data = write_jsonl(root / "chat.jsonl", [{"messages": c} for c in many(120)])
    return SimpleNamespace(root=root, tok=tok, data=data)


def segments(row) -> list[tuple[int, int]]:  # noqa: ANN001 - (3, T+1) ids, mask, positions
    starts = (row[2] == 0).nonzero().flatten().tolist()
    return list(zip(starts, starts[1:] + [row.shape[1]]))


def test_other_examples_in_a_block_do_not_change_an_examples_logits(chat: SimpleNamespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from engine.data.pack import lm_loss, packing_isolates

    prepared = prepare(DataSource(str(chat.data)), chat.tok, 200, val_fraction=0.0, cache_dir=chat.root / "c")
    batch = prepared.blocks.train_batch(0, 0, prepared.blocks.n_train_blocks)
    row = next(r for r in batch if len(segments(r)) >= 2)
    (a0, a1), (b0, b1) = segments(row)[:2]
    model = AutoModelForCausalLM.from_pretrained(qwen2_model(chat.root / "m", chat.tok)).train()
    assert packing_isolates(model) and model.training

    def logits(ids):  # noqa: ANN001, ANN202 - as lm_loss runs the model
        with torch.no_grad():
            return model(input_ids=ids[None, :-1], position_ids=row[2][None, :-1], use_cache=False).logits[0]

    torch.manual_seed(0)
    model.eval()  # no dropout, so the two forwards can be compared
    changed = row[0].clone()
    changed[a0 + 1:a1] = torch.randint(3, len(chat.tok), (a1 - a0 - 1,))
    base, other = logits(row[0]), logits(changed)
    assert torch.equal(base[b0:b1 - 1], other[b0:b1 - 1])  # the second example: identical
    assert not torch.allclose(base[a0 + 1:a1 - 1], other[a0 + 1:a1 - 1])  # the changed one did change
    alone = model(input_ids=row[0][None, b0:b1 - 1], use_cache=False).logits[0]
    assert torch.allclose(base[b0:b1 - 1], alone, atol=1e-5)  # as if it were alone in its block
    assert torch.isfinite(lm_loss(model, batch[:2])) and lm_loss(model, batch[:2]).item() > 0


def test_no_reply_trains_without_its_prompt_and_counts_are_kept(chat: SimpleNamespace) -> None:
    long_prompt = {"messages": [{"role": "user", "content": "sky " * 300}, {"role": "assistant", "content": "ok"}]}
    long_reply = {"messages": [{"role": "user", "content": "tell me"}, {"role": "assistant", "content": "river " * 300}]}
    rows = [{"messages": c} for c in many(40)] + [long_prompt, long_reply]
    data = write_jsonl(chat.root / "mixed.jsonl", rows)
    prepared = prepare(DataSource(str(data)), chat.tok, 200, val_fraction=0.1, cache_dir=chat.root / "c")
    blocks, report = prepared.blocks, prepared.report
    assert (report.dropped, report.truncated, report.examples) == (1, 1, 41)
    assert any("1 examples truncated and 1 dropped" in w for w in report.warnings)
    im_start = chat.tok.convert_tokens_to_ids("<|im_start|>")
    trained_seen = orphans = 0
    for batch in [blocks.train_batch(0, 0, blocks.n_train_blocks), *blocks.val_batches(4)]:
        for row in batch:
            assert row[2][0] == 0  # every block starts with an example
            for start, end in segments(row):
                ids, mask = row[0][start:end].tolist(), row[1][start:end].tolist()
                trained_seen += sum(mask)
                first = mask.index(1) if 1 in mask else len(mask)
                # the conversation's opening (system, then the user turn) precedes its first trained token
                orphans += sum(mask) if (ids[0] != im_start or ids[:first].count(im_start) < 3) else 0
    assert orphans == 0 and trained_seen == report.trained_tokens == blocks.trained_tokens

    apart = prepare(DataSource(str(data), packing=False), chat.tok, 200, val_fraction=0.1, cache_dir=chat.root / "c")
    assert apart.report.blocks == 41 < 60 and report.blocks < 41  # packing puts several examples in a block
    assert (apart.report.tokens, apart.report.trained_tokens) == (report.tokens, report.trained_tokens)
