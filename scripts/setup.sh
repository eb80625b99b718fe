#!/usr/bin/env bash
# Creates .venv and installs llm-wizard with its test extra. Idempotent: a second run with the same
# pyproject.toml does nothing. torch comes first, chosen for the machine:
#  - with an NVIDIA driver (nvidia-smi works): the project's torch range, which pip fills with a
#    CUDA build;
#  - without one: torch==2.13.0, the release this project is tested with (on the build machines a
#    CPU wheel of it lies on disk; elsewhere pip fetches it).
# LLMW_TORCH overrides the choice, e.g. LLMW_TORCH='torch==2.8.0'.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.llmw-installed"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/llm-wizard" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
if [ -n "${LLMW_TORCH:-}" ]; then
  torch_spec=$LLMW_TORCH
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  torch_spec='torch>=2.4,<3'
else
  torch_spec='torch==2.13.0'
fi
echo "setup: installing $torch_spec" >&2
"${pip[@]}" "$torch_spec"
echo "setup: installing llm-wizard and its test extra" >&2
"${pip[@]}" -e '.[test]'
echo "$want" > "$stamp"
