"""A pipeline folder on disk, as `planner.folder.pipeline` reads it: its component folders' listings (links followed,
as in the hub cache), its small JSON files and its safetensors headers."""

from __future__ import annotations

import os
from pathlib import Path

from planner.folder.files import read_json
from planner.folder.pipeline import has_variant_files, pipeline_index
from planner.folder.safetensors import read_header
from planner.plan import Problem
from planner.rules import Rule


class Folder:
    """A pipeline folder on disk: what `read_pipeline` lists and reads."""

    def __init__(self, root: Path):
        self.root = root

    def where(self, rel: str) -> str:
        return str(self.root / rel)

    def listing(self, name: str) -> set[str] | None:
        """The regular files of a component folder (symbolic links followed, as in the hub cache), or None."""
        try:
            with os.scandir(self.root / name) as entries:
                return {e.name for e in entries if _regular(e)}
        except OSError:
            return None

    def json(self, rel: str, rule: Rule) -> tuple[object, Problem | None]:
        """(document, None) of a small JSON file, or (None, a `rule` problem saying why it cannot be used)."""
        doc, why = read_json(self.root / rel)
        return doc, rule.problem(self.where(rel), why) if why else None

    def headers(self, rels: list[str]) -> list:
        return [read_header(self.root / rel) for rel in rels]


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
