"""Several machines in the wizard (issue 7): machines and machine 0's address on the options step, the
spec's total process count, each machine's exact command on the review step (launch_plan's lines, never
wrapped), the run folder created where those commands point, the dashboard showing the other machines'
commands until they join, and the same in --plain."""

from __future__ import annotations

import sys
import tomllib

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from textual.widgets import Input
from engine.runfolder import events as ev
from tui_helpers import fixed_report, screen_text, wait_until, write_events

from engine.run import job

from engine.runfolder import folder as runfolder
from engine.spec import DistributedSpec, from_dict, load
from tui.app import make_app
from tui.machines import join_plan, node_plan, parse_address
from tui.modals.prompt import PromptModal
from tui.plain import Prompts, run_plain
from tui.screens.dashboard import DashboardScreen
from tui.screens.options import OptionsScreen
from tui.screens.review import ReviewScreen
from tui.widgets.commands import CommandBlock
from tui.wizard import Choices, apply_changes, spec_dict

RUN_ID = "20261129-120000-scratch-ab12"


@pytest.fixture
def fixed_run_id(monkeypatch):
    """The run folder's name is random; fixed so that the commands can be compared and snapshotted."""
    monkeypatch.setattr(runfolder, "new_run_id", lambda name="run": RUN_ID)


@pytest.fixture
def no_launch(monkeypatch):
    """job.launch recorded, not run: machine 0 would wait for machine 1 at an address nobody serves."""
    launched = []
    monkeypatch.setattr(job, "launch", lambda run, **kw: launched.append(run) or 4242)
    return launched


def test_address_is_an_ip_or_host_name_with_an_optional_port() -> None:
    assert parse_address("10.0.0.5", 29500) == ("10.0.0.5", 29500)
    assert parse_address(" node-0.cluster.local:1234 ", 29500) == ("node-0.cluster.local", 1234)
    assert parse_address("[fe80::1]:7000", 29500) == ("fe80::1", 7000)
    assert parse_address("fe80::1", 29500) == ("fe80::1", 29500)
    for bad, why in (("", "IP address or host name"), ("10.0.0.999", "not a valid IPv4"), ("a b", "neither"),
                     ("host:99999", "not a TCP port"), ("host:", "not a TCP port"), ("-bad-.x", "neither"),
                     ("[fe80::1", "closing ]")):
        with pytest.raises(ValueError, match=why):
            parse_address(bad, 29500)


def test_processes_are_per_machine_in_the_wizard_and_in_all_in_the_spec() -> None:
    assert Choices().main_process_port == DistributedSpec().main_process_port
    c = Choices(num_processes=2, num_machines=2, main_process_ip="10.0.0.1", main_process_port=29600)
    d = from_dict(spec_dict(c)).distributed
    assert (d.num_processes, d.num_machines, d.main_process_ip, d.main_process_port) == (4, 2, "10.0.0.1", 29600)
    assert "one process" not in str(from_dict(spec_dict(Choices(num_machines=2, main_process_ip="h"))).distributed)
    assert from_dict(spec_dict(Choices(num_machines=2, main_process_ip="h"))).distributed.num_processes == 2
    # the estimator's process counts are totals: 8 over 2 machines is 4 on each, more than 2 L4s
    assert apply_changes(c, {"distributed.num_processes": 8, "distributed.strategy": "fsdp"}, gpus=2, cuda=True) \
        == "needs 4 GPUs on each of 2 machines; this machine has 2"
    assert apply_changes(c, {"distributed.num_processes": 3}, gpus=2, cuda=True) == \
        "3 processes do not split evenly over 2 machines"
    assert apply_changes(c, {"distributed.num_processes": 4, "distributed.strategy": "ddp"}, gpus=2, cuda=True) is None
    assert (c.num_processes, c.world()) == (2, 4)


def test_a_run_folder_picked_beforehand_is_made_once(tmp_path) -> None:
    from engine.errors import UserError

    spec = from_dict(spec_dict(Choices(num_processes=1, num_machines=2, main_process_ip="10.0.0.1")))
    run = job.create(spec, tmp_path, run_id=RUN_ID)
    assert run == tmp_path / RUN_ID and load(run / "spec.toml") == spec
    with pytest.raises(UserError, match="already exists"):  # never another folder than the commands name
        job.create(spec, tmp_path, run_id=RUN_ID)


