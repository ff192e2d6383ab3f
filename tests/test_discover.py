"""Finding plan files for `planner validate`: what is searched, skipped, excluded, reported once, or reported as
unreadable."""

import os
import threading
from xml.etree import ElementTree as ET

import pytest
from conftest import DATA

import planner.discover as discover_module
from planner.cli import main
from planner.discover import discover

GOOD = (DATA / "good" / "chain-list.yaml").read_text()


def plan(path, text=GOOD):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def found(*paths, exclude=()):
    result = discover([str(p) for p in paths], list(exclude))
    return [(e.path, e.problem.rule if e.problem else None) for e in result.entries]


def files(*paths, exclude=()):
    return [path for path, rule in found(*paths, exclude=exclude) if rule is None]


def rel(root, entries):
    return [os.path.relpath(path, root) for path in entries]


def test_folders_are_searched_for_yaml_and_yml_in_any_case(tmp_path):
    for name in ("a.yaml", "b.yml", "c.YAML", "d.Yml", "sub/e.yaml", "notes.txt", "f.json", "yaml", "g.yaml.bak"):
        plan(tmp_path / name)
    assert rel(tmp_path, files(tmp_path)) == ["a.yaml", "b.yml", "c.YAML", "d.Yml", "sub/e.yaml"]


def test_hidden_entries_and_virtual_environments_are_skipped(tmp_path):
    plan(tmp_path / "keep.yaml")
    for skipped in (".git/x.yaml", ".venv/x.yaml", ".tox/x.yaml", ".pre-commit-config.yaml", "venv/x.yaml",
                    "node_modules/pkg/x.yaml", "__pycache__/x.yaml", "lib/site-packages/pkg/x.yaml",
                    "dist-packages/x.yaml", "myenv/lib/x.yaml", "conda/lib/x.yaml", "deep/.hidden/x.yaml"):
        plan(tmp_path / skipped)
    (tmp_path / "myenv" / "pyvenv.cfg").write_text("home = /usr\n")
    (tmp_path / "conda" / "conda-meta").mkdir()
    assert rel(tmp_path, files(tmp_path)) == ["keep.yaml"]


def test_a_hidden_or_skipped_folder_named_explicitly_is_searched(tmp_path):
    plan(tmp_path / ".plans" / "a.yaml")
    plan(tmp_path / "venv" / "b.yaml")
    assert rel(tmp_path, files(tmp_path / ".plans", tmp_path / "venv")) == [".plans/a.yaml", "venv/b.yaml"]


def test_a_file_named_explicitly_is_validated_whatever_its_extension(tmp_path, capsys):
    path = plan(tmp_path / "plan.txt", "version: 1\ndevice: cpu\ncomponents: [unet]\n")
    assert files(path) == [str(path)]
    assert main(["validate", str(path)]) == 1
    assert "plan.txt:2:9: PLN202" in capsys.readouterr().out


def test_a_file_is_reported_once_under_the_name_it_was_first_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan(tmp_path / "plans" / "a.yaml")
    os.symlink("a.yaml", tmp_path / "plans" / "link.yaml")
    os.link(tmp_path / "plans" / "a.yaml", tmp_path / "plans" / "hard.yaml")
    result = files("plans/a.yaml", "plans", "./plans/", "plans/../plans/a.yaml", str(tmp_path / "plans"))
    assert result == ["plans/a.yaml"]
    assert files("./plans/", "plans/a.yaml") == ["plans/a.yaml"]  # a folder's files print under the folder's name


def test_finds_are_ordered_by_path_within_each_folder_then_by_argument(tmp_path):
    for name in ("b/x.yaml", "a-c.yaml", "a/z.yaml", "a/b/y.yaml", "c.yaml"):
        plan(tmp_path / "one" / name)
    plan(tmp_path / "two" / "a.yaml")
    assert rel(tmp_path, files(tmp_path / "two", tmp_path / "one")) == [
        "two/a.yaml", "one/a/b/y.yaml", "one/a/z.yaml", "one/a-c.yaml", "one/b/x.yaml", "one/c.yaml"]


