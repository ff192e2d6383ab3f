"""The output formats: names are data (a hostile corpus of names through every format), severities, bounds."""

import json
import os
import re
import threading
import unicodedata
from urllib.parse import unquote, unquote_to_bytes, urlsplit
from xml.etree import ElementTree as ET

import pytest

from planner.cli import main
from planner.plan import Problem
from planner.report import FORMATS, MAX_PROBLEMS_PER_FILE
from planner.report.common import visible
from planner.report.text import _LEFT, SOURCE_LIMIT, SOURCE_WIDTH, excerpt, read_lines

HOSTILE = [
    "a:b.yaml", "100%.yaml", "%0A.yaml", "x#y.yaml", "q?.yaml", "sp ace.yaml", "back\\slash.yaml", "é.yaml",
    "宽字.yaml", "esc\x1b[31mred.yaml", "osc\x1b]8;;http://x\x07.yaml", "nl\nx.yaml", "cr\rx.yaml", "::error::x.yaml",
    "  ::warning ::x.yaml", "\u3000::notice::x.yaml", "##[set-output name=x]y.yaml", "bidi\u202egpj.yaml",
    "iso\u2066x\u2069.yaml", "c1\x9b31m.yaml", "del\x7f.yaml", "]]>.yaml", "<&>\"'.yaml", "bad\udcffbyte.yaml",
    "nonchar\ufffe.yaml", "tab\tx.yaml", "ls\u2028x.yaml", "nel\x85x.yaml", "a,b:c=d.yaml", "nul\x00.yaml",
    "sub/dir/ok.yaml", "../up.yaml", "-dash.yaml",
]
# Characters no human-facing output may carry raw: C0 (but the line feed between lines), DEL, C1, bidi controls,
# line/paragraph separators, lone surrogates.
FORBIDDEN = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029"
                       "\ud800-\udfff\ufffe\uffff]")


def hostile_problems(severity="error"):
    return [Problem(name, 2, 3, "PLN101", f"unknown key {name!s}", f"write {name} instead", severity)
            for name in HOSTILE]


def assert_no_workflow_command(output: str, ours=()):
    """No line of `output` can start a GitHub workflow command (`::` after leading whitespace), other than the
    annotations we write (`ours`), and no legacy `##[` command appears anywhere."""
    assert "##[" not in output
    for line in re.split("\r\n|\r|\n", output):
        if line.lstrip().startswith("::"):
            assert line.startswith(ours), line


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_renders_the_hostile_corpus_without_raising(name):
    output = FORMATS[name](hostile_problems(), HOSTILE)
    output.encode("utf-8")  # no lone surrogate left: it could not be written to stdout
    assert_no_workflow_command(output, ours=("::error ", "::warning ", "::notice "))


def test_text_escapes_controls_and_newlines_in_paths_and_messages():
    output = FORMATS["text"](hostile_problems(), HOSTILE)
    assert not FORBIDDEN.search(output.replace("\n", ""))
    lines = output.splitlines()
    assert len(lines) == len(HOSTILE) + 1  # one line per problem (no source: the files do not exist) + summary
    assert lines[HOSTILE.index("esc\x1b[31mred.yaml")].startswith("esc\\x1b[31mred.yaml:2:3: PLN101 unknown key")
    assert lines[HOSTILE.index("nl\nx.yaml")].startswith("nl\\nx.yaml:2:3: ")
    assert lines[HOSTILE.index("bidi\u202egpj.yaml")].startswith("bidi\\u202egpj.yaml:2:3: ")
    assert lines[HOSTILE.index("bad\udcffbyte.yaml")].startswith("bad\\xffbyte.yaml:2:3: ")
    assert lines[HOSTILE.index("::error::x.yaml")].startswith("./::error::x.yaml:2:3: ")
    assert lines[HOSTILE.index("##[set-output name=x]y.yaml")].startswith("\\x23#[set-output")


def test_visible_escapes_every_member_of_the_class():
    for code in [*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029]:
        shown = visible(f"a{chr(code)}b")
        assert shown.startswith("a\\") and shown.endswith("b") and not FORBIDDEN.search(shown), hex(code)
    assert visible("plain é 宽 ✓") == "plain é 宽 ✓"


