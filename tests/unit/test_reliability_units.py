"""RELIABILITY.md rows that need no training job: fsync order, free space, leftovers, non-finite state,
the OOM classifier and batch finder, locks and stale status, fingerprints, pickle payloads, secrets,
permissions, remote code, detector state across a resume, SIGTERM during eval. Each test names its rows."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.checkpoints import store as ck
from engine.runfolder import events as ev
from engine.checkpoints import fingerprint
from engine.runfolder import lock as locks
from engine.run import oom
from engine.run.evaluation import BestEval
from engine import processes
from engine.runfolder import folder as runfolder
from engine.checkpoints import guards as save_guard
from engine.errors import UserError
from engine.runfolder.redact import redact
from engine.run.watchdogs import Watchdogs, is_oom
from run_helpers import make_corpus, tiny_spec

ROOT = Path(__file__).resolve().parents[2]


def _write(payload: bytes):
    def write(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(payload)
        (folder / "optimizer.pt").write_bytes(payload[::-1])
    return write


# ---- checkpoints and storage ------------------------------------------------------------------

def test_C12_fsync_order_files_manifest_rename_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst) -> None:
        calls.append(("rename", str(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    info = ck.save(tmp_path, 10, 0, _write(b"weights"))
    kinds = [(k, Path(p).name) for k, p in calls]
    i_manifest = kinds.index(("fsync", "manifest.json"))
    i_rename = kinds.index(("rename", info.name))
    i_dir = kinds.index(("fsync", "checkpoints"))
    data_files = [i for i, (k, n) in enumerate(kinds) if k == "fsync" and n in ("model.safetensors", "optimizer.pt", "meta.json")]
    assert len(data_files) == 3 and max(data_files) < i_manifest < i_rename < i_dir


def test_C3_truncated_and_bitflipped_newest_fall_back_with_a_reason(tmp_path: Path) -> None:
    ck.save(tmp_path, 10, 0, _write(b"ten" * 100))
    newest = ck.save(tmp_path, 20, 0, _write(b"twenty" * 100))
    f = newest.path / "optimizer.pt"
    f.write_bytes(f.read_bytes()[:-1] + b"X")  # bit flip, same size
    notes: list[str] = []
    assert ck.find_resume(tmp_path, log=notes.append).name == "step-000010"
    assert "step-000020" in notes[0] and "damaged" in notes[0]
    f.write_bytes(f.read_bytes()[:50])  # truncated
    assert ck.verify(newest.path, full=False) == "optimizer.pt has the wrong size"


def test_C5_free_space_below_a_checkpoint_is_refused_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    assert save_guard.room_problem(tmp_path, 1000) is None
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=10**9, used=10**9 - 5_000_000, free=5_000_000))
    problem = save_guard.room_problem(tmp_path, 6_000_000)
    assert problem and "5.0 MB free" in problem and "free space" in problem and "checkpoint.keep" in problem
    assert save_guard.room_problem(tmp_path, 4_000_000) is None


DISK_FULL_CHILD = """
import resource, signal, sys, torch
from pathlib import Path
from engine.checkpoints import guards as save_guard
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
try:
    torch.save({"w": torch.zeros(100_000)}, sys.argv[1] + "/big.pt")
except Exception as e:
    print("TORCH", type(e).__name__, str(e)[:80].replace(chr(10), " "))
    print("CLASSIFIED", save_guard.disk_full(e, Path(sys.argv[1])))
