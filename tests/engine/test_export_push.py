"""`export --push` against the Hub-compatible server on 127.0.0.1 (tests/support/hub_server.py), through
huggingface_hub's own client: the repo created, the files and the model card there, the token sent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def hub_server_with_uploads():
    if importlib.util.find_spec("hub_server") is None:
        pytest.skip("tests/support/hub_server.py (the local Hub server) is not in this tree yet")
    import hub_server

    if "do_POST" not in Path(hub_server.__file__).read_text(encoding="utf-8"):  # create_repo, preupload, commit
        pytest.skip("tests/support/hub_server.py answers no uploads yet (no POST for create_repo, preupload, commit)")
    return hub_server


def test_push_creates_the_repo_with_the_files_and_the_card(tmp_path: Path, monkeypatch) -> None:
    hub_server = hub_server_with_uploads()
    from engine.serve.push import push

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlibrary_name: transformers\n---\n# tiny\n")
    (folder / "model.safetensors").write_bytes(b"\0" * 2048)
    (folder / "loss.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    token = "hf_" + "x" * 34
    with hub_server.HubServer() as hub:
        hub_server.go_online(monkeypatch, hub, token=token)
        result = push(folder, "me/tiny-export", private=True)
        repo = hub.repos[("model", "me/tiny-export")]
        files = repo.commit("main")[1]
    assert result["repo"] == "me/tiny-export" and result["commit"]
    assert set(files) == {"README.md", "model.safetensors", "loss.png"} and files["README.md"].startswith(b"---")
    assert any(r.authorization == f"Bearer {token}" for r in hub.requests)
