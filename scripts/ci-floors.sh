#!/usr/bin/env bash
# The dependency floors pyproject.toml declares, proven: a venv with the core, `apply` and `test` requirements
# pinned at their floors (scripts/floors.py; torch is this machine's 2.13.0 build), then the executor's tests.
# Raise a floor in pyproject.toml rather than declare one that fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-floors
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q torch==2.13.0
mapfile -t pinned < <(python3 scripts/floors.py)
"$venv/bin/python" -m pip install -q "${pinned[@]}"
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null \
  || "$venv/bin/python" -m pip install -q --no-deps -e .
echo "floors: $("$venv/bin/python" -m pip list --format=freeze 2>/dev/null \
  | grep -iE '^(pyyaml|jsonschema|networkx|scipy|accelerate|diffusers|transformers|peft|torch)==' | tr '\n' ' ')"
HF_HUB_OFFLINE=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_applied.py tests/test_budget.py tests/test_compat.py tests/test_run.py tests/test_tiny.py \
  tests/test_blocks.py \
  tests/test_devices.py tests/test_rules.py \
  tests/test_loader.py tests/test_plan.py