"""


def test_C4_torch_disk_full_error_is_recognised_as_disk_full(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", DISK_FULL_CHILD, str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120).stdout
    assert "TORCH RuntimeError" in out and "No space" not in out  # torch's own words do not say so
    assert "CLASSIFIED disk full" in out
    assert save_guard.disk_full(OSError(28, "No space left on device"), tmp_path).startswith("disk full")
    assert save_guard.disk_full(RuntimeError("shape mismatch"), tmp_path) is None


def test_C8_leftovers_cleaned_only_ours_only_inside_the_run(tmp_path: Path) -> None:
    run, outside = tmp_path / "run", tmp_path / "outside"
    (run / "checkpoints" / ".tmp-step-000010-123").mkdir(parents=True)
    (run / ".tmp-final").mkdir()
    (run / ".tmp-model").mkdir()  # <run>/model/ (config + tokenizer) half written
    (run / ".status.json.999999999.tmp").write_text("{}")  # a dead writer's
    live = run / f".status.json.{os.getpid()}.tmp"
    live.write_text("{}")  # a live writer's: about to be renamed, left alone
    (run / "notes.tmp").write_text("the user's")
    (run / "checkpoints" / "step-000005").mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    (run / ".link.tmp").symlink_to(outside)
    removed = save_guard.clean_leftovers(run)
    assert sorted(removed) == sorted([".tmp-step-000010-123", ".tmp-final", ".tmp-model", ".status.json.999999999.tmp"])
    assert live.exists() and (run / "notes.tmp").exists() and (run / "checkpoints" / "step-000005").exists()
    assert (outside / "keep.txt").exists()  # a link is never followed out of the run


def test_C10_nonfinite_parameters_and_moments_are_named() -> None:
    import torch

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()
    assert save_guard.nonfinite_state([w], opt) == []
    opt.state[w]["exp_avg_sq"][1] = float("inf")
    assert save_guard.nonfinite_state([w], opt) == ["optimizer exp_avg_sq of parameter 0"]
    with torch.no_grad():
        w[0] = float("nan")
    assert save_guard.nonfinite_state([w], opt)[0] == "parameter 0"


# ---- out of memory ----------------------------------------------------------------------------

OOM_FORMS = [
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity)",
    "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes",
    "HIP out of memory. Tried to allocate 20.00 MiB",
    "MPS backend out of memory (MPS allocated: 1 GB)",
]


@pytest.mark.parametrize("text", OOM_FORMS)
def test_O3_every_oom_message_form_is_classified(text: str) -> None:
    assert oom.is_oom(RuntimeError(text)) and is_oom(RuntimeError(text))
    assert oom.is_oom(RuntimeError("step failed", text))  # several arguments (accelerate checks only one)
    try:
        try:
            raise RuntimeError(text)
        except RuntimeError as inner:
            raise ValueError("loss computation failed") from inner
    except ValueError as wrapped:
        assert oom.is_oom(wrapped)


def test_O3_classifier_catches_what_accelerate_misses_and_nothing_else() -> None:
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    multi = RuntimeError("step failed", "CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not should_reduce_batch_size(multi) and oom.is_oom(multi)
    assert oom.is_oom(torch.OutOfMemoryError("x"))
    for text in ("shape mismatch", "expected scalar type Float", "index out of range in self", "memory format"):
        assert not oom.is_oom(RuntimeError(text)), text


def _fake_allocator(budget: int, seq_len: int = 512):
    """Raises torch.OutOfMemoryError when micro_batch x seq_len exceeds the budget (tokens)."""
    import torch

    def probe(micro_batch: int) -> None:
        if micro_batch * seq_len > budget:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {micro_batch * seq_len} tokens")
    return probe


def test_O1_batch_finder_binary_searches_with_margin_and_keeps_the_effective_batch() -> None:
    choice = oom.find_micro_batch(_fake_allocator(budget=13 * 512), effective=32)
    assert choice.largest_fitting == 13
    assert choice.micro_batch == 8 and choice.grad_accum == 4 and choice.effective == 32  # 13 x 0.9 -> divisor 8
    assert len(choice.probes) <= 7  # binary search, not a walk down from 32
    full = oom.find_micro_batch(_fake_allocator(budget=10**9), effective=16)
    assert (full.micro_batch, full.grad_accum, full.probes) == (16, 1, [16])
    assert "effective batch 32" in choice.message()


def test_O6_nothing_fits_reports_numbers_and_options() -> None:
    with pytest.raises(UserError) as e:
        oom.find_micro_batch(_fake_allocator(budget=100), effective=8, estimate={"model": "14.2 GB", "free": "12.0 GB"})
    text = str(e.value)
    assert "micro-batch 1 of 8" in text and "14.2 GB" in text
    for option in ("LoRA", "QLoRA", "gradient_checkpointing", "seq_len"):
        assert option in text
    with pytest.raises(ValueError):  # anything but an OOM is not an answer, it is a bug to show
        oom.find_micro_batch(lambda b: (_ for _ in ()).throw(ValueError("bad shape")), effective=4)


# ---- locks and stale status -------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from engine.runfolder import lock as locks
locks.acquire(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(60)
"""


