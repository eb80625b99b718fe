# The two commands of README.md. Each does all the set-up on a fresh machine (scripts/setup.sh).
.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

# The main job on its embedded default: a tiny model trained live on Python's own source.
demo: setup
	.venv/bin/llm-wizard demo

test: setup
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	.venv/bin/python bench/startup.py
