"""The gcloud side of `llm-wizard cloud`: every command the product generates is accepted by the real gcloud CLI's
argument parser (run with a throw-away configuration and no account, each fails at authentication only), the VM's
start-up script, the errors for a missing or logged-out gcloud, no credential in anything written, and the
stop/delete offer at the end of a run on a VM the product created."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import gcloud_parse
import pytest
from cloud_helpers import PRESETS, gcloud_env

from engine.cloud import gcloud, marker, tools
from engine.errors import UserError
from engine.runfolder import events as ev
from engine.track.notify import Notifier
from tui.cli import main

AUTH = "You do not currently have an active account selected"
REPO = "https://example.com/llm-wizard.git"
CANARY = "canary-9f3b2e7c-secret"


def local_spec(tmp: Path) -> Path:
    """The tiny preset with its data in a local file (what `sync --up` and file_mounts send)."""
    (tmp / "corpus.txt").write_text("hello world\n" * 50)
    spec = tmp / "my spec.toml"
    spec.write_text((PRESETS / "tiny.toml").read_text().replace('path = "stdlib"', f'path = "{tmp / "corpus.txt"}"'))
    return spec


@pytest.fixture
def records(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    marker.save(marker.Record("gcp", "llmw-test", "us-central1-a", "my-proj-123", "g2-standard-4", "l4", 1))
    return tmp_path


def generated_commands(tmp: Path, capsys) -> list[list[str]]:
    """Every gcloud line the CLI prints under --dry-run (create, ssh, sync up/down by each method, stop, delete),
    plus the builders' forms the CLI does not reach here (an N1 machine with --accelerator, a spot VM)."""
    lines: list[str] = []
    spec = str(local_spec(tmp))
    runs = [["cloud", "create", str(PRESETS / "tiny.toml"), "--gpu", "l4", "--count", "1", "--project", "my-proj-123",
             "--zone", "us-central1-a", "--repo", REPO, "--dry-run"],
            ["cloud", "ssh", "llmw-test", "--dry-run"],
            ["cloud", "sync", "llmw-test", "--up", spec, "--dry-run"],
            ["cloud", "sync", "llmw-test", "--up", spec, "--method", "bucket",
             "--bucket", "gs://my-bucket/work", "--dry-run"],
            ["cloud", "sync", "llmw-test", "--down", "all", "--dry-run"],
            ["cloud", "sync", "llmw-test", "--down", "run-1", "--method", "bucket", "--bucket", "gs://b/x", "--dry-run"],
            ["cloud", "stop", "llmw-test", "--dry-run"], ["cloud", "delete", "llmw-test", "--dry-run"]]
    for argv in runs:
        capsys.readouterr()
        assert main(argv) == 0, argv
        lines += [line for line in capsys.readouterr().out.splitlines() if line.startswith("gcloud ")]
    script = tmp / "startup.sh"
    script.write_text("#!/bin/bash\n")
    vm = gcloud.Vm("llmw-test", "us-central1-a", "my-proj-123")
    cmds = [shlex.split(line) for line in lines]
    cmds.append(gcloud.create(vm, machine_type="n1-standard-8", startup_script=str(script),
                              accelerator=("nvidia-tesla-t4", 1)))
    cmds.append(gcloud.create(vm, machine_type="a2-highgpu-1g", startup_script=str(script), spot=True))
    for c in cmds:  # the dry-run's placeholder for the start-up script file: a real file for gcloud to read
        for i, arg in enumerate(c):
            c[i] = arg.replace("STARTUP_SCRIPT.sh", str(script))
    return cmds


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI (google-cloud-cli) is not installed")
def test_every_generated_gcloud_command_passes_gclouds_parser(tmp_path, records, capsys):
    cmds = generated_commands(tmp_path, capsys)
    verbs = {" ".join(c[1:4]) for c in cmds}
    for expected in ("services enable compute.googleapis.com", "compute accelerator-types list",
                     "compute instances create", "compute instances describe", "compute config-ssh --project",
                     "compute ssh llmw-test", "compute scp --recurse", "storage rsync --recursive",
                     "compute instances stop", "compute instances delete"):
        assert any(v.startswith(expected) for v in verbs), (expected, verbs)
    bogus = [*cmds[0], "--no-such-flag"]  # the control: an argument error is told apart from the auth failure
    results = parse_all([*cmds, bogus], tmp_path)
    for argv, (code, text) in zip(cmds, results[:-1]):
        assert code == 1 and AUTH in text, (shlex.join(argv), code, text[-500:])
    assert results[-1][0] == 2 and "unrecognized arguments: --no-such-flag" in results[-1][1]


