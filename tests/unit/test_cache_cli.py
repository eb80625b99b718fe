"""`llm-wizard cache`: the cache listed by kind with size, age and source, cleared with a confirmation, and as
private as the runs (RELIABILITY S9): 0700 folders and 0600 files whatever the umask, a former version's
open modes narrowed, another user's cache folder refused."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from engine.errors import UserError
from engine.paths import cache_dir
from tui.cli import main


def _fake_cache() -> dict[str, Path]:
    """Entries as a former version left them: 0755 folders, 0644 files."""
    root = cache_dir()
    tokens, tok = root / "tokens", root / "tokenizers" / "abc123"
    tok.mkdir(parents=True)
    tokens.mkdir()
    (tokens / "k1.bin").write_bytes(b"\0" * 4000)
    (tokens / "k1.json").write_text(json.dumps({"sources": ["/data/private.txt"]}))
    (tokens / "k2.bin").write_bytes(b"\0" * 10)
    (tokens / "k2.json").write_text("{}")
    (tok / "tokenizer.json").write_text("{}")
    (tok / "llm_wizard_tokenizer.json").write_text(json.dumps({"sources": ["/data/private.txt"]}))
    (root / "estimate").mkdir()
    (root / "estimate" / "e1.json").write_text("{}")
    hub = root / "hub" / "models--org--tiny" / "snapshots"
    hub.mkdir(parents=True)
    (hub / "w").write_bytes(b"x" * 100)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    old = time.time() - 10 * 86400
    os.utime(tokens / "k1.bin", (old, old))
    os.utime(tokens / "k1.json", (old, old))
    return {"tokens": tokens, "tokenizer": tok}


def test_S9_cache_list_and_clear(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    made = _fake_cache()
    assert main(["cache", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["entries"]
    assert {(e["kind"], e["name"]) for e in listed} == {("tokens", "k1"), ("tokens", "k2"),
                                                        ("tokenizers", "abc123"), ("estimates", "e1"),
                                                        ("models", "org/tiny")}
    k1 = next(e for e in listed if e["name"] == "k1")
    assert k1["bytes"] > 4000 and k1["age_s"] > 9 * 86400 and k1["sources"] == ["/data/private.txt"]
    # listing narrowed what the former version left open (the Hub's own cache is left as it is)
    for p in [cache_dir(), *(p for p in cache_dir().rglob("*") if "hub" not in p.parts)]:
        assert p.stat().st_mode & 0o777 == (0o700 if p.is_dir() else 0o600), p
    assert main(["cache", "list"]) == 0
    assert "/data/private.txt" in capsys.readouterr().out
    # no terminal and no --yes: refused, nothing deleted
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["cache", "clear"]) == 2
    assert "pass --yes" in capsys.readouterr().err and (made["tokens"] / "k1.bin").exists()
    # a terminal that answers no
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda: "n")
    assert main(["cache", "clear", "--kind", "tokens"]) == 1 and (made["tokens"] / "k2.bin").exists()
    assert main(["cache", "clear", "--older-than", "7d", "--kind", "tokens", "--yes", "--json"]) == 0
    capsys.readouterr()
    assert not (made["tokens"] / "k1.bin").exists() and not (made["tokens"] / "k1.json").exists()
    assert (made["tokens"] / "k2.bin").exists() and made["tokenizer"].exists()
    assert main(["cache", "clear", "--older-than", "soon", "--yes"]) == 2
    monkeypatch.setattr("builtins.input", lambda: "y")
    assert main(["cache", "clear"]) == 0
    assert "deleted 4 cache entries" in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_S9_a_cache_folder_of_another_user_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.data.tokenizer_train import train_tokenizer

    root = cache_dir()
    root.mkdir(parents=True)
    os.chown(root, 65534, 65534)
    assert main(["cache", "list"]) == 2
    assert "belongs to another user (uid 65534)" in capsys.readouterr().err
    with pytest.raises(UserError, match="belongs to another user"):
        train_tokenizer([Path(__file__)], "byte", 257)  # nothing written into another user's folder
