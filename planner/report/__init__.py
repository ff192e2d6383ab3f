"""Interchangeable views over one list of problems: `FORMATS[name](problems, files) -> str`.

`files` is every file that was checked, in order, so that views listing files (junit) show the clean ones too.
"""

from planner.report import github, json_, junit, sarif, text

FORMATS = {"text": text.render, "json": json_.render, "github": github.render, "junit": junit.render,
           "sarif": sarif.render}
