"""Run-level faults on LoRA and distillation runs (RELIABILITY G5, C1, R1, P8, C4, S6, S7, N1, N3, R2, R3, R4).

Scratch runs meet these faults in test_reliability_kill, test_reliability_faults and
test_reliability_escalation; the same assertions (tests/support/fault_helpers.py, tests/support/kill_helpers.py) are held
here against the two techniques whose state is not scratch's: a LoRA checkpoint holds the adapter alone,
over a frozen base read from elsewhere; a distillation run carries a frozen teacher beside the student.

- SIGKILLs at random moments of a run that checkpoints every other step: after each kill every checkpoint
  verifies and loads, every restart resumes from the newest one, and every loss ever logged equals an
  uninterrupted run's, exactly. Negative controls resume the same killed run leaving out the RNG state
  (LoRA dropout) or the optimizer's moments, and differ; an in-place writer leaves half LoRA checkpoints
  under the same kills.
- An exception at step 5 fails the run naming the last checkpoint; a resume under RLIMIT_FSIZE pauses with
  "disk full", the previous checkpoint intact, and a later resume loads it and finishes; a canary Hub
  token in every job's environment is in no file of the run folder.
- Non-finite steps (in process; LLMW_FAULT, or a distillation teacher whose logits turn NaN): each is
  skipped (the trainable weights and the moments are unchanged by it, and stay finite), the logged metrics
  leave it out (distillation's CE and KL terms too), three in a row pause.
- A resume on another base of the same shape (LoRA; a folder, or a Hub id whose cache moved to another
  commit), another teacher (distillation) or a changed option is refused, naming it.

The jobs fork from one process that imported torch, transformers and peft once (tests/support/kill_helpers.py).
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from engine.checkpoints import store as ck
from engine import spec
from engine.run import job
from engine.runfolder import folder as runfolder
from engine.run.trainer import Trainer
from fault_helpers import (
    CANARY, CANARY_ENV, STREAK_FAULT, assert_failed_by_injected_exception, assert_no_canary,
    assert_one_bad_step_goes_on_K_in_a_row_pause, assert_stopped_while_disk_full, half_the_size_of, run_in_process,
    wait_disk_full_pause,
)
from kill_helpers import Zygote, finish, kill_trials, logged_losses, reference
from run_helpers import control, tiny_spec
from technique_models import corpus_and_tokenizer, gpt2

pytestmark = pytest.mark.slow
TECHNIQUES = ["lora", "distill"]
WEIGHTS = {"lora": "adapter_model.safetensors", "distill": "model.safetensors"}  # what a checkpoint holds


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    import torch

    threads = torch.get_num_threads()  # specs set threads = 1 in this (pytest's) process: put it back after
    tmp = tmp_path_factory.mktemp("techfaults")
    mp = pytest.MonkeyPatch()  # one token cache for the module's jobs (the zygote's environment)
    mp.setenv("LLM_WIZARD_CACHE", str(tmp / "cache"))
    mp.setenv("HF_HOME", str(tmp / "hf"))
    z = Zygote(env=CANARY_ENV)  # imports torch while the models are built here
    try:
        corpus, tokenizer = corpus_and_tokenizer(tmp, lines=600)
        m = {"corpus": corpus,
             "base": gpt2(tokenizer, tmp / "base", layers=2, width=64),
             "other-base": gpt2(tokenizer, tmp / "other-base", layers=2, width=64, seed=1),  # same shape
             "teacher": gpt2(tokenizer, tmp / "teacher", layers=2, width=48),
             "other-teacher": gpt2(tokenizer, tmp / "other-teacher", layers=2, width=48, seed=1),
             "student": gpt2(tokenizer, tmp / "student", layers=1, width=32, seed=2)}
        for technique in TECHNIQUES:
            z.warm(_spec(m, technique), tmp / "warm")
        mp.undo()
        yield z, m
    finally:
        z.close()
        mp.undo()
        torch.set_num_threads(threads)


def _spec(m: dict, technique: str, **sections) -> spec.RunSpec:
    """A tiny LoRA (dropout on, so the RNG state matters) or distillation run, constant LR, logged each step."""
    if technique == "lora":
        setup = {"model": {"path": str(m["base"])},
                 "options": {"lora_rank": 16, "lora_dropout": 0.1, "lora_targets": ["c_attn", "c_fc"]}}
    else:
        setup = {"model": {"path": str(m["student"])},
                 "options": {"teacher": str(m["teacher"]), "alpha": 0.5, "temperature": 2.0}}
    setup["options"].update(sections.pop("options", {}))
    train = {"max_steps": 2000, "schedule": "constant", "warmup_steps": 0, "lr": 1e-2, **sections.pop("train", {})}
    sections = {"checkpoint": {"every": 2, "keep": 3}, **sections}
    return tiny_spec(m["corpus"], technique=technique, train=train, **setup, **sections)


# ---- G5, C1, R1: SIGKILL at random moments ------------------------------------------------------------

# the negative controls: a resume of the same killed run that leaves out part of the state
CONTROLS = {"lora": ("norng", "noopt"), "distill": ("noopt",)}


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_G5_C1_R1_sigkills_every_restart_resumes_whole_and_the_losses_match(models: tuple, technique: str,
                                                                             tmp_path: Path) -> None:
    z, m = models
    s = _spec(m, technique)
    run = job.create(s, tmp_path / "runs")
    # 5 kills (4 while training, seeded), saves slowed to 0.2 s: kills land inside saves too
    seen = kill_trials(z, run, 5, "atomic", random.Random(5), save_sleep=0.2)  # each: whole, verified checkpoints
    last = ck.find_resume(run)
    print(f"{technique} kill test: {seen}; resumed to step {last and last.step}")  # shown with pytest -s
    assert seen["kills"] == 5 and seen["resumes_checked"] >= 2 and last is not None and last.step >= 4, seen
    assert seen["tmp_left"] >= 1, seen  # a kill did land inside a save, so the check had something to catch
    steps = last.step + 4
    spares = {mode: shutil.copytree(run, tmp_path / mode / run.name) for mode in CONTROLS[technique]}
    finish(z, run, steps)
    expected = reference(z, s, tmp_path / "runs", steps)
    logged = logged_losses(run)
    assert sorted(logged) == list(range(1, steps + 1))
    for step, values in logged.items():  # every value ever logged for a step, across all 6 processes
        assert values == {expected[step]}, (step, values, expected[step])
    assert_no_canary(run)
    for mode, spare in spares.items():  # negative controls: the comparison can fail
        after = logged_losses(spare, finish(z, spare, steps, mode=mode))
        assert sorted(after) == list(range(last.step + 1, steps + 1))
        assert any(values != {expected[step]} for step, values in after.items()), mode


def test_control_inplace_writer_leaves_half_lora_checkpoints_under_the_same_kills(models: tuple,
                                                                                  tmp_path: Path) -> None:
    """The kill check reads a LoRA checkpoint's own files (the adapter, not model.safetensors): a writer
    that fills the checkpoint's folder in place is caught by it."""
    z, m = models
    run = job.create(_spec(m, "lora"), tmp_path / "runs")
    seen = kill_trials(z, run, 4, "inplace", random.Random(5), save_sleep=0.3)
    assert seen["broken"] >= 1, f"the in-place writer survived {seen['kills']} kills: the harness cannot fail"