async def _options(pilot) -> None:
    app = pilot.app
    for _ in range(5):
        await pilot.press("enter")
        if "data_tokens" not in app.choices.extra:
            await wait_until(pilot, lambda: "data_tokens" in app.choices.extra or app.screen.STEP != 3)
        await wait_until(pilot, lambda: "estimate" in app.choices.extra or app.screen.STEP < 4)
    assert isinstance(app.screen, OptionsScreen)


async def test_two_machines_review_shows_each_command_and_launch_makes_that_run(
        tmp_path, monkeypatch, fixed_run_id, no_launch) -> None:
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    app = make_app(hardware=fixed_report("2xL4"), show_runs=False, runs_dir=str(runs))
    app.choices.dataset = "stdlib"
    async with app.run_test(size=(400, 40)) as pilot:  # wide: whole commands on screen, one a line
        await _options(pilot)
        c, screen = app.choices, app.screen
        assert c.num_processes == 2  # the proposal on two L4s: DDP over both
        keys = [s.key for s in screen.settings()]
        assert "num_machines" in keys and "main_process_ip" not in keys
        screen.query_one("#settings").highlighted = keys.index("num_machines")
        await pilot.press("right")  # machines 1 -> 2: machine 0's address appears
        keys = [s.key for s in screen.settings()]
        assert c.num_machines == 2 and "main_process_ip" in keys
        screen.query_one("#settings").highlighted = keys.index("main_process_ip")
        await pilot.pause()
        assert "Machine 0 is this one" in " ".join(screen_text(app).split())
        await pilot.press("space")
        assert isinstance(app.screen, PromptModal)
        app.screen.query_one(Input).value = "10.0.0.999"  # refused, the address stays unset
        await pilot.press("enter")
        assert c.main_process_ip == "" and isinstance(app.screen, OptionsScreen)
        await pilot.press("space")
        app.screen.query_one(Input).value = "10.0.0.1"
        await pilot.press("enter")
        assert (c.main_process_ip, c.main_process_port) == ("10.0.0.1", 29500)
        await wait_until(pilot, lambda: "4,096 tokens" in screen_text(app))  # 4 processes: 2 x 2 machines
        assert "x 4 GPUs on 2 machines" in screen_text(app)
        await pilot.press("enter")
        review = app.screen
        assert isinstance(review, ReviewScreen)
        await pilot.pause()
        spec = from_dict(tomllib.loads(review.toml))
        assert review.planned == runs.absolute() / RUN_ID
        plan = node_plan(review.planned, spec)
        lines = screen_text(app).splitlines()
        for rank in (0, 1):
            command = plan.commands[plan.commands.index(f"# machine {rank}:") + 1]
            assert f"--machine-rank {rank}" in command and str(review.planned) in command
            assert any(line.strip() == command for line in lines), command  # exact and whole, on one line
        assert "same path on every machine (shared storage)" in " ".join(screen_text(app).split())
        await pilot.press("enter")  # launch: the run folder is made at the path the commands name
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen))
        assert no_launch == [review.planned]
        written = load(review.planned / "spec.toml").distributed
        assert (written.num_processes, written.num_machines, written.main_process_ip) == (4, 2, "10.0.0.1")
        await pilot.pause()
        block = app.screen.query_one(CommandBlock)
        others = join_plan(review.planned).commands
        assert others == plan.commands[2:] and block.display  # machine 1's, until it joins
        assert any(line.strip() == others[1] for line in screen_text(app).splitlines())
        await pilot.press("c")
        assert app.clipboard == "\n".join(others) + "\n"
        write_events(review.planned, [ev.State(state="starting", step=0, world_size=4, strategy="ddp", num_machines=2,
                                                 message="4 processes (ddp, gloo) on 2 machine(s)")])
        await wait_until(pilot, lambda: not block.display)
        # the footer's bindings follow at the next refresh (late on a loaded machine)
        await wait_until(pilot, lambda: "Copy commands" not in screen_text(app))


