"""What the product wrote is verified when it is read back, and passed over with the reason when it fails
(RELIABILITY C14): final/ carries a manifest that generate, chat and export check; a damaged newest
checkpoint or final/ is skipped saying so; a damaged token cache is rebuilt, saying so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.checkpoints import store as ck
from engine.errors import UserError
from engine.run import job
from engine.run.trainer import Trainer
from engine.runfolder import folder as runfolder
from run_helpers import in_process_trainer, make_corpus, tiny_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("integrity")
    s = tiny_spec(make_corpus(base, lines=400), train={"max_steps": 4}, checkpoint={"every": 2, "keep": 3})
    run = job.create(s, base / "runs")
    with in_process_trainer():
        assert Trainer(run, s).run_job() == 0
    return run


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_C14_final_has_a_manifest_and_a_damaged_one_falls_back_saying_why(finished: Path, tmp_path: Path) -> None:
    import shutil

    from engine.serve.generate import load_for_inference
    from engine.serve.merge import locate

    assert ck.verify(finished / "final") is None
    assert "model.safetensors" in json.loads((finished / "final" / ck.MANIFEST).read_text())["files"]
    assert load_for_inference(finished)[2] == "final"
    run = Path(shutil.copytree(finished, tmp_path / finished.name))
    _flip(run / "final" / "model.safetensors")
    source = load_for_inference(run)[2]
    assert source == ("step-000004 (final/ is damaged (model.safetensors is damaged (checksum mismatch)); using "
                      "checkpoint step-000004 instead)"), source
    assert locate(run).notes == ("final/ is damaged (model.safetensors is damaged (checksum mismatch)); using "
                                 "checkpoint step-000004 instead",)  # export and push read through locate
    # the newest checkpoint damaged too: generate says it skipped it
    _flip(run / "checkpoints" / "step-000004" / "model.safetensors")
    source = load_for_inference(run)[2]
    assert source.startswith("step-000002 (checkpoint step-000004 is not usable (model.safetensors is damaged"), source
    with pytest.raises(UserError, match=r"no usable checkpoint 'step-000004' \(step-000004: model.safetensors is "):
        load_for_inference(run, "step-000004")
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(UserError, match=r"final/ of run .* is damaged .* no checkpoint is usable: train it again"):
        load_for_inference(run)


def test_C14_a_manifest_listing_no_files_is_no_checkpoint(tmp_path: Path) -> None:
    info = ck.save(tmp_path, 2, 0, lambda d: (d / "model.safetensors").write_bytes(b"w"))
    manifest = json.loads((info.path / ck.MANIFEST).read_text())
    (info.path / ck.MANIFEST).write_text(json.dumps({**manifest, "files": {}}))
    assert ck.verify(info.path) == "its manifest lists no files"
    assert ck.find_resume(tmp_path) is None
    (info.path / ck.MANIFEST).write_text(json.dumps({**manifest, "files": {"../../x": {"size": 1, "sha256": ""}}}))
    assert "outside the folder" in ck.verify(info.path)


def test_C14_S9_token_cache_damage_is_rebuilt_with_a_notice_and_kept_private(tmp_path: Path) -> None:
    import numpy as np
    from transformers import AutoTokenizer

    from engine.data.token_cache import build_token_file
    from engine.data.tokenizer_train import train_tokenizer
    from engine.paths import cache_dir

    import os

    old = os.umask(0o000)  # nothing here may depend on the umask
    try:
        corpus = make_corpus(tmp_path, lines=300)
        tokenizer = train_tokenizer([corpus], "bpe", 300)
        notes: list[str] = []
        first = build_token_file([corpus], tokenizer, notice=notes.append)
        assert notes == []
        ids = np.fromfile(first.path, dtype=first.dtype)
        ids[5] = ids[6]  # a changed id: same size, so the old size-only check took it
        ids.tofile(first.path)
        again = build_token_file([corpus], tokenizer, notice=notes.append)
        assert len(notes) == 1 and "is damaged (checksum mismatch); tokenizing the data again" in notes[0]
        assert np.array_equal(np.fromfile(again.path, dtype=again.dtype)[:5], ids[:5])
        # an id past the vocabulary (a sidecar rewritten to match it): rebuilt too, never an IndexError later
        ids = np.fromfile(again.path, dtype=again.dtype)
        ids[7] = 60000
        ids.tofile(again.path)
        meta = json.loads(again.sidecar.read_text())
        import hashlib

        meta["sha256"] = hashlib.sha256(ids.tobytes()).hexdigest()
        again.sidecar.write_text(json.dumps(meta))
        build_token_file([corpus], tokenizer, notice=notes.append)
        assert "holds id 60000, outside the tokenizer's" in notes[-1]
        # S9: every folder 0700 and file 0600 under the cache, with a umask of 0
        for p in [cache_dir(), *cache_dir().rglob("*")]:
            want = 0o700 if p.is_dir() else 0o600
            assert p.stat().st_mode & 0o777 == want, (p, oct(p.stat().st_mode))
        # a damaged cached tokenizer is trained again
        cached = next((cache_dir() / "tokenizers").iterdir())
        (cached / "tokenizer.json").write_text((cached / "tokenizer.json").read_text().replace('"a"', '"b"', 1))
        with pytest.raises(Exception, match="out of vocabulary"):  # what reading it unchecked gave
            AutoTokenizer.from_pretrained(str(cached))
        again_tok = train_tokenizer([corpus], "bpe", 300)
        assert again_tok.get_vocab() == tokenizer.get_vocab()
    finally:
        os.umask(old)


def test_C14_S9_a_damaged_example_file_is_built_again_privately(tmp_path: Path) -> None:
    import os

    import numpy as np

    from engine.data.prepare import prepare
    from engine.data.sources import DataSource
    from engine.data.tokenizer_train import train_tokenizer
    from engine.paths import cache_dir

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"q": f"question {i}?", "a": f"answer {i}."}) + "\n" for i in range(40)))
    tokenizer = train_tokenizer([rows], "byte", 257)
    source = DataSource(str(rows), prompt_column="q", response_column="a")
    first = prepare(source, tokenizer, 256, val_fraction=0.0).blocks.example_file.token_file
    assert {oct(p.stat().st_mode & 0o777) for p in first.path.parent.glob(first.path.stem + ".*")} == {"0o600"}
    good = np.fromfile(first.path, dtype=first.dtype)
    bad = good.copy()
    bad[3] ^= 1  # one changed id, same size: read back unchecked it trained silently
    bad.tofile(first.path)
    again = prepare(source, tokenizer, 256, val_fraction=0.0).blocks.example_file.token_file
    assert np.array_equal(np.fromfile(again.path, dtype=again.dtype), good)
    assert (cache_dir() / "tokens").stat().st_mode & 0o777 == 0o700 and os.path.samefile(again.path, first.path)
