"""`llm-wizard export RUN --push ORG/NAME` against the Hub-compatible server on 127.0.0.1
(tests/support/hub_server.py), through huggingface_hub's own client (create_repo, upload_folder): the repo
created private, every exported file and the model card there byte for byte and served back, the token sent on
every write and written nowhere; a second push passes the existing repo and commits nothing unchanged; a push
without a token is a short error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import UserError
from export_helpers import trained_run
from hub_server import HubServer, go_online

pytestmark = pytest.mark.slow

TOKEN = "hf_CANARYpush0123456789abcdefghijkl"
REPO = "me/tiny-export"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory.mktemp("push"), "llama", "lora")


def test_export_push_creates_a_private_repo_with_the_files_and_the_card(run: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture) -> None:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError

    from tui.cli import main

    with HubServer() as hub:
        go_online(monkeypatch, hub, token=TOKEN)
        assert main(["export", str(run), "--format", "adapter", "--push", REPO, "--private", "--json"]) == 0
        out = capsys.readouterr()
        result = json.loads(out.out)
        folder = Path(result["path"])
        card = hf_hub_download(REPO, "README.md", endpoint=hub.endpoint)  # a later GET (with the token)
        with pytest.raises(RepositoryNotFoundError):  # private: nobody else sees it
            HfApi(endpoint=hub.endpoint).repo_info(REPO, token=False)

    repo = hub.repos[("model", REPO)]
    sha, files = repo.commit("main")
    exported = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert result["pushed"]["repo"] == REPO and result["pushed"]["commit"] == sha
    assert result["pushed"]["url"] == f"{hub.endpoint}/{REPO}"
    assert repo.private and repo.owner_token == TOKEN
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "loss.png"} <= set(exported)
    assert files == {**exported, ".gitattributes": files[".gitattributes"]}  # the Hub's first commit adds it
    assert repo.messages[sha] == f"llm-wizard export of {run.name} (adapter)"
    text = files["README.md"].decode()
    assert text.startswith("---\n") and "**lora**" in text and "final train loss" in text and "```toml" in text
    assert Path(card).read_bytes() == files["README.md"]

    writes = [r for r in hub.requests if r.method == "POST"]
    assert [r.path for r in writes] == ["/api/repos/create", "/api/validate-yaml",
                                        f"/api/models/{REPO}/preupload/main", f"/api/models/{REPO}/commit/main"]
    assert all(r.authorization == f"Bearer {TOKEN}" for r in writes)
    assert not any(TOKEN.encode() in p.read_bytes() for p in run.rglob("*") if p.is_file())  # the export within
    assert TOKEN not in out.out + out.err


def test_a_second_push_passes_the_existing_repo_and_commits_only_changes(run: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.serve.export import export
    from engine.serve.push import push

    folder = Path(export(run, "adapter", out=tmp_path / "adapter").path)
    with HubServer() as hub:
        go_online(monkeypatch, hub, token=TOKEN)
        first = push(folder, REPO)
        again = push(folder, REPO)  # the create answers 409, exist_ok passes it; nothing changed, no commit
        (folder / "README.md").write_text("---\nlicense: mit\n---\n# edited\n", encoding="utf-8")
        edited = push(folder, REPO, message="edit the card")
    repo = hub.repos[("model", REPO)]
    assert again["commit"] == first["commit"] and edited["commit"] != first["commit"]
    assert [repo.messages[sha] for sha, _ in repo.commits] == [
        "initial commit", f"llm-wizard export of {folder.name}", "edit the card"]
    assert repo.commit("main")[1]["README.md"] == b"---\nlicense: mit\n---\n# edited\n" and not repo.private
    creates = [r for r in hub.requests if r.path == "/api/repos/create"]
    assert len(creates) == 3 and len([r for r in hub.requests if r.path.endswith("/commit/main")]) == 2


def test_a_push_without_a_token_says_how_to_log_in(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.serve.export import export
    from engine.serve.push import push

    folder = Path(export(run, "adapter", out=tmp_path / "adapter").path)
    with HubServer() as hub:
        go_online(monkeypatch, hub, token=None)
        with pytest.raises(UserError, match="not logged in"):
            push(folder, REPO)
    assert not hub.repos
