#!/usr/bin/env bash
# Makes .venv (once) with the CPU build of torch first, then the project with everything apply and the tests need.
# torch must come first: with no torch installed, diffusers' bare `torch` requirement pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/planner ] || [ pyproject.toml -nt .venv/.installed ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e '.[apply,test,bench,plot]'
  touch .venv/.installed
fi