def parse_all(cmds: list[list[str]], tmp: Path) -> list[tuple[int, str]]:
    """(exit code, stderr) of each line under a throw-away configuration: in one gcloud process (gcloud's own
    Python and entry point, tests/support/gcloud_parse.py), or one `gcloud` process a line where that fails."""
    env = gcloud_env(tmp)
    root = Path(shutil.which("gcloud")).resolve().parent.parent
    bundled = root / "platform" / "bundledpythonunix" / "bin" / "python3"
    python = env.get("CLOUDSDK_PYTHON") or (str(bundled) if bundled.exists() else "python3")
    proc = subprocess.run([python, str(Path(gcloud_parse.__file__))], input=json.dumps(cmds), capture_output=True,
                          text=True, env={**env, "GCLOUD_SDK_ROOT": str(root)}, cwd=tmp, timeout=240)
    if proc.returncode == 0:
        texts = proc.stderr.split(gcloud_parse.SEPARATOR)[1:]
        return list(zip(json.loads(proc.stdout.strip().splitlines()[-1]), texts))
    out = []  # gcloud's internals moved: the binary, line by line (about a second each)
    for argv in cmds:
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, cwd=tmp)
        out.append((r.returncode, r.stderr))
    return out


def test_startup_script_writes_the_marker_and_installs_with_the_readme_commands(tmp_path):
    vm = gcloud.Vm("llmw-test", "us-central1-a", "my-proj-123")
    text = gcloud.startup_script(vm, repo=REPO, ref="v1")
    assert f"git clone {REPO} {gcloud.INSTALL_DIR}" in text and f"make -C {gcloud.INSTALL_DIR} setup" in text
    assert gcloud.MARKER_PATH == marker.MARKER_PATH and gcloud.MARKER_PATH in text
    path = tmp_path / "s.sh"
    path.write_text(text)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    # the marker line, run with the marker redirected: what vm_marker() reads back
    line = next(x for x in text.splitlines() if x.startswith("printf"))
    subprocess.run(["bash", "-c", line.replace(gcloud.MARKER_PATH, str(tmp_path / "vm.json"))], check=True)
    assert json.loads((tmp_path / "vm.json").read_text())["name"] == "llmw-test"
    with pytest.raises(UserError, match="VM name"):
        gcloud.Vm("Bad_Name", "z", "p")


def test_missing_and_logged_out_gcloud_say_what_to_do(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match="not installed.*google-cloud-cli"):
        tools.run(["gcloud", "version"])
    err = tools.failure(["gcloud", "compute", "instances", "create"],
                        tools.Result(1, "", f"ERROR: (gcloud.compute.instances.create) {AUTH}.\n"))
    assert "gcloud auth login" in str(err)
    other = tools.failure(["gcloud", "compute"], tools.Result(1, "", "WARNING: x\nERROR: quota exceeded\n"))
    assert "quota exceeded" in str(other)


def test_no_credential_reaches_what_is_written(tmp_path, records, monkeypatch, capsys):
    """A canary in every place a credential lives (HF_TOKEN, a Google key file, the AWS variables) appears in
    nothing the product prints or writes: the dry-run commands and start-up script, the SkyPilot YAML, the record."""
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"private_key": CANARY}))
    for name, value in (("HF_TOKEN", CANARY), ("GOOGLE_APPLICATION_CREDENTIALS", str(key)),
                        ("AWS_SECRET_ACCESS_KEY", CANARY), ("CLOUDSDK_AUTH_ACCESS_TOKEN", CANARY)):
        monkeypatch.setenv(name, value)
    printed = ""
    for extra in (["--provider", "gcp", "--project", "p-1", "--zone", "us-central1-a"], ["--provider", "sky"]):
        capsys.readouterr()
        assert main(["cloud", "create", str(local_spec(tmp_path)), "--gpu", "l4", "--repo", REPO, "--dry-run",
                     *extra]) == 0
        printed += capsys.readouterr().out
    assert "--env HF_TOKEN" in printed  # sky reads the token from the environment at launch, by name only
    assert "git clone" in printed and "file_mounts" in printed
    marker.save(marker.Record("sky", "llmw-canary", price_hour=1.0))
    written = "".join(p.read_text() for p in marker.records_dir().glob("*"))
    assert CANARY not in printed and CANARY not in written and str(key) not in printed + written
    from engine.cloud.payload import uploads

    spec = type("S", (), {})()
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "tokens.jsonl").write_text("{}")  # a name with "token" in it is data, not a secret
    spec.data, spec.model, spec.tokenizer = (type("X", (), {"path": str(data)})(),
                                             type("X", (), {"path": ""})(), type("X", (), {"path": str(data)})())
    assert [u.setting for u in uploads(spec, PRESETS / "tiny.toml")] == ["", "data.path", "tokenizer.path"]
    (data / "sub" / ".env").write_text(f"HF_TOKEN={CANARY}")  # a credential inside the data folder
    with pytest.raises(UserError, match="credential"):
        uploads(spec, PRESETS / "tiny.toml")


