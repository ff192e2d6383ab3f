"""A pipeline folder on disk, as `planner.folder.pipeline` reads it: its component folders' listings, its small JSON
files and its safetensors headers, one by one within the folder's `Budget`, and what stands where a file was
expected when it is not one (`what`).

Links are followed wherever they lead, out of the folder too (the hub cache's snapshots link into `blobs/`): a
component folder that is a link is listed, a file that is a link is read as its target. Only the folders that
model_index.json names are listed, one level each: nothing is walked, so a link loop costs one failed listing.
"""

from __future__ import annotations

import os
from pathlib import Path

from planner.folder.bounds import PAST_A_BOUND, Budget, Past
from planner.folder.files import describe, read_json
from planner.folder.pipeline import has_variant_files, pipeline_index
from planner.folder.safetensors import read_header
from planner.plan import Problem
from planner.rules import Rule


class Folder:
    """A pipeline folder on disk: what `read_pipeline` lists and reads, within one `budget` per folder read."""

    def __init__(self, root: Path):
        self.root = root
        self.budget = Budget()

    def where(self, rel: str) -> str:
        return str(self.root / rel)

    def listing(self, name: str) -> set[str] | None:
        """The regular files of a component folder (symbolic links followed, as in the hub cache), or None."""
        try:
            with os.scandir(self.root / name) as entries:
                return {e.name for e in entries if _regular(e)}
        except OSError:
            return None

    def what(self, rel: str) -> str | None:
        """What is at `rel`, in words (`planner.folder.files.describe`), or None when nothing is there."""
        return describe(self.root / rel)

    def json(self, rel: str, rule: Rule) -> tuple[object, Problem | None]:
        """(document, None) of a small JSON file, or (None, a `rule` problem saying why it cannot be used)."""
        doc, why = read_json(self.root / rel, self.budget)
        if isinstance(why, Past):
            return None, self.budget.note(rule.problem(self.where(rel), why, PAST_A_BOUND))
        return doc, rule.problem(self.where(rel), why) if why else None

    def headers(self, rels: list[str]) -> list:
        """Each header's (tensors, problem), read one by one; None for those not read once a bound is met."""
        return [None if self.budget.spent else read_header(self.root / rel, self.budget) for rel in rels]


def _regular(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def has_variant(folder: str | os.PathLike, variant: str) -> bool:
    """Whether a component folder that the pipeline folder's model_index.json names holds files of `variant`:
    the test `from_pretrained` makes before it refuses a variant ("no such modeling files are available"). True
    when model_index.json cannot be read: `read` says what is wrong with it, and diffusers will too."""
    root = Path(folder)
    doc, why = read_json(root / "model_index.json")
    parsed, _ = (None, None) if why else pipeline_index(doc, str(root))
    if parsed is None:
        return True
    source = Folder(root)
    return any(has_variant_files(source.listing(name) or (), variant) for name in parsed[1])
