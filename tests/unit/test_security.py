"""RELIABILITY §9.9 M3 and §9.10 S2, S8: what may run when a model is read, and who may steer a run.

M3: a model folder (or Hub cache snapshot) whose config needs its own code (auto_map, a model type
transformers does not know) writes a marker file when its code is imported. The marker must stay absent
without the opt-in, with an opt-in without a pin, with a wrong pin and after the code changed; with
model.trust_remote_code and the matching pin the custom class loads. S2: pickle-only weights are refused
unless allowed; a pickle payload never runs, allowed or not. S8: commands from a file or folder of another
uid, or writable by others, are skipped with one alert.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from technique_models import gpt2, tokenizer_for

from engine.checkpoints import fingerprint

from engine.runfolder import commands as commands_file
from engine.runfolder import folder as runfolder
from engine import spec as spec_mod
from engine.errors import UserError
from engine.models.trust import code_sha256
from engine.spec import ModelSpec
from engine.models.pretrained import load_pretrained, load_weights
from run_helpers import make_corpus

CONFIG_PY = """{marker}
from transformers import GPT2Config


class XConfig(GPT2Config):
    model_type = "x-custom"
"""
MODELING_PY = """{marker}
from transformers import GPT2LMHeadModel

from .configuration_x import XConfig


class XModel(GPT2LMHeadModel):
    config_class = XConfig
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny GPT-2 with its tokenizer (safetensors), built once."""
    root = tmp_path_factory.mktemp("security-base")
    return gpt2(tokenizer_for(make_corpus(root, lines=200), vocab_size=280), root / "gpt2")


def _custom(base: Path, folder: Path, marker: Path) -> Path:
    """`base` as a model that needs its own code; importing that code writes `marker`."""
    shutil.copytree(base, folder)
    write = f"open({str(marker)!r}, 'a').write('ran\\n')"
    (folder / "configuration_x.py").write_text(CONFIG_PY.format(marker=write))
    (folder / "modeling_x.py").write_text(MODELING_PY.format(marker=write))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="x-custom", auto_map={"AutoConfig": "configuration_x.XConfig",
                                                   "AutoModelForCausalLM": "modeling_x.XModel"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_M3_remote_code_runs_only_with_an_opt_in_pinned_to_its_code(base: Path, tmp_path: Path) -> None:
    marker = tmp_path / "REMOTE_CODE_RAN"
    folder = _custom(base, tmp_path / "custom_folder_model", marker)
    path = str(folder)
    sha = code_sha256(folder)

    with pytest.raises(UserError) as refused:  # no opt-in: the files and the exact setting are named
        load_pretrained(path, "model.path", model=ModelSpec(path=path))
    message = str(refused.value)
    assert "configuration_x.py" in message and "modeling_x.py" in message and "Nothing was run" in message
    assert f'model.trust_remote_code = true and model.code_sha256 = "{sha}"' in message
    with pytest.raises(UserError, match="needs a pin"):
        load_pretrained(path, "model.path", model=ModelSpec(path=path, trust_remote_code=True))
    with pytest.raises(UserError, match="model.code_sha256: its code files have sha256"):
        load_pretrained(path, "model.path", model=ModelSpec(path=path, trust_remote_code=True, code_sha256="0" * 64))
    with pytest.raises(UserError, match="only model.path can opt in"):  # a teacher never runs code
        load_pretrained(path, "options.teacher")
    opted_in = ModelSpec(path=path, trust_remote_code=True, code_sha256=sha)
    with pytest.raises(UserError, match="code_sha256"):  # the opt-in is for this model only
        load_pretrained(str(_custom(base, tmp_path / "other_model", marker)), "model.path", model=opted_in)
    helper = folder / "helpers_x.py"  # a file the model's code could import relatively changes the pin
    helper.write_text("# added after the user read the code\n")
    with pytest.raises(UserError, match="the code changed since it was pinned"):
        load_pretrained(path, "model.path", model=opted_in)
    helper.unlink()
    assert not marker.exists()  # nothing of the model's code was imported by any of the refusals

    model, tokenizer = load_pretrained(path, "model.path", model=opted_in)
    assert type(model).__name__ == "XModel" and marker.exists()
    assert len(tokenizer) == model.get_input_embeddings().weight.shape[0]

    from engine.techniques import full, lora

    corpus = make_corpus(tmp_path, lines=20)
    run_spec = {"technique": "full", "model": {"path": path}, "data": {"path": str(corpus)}, "train": {"seq_len": 32}}
    with pytest.raises(UserError, match="model.code_sha256 = "):  # the spec path says the same
        full.preflight(spec_mod.from_dict(run_spec))
    run_spec["model"].update(trust_remote_code=True, code_sha256=sha)
    opted_spec = spec_mod.from_dict(run_spec)
    full.preflight(opted_spec)
    assert type(lora.load_base(opted_spec)[0]).__name__ == "XModel"  # full, lora and qlora load through it


def test_M3_a_hub_snapshot_is_pinned_by_its_commit(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub

    cache = tmp_path / "hub"
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))  # read by try_to_load_from_cache at each call
    commit, other = "a" * 40, "b" * 40
    repo = cache / "models--acme--xmodel"
    marker = tmp_path / "HUB_CODE_RAN"
    _custom(base, repo / "snapshots" / commit, marker)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    with pytest.raises(UserError) as refused:
        load_pretrained("acme/xmodel", "model.path", model=ModelSpec(path="acme/xmodel"))
    assert f'model.trust_remote_code = true and model.revision = "{commit}"' in str(refused.value)
    assert "modeling_x.py" in str(refused.value)
    with pytest.raises(UserError, match="not in the local Hub cache"):
        load_pretrained("acme/xmodel", "model.path",
                        model=ModelSpec(path="acme/xmodel", trust_remote_code=True, revision=other))
    with pytest.raises(UserError, match="needs a pin"):  # a folder's sha is no pin for a Hub id
        load_pretrained("acme/xmodel", "model.path", model=ModelSpec(
            path="acme/xmodel", trust_remote_code=True, code_sha256=code_sha256(repo / "snapshots" / commit)))
    assert not marker.exists()
    model, _ = load_pretrained("acme/xmodel", "model.path",
                               model=ModelSpec(path="acme/xmodel", trust_remote_code=True, revision=commit))
    assert type(model).__name__ == "XModel" and marker.exists()


def test_M3_S2_opt_ins_are_checked_written_only_when_set_and_not_part_of_the_fingerprint(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, lines=20)
    plain = {"technique": "full", "model": {"path": "acme/x"}, "data": {"path": str(corpus)}}
    for model, match in (({"revision": "main"}, "model.revision: must be a 40-digit commit"),
                         ({"code_sha256": "ABC"}, "model.code_sha256: must be a 64-digit sha256"),
                         ({"revision": "a" * 40}, "goes with trust_remote_code = true")):
        with pytest.raises(UserError, match=match):
            spec_mod.from_dict({**plain, "model": {"path": "acme/x", **model}})
    s = spec_mod.from_dict(plain)
    assert "trust_remote_code" not in spec_mod.to_toml(s) and "allow_pickle_weights" not in spec_mod.to_toml(s)
    opted = spec_mod.from_dict({**plain, "model": {"path": "acme/x", "trust_remote_code": True, "revision": "a" * 40,
                                                   "allow_pickle_weights": True}})
    text = spec_mod.to_toml(opted)
    assert 'revision = "' + "a" * 40 in text and "allow_pickle_weights = true" in text
    back = spec_mod.load(_write(tmp_path / "spec.toml", text))
    assert back.model.trust_remote_code and back.model.revision == "a" * 40 and back.model.allow_pickle_weights
    assert opted.fingerprint() == s.fingerprint()  # an opt-in added on resume is not another model
    assert fingerprint.parts(opted, "d") == fingerprint.parts(s, "d")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_only(base: Path, folder: Path, state: object) -> Path:
    shutil.copytree(base, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    import torch

    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_S2_pickle_weights_are_refused_by_default_and_read_only_as_tensors(base: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(base)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    only_bin = _pickle_only(base, tmp_path / "bin", state)
    path = str(only_bin)
    with pytest.raises(UserError) as refused:
        load_pretrained(path, "model.path", model=ModelSpec(path=path))
    message = str(refused.value)
    assert "pytorch_model.bin" in message and "safetensors is preferred" in message
    assert "model.allow_pickle_weights = true" in message
    model, _ = load_pretrained(path, "model.path", model=ModelSpec(path=path, allow_pickle_weights=True))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # the tensors, as saved

    marker = tmp_path / "PICKLE_RAN"
    evil = str(_pickle_only(base, tmp_path / "evil", {"transformer.wte.weight": _Payload(marker)}))
    with pytest.raises(UserError, match="only pickle weights"):
        load_pretrained(evil, "model.path", model=ModelSpec(path=evil))
    allowed = ModelSpec(path=evil, allow_pickle_weights=True)
    with pytest.raises(UserError, match="hold more than tensors, which weights_only=True refuses"):
        load_pretrained(evil, "model.path", model=allowed)
    from transformers import AutoConfig

    with pytest.raises(UserError, match="cannot be loaded"):  # a caller cannot turn weights_only off
        load_weights(AutoModelForCausalLM, evil, "model.path", AutoConfig.from_pretrained(evil), allowed,
                     weights_only=False)
    assert not marker.exists()

    both = tmp_path / "both"  # safetensors beside a payload .bin: the safetensors are read, the .bin never
    shutil.copytree(base, both)
    (both / "pytorch_model.bin").write_bytes((Path(evil) / "pytorch_model.bin").read_bytes())
    model, _ = load_pretrained(str(both), "model.path", model=ModelSpec(path=str(both)))
    assert torch.equal(model.state_dict()["transformer.wte.weight"], state["transformer.wte.weight"])
    assert not marker.exists()


def test_S8_commands_from_another_uid_or_a_writable_file_are_ignored_with_one_alert(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = runfolder.create_run(tmp_path, "t", "name = 't'\n")
    alerts: list[str] = []
    reader = runfolder.CommandReader(run, alert=alerts.append)
    own = runfolder.send_command(run, "pause")
    assert [c["id"] for c in reader.poll()] == [own] and alerts == []

    real = commands_file._stat
    foreign_uid = os.geteuid() + 4242

    def foreign(path: Path) -> os.stat_result:  # the file as another local user's would look
        st = real(path)
        if Path(path).name != runfolder.COMMANDS_FILE:
            return st
        fields = list(st)
        fields[4] = foreign_uid  # st_uid
        return os.stat_result(fields)

    monkeypatch.setattr(commands_file, "_stat", foreign)
    with pytest.raises(UserError, match=f"not sent: .*uid {foreign_uid}"):  # the CLI never says "queued" here
        runfolder.send_command(run, "stop")
    _append(run, "stop")  # what another user's writer appends anyway
    _append(run, "rollback", step=1)
    assert reader.poll() == [] and reader.poll() == []
    assert len(alerts) == 1 and f"uid {foreign_uid}" in alerts[0] and "commands ignored" in alerts[0]
    monkeypatch.setattr(commands_file, "_stat", real)
    assert reader.poll() == []  # what arrived while it was foreign is skipped for good, not run later

    later = runfolder.send_command(run, "resume")
    assert [c["id"] for c in reader.poll()] == [later]
    (run / runfolder.COMMANDS_FILE).chmod(0o666)  # anyone could append
    with pytest.raises(UserError, match="writable by other users"):
        runfolder.send_command(run, "stop")
    _append(run, "stop")
    assert reader.poll() == [] and len(alerts) == 2 and "writable by other users (mode 666)" in alerts[1]
    (run / runfolder.COMMANDS_FILE).chmod(0o600)
    run.chmod(0o777)
    _append(run, "stop")
    assert reader.poll() == [] and "the run folder" in alerts[2]
    run.chmod(0o700)
    last = runfolder.send_command(run, "save")
    assert [c["id"] for c in reader.poll()] == [last]


def _append(run: Path, cmd: str, **args: object) -> None:
    with open(run / runfolder.COMMANDS_FILE, "a") as f:
        f.write(json.dumps(commands_file.build(cmd, **args).to_dict()) + "\n")


def test_S8_the_trainer_alerts_about_ignored_commands(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from engine.run.trainer import Trainer

    run = runfolder.create_run(tmp_path, "t", "name = 't'\n")
    trainer = Trainer(run, SimpleNamespace(train=SimpleNamespace(batch_size=1, grad_accum=1)))  # channels only
    runfolder.send_command(run, "stop")
    (run / runfolder.COMMANDS_FILE).chmod(0o646)
    assert trainer.commands.poll() == []
    trainer.events.flush()
    events, _ = runfolder.read_events(run)
    assert [e["kind"] for e in events if e["type"] == "alert"] == ["commands"]


async def test_M3_S2_the_model_step_shows_the_code_and_asks_before_next(base: Path, tmp_path: Path) -> None:
    from tui_helpers import fixed_report, screen_text, wait_until

    from tui.app import make_app
    from tui.screens.model import ModelScreen
    from tui.wizard import TECHNIQUES, spec_dict

    marker = tmp_path / "WIZARD_CODE_RAN"
    folder = _custom(base, tmp_path / "wizard_model", marker)
    pickled = _pickle_only(base, tmp_path / "pickled", {"x": 1})
    app = make_app(hardware=fixed_report("2xL4"), show_runs=False)
    async with app.run_test(size=(110, 40)) as pilot:
        await pilot.press("enter", *["down"] * TECHNIQUES.index("full"), "enter")
        assert isinstance(app.screen, ModelScreen)
        app.screen.query_one("#model-path").insert_text_at_cursor(str(folder))
        await wait_until(pilot, lambda: app.choices.extra.get("model_needs", {}).get("code"))
        await pilot.pause()
        shown = screen_text(app)
        assert "configuration_x.py, modeling_x.py" in shown and code_sha256(folder) in shown
        assert not app.screen.query_one("#allow-pickle").display
        await pilot.click("#trust-code")
        model = spec_dict(app.choices)["model"]
        assert model == {"path": str(folder), "trust_remote_code": True, "code_sha256": code_sha256(folder)}
        assert spec_mod.from_dict({"technique": "full", "model": model}).model.trust_remote_code
        await pilot.click("#trust-code")  # unticked: the consent is withdrawn
        assert spec_dict(app.choices)["model"] == {"path": str(folder)}

        path_input = app.screen.query_one("#model-path")
        path_input.value = str(pickled)  # another model: the code consent is gone, the pickle one is asked
        await wait_until(pilot, lambda: app.choices.extra.get("model_needs", {}).get("pickle"))
        await pilot.pause()
        assert "pytorch_model.bin" in screen_text(app) and not app.screen.query_one("#trust-code").display
        assert app.choices.extra.get("model_params") is not None and not app.screen.ready()
        await pilot.press("enter")
        assert isinstance(app.screen, ModelScreen)  # no Next without consent
        await pilot.click("#allow-pickle")
        assert spec_dict(app.choices)["model"] == {"path": str(pickled), "allow_pickle_weights": True}
        assert app.screen.ready()
    assert not marker.exists()  # showing the files imported none of them


def test_M3_generate_never_runs_the_code_saved_into_a_run(base: Path, tmp_path: Path) -> None:
    """A run of a pinned remote-code model keeps that code in final/; generate refuses it by name."""
    from engine.serve.generate import load_for_inference

    marker = tmp_path / "REMOTE_CODE_RAN"
    run = tmp_path / "runs" / "custom-run"
    run.mkdir(parents=True)
    _custom(base, run / "final", marker)
    with pytest.raises(UserError, match=r"final/ of run custom-run needs its own model code \(.*modeling_x.py"):
        load_for_inference(run)
    assert not marker.exists()
