# The two commands of README.md. Each does all the set-up on a fresh machine (scripts/setup.sh).
.PHONY: setup demo test test-fast bench

PYTEST = HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider

setup:
	@bash scripts/setup.sh

# The main job on its embedded default: a tiny model trained live on Python's own source.
demo: setup
	.venv/bin/llm-wizard demo

# The whole suite, every layer (tests/unit, engine, e2e, tui); CI runs this through .ci/run.
test: setup
	$(PYTEST) $(PYTEST_ARGS)

# While developing: the pure and in-process layers without the tests marked slow (under two minutes).
# The subprocess (e2e) and terminal (tui) layers run in `make test`, or alone: `pytest tests/tui`.
test-fast: setup
	$(PYTEST) -m "not slow" tests/unit tests/engine $(PYTEST_ARGS)

bench: setup
	.venv/bin/python bench/startup.py