def test_P6_second_owner_is_refused_naming_the_first_pid(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert locks.holder(tmp_path) == proc.pid
        with pytest.raises(UserError, match=f"already being trained by process {proc.pid}") as e:
            locks.acquire(tmp_path)
        assert e.value.exit_code == 2
    finally:
        proc.kill()
        proc.wait()
    assert locks.holder(tmp_path) is None  # the kernel dropped the lock with the process: a resume is free
    locks.acquire(tmp_path)
    assert locks.holder(tmp_path) == os.getpid()
    locks.release(tmp_path)


def test_P7_O5_dead_or_reused_pid_is_stopped_unexpectedly_resumable_from_step(tmp_path: Path) -> None:
    ck.save(tmp_path, 20, 0, _write(b"w"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    runfolder.write_status(tmp_path, {"state": "running", "pid": dead.pid, "step": 23})
    status = runfolder.read_status(tmp_path)
    assert status["state"] == "crashed"
    assert "stopped unexpectedly" in status["message"] and "resumable from step 20" in status["message"]
    assert "out-of-memory killer" in status["message"]  # O5: a SIGKILL leaves nothing in our log
    # a live pid (this test's) whose start time differs: the pid was reused by another process
    runfolder.write_status(tmp_path, {"state": "running", "pid": os.getpid(), "pid_start": "1", "step": 23})
    assert runfolder.read_status(tmp_path)["state"] == "crashed"
    live = processes.pid_start_time(os.getpid())
    runfolder.write_status(tmp_path, {"state": "running", "pid": os.getpid(), "pid_start": live, "step": 23})
    assert runfolder.read_status(tmp_path)["state"] == "running"


# ---- fingerprints -----------------------------------------------------------------------------

def _refusal(saved_spec, current_spec, saved_data="d1", current_data="d1") -> str:
    with pytest.raises(UserError) as e:
        fingerprint.check(fingerprint.parts(saved_spec, saved_data), fingerprint.parts(current_spec, current_data),
                          "step-000010", Path("/runs/r"), current_spec.technique)
    return str(e.value)


def test_R3_M5_changed_batch_size_dataset_or_model_is_refused_saying_what_differs(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, lines=50)
    s = tiny_spec(corpus)
    same = tiny_spec(corpus, train={"max_steps": 99, "lr": 1e-3}, checkpoint={"every": 3})  # may change on resume
    fingerprint.check(fingerprint.parts(s, "d1"), fingerprint.parts(same, "d1"), "step-000010", tmp_path, "scratch")
    text = _refusal(s, tiny_spec(corpus, train={"batch_size": 8}))
    assert "batch size (train.batch_size) was 4, now 8" in text and "start a new run from them" in text
    assert "the dataset's contents changed" in _refusal(s, s, "d1", "d2")
    text = _refusal(s, tiny_spec(corpus, model={"width": 64, "layers": 2}))
    assert "model.width" in text and "model.layers" in text and "different model or data setup" in text


def test_R4_adapter_on_another_base_of_the_same_shape_is_refused(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, lines=50)
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    weights = base / "model.safetensors"
    weights.write_bytes(b"\x01" * 3_000_000)
    s = tiny_spec(corpus, technique="lora", model={"path": str(base)})
    saved = fingerprint.parts(s, "d1")
    assert fingerprint.differences(saved, fingerprint.parts(s, "d1")) == []
    data = bytearray(weights.read_bytes())
    data[-10] = 2  # same size, same config: other weights
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="the base model's files changed") as e:
        fingerprint.check(saved, fingerprint.parts(s, "d1"), "step-000010", tmp_path, "lora")
    assert "adapter" in str(e.value)
    # distillation: a teacher swapped in place under the same path is named too
    d = tiny_spec(corpus, technique="distill", options={"teacher": str(base)})
    saved = fingerprint.parts(d, "d1")
    weights.write_bytes(b"\x03" * 3_000_000)
    assert fingerprint.differences(saved, fingerprint.parts(d, "d1")) == ["the teacher model's files changed"]


# ---- security ---------------------------------------------------------------------------------

class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_S1_pickle_payload_never_runs_and_every_torch_load_is_weights_only(tmp_path: Path) -> None:
    import ast

    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "optimizer.pt"
    evil.write_bytes(pickle.dumps({"state": _Evil(marker)}))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil, weights_only=True)
    assert not marker.exists()
    for path in list((ROOT / "engine").rglob("*.py")) + list((ROOT / "tui").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" \
                    and getattr(node.func.value, "id", None) == "torch":
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                    f"{path.name}:{node.lineno} torch.load without weights_only=True"
    assert "weights_only=False" not in "".join(p.read_text() for p in (ROOT / "engine").rglob("*.py"))


def test_S6_redaction_removes_the_canary_and_secret_env_values(monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "hf_CANARYabcdefghijklmnopqrstuvwxy"  # a Hub token's shape: hf_ and 31 letters and digits
    monkeypatch.setenv("MY_SERVICE_API_KEY", "s3cr3t-value-42")
    text = f"GET https://hf.co/x?token={canary} failed; Authorization: Bearer abc.def; key s3cr3t-value-42"
    out = redact(text)
    assert canary not in out and "abc.def" not in out and "s3cr3t-value-42" not in out
    assert "https://hf.co/x" in out and "failed" in out
    assert redact("loss 2.31 at step 10") == "loss 2.31 at step 10"


def test_S7_run_folder_is_private(tmp_path: Path) -> None:
    run = runfolder.create_run(tmp_path, "t", "name = 't'\n")
    assert run.stat().st_mode & 0o777 == 0o700


def test_M3_S4_remote_code_in_a_model_folder_never_runs(tmp_path: Path) -> None:
    from engine.models import pretrained as pretrained_models

    folder, marker = tmp_path / "model", tmp_path / "REMOTE_CODE_RAN"
    folder.mkdir()
    (folder / "modeling_x.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass XModel: pass\n")
    (folder / "configuration_x.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass XConfig: pass\n")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "x-custom", "auto_map": {"AutoConfig": "configuration_x.XConfig",
                                               "AutoModelForCausalLM": "modeling_x.XModel"}}))
    with pytest.raises(UserError, match="model.path"):
        pretrained_models.load_pretrained(str(folder), "model.path")
    assert not marker.exists()


