"""SARIF 2.1.0, as GitHub code scanning accepts it: the rule table as `tool.driver.rules`, a result per problem.

Every problem is listed, uncapped. A result's `level` follows its severity (error, warning, note). Artifact URIs
are RFC 3986 references: a relative path is percent-encoded byte by byte (its file-system bytes, so an
undecodable name survives) with `/` as the only separator, so `a:b.yaml`, `%`, `#`, `?`, spaces, a backslash
(data in a POSIX name) and non-ASCII characters all name the right file, resolved against `SRCROOT` (the working
folder); an absolute path is a `file://` URI. Columns count Unicode code points, as the loader does.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

from planner import __version__
from planner.plan import Problem
from planner.report.common import neutral_json, severity, visible
from planner.rules import RULES

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
BASE = "SRCROOT"
_LEVEL = {"error": "error", "warning": "warning", "note": "note"}


def render(problems: list[Problem], files: list[str]) -> str:
    first: dict[str, Problem] = {}
    for p in problems:
        first.setdefault(p.rule, p)
    index = {rule: i for i, rule in enumerate(sorted(first))}
    results = [_result(p, index[p.rule]) for p in problems]
    run = {"tool": {"driver": {"name": "offload-planner", "version": __version__,
                               "rules": [_descriptor(rule, first[rule]) for rule in index]}},
           "originalUriBaseIds": {BASE: {"uri": directory_uri(os.getcwd())}},
           "columnKind": "unicodeCodePoints", "results": results}
    log = {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}
    return neutral_json(json.dumps(log, indent=2)) + "\n"


def _descriptor(rule_id: str, example: Problem) -> dict:
    """The rule's entry, from the rule list; a rule id the list does not know (a newer rule, a plug-in) gets its
    id alone, at the level of its first problem."""
    rule = RULES.get(rule_id)
    if rule is None:
        return {"id": rule_id, "defaultConfiguration": {"level": _LEVEL[severity(example)]}}
    return {"id": rule_id, "defaultConfiguration": {"level": _LEVEL.get(rule.severity, "error")},
            "shortDescription": {"text": visible(rule.title)}, "help": {"text": visible(rule.fix)}}


def _result(p: Problem, index: int) -> dict:
    location = {"physicalLocation": {"artifactLocation": artifact_location(p.path)}}
    if p.line:
        location["physicalLocation"]["region"] = {"startLine": max(1, p.line), "startColumn": max(1, p.column)}
    return {"ruleId": p.rule, "ruleIndex": index, "level": _LEVEL[severity(p)],
            "message": {"text": visible(p.text)}, "locations": [location]}


def artifact_location(path: str) -> dict:
    """`{"uri": ..., "uriBaseId": "SRCROOT"}` for a relative path, `{"uri": "file:///..."}` for an absolute one."""
    if os.path.isabs(path):
        return {"uri": file_uri(path)}
    return {"uri": relative_uri(path), "uriBaseId": BASE}


def relative_uri(path: str) -> str:
    """A relative path as an RFC 3986 relative reference: each byte outside the unreserved set and `/` is
    percent-encoded (`:` too, so no first segment can read as a scheme; the separator on Windows is `/`)."""
    return quote(os.fsencode(_slashes(path)), safe="/")


def file_uri(path: str) -> str:
    """An absolute path as a `file://` URI (`file:///C:/...` on Windows)."""
    encoded = quote(os.fsencode(_slashes(path)), safe="/")
    if not encoded.startswith("/"):  # a drive letter: C:/x -> /C%3A/x would hide the drive; keep its colon
        encoded = "/" + encoded.replace("%3A", ":", 1)
    return "file://" + encoded


def directory_uri(path: str) -> str:
    """A folder as a `file://` URI ending in `/`, as SARIF requires of a base URI."""
    uri = file_uri(path)
    return uri if uri.endswith("/") else uri + "/"


def _slashes(path: str) -> str:
    # A backslash separates folders only on Windows; in a POSIX name it is data, encoded as %5C.
    return path.replace(os.sep, "/") if os.sep != "/" else path
