"""Print the requirements of the core, the `apply` extra and the `test` extra, pinned at the floors pyproject.toml
declares (`pkg>=1.2` becomes `pkg==1.2`), so CI can prove that those floors work. torch is left out: CI installs
the torch build on this machine first (see scripts/ci-floors.sh), and its floor is not proven here. The test
runners (pytest, hypothesis, ruff) stay at their newest: they are not what users install.

    python3 scripts/floors.py   # one requirement per line
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    sys.exit("scripts/floors.py needs Python 3.11 or newer (tomllib)")

ROOT = Path(__file__).resolve().parent.parent
_RUNNERS = {"pytest", "hypothesis", "ruff"}
_FLOOR = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([0-9][A-Za-z0-9.]*)$")


def floors() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    pinned = []
    for requirement in project["dependencies"] + extras["apply"] + extras["test"]:
        match = _FLOOR.match(requirement.strip())
        if match is None or match.group(1) in _RUNNERS:
            pinned.append(requirement)  # no floor declared (safetensors, pillow), or a test runner: the newest
        elif match.group(1) != "torch":
            pinned.append(f"{match.group(1)}=={match.group(2)}")
    return pinned


if __name__ == "__main__":
    print("\n".join(floors()))