def test_text_escapes_the_quoted_source_line_and_keeps_the_caret_under_its_character(tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text("version: 1\nkey\x1b[2J\u202e: cpu\n", encoding="utf-8")
    column = "key\x1b[2J\u202e: cpu".index("cpu") + 1
    output = FORMATS["text"]([Problem(str(plan), 2, column, "PLN202", "no")], [str(plan)])
    source, caret = output.splitlines()[1:3]
    assert source == "  2 | key\\x1b[2J\\u202e: cpu"
    assert source[caret.index("^"):].startswith("cpu")
    assert "\x1b" not in output and "\u202e" not in output


def test_text_source_line_never_carries_a_legacy_workflow_command(tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text("device: '##[set-output name=x]y'\n", encoding="utf-8")
    output = FORMATS["text"]([Problem(str(plan), 1, 9, "PLN203", "no")], [str(plan)])
    assert "##[" not in output
    source, caret = output.splitlines()[1:3]
    assert source[caret.index("^"):].startswith("'\\x23#[set-output")


def test_text_warnings_have_a_prefix_and_the_summary_counts_each_severity():
    problems = [Problem("a.yaml", 1, 1, "PLN101", "bad"), Problem("a.yaml", 2, 1, "PLN505", "odd", "", "warning"),
                Problem("b.yaml", 3, 1, "PLN505", "odd", "", "warning")]
    lines = FORMATS["text"](problems, ["a.yaml", "b.yaml", "c.yaml"]).splitlines()
    assert lines[0] == "a.yaml:1:1: PLN101 bad"
    assert lines[1] == "a.yaml:2:1: warning: PLN505 odd"
    assert lines[-1] == "1 error, 2 warnings in 2 of 3 files"
    only_errors = FORMATS["text"](problems[:1], ["a.yaml"]).splitlines()
    assert only_errors[-1] == "1 problem in 1 of 1 file"
    only_warnings = FORMATS["text"](problems[1:], ["a.yaml", "b.yaml", "c.yaml"]).splitlines()
    assert only_warnings[-1] == "3 plans valid; 2 warnings in 2 files"


def test_text_counts_an_unlisted_path_among_the_files():
    output = FORMATS["text"]([Problem("gone.yaml", 0, 0, "PLN000", "cannot read it")], ["a.yaml"])
    assert output.splitlines() == ["gone.yaml: PLN000 cannot read it", "1 problem in 1 of 2 files"]


def test_long_source_lines_are_cut_around_the_caret(tmp_path):
    plan = tmp_path / "p.yaml"
    line = "k: [" + ", ".join(f"n{i}" for i in range(3000)) + "]"
    plan.write_text(line + "\n", encoding="utf-8")
    column = line.index("n1500") + 1
    output = FORMATS["text"]([Problem(str(plan), 1, column, "PLN209", "no")], [str(plan)])
    source, caret = output.splitlines()[1:3]
    shown = source[len("  1 | "):]
    assert shown.startswith("…") and shown.endswith("…") and len(shown) <= SOURCE_WIDTH + 2
    assert source[caret.index("^"):].startswith("n1500")


@pytest.mark.parametrize("index", [0, 1, 39, 40, 41, 99, 100, 101, 150, 299])
def test_excerpt_puts_the_caret_under_its_character_at_every_position(index):
    line = "".join(chr(0x41 + i % 26) for i in range(300))
    shown, offset = excerpt(line, index)
    assert shown[offset] == line[index]
    assert len(shown) <= SOURCE_WIDTH + 2
    assert shown.startswith("…") == (index > _LEFT)  # up to _LEFT columns before the caret
    assert shown.endswith("…") == (index < len(line) - (SOURCE_WIDTH - _LEFT))  # the rest after it


def test_excerpt_counts_wide_characters_as_two_columns_and_combining_ones_as_none():
    line = "宽" * 80 + "e\u0301" * 80 + "x" + "y" * 100
    index = line.index("x")
    shown, offset = excerpt(line, index)
    columns = sum(2 if unicodedata.east_asian_width(c) == "W" else 0 if unicodedata.combining(c) else 1
                  for c in shown[:shown.index("x")])
    assert columns == offset
    assert columns <= SOURCE_WIDTH
    # never a combining mark cut from its base right after the marker
    assert not unicodedata.combining(shown[1])


def test_excerpt_of_a_caret_past_the_end_points_just_after_the_line():
    shown, offset = excerpt("key:", 10)
    assert (shown, offset) == ("key:", 4)
    shown, offset = excerpt("x" * 500, 500)
    assert shown.startswith("…") and offset == len(shown)


def test_source_lines_split_where_yaml_counts_lines(tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_bytes(b"a: 1\rb: 2\r\nc: 3\xc2\x85d: 4\x0be: 5\n")
    assert read_lines(str(plan))[:4] == ["a: 1", "b: 2", "c: 3", "d: 4\x0be: 5"]


def test_source_lines_are_read_again_each_time(tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text("device: cpu\n")
    first = FORMATS["text"]([Problem(str(plan), 1, 9, "PLN202", "no")], [str(plan)])
    plan.write_text("device: meta\n")
    second = FORMATS["text"]([Problem(str(plan), 1, 9, "PLN202", "no")], [str(plan)])
    assert "device: cpu" in first and "device: meta" in second


def test_source_of_a_fifo_is_never_read_and_never_blocks(tmp_path):
    fifo = tmp_path / "p.yaml"
    os.mkfifo(fifo)
    result = []
    worker = threading.Thread(target=lambda: result.append(
        FORMATS["text"]([Problem(str(fifo), 1, 1, "PLN003", "no")], [str(fifo)])), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "rendering blocked on a FIFO"
    assert result[0].splitlines()[0].endswith("PLN003 no") and " | " not in result[0]


def test_source_of_a_huge_file_is_read_only_up_to_the_limit(tmp_path):
    huge = tmp_path / "p.yaml"
    with open(huge, "wb") as f:
        f.write(b"a: 1\n")
        f.truncate(64 * SOURCE_LIMIT)  # sparse: costs no disk
    lines = read_lines(str(huge))
    assert lines[0] == "a: 1" and sum(len(line) for line in lines) <= SOURCE_LIMIT
    output = FORMATS["text"]([Problem(str(huge), 3, 1, "PLN003", "no")], [str(huge)])
    assert " | " not in output  # line 3 lies beyond the bytes read: no line rather than a wrong one


def test_text_and_github_count_the_problems_past_the_cap():
    extra = 1234
    problems = [Problem("big.yaml", i + 1, 1, "PLN101", f"key {i}") for i in range(MAX_PROBLEMS_PER_FILE + extra)]
    problems.append(Problem("small.yaml", 1, 1, "PLN101", "one"))
    files = ["big.yaml", "small.yaml"]
    text = FORMATS["text"](problems, files).splitlines()
    assert len(text) == MAX_PROBLEMS_PER_FILE + 1 + 1 + 1
    assert text[MAX_PROBLEMS_PER_FILE].startswith(f"big.yaml: ... and {extra} more problems in this file")
    assert text[-1] == f"{MAX_PROBLEMS_PER_FILE + extra + 1} problems in 2 of 2 files"
    github = FORMATS["github"](problems, files).splitlines()
    assert len(github) == MAX_PROBLEMS_PER_FILE + 1 + 1
    assert github[MAX_PROBLEMS_PER_FILE].startswith("::notice file=big.yaml,title=planner::")
    assert f"and {extra} more problems" in github[MAX_PROBLEMS_PER_FILE]
    assert len(json.loads(FORMATS["json"](problems, files))["problems"]) == len(problems)  # programs get all
    assert len(json.loads(FORMATS["sarif"](problems, files))["runs"][0]["results"]) == len(problems)


def test_a_huge_message_is_cut_in_text():
    output = FORMATS["text"]([Problem("a.yaml", 1, 1, "PLN101", "k" * 100_000)], ["a.yaml"])
    assert len(output) < 2000


def _github_unescape(value: str, prop: bool) -> str:
    pairs = [("%0D", "\r"), ("%0A", "\n")] + ([("%3A", ":"), ("%2C", ",")] if prop else []) + [("%25", "%")]
    for code, char in pairs:
        value = value.replace(code, char)
    return value


def test_github_lines_are_ours_alone_and_name_the_exact_file():
    problems = hostile_problems() + [Problem("w.yaml", 1, 1, "PLN505", "w", "", "warning"),
                                     Problem("n.yaml", 1, 1, "PLN402", "n", "", "note")]
    output = FORMATS["github"](problems, HOSTILE)
    lines = output.split("\n")[:-1]
    assert len(lines) == len(problems)
    assert [line.split(" ", 1)[0] for line in lines[-2:]] == ["::warning", "::notice"]
    for problem, line in zip(problems, lines, strict=True):
        assert re.match(r"::(error|warning|notice) file=", line)
        assert not FORBIDDEN.search(line)
        properties, data = line.split(" ", 1)[1].split("::", 1)
        fields = dict(field.split("=", 1) for field in properties.split(","))
        assert set(fields) == {"file", "line", "col", "title"}
        assert data.startswith(problem.rule + " ")
        if not FORBIDDEN.search(problem.path.replace("\n", "").replace("\r", "")) and "##[" not in problem.path:
            assert _github_unescape(fields["file"], prop=True) == problem.path


def test_junit_is_well_formed_with_one_failure_per_testcase():
    problems = hostile_problems() + [Problem(HOSTILE[0], 5, 1, "PLN211", "a cycle")]
    output = FORMATS["junit"](problems, HOSTILE + ["clean.yaml"])
    suite = ET.fromstring(output.encode("utf-8"))
    cases = suite.findall("testcase")
    assert len(cases) == len(HOSTILE) + 1 == int(suite.get("tests"))
    assert all(len(case.findall("failure")) <= 1 for case in cases)
    failed = [case for case in cases if case.find("failure") is not None]
    assert len(failed) == len(HOSTILE) == int(suite.get("failures"))
    first = cases[0].find("failure")
    assert first.get("type") == "PLN101 PLN211" and first.get("message").startswith("2 problems")
    assert len(first.text.splitlines()) == 3  # both problems, then the count
    assert [case.get("name") for case in cases] == [visible(name) for name in HOSTILE] + ["clean.yaml"]
    assert_no_workflow_command(output)
    assert "]]>" not in output.replace("]]&gt;", "")


def test_junit_file_with_warnings_only_passes_with_its_warnings_shown():
    problems = [Problem("w.yaml", 1, 1, "PLN505", "odd", "", "warning")]
    suite = ET.fromstring(FORMATS["junit"](problems, ["w.yaml"]).encode("utf-8"))
    case = suite.find("testcase")
    assert case.find("failure") is None and suite.get("failures") == "0"
    assert "warning: PLN505 odd" in case.find("system-out").text


def test_json_keeps_names_exact_and_counts_severities():
    problems = hostile_problems() + [Problem("w.yaml", 1, 1, "PLN505", "w", "", "warning")]
    output = FORMATS["json"](problems, HOSTILE)
    assert "##[" not in output and not FORBIDDEN.search(output.replace("\n", ""))
    data = json.loads(output)
    assert [p["path"] for p in data["problems"]][:-1] == HOSTILE and data["files"] == HOSTILE
    assert data["summary"] == {"checked": len(HOSTILE) + 1, "with_problems": len(HOSTILE) + 1,
                               "errors": len(HOSTILE), "warnings": 1, "notes": 0}


def test_sarif_uris_are_percent_encoded_relative_references_that_name_the_right_file():
    names = [n for n in HOSTILE if "\x00" not in n]
    log = json.loads(FORMATS["sarif"]([Problem(n, 1, 1, "PLN101", "x") for n in names], names))
    for name, result in zip(names, log["runs"][0]["results"], strict=True):
        location = result["locations"][0]["physicalLocation"]["artifactLocation"]
        uri = location["uri"]
        parts = urlsplit(uri)
        assert parts.scheme == "" and parts.netloc == "" and parts.query == "" and parts.fragment == ""
        assert re.fullmatch(r"[A-Za-z0-9\-._~/%]*", uri), uri
        assert unquote_to_bytes(uri) == os.fsencode(name)
        if "\udcff" not in name:
            assert unquote(uri) == name
        assert location["uriBaseId"] == "SRCROOT"
    base = log["runs"][0]["originalUriBaseIds"]["SRCROOT"]["uri"]
    assert base.startswith("file:///") and base.endswith("/")


def test_sarif_colon_in_the_first_segment_cannot_read_as_a_scheme():
    log = json.loads(FORMATS["sarif"]([Problem("a:b.yaml", 1, 1, "PLN101", "x")], ["a:b.yaml"]))
    uri = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert urlsplit(uri).scheme == "" and unquote(uri) == "a:b.yaml"


def test_sarif_absolute_paths_are_file_uris(tmp_path):
    path = str(tmp_path / "dir with space" / "a#b%c.yaml")
    log = json.loads(FORMATS["sarif"]([Problem(path, 1, 1, "PLN101", "x")], [path]))
    location = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    parts = urlsplit(location["uri"])
    assert parts.scheme == "file" and unquote(parts.path) == path and "uriBaseId" not in location


def test_sarif_unknown_rule_and_severity_levels():
    problems = [Problem("a.yaml", 1, 1, "PLN999", "future rule", "", "warning"),
                Problem("a.yaml", 2, 1, "PLN101", "bad"), Problem("a.yaml", 3, 1, "PLN998", "info", "", "note"),
                Problem("a.yaml", 4, 1, "PLN997", "odd", "", "weird")]
    run = json.loads(FORMATS["sarif"](problems, ["a.yaml"]))["runs"][0]
    assert [r["level"] for r in run["results"]] == ["warning", "error", "note", "error"]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == ["PLN101", "PLN997", "PLN998", "PLN999"]
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
    assert rules[0]["shortDescription"]["text"] and rules[3] == {"id": "PLN999",
                                                                "defaultConfiguration": {"level": "warning"}}
    assert run["columnKind"] == "unicodeCodePoints"


def test_sarif_and_json_keep_no_legacy_command_but_the_same_data():
    name = "##[set-output name=x]y.yaml"
    for fmt in ("json", "sarif"):
        output = FORMATS[fmt]([Problem(name, 1, 1, "PLN101", name)], [name])
        assert "##[" not in output
    assert json.loads(FORMATS["json"]([Problem(name, 1, 1, "PLN101", name)], [name]))["files"] == [name]


def test_validate_escapes_a_hostile_file_name_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = "::error::x\x1b[31m\u202e.yaml"
    (tmp_path / name).write_text("version: 1\ndevice: cpu\ncomponents: [unet]\n", encoding="utf-8")
    assert main(["validate", "."]) == 1
    out = capsys.readouterr().out
    assert out.startswith("./::error::x\\x1b[31m\\u202e.yaml:2:9: PLN202 ")
    assert_no_workflow_command(out)
    for fmt in ("github", "junit", "sarif", "json"):
        assert main(["validate", "--format", fmt, "."]) == 1
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\u202e" not in out
        assert_no_workflow_command(out, ours=("::error ",))


def test_validate_exits_0_with_warnings_only(tmp_path, capsys, monkeypatch):
    import planner.cli.validate as cli_validate

    plan = tmp_path / "p.yaml"
    plan.write_text("x")
    monkeypatch.setattr(cli_validate, "check", lambda path: [Problem(path, 1, 1, "PLN505", "odd", "", "warning")])
    assert main(["validate", str(plan)]) == 0
    assert "warning: PLN505 odd" in capsys.readouterr().out


def test_warnings_fail_validate_only_under_strict(capsys):
    from conftest import DATA

    warned = str(DATA / "warned" / "model-left-out.yaml")
    assert main(["validate", warned]) == 0
    out = capsys.readouterr().out
    assert "warning: PLN505 controlnet is not in the plan" in out
    assert out.endswith("1 plan valid; 1 warning in 1 file\n")
    assert main(["validate", "--strict", warned]) == 1
    assert main(["validate", "--strict", str(DATA / "good")]) == 0
    capsys.readouterr()
    assert main(["validate", "--format", "github", warned]) == 0
    assert capsys.readouterr().out.startswith(f"::warning file={warned},line=6,col=1,title=PLN505::PLN505 controlnet")


def test_json_counts_warnings_in_its_summary(capsys):
    from conftest import DATA

    assert main(["validate", "--format", "json", str(DATA / "bad" / "models-left-out-and-an-error.yaml")]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [p["severity"] for p in report["problems"]] == ["error", "warning", "warning"]
    assert report["summary"] == {"checked": 1, "with_problems": 1, "errors": 1, "warnings": 2, "notes": 0}


def test_sarif_rules_come_from_the_rule_list():
    from planner.rules import RULES

    problems = [Problem("a.yaml", 5, 1, "PLN505", "vae is not in the plan", RULES["PLN505"].fix, "warning"),
                Problem("a.yaml", 6, 1, "PLN212", "both", "keep one")]
    run = json.loads(FORMATS["sarif"](problems, ["a.yaml"]))["runs"][0]
    for descriptor in run["tool"]["driver"]["rules"]:
        rule = RULES[descriptor["id"]]
        assert descriptor == {"id": rule.id, "defaultConfiguration": {"level": rule.severity},
                              "shortDescription": {"text": rule.title}, "help": {"text": rule.fix}}
    assert [r["level"] for r in run["results"]] == ["warning", "error"]