@pytest.mark.parametrize("pattern, left", [
    ("b.yaml", ["a.yaml", "sub/a.yaml"]),                      # a name, at any depth
    ("sub", ["a.yaml", "b.yaml"]),                             # a folder's name prunes it
    ("sub/", ["a.yaml", "b.yaml"]),                            # trailing slash: folders only
    ("b.yaml/", ["a.yaml", "b.yaml", "sub/a.yaml", "sub/b.yaml"]),
    ("sub/*.yaml", ["a.yaml", "b.yaml"]),                      # relative to the folder given
    ("/a.yaml", ["b.yaml", "sub/a.yaml", "sub/b.yaml"]),       # leading slash: the relative path only
    ("**/a.yaml", ["b.yaml", "sub/b.yaml"]),                   # **/ also matches at the top
    ("*", []),
    ("*.YAML", ["a.yaml", "b.yaml", "sub/a.yaml", "sub/b.yaml"]),  # case-sensitive
])
def test_exclude_globs(tmp_path, pattern, left):
    for name in ("a.yaml", "b.yaml", "sub/a.yaml", "sub/b.yaml"):
        plan(tmp_path / "plans" / name)
    result = found(tmp_path / "plans", exclude=[pattern])
    kept = [os.path.relpath(path, tmp_path / "plans") for path, rule in result if rule is None]
    assert kept == left
    if not left:
        assert [rule for _, rule in result] == ["PLN000"]  # nothing left: the folder holds no plan file


def test_exclude_matches_the_path_as_printed_and_is_repeatable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("plans/a.yaml", "plans/examples/b.yaml", "plans/drafts/c.yaml"):
        plan(tmp_path / name)
    assert files("plans", exclude=["plans/examples", "./plans/drafts/"]) == ["plans/a.yaml"]


def test_exclude_applies_to_files_named_explicitly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    plan(tmp_path / "plans" / "drafts" / "c.yaml", "not: [a plan")
    assert files("plans/drafts/c.yaml", exclude=["plans/drafts/*"]) == []
    assert main(["validate", "--exclude", "drafts/*", "--exclude", "plans/drafts/*", "plans/drafts/c.yaml"]) == 0


def test_a_dangling_symlink_named_like_a_plan_is_a_pln000_problem(tmp_path, capsys):
    plan(tmp_path / "a.yaml")
    os.symlink("missing.yaml", tmp_path / "gone.yaml")
    os.symlink("missing.txt", tmp_path / "other-link")  # not named like a plan: not ours
    assert rel(tmp_path, [p for p, _ in found(tmp_path)]) == ["a.yaml", "gone.yaml"]
    assert [rule for _, rule in found(tmp_path)] == [None, "PLN000"]
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "gone.yaml: PLN000 cannot read it: a dangling symbolic link to 'missing.yaml'" in out
    assert out.rstrip().endswith("1 problem in 1 of 2 files")


def test_a_dangling_symlink_named_explicitly_is_a_problem_not_a_usage_error(tmp_path):
    os.symlink("missing.yaml", tmp_path / "gone.yaml")
    assert found(tmp_path / "gone.yaml") == [(str(tmp_path / "gone.yaml"), "PLN000")]


def test_symlink_loops_are_never_followed(tmp_path):
    plan(tmp_path / "a" / "x.yaml")
    os.symlink("..", tmp_path / "a" / "up")
    os.symlink(".", tmp_path / "a" / "here")
    os.symlink("loop.yaml", tmp_path / "a" / "loop.yaml")
    os.symlink("b.yaml", tmp_path / "a" / "c.yaml")
    os.symlink("c.yaml", tmp_path / "a" / "b.yaml")
    result = found(tmp_path)
    assert [(os.path.relpath(p, tmp_path), rule) for p, rule in result] == [
        ("a/b.yaml", "PLN000"), ("a/c.yaml", "PLN000"), ("a/loop.yaml", "PLN000"), ("a/x.yaml", None)]


def test_a_symlinked_folder_is_followed(tmp_path):
    plan(tmp_path / "shared" / "s.yaml")
    (tmp_path / "plans").mkdir()
    os.symlink(tmp_path / "shared", tmp_path / "plans" / "s")
    assert rel(tmp_path, files(tmp_path / "plans")) == ["plans/s/s.yaml"]


