"""JUnit XML: one testsuite, one testcase per checked file, at most one <failure> per testcase.

Strict consumers (Jenkins, GitLab) expect one failure per testcase, so a file's problems all go in that one
failure: `type` lists their rules, `message` counts them and quotes the first, the text holds one line per
problem. A file with warnings (or notes) only passes: they go in its <system-out>. Every problem is listed,
uncapped. Text is shown through `visible`, so the document is well-formed XML 1.0 whatever the names hold (no
C0 control, lone surrogate or non-character reaches it) and prints no terminal control; `##[` and a `:` opening
a line are written as character references, so printing the report in a GitHub Actions log runs no workflow
command.
"""

from __future__ import annotations

import re
from xml.etree import ElementTree as ET

from planner.plan import Problem
from planner.report.common import LEGACY_COMMAND, all_files, by_file, clip, is_error, plural, tally, visible
from planner.report.text import headline

_LINE_OPENING_COLON = re.compile(r"(^|[\r\n])(\s*):")


def render(problems: list[Problem], files: list[str]) -> str:
    groups = by_file(problems)
    checked = all_files(problems, files)
    failed = sum(any(is_error(p) for p in groups.get(path, [])) for path in checked)
    suite = ET.Element("testsuite", name="planner validate", tests=str(len(checked)), failures=str(failed),
                       errors="0", skipped="0", time="0")
    for path in checked:
        _testcase(suite, path, groups.get(path, []))
    xml = ET.tostring(suite, encoding="unicode", xml_declaration=True)
    return _neutral(xml) + "\n"


def _testcase(suite: ET.Element, path: str, problems: list[Problem]) -> None:
    name = visible(path)
    case = ET.SubElement(suite, "testcase", classname="plan", name=name, file=name, time="0")
    if not problems:
        return
    lines = "\n".join(headline(p) for p in problems)
    if not any(is_error(p) for p in problems):
        ET.SubElement(case, "system-out").text = lines
        return
    first = problems[0]
    message = f"{first.rule} {first.text}" if len(problems) == 1 else \
        f"{tally(problems)}; first: {first.rule} {first.text}"
    rules = " ".join(dict.fromkeys(p.rule for p in problems))
    failure = ET.SubElement(case, "failure", type=visible(rules), message=clip(visible(message)))
    failure.text = lines + ("" if len(problems) == 1 else f"\n({plural(len(problems), 'problem')} in this file)")


def _neutral(xml: str) -> str:
    """The same document with `##[` and a `:` opening a line written as character references."""
    xml = xml.replace(LEGACY_COMMAND, "##&#91;")
    return _LINE_OPENING_COLON.sub(lambda m: m.group(1) + m.group(2) + "&#58;", xml)
