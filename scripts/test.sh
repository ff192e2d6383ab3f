#!/usr/bin/env bash
# The test suite in the project's venv. pytest exits non-zero on any failure and with 5 when it collects nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q "$@"
