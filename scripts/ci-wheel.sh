#!/usr/bin/env bash
# The package as users get it: build the wheel, install it with the core dependencies only (no torch) in a fresh
# venv, and run `planner validate` and `planner schema` from it, outside the source tree (package data included).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rm -rf dist .venv-core
.venv/bin/python -m pip wheel -q --no-deps -w dist .
python3 -m venv .venv-core
.venv-core/bin/python -m pip install -q dist/offload_planner-*.whl
cd "$(mktemp -d)"
"$root/.venv-core/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
  || { echo "the core install pulled torch"; exit 1; }
"$root/.venv-core/bin/planner" --version
"$root/.venv-core/bin/planner" validate "$root/plans"
"$root/.venv-core/bin/planner" schema | "$root/.venv-core/bin/python" -c "import json, sys; json.load(sys.stdin)"
set +e
"$root/.venv-core/bin/planner" apply "$root/plans/examples/tiny-sd.yaml" --dry-run 2>err.txt
code=$?
set -e
cat err.txt
[ "$code" = 2 ] && grep -q "offload-planner\[apply\]" err.txt \
  || { echo "apply on a core-only install must say which extra to install, exit 2 (got $code)"; exit 1; }
echo "wheel: core-only install validates, prints the schema, and names the apply extra"