async def test_review_commands_never_wrap_at_120_columns(tmp_path, monkeypatch, fixed_run_id) -> None:
    monkeypatch.chdir(tmp_path)
    app = make_app(hardware=fixed_report("2xL4"), show_runs=False, runs_dir=str(tmp_path / "runs"))
    c = app.choices
    c.dataset, c.num_processes, c.num_machines, c.main_process_ip, c.layout_chosen = "stdlib", 2, 2, "n0", True
    async with app.run_test(size=(120, 36)) as pilot:
        app.push_screen(ReviewScreen())
        await pilot.pause()
        lines = screen_text(app).splitlines()
        for rank in (0, 1):
            i = next(i for i, line in enumerate(lines) if line.strip() == f"# machine {rank}:")
            command = app.screen.commands[app.screen.commands.index(f"# machine {rank}:") + 1]
            shown = lines[i + 1].strip()
            assert len(command) > 120 and len(shown) > 100 and command.startswith(shown)  # cut, not wrapped:
            assert command[len(shown):][:12] not in lines[i + 2]  # the rest is off to the right, not below
        await pilot.press("c")  # the whole commands, as launch_plan wrote them, to the clipboard
        assert app.clipboard == "\n".join(app.screen.commands) + "\n"


def test_plain_asks_machines_and_prints_each_command(tmp_path, monkeypatch, capsys, fixed_run_id, no_launch) -> None:
    monkeypatch.setenv("LLM_WIZARD_FAKE_GPUS", "2xL4")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    runs = tmp_path / "runs"
    with create_pipe_input() as pipe:
        pipe.send_text("\x1b[A\x1b[A\r")  # technique: scratch
        pipe.send_text("\r\r\r\r")  # gpt2, tiny, stdlib data, 500 steps
        pipe.send_text("\r")  # GPUs: both
        pipe.send_text("\x1b[B\r")  # machines: 2
        pipe.send_text("nope nope\r")  # refused by the validator: the prompt stays
        pipe.send_text("\x7f" * 9 + "node0.lan:29511\r")
        pipe.send_text("\r")  # strategy ddp
        pipe.send_text("n")  # do not save
        pipe.send_text("y")  # launch
        code = run_plain(runs_dir=str(runs), prompts=Prompts(input=pipe, output=DummyOutput()), cwd=tmp_path)
    assert code == 0
    run = runs.absolute() / RUN_ID
    assert no_launch == [run]
    spec = load(run / "spec.toml")
    d = spec.distributed
    assert (d.num_processes, d.num_machines, d.main_process_ip, d.main_process_port) == (4, 2, "node0.lan", 29511)
    printed = capsys.readouterr().out.splitlines()
    commands = node_plan(run, spec).commands
    assert len(commands) == 4
    for line in commands:
        assert line in printed  # each one whole, on its own line


@pytest.mark.parametrize("size", [(80, 24), (120, 36)])
def test_snapshot_review_two_machines(snap_compare, tmp_path, monkeypatch, fixed_run_id, size) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", "/opt/venv/bin/python")  # in the commands: this machine's path
    app = make_app(hardware=fixed_report("2xL4"), show_runs=False, runs_dir="/home/user/llm-runs")
    c = app.choices
    c.dataset, c.num_processes, c.num_machines, c.main_process_ip, c.layout_chosen = "stdlib", 2, 2, "10.0.0.1", True

    async def review(pilot) -> None:
        app.push_screen(ReviewScreen())
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=review)


async def test_one_gpu_machine_shows_machines_on_request(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = make_app(hardware=fixed_report("1"), show_runs=False)
    app.choices.dataset = "stdlib"
    async with app.run_test(size=(100, 40)) as pilot:
        app.push_screen(OptionsScreen())
        await pilot.pause()
        screen = app.screen
        keys = [s.key for s in screen.settings()]
        assert not {"num_processes", "num_machines", "main_process_ip", "strategy"} & set(keys)  # one GPU
        assert "m Machines" in screen_text(app)
        await pilot.press("m", "right")  # the row appears highlighted; 1 -> 2 machines of one GPU each
        keys = [s.key for s in screen.settings()]
        assert app.choices.num_machines == 2 and {"num_machines", "main_process_ip", "strategy"} <= set(keys)
        assert "m Machines" not in screen_text(app)
        assert "Machines training together, each with the GPUs above" in " ".join(screen_text(app).split())
        app.choices.main_process_ip = "10.1.2.3"
        assert from_dict(spec_dict(app.choices)).distributed.num_processes == 2