# ---- numerics and signals ---------------------------------------------------------------------

def test_N4_N6_detector_windows_survive_a_resume() -> None:
    series = [3.0 - 0.02 * i for i in range(12)] + [9.0]

    def feed(w: Watchdogs, values: list[float], start: int) -> list[str]:
        return [a.kind for i, v in enumerate(values) for a in w.on_metrics(start + i, v, 0.1)]

    straight = feed(Watchdogs(total_steps=1000), series, 1)
    assert straight == ["spike"]  # N4: a large finite loss is flagged with a rollback suggestion
    before = Watchdogs(total_steps=1000)
    feed(before, series[:10], 1)
    resumed = Watchdogs(total_steps=1000)
    resumed.state = json.loads(json.dumps(before.state))  # as saved in trainer_state.json
    assert feed(resumed, series[10:], 11) == straight
    assert feed(Watchdogs(total_steps=1000), series[10:], 11) == []  # control: without the window it is missed


def test_G3_sigterm_during_a_long_eval_is_honoured_within_a_batch() -> None:
    import torch

    from engine.run.trainer import Trainer

    calls = []

    def slow_loss(prep, batch):
        calls.append(1)
        time.sleep(0.05)
        return torch.tensor(2.0)

    batch = SimpleNamespace(to=lambda device: None)
    fake = SimpleNamespace(
        prep=SimpleNamespace(data=SimpleNamespace(n_val_blocks=1000, val_batches=lambda n: iter([batch] * 1000))),
        spec=_eval_spec(), best_eval=BestEval(), early_stop=None, model=torch.nn.Linear(1, 1),
        accelerator=SimpleNamespace(autocast=nullcontext, device="cpu"), technique=SimpleNamespace(loss=slow_loss),
        batch_size=1, stop_reason=None, last={}, step=7, events=SimpleNamespace(emit=lambda *a, **k: None),
        watchdogs=Watchdogs(total_steps=100))
    threading.Timer(0.3, lambda: setattr(fake, "stop_reason", "SIGTERM")).start()
    started = time.monotonic()
    Trainer._evaluate(fake)
    assert time.monotonic() - started < 2.0 and len(calls) < 100  # 1000 batches would take 50 s


