# The two commands of README.md. Each does all the set-up on a fresh machine (scripts/setup.sh).
.PHONY: setup demo test test-fast bench

PYTEST = HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider

setup:
	@bash scripts/setup.sh

# The main job on its embedded default: a tiny model trained live on Python's own source.
demo: setup
	.venv/bin/llm-wizard demo

# The whole suite, every layer (tests/unit, engine, e2e, tui); CI runs this through .ci/run. Two pytest-xdist
# workers: most tests keep one core busy (tiny models on one thread, or waiting on a job they started), so
# two at a time fill both cores. Each worker takes whole files (tests/conftest.py groups them); the files that
# start two-rank runs or time kills go to one worker, one after another. WORKERS=0 runs it in one process.
WORKERS ?= 2
test: setup
	$(PYTEST) -n $(WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

# While developing: the pure and in-process layers without the tests marked slow (under two minutes).
# The subprocess (e2e) and terminal (tui) layers run in `make test`, or alone: `pytest tests/tui`.
test-fast: setup
	$(PYTEST) -m "not slow" tests/unit tests/engine $(PYTEST_ARGS)

bench: setup
	.venv/bin/python bench/startup.py
