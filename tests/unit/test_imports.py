"""Import hygiene: the engine never pulls in the UI, and starting the CLI never pulls in torch."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parents[2]
UI = ("textual", "rich", "questionary", "tui")
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate")


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _top(mods: set[str]) -> set[str]:
    return {m.split(".")[0] for m in mods}


def test_packages_are_ours_not_namesakes():
    assert Path(engine.__file__).resolve().parent == ROOT / "engine"


def test_every_engine_module_imports_no_ui_and_no_heavy_library():
    names = ["engine"] + [f"engine.{m.name}" for m in pkgutil.walk_packages(engine.__path__, "")]
    code = "\n".join(f"import {n}" for n in names)
    loaded = _top(_modules_after(code))
    assert not loaded & set(UI), loaded & set(UI)
    assert not loaded & set(HEAVY), f"heavy import at module level in engine: {loaded & set(HEAVY)}"


def test_help_imports_no_torch():
    loaded = _top(_modules_after("import sys; sys.argv=['llm-wizard','--help']\nfrom tui.cli import main\n"
                                 "try:\n    main()\nexcept SystemExit:\n    pass"))
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_doctor_imports_no_heavy_library_on_a_cpu_build():
    loaded = _top(_modules_after("from tui.cli import main\nimport contextlib, io\n"
                                 "with contextlib.redirect_stdout(io.StringIO()):\n    main(['doctor', '--json'])"))
    # A CPU build of torch is read from torch/version.py; only a CUDA build needs the import.
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_import_linter_contract():
    res = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], capture_output=True, text=True,
                         cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def test_version_and_unavailable_commands():
    res = subprocess.run([sys.executable, "-m", "tui.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("llm-wizard ")
