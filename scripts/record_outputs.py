"""Record what every command prints (`tests/recorded.py`) into tests/data/recorded.json.

    .venv/bin/python scripts/record_outputs.py

Run it only where a change of output is meant, in a commit of its own that says which messages changed and why:
tests/test_recorded.py holds every later change to this file.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import recorded  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="recorded-") as scratch:
        root = str(Path(scratch).resolve())
        folders = recorded.build_inputs(Path(root))
        results = [recorded.run(argv, root) for argv in recorded.commands(folders)]
    recorded.RECORDED.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(results)} commands recorded in {recorded.RECORDED.relative_to(recorded.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