def test_a_run_ending_on_a_product_vm_offers_stop_and_delete(tmp_path, monkeypatch):
    notifier = Notifier(events=None, run_id="run-1", urls=[])
    monkeypatch.setenv(marker.MARKER_ENV, str(tmp_path / "absent.json"))
    plain = notifier.message_for(ev.Done(step=10, state="done"))[0].body
    assert "cloud stop" not in plain
    (tmp_path / "vm.json").write_text(json.dumps({"name": "llmw-test", "zone": "z", "project": "p"}))
    monkeypatch.setenv(marker.MARKER_ENV, str(tmp_path / "vm.json"))
    body = Notifier(events=None, run_id="run-1", urls=[]).message_for(ev.Done(step=10, state="done"))[0].body
    assert "llm-wizard cloud stop llmw-test" in body and "llm-wizard cloud delete llmw-test" in body


def test_stop_and_delete_know_only_recorded_vms(records, capsys):
    assert main(["cloud", "stop", "nope", "--dry-run"]) == 2
    assert "llmw-test" in capsys.readouterr().err


FAKE_GCLOUD = """#!/bin/bash
# records its arguments (one JSON list a line) and answers like a logged-in gcloud
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$FAKE_LOG"
case "$*" in
  "config get-value core/account") echo someone@example.com ;;
  "config get-value core/project") echo my-proj-123 ;;
  *accelerator-types*) printf 'us-central1-c\\nus-central1-a\\n' ;;
esac
"""


def test_create_asks_first_then_runs_the_books_steps_with_argument_lists(tmp_path, monkeypatch, capsys):
    """With a recording gcloud on PATH: no --yes off a terminal creates nothing; with --yes the API, the zone (the
    first listed), the instance with its start-up script file, and the local record, in that order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    log = tmp_path / "gcloud.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    argv = ["cloud", "create", str(PRESETS / "tiny.toml"), "--gpu", "l4", "--count", "1", "--repo", REPO]
    assert main(argv) == 2
    assert "--yes" in capsys.readouterr().err
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert not any(c[:3] == ["compute", "instances", "create"] for c in calls)
    log.unlink()
    assert main([*argv, "--yes"]) == 0
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    steps = [c[:3] for c in calls if c[:2] != ["config", "get-value"]]
    assert steps == [["services", "enable", "compute.googleapis.com"], ["compute", "accelerator-types", "list"],
                     ["compute", "instances", "create"]]
    create = calls[-1]
    assert create[3:8] == ["llmw-tiny", "--zone", "us-central1-a", "--project", "my-proj-123"]
    assert "--machine-type=g2-standard-4" in create and "--restart-on-failure" in create
    rec = marker.load("llmw-tiny")
    assert (rec.zone, rec.project, rec.machine_type) == ("us-central1-a", "my-proj-123", "g2-standard-4")
    assert "llm-wizard cloud stop llmw-tiny" in capsys.readouterr().out


def test_attach_to_an_ended_run_offers_stop_and_delete_on_a_product_vm(tmp_path, monkeypatch, capsys):
    from event_helpers import write

    run = tmp_path / "run-1"
    run.mkdir()
    (run / "spec.toml").write_text((PRESETS / "tiny.toml").read_text())
    write(run, [ev.Done(step=3, state="done")])
    (run / "status.json").write_text(json.dumps({"state": "done", "pid": 1, "step": 3, "updated": 0.0}))
    monkeypatch.setenv(marker.MARKER_ENV, str(tmp_path / "absent.json"))
    assert main(["attach", str(run), "--text"]) == 0
    assert "cloud stop" not in capsys.readouterr().out
    (tmp_path / "vm.json").write_text(json.dumps({"name": "llmw-test"}))
    monkeypatch.setenv(marker.MARKER_ENV, str(tmp_path / "vm.json"))
    assert main(["attach", str(run), "--text"]) == 0
    assert "llm-wizard cloud stop llmw-test" in " ".join(capsys.readouterr().out.split())
