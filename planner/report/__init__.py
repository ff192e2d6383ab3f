"""Interchangeable views over one list of problems: `FORMATS[name](problems, files) -> str`.

`files` is every file that was checked, in order, so that views listing files (junit) show the clean ones too; a
path that has problems without being listed (an unreadable entry) is shown as a file too.

Bounds: text and github show at most MAX_PROBLEMS_PER_FILE problems per file and count the rest; json, sarif and
junit list every problem (programs read them; the loader's size limit bounds each file's problems). Every view
shows names as data: see `planner.report.common`.
"""

from planner.report import github, json_, junit, sarif, text
from planner.report.common import MAX_PROBLEMS_PER_FILE

FORMATS = {"text": text.render, "json": json_.render, "github": github.render, "junit": junit.render,
           "sarif": sarif.render}

__all__ = ["FORMATS", "MAX_PROBLEMS_PER_FILE"]