def _eval_spec() -> object:
    """A spec evaluating the whole validation split, as the evaluation fakes need (no prompts, no patience)."""
    from engine.spec import from_dict

    return from_dict({"eval": {"batches": 0}})


def test_C6_unwritable_runs_folder_is_refused_before_anything_heavy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.parent == tmp_path / "runs":
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(UserError, match="cannot write to the runs folder .*Read-only file system.*--runs-dir") as e:
        runfolder.create_run(tmp_path / "runs", "t", "name = 't'\n")
    assert e.value.exit_code == 2


def test_M6_a_run_folder_that_exists_is_never_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "same-id"
    other.mkdir()
    (other / "spec.toml").write_text("someone else's")
    monkeypatch.setattr(runfolder, "new_run_id", lambda name: "same-id")
    with pytest.raises(UserError, match="could not create a new run folder"):
        runfolder.create_run(tmp_path, "t", "name = 't'\n")
    assert (other / "spec.toml").read_text() == "someone else's"


def test_O4_oom_during_eval_shrinks_only_the_eval_batch() -> None:
    import torch

    from engine.run.trainer import Trainer

    seen_sizes, alerts = [], []

    def loss(prep, batch):
        if batch.size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.tensor(1.5)

    def val_batches(size):
        seen_sizes.append(size)
        return iter([SimpleNamespace(size=size, to=lambda device, s=size: SimpleNamespace(size=s))] * 3)

    fake = SimpleNamespace(
        prep=SimpleNamespace(data=SimpleNamespace(n_val_blocks=30, val_batches=val_batches)),
        spec=_eval_spec(), best_eval=BestEval(), early_stop=None, model=torch.nn.Linear(1, 1),
        accelerator=SimpleNamespace(autocast=nullcontext, device="cpu"), technique=SimpleNamespace(loss=loss),
        batch_size=8, stop_reason=None, last={}, step=5, watchdogs=Watchdogs(total_steps=100),
        events=SimpleNamespace(emit=lambda event, flush=True: alerts.append(event)))
    Trainer._evaluate(fake)
    assert seen_sizes == [8, 4, 2] and fake.batch_size == 8 and fake.eval_batch_size == 2
    assert fake.last["eval/loss"] == pytest.approx(1.5)
    assert [e.kind for e in alerts if isinstance(e, ev.Alert)] == ["oom", "oom"]
    seen_sizes.clear()
    Trainer._evaluate(fake)  # the next evaluation starts from the size that fitted
    assert seen_sizes == [2]
    fake.technique = SimpleNamespace(loss=lambda prep, batch: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):  # anything but an OOM still fails loudly
        Trainer._evaluate(fake)


def test_S3_a_torch_with_unsafe_weights_only_loading_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from engine.models import trust as security

    security.check_torch()  # the installed one
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")
    with pytest.raises(UserError, match="torch 2.5.1\\+cu121 is too old .* upgrade torch"):
        security.check_torch()
    for fine in ("2.10.0", "2.13.0+cpu", "3.0.0a0"):
        security.check_torch(fine)
