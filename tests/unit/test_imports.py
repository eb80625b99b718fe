"""Import hygiene: the engine never pulls in the UI, starting the CLI never pulls in torch, the import-linter
contracts hold, and no module of engine/ or tui/ is part of an import circle."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import grimp

import engine
import tui.commands
from tui.commands import COMMANDS

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


def engine_modules() -> list[str]:
    """Every module of engine/, subpackages included (walk_packages imports each package to walk into it)."""
    return ["engine"] + [m.name for m in pkgutil.walk_packages(engine.__path__, "engine.")]


def test_the_walk_reaches_every_wing():
    names = set(engine_modules())
    wings = {p.name for p in (ROOT / "engine").iterdir() if (p / "__init__.py").exists()}
    assert wings and all(f"engine.{w}" in names for w in wings), wings - {n.split(".")[1] for n in names if "." in n}
    assert {"engine.techniques.lora", "engine.run.distributed.worker", "engine.checkpoints.zero"} <= names
    files = {p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".") for p in (ROOT / "engine").rglob("*.py")}
    assert {f.removesuffix(".__init__") for f in files} == names


def test_every_engine_module_imports_no_ui_and_no_heavy_library():
    code = "\n".join(f"import {n}" for n in engine_modules())
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


# Circles tolerated while a restructuring is in flight; each must still exist (else delete it here).
KNOWN_CYCLES: set[frozenset[str]] = set()


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative), each sorted."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & graph.modules) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            for j in range(i, len(edges[node])):
                nxt = edges[node][j]
                if nxt not in index:
                    work += [(node, j + 1), (nxt, 0)]
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
    return out


def describe_cycle(graph: grimp.ImportGraph, component: list[str]) -> str:
    """One circle through the component's first module, with the line of each import."""
    first = component[0]
    back = next(m for m in component if first in graph.find_modules_directly_imported_by(m))
    chain = graph.find_shortest_chain(importer=first, imported=back) or (first,)
    steps = [*chain, first]
    lines = [f"{a} -> {b} (line {graph.get_import_details(importer=a, imported=b)[0]['line_number']})"
             for a, b in zip(steps, steps[1:])]
    return f"{len(component)} modules: {', '.join(component)}\n    " + "\n    ".join(lines)


def test_import_cycles_are_found():
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b", line_number=3, line_contents="import pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.c", line_number=4, line_contents="import pkg.c")
    graph.add_import(importer="pkg.c", imported="pkg.a", line_number=9, line_contents="import pkg.a")
    graph.add_import(importer="pkg.d", imported="pkg.a", line_number=1, line_contents="import pkg.a")
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert "pkg.c -> pkg.a (line 9)" in describe_cycle(graph, ["pkg.a", "pkg.b", "pkg.c"])


def test_no_import_cycles_in_engine_or_tui():
    """Imports inside functions and under TYPE_CHECKING count: a circle kept from failing by a late import
    is still a circle."""
    graph = grimp.build_graph("engine", "tui", include_external_packages=False, cache_dir=None)
    assert "engine.techniques.lora" in graph.modules and "tui.screens.dashboard" in graph.modules
    cycles = import_cycles(graph)
    found = {frozenset(c) for c in cycles}
    new = [describe_cycle(graph, c) for c in cycles if frozenset(c) not in KNOWN_CYCLES]
    assert not new, "import circles:\n  " + "\n  ".join(new)
    gone = [sorted(c) for c in KNOWN_CYCLES - found]
    assert not gone, f"no longer circles, remove them from KNOWN_CYCLES: {gone}"


def test_version():
    res = subprocess.run([sys.executable, "-m", "tui.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("llm-wizard ")


def test_every_command_module_is_a_command():
    """tui/commands/ holds commands and nothing else: each module is listed and has the command's shape."""
    modules = {m.name for m in pkgutil.iter_modules(tui.commands.__path__)}
    names = {name.replace("-", "_") for name in COMMANDS}  # notify-test lives in notify_test.py
    assert modules == names, modules ^ names
    for name in names:
        module = importlib.import_module(f"tui.commands.{name}")
        assert isinstance(module.HELP, str) and module.HELP, name
        assert callable(module.add_arguments) and callable(module.run), name
