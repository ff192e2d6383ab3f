"""`read`: the sizes of the pipeline at a local folder, or at a hub id `org/name` when no such path exists.

Never raises for bad input: returns (sizes or None, problems), each problem a `Problem` with a PLN4xx rule, line 0
and the offending file as its path. A component with any problem is left out of the sizes, so every size reported
is exact. The problems are bounded (`planner.folder.bounds.capped`): at most MAX_PROBLEMS, then one counting the
rest, each message cut to MAX_MESSAGE_CHARS, so that every command prints a bounded report in every format.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from planner.folder.bounds import capped
from planner.folder.files import REGULAR, describe
from planner.folder.local import Folder
from planner.folder.pipeline import read_pipeline
from planner.folder.sizes import TORCH_DTYPES, ModelSizes
from planner.plan import Problem
from planner.rules import PLN401, PLN402

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def read(source: str | os.PathLike, *, variant: str | None = None, torch_dtype: str | None = None,
         revision: str | None = None) -> tuple[ModelSizes | None, list[Problem]]:
    """The sizes of the pipeline at `source` (a local folder, or a hub id `org/name` when no such path exists)
    and every problem found; sizes are None when the pipeline itself cannot be read. Never raises for bad input;
    raises ValueError for a `torch_dtype` other than float16, bfloat16, float32, float64."""
    sizes, problems = _read(source, variant, torch_dtype, revision)
    return sizes, capped(problems, os.fsdecode(source))


def _read(source, variant, torch_dtype, revision):
    if torch_dtype is not None and torch_dtype not in TORCH_DTYPES:
        raise ValueError(f"unknown torch_dtype {torch_dtype!r}: use one of {', '.join(TORCH_DTYPES)}")
    path = os.fsdecode(source)
    if not path.strip():  # Path("") is the working folder: never read it for a name that names nothing
        return None, [PLN401.problem(path, f"{path!r} names no folder")]
    if not os.path.exists(path) and _HUB_ID.fullmatch(path):
        from planner.folder.hub import read_hub  # huggingface_hub only for a hub id

        return read_hub(path, variant, torch_dtype, revision)
    return _read_folder(path, variant, torch_dtype)


def _read_folder(path: str, variant, torch_dtype):
    root = Path(path)
    if not root.is_dir():
        what = describe(root)
        what = "does not exist" if what is None else "is a file, not a folder" if what == REGULAR else \
            f"is {what}, not a folder"
        return None, [PLN401.problem(path, f"{path} {what}")]
    what = describe(root / "model_index.json")
    if what is not None and what != REGULAR:
        return None, [PLN402.problem(str(root / "model_index.json"), f"model_index.json is {what}, not a "
                                     "regular file")]
    if what is None:
        single = (root / "config.json").is_file()
        why = ("holds one model (config.json), not a pipeline" if single else "is not a diffusers pipeline folder")
        return None, [PLN401.problem(path, f"{path} {why}: it has no model_index.json",
                                     "name the pipeline folder above it" if single else None)]
    return read_pipeline(Folder(root), path, variant, torch_dtype)