# ---- P8, C4, S6, S7: an exception, a full disk, a canary ---------------------------------------------

@pytest.mark.parametrize("technique", TECHNIQUES)
def test_P8_C4_S6_S7_exception_then_disk_full_in_a_checkpoint_and_no_canary(models: tuple, technique: str,
                                                                           tmp_path: Path) -> None:
    z, m = models
    run = job.create(_spec(m, technique, train={"max_steps": 30}), tmp_path / "runs")
    pid = z.start(run, resume=False, step_sleep=0.0, fault="raise@step:5")
    assert z.wait(pid) == 1
    assert_failed_by_injected_exception(run, 5, "step-000004")
    # C4: disk full while saving step 6, files limited to half the size of step 4's weights
    kept = run / "checkpoints" / "step-000004"
    limit = half_the_size_of(run, kept / WEIGHTS[technique])
    pid = z.start(run, resume=True, step_sleep=0.0, fsize=limit)
    wait_disk_full_pause(run, "step-000004")
    assert CANARY in Path(f"/proc/{pid}/environ").read_text(errors="replace")  # the job does hold the secret
    assert control(run, "stop")["ok"]
    assert_stopped_while_disk_full(run, z.wait(pid))
    # the kept checkpoint loads: a resume without the limit goes on from it to the end
    offset = finish(z, run, 8)
    resumed = [e for e in runfolder.read_events(run, offset)[0] if e.get("resumed_from")]
    assert [e["resumed_from"] for e in resumed] == ["step-000004"]
    assert sorted(logged_losses(run, offset)) == [5, 6, 7, 8] and (run / "final").is_dir()
    assert_no_canary(run)  # S6: spec, events, status, both job logs, checkpoints, final/