def test_an_unreadable_folder_is_a_pln000_problem(tmp_path, monkeypatch):
    plan(tmp_path / "ok.yaml")
    plan(tmp_path / "locked" / "x.yaml")
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(discover_module.os, "scandir", scandir)
    result = discover([str(tmp_path)])
    assert [(os.path.relpath(e.path, tmp_path), e.problem and e.problem.rule) for e in result.entries] == [
        ("locked", "PLN000"), ("ok.yaml", None)]
    assert result.entries[0].problem.message == "cannot read this folder: permission denied"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads every folder")
def test_a_folder_without_permission_is_a_pln000_problem(tmp_path):
    plan(tmp_path / "locked" / "x.yaml")
    plan(tmp_path / "ok.yaml")
    os.chmod(tmp_path / "locked", 0)
    try:
        assert [rule for _, rule in found(tmp_path)] == ["PLN000", None]
    finally:
        os.chmod(tmp_path / "locked", 0o755)


def test_a_fifo_named_like_a_plan_is_a_problem_and_never_blocks(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.yaml")
    os.mkfifo(tmp_path / "named")
    plan(tmp_path / "a.yaml")
    codes = []
    worker = threading.Thread(target=lambda: codes.append(main(["validate", str(tmp_path), str(tmp_path / "named")])),
                              daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "validate blocked on a FIFO"
    out = capsys.readouterr().out
    assert codes == [1]
    assert "pipe.yaml: PLN000 a FIFO, not a regular file" in out and "named: PLN000 a FIFO" in out


def test_a_folder_holding_no_plan_file_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    plan(tmp_path / "full" / "a.yaml")
    plan(tmp_path / "hidden" / ".x.yaml")
    plan(tmp_path / "hidden" / "notes.txt")
    assert main(["validate", str(tmp_path / "full"), str(tmp_path / "empty"), str(tmp_path / "hidden")]) == 1
    out = capsys.readouterr().out
    assert "empty: PLN000 no plan file (*.yaml or *.yml) in this folder: check the path" in out
    assert "hidden: PLN000 no plan file (*.yaml or *.yml) in this folder; skipped: 1 hidden:" in out
    assert out.rstrip().endswith("2 problems in 2 of 3 files")


def test_a_folder_named_twice_or_inside_another_is_still_judged_by_what_it_holds(tmp_path):
    (tmp_path / "empty").mkdir()
    plan(tmp_path / "a.yaml")
    assert [(os.path.relpath(p, tmp_path), r) for p, r in found(tmp_path, tmp_path / "empty", tmp_path / "empty")] == [
        ("a.yaml", None), ("empty", "PLN000")]


def test_a_missing_path_is_returned_for_a_usage_error(tmp_path, capsys):
    result = discover([str(tmp_path / "nope"), str(tmp_path / "a.yaml" / "b"), "x\x00y"])
    assert result.entries == () and len(result.missing) == 3
    with pytest.raises(SystemExit) as info:
        main(["validate", str(tmp_path / "no\x1bpe")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "no\\x1bpe: no such file or folder" in err and "\x1b" not in err


def test_a_deep_tree_does_not_exhaust_the_recursion_limit(tmp_path):
    deep = str(tmp_path)
    for _ in range(1100):  # os.makedirs and pathlib recurse: make it one level at a time
        deep = os.path.join(deep, "d")
        os.mkdir(deep)
    try:
        plan(tmp_path / os.path.relpath(deep, tmp_path) / "x.yaml")
        assert len(files(tmp_path)) == 1
    finally:  # pytest's own clean-up (shutil.rmtree) recurses and would fail on this tree in a later run
        if os.path.exists(os.path.join(deep, "x.yaml")):
            os.unlink(os.path.join(deep, "x.yaml"))
        while deep != str(tmp_path):
            os.rmdir(deep)
            deep = os.path.dirname(deep)


def test_discovery_problems_are_reported_in_every_format(tmp_path, capsys):
    os.symlink("missing.yaml", tmp_path / "gone.yaml")
    plan(tmp_path / "a.yaml")
    assert main(["validate", "--format", "junit", str(tmp_path)]) == 1
    suite = ET.fromstring(capsys.readouterr().out.encode("utf-8"))
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert main(["validate", "--format", "github", str(tmp_path)]) == 1
    assert capsys.readouterr().out.startswith(f"::error file={tmp_path / 'gone.yaml'},title=PLN000::PLN000 cannot")