# ---- N1, N3: non-finite steps, in process -------------------------------------------------------------

BAD_ATTEMPTS = (3, 10, 11, 12)  # the attempts STREAK_FAULT makes non-finite


def _teacher_nan(trainer) -> None:
    """The non-finite value comes from inside distillation's loss: the teacher's logits are NaN on the bad
    attempts (as an overflowing 16-bit teacher would give), so the KL term is NaN and the CE term is not."""
    prepare = trainer._prepare

    def prepare_then_break_the_teacher() -> None:
        prepare()
        teacher = trainer.prep.extra["teacher"]
        forward = teacher.forward

        def nan_forward(*args, **kwargs):
            out = forward(*args, **kwargs)
            if trainer.tries in BAD_ATTEMPTS:
                out.logits = out.logits * float("nan")
            return out

        teacher.forward = nan_forward

    trainer._prepare = prepare_then_break_the_teacher


@pytest.mark.parametrize("technique,source", [("lora", "LLMW_FAULT"), ("distill", "LLMW_FAULT"),
                                              ("distill", "teacher")])
def test_N1_N3_nonfinite_steps_are_skipped_state_stays_finite_and_K_in_a_row_pause(
        models: tuple, technique: str, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from safetensors.torch import load_file

    from engine.checkpoints import guards as save_guard

    from engine.run import step_guard

    _, m = models
    s = _spec(m, technique, train={"max_steps": 30}, log={"every": 2}, checkpoint={"every": 4, "keep": 20})
    changed: dict[int, bool] = {}  # attempt -> did it change any trainable weight or moment

    def watch(trainer) -> None:
        step = trainer._train_step

        def watched() -> bool:
            opt = step_guard.inner(trainer.optimizer)
            before = [t.clone() for p in trainer.params for t in (p.detach(), *opt.state.get(p, {}).values())]
            done = step()
            after = [t for p in trainer.params for t in (p.detach(), *opt.state.get(p, {}).values())]
            changed[trainer.tries] = len(before) != len(after) or not all(map(torch.equal, before, after))
            return done

        trainer._train_step = watched
        if source == "teacher":
            _teacher_nan(trainer)

    fault = STREAK_FAULT if source == "LLMW_FAULT" else ""
    trainer, code, evs = run_in_process(s, tmp_path / "runs", monkeypatch, fault, prepare=watch)
    assert trainer.device_guard  # fused AdamW over the adapter / the student: skipped on the device
    assert_one_bad_step_goes_on_K_in_a_row_pause(trainer, code, evs, on_device=True)  # metrics all finite too
    assert tuple(t for t, c in changed.items() if not c) == BAD_ATTEMPTS  # exactly the bad attempts did nothing
    opt = step_guard.inner(trainer.optimizer)
    assert all(opt.state[p] for p in trainer.params)  # the moments exist, and are finite
    assert save_guard.nonfinite_state(trainer.params, opt) == []
    newest = ck.lineage(trainer.run)[0]  # saved at the pause: whole and finite
    assert ck.verify(newest.path) is None
    assert all(bool(torch.isfinite(t).all()) for t in load_file(newest.path / WEIGHTS[technique]).values())


# ---- R2, R3, R4: another base under the adapter, another teacher, another config ------------------------

def _hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, snapshots: list[Path]) -> Path:
    """A Hub cache (offline) holding `acme/<name>` at one commit per snapshot folder, refs/main at the first;
    returns refs/main, which a test rewrites to move the id to another snapshot (as a download would)."""
    import huggingface_hub.constants as hub

    cache = tmp_path / "hub"
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))  # read by the cache lookups at each call
    repo = cache / f"models--acme--{name}"
    for i, folder in enumerate(snapshots):
        shutil.copytree(folder, repo / "snapshots" / (str(i + 1) * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    return repo / "refs" / "main"


class Change(NamedTuple):
    """What a resume finds changed: the models the run started with and those the resume names (paths or
    Hub ids), options changed in the resume's spec, `switch(True)` changing files under the same names
    (`switch(False)` undoes it), and what the refusal must name."""
    start: dict
    resume: dict
    options: dict
    switch: Callable[[bool], None]
    named: list[str]


def _change(technique: str, where: str, m: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Change:
    role = "base" if technique == "lora" else "teacher"
    files = {"base": ["the base model's files changed", "adapter for the base it was saved with"],
             "teacher": ["the teacher model's files changed"]}[role]
    if where == "hub":  # the same id, its cache moved to another commit of the same shape
        ref = _hub_cache(tmp_path, monkeypatch, role, [m[role], m[f"other-{role}"]])
        m = {**m, role: f"acme/{role}"}
        return Change(m, m, {}, lambda on: ref.write_text(("2" if on else "1") * 40), files)
    if where == "options":  # the same config is enforced (R2)
        key, was, now = {"lora": ("lora_rank", 16, 8), "distill": ("temperature", 2.0, 4.0)}[technique]
        return Change(m, m, {key: now}, lambda on: None, [f"options.{key}) was {was!r}, now {now!r}"])
    if technique == "lora":  # the same path, its weights replaced by another base's of the same shape
        m = {**m, "base": Path(shutil.copytree(m["base"], tmp_path / "base"))}
        weights, original = m["base"] / "model.safetensors", (m["base"] / "model.safetensors").read_bytes()
        other = (m["other-base"] / "model.safetensors").read_bytes()
        return Change(m, m, {}, lambda on: weights.write_bytes(other if on else original), files)
    named = [f"options.teacher) was {str(m['teacher'])!r}, now {str(m['other-teacher'])!r}", *files]
    return Change(m, {**m, "teacher": m["other-teacher"]}, {}, lambda on: None, named)


@pytest.mark.parametrize("technique", TECHNIQUES)
@pytest.mark.parametrize("where", ["folder", "hub", "options"])
def test_R2_R3_R4_resume_on_another_base_teacher_or_config_is_refused_naming_it(
        models: tuple, technique: str, where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LoRA: another base of the same shape under the same name (a folder's weights replaced, or a Hub id
    whose cache moved to another commit). Distillation: another teacher folder in the spec, or the same
    teacher id at another commit. Both: a changed option (the same config is enforced, R2)."""
    change = _change(technique, where, models[1], tmp_path, monkeypatch)
    s = _spec(change.start, technique, train={"max_steps": 2})
    run = job.create(s, tmp_path / "runs")
    assert Trainer(run, s).run_job() == 0
    changed = _spec(change.resume, technique, train={"max_steps": 4}, options=change.options)
    change.switch(True)
    (run / runfolder.SPEC).write_text(spec.to_toml(changed))
    offset = runfolder.read_events(run)[1]
    assert Trainer(run, changed, resume=True).run_job() == 2
    (error,) = [e for e in runfolder.read_events(run, offset)[0] if e["type"] == "error"]
    assert error["kind"] == "user" and "cannot resume from step-000002" in error["message"]
    assert all(n in error["message"] for n in change.named), error["message"]
    # control: with the original base, teacher and options the same resume goes on
    change.switch(False)
    longer = _spec(change.start, technique, train={"max_steps": 4})
    (run / runfolder.SPEC).write_text(spec.to_toml(longer))
    offset = runfolder.read_events(run)[1]
    assert Trainer(run, longer, resume=True).run_job() == 0
    assert sorted(logged_losses(run, offset)) == [3, 4]
