import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from conftest import DATA, ROOT

from planner.cli import main

BAD = DATA / "bad"
GOOD = DATA / "good"


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_validate_reports_all_problems_of_all_files_and_exits_1(capsys):
    code, out, _ = run(capsys, "validate", str(BAD / "cycle.yaml"), str(BAD / "device-cpu.yaml"), str(GOOD))
    assert code == 1
    assert "cycle.yaml:5:32: PLN211 components form a cycle: unet -> vae -> unet" in out
    assert "device-cpu.yaml:2:9: PLN202 device 'cpu' cannot be an offload target" in out
    assert out.rstrip().endswith(f"2 problems in 2 of {2 + len(list(GOOD.glob('*.yaml')))} files")


def test_text_output_shows_the_source_line_and_a_caret(capsys):
    _, out, _ = run(capsys, "validate", str(BAD / "device-cpu.yaml"))
    lines = out.splitlines()
    assert lines[1] == "  2 | device: cpu"
    assert lines[2].index("^") == lines[1].index("cpu")


def test_valid_plans_exit_0(capsys):
    code, out, _ = run(capsys, "validate", str(GOOD), str(ROOT / "plans"))
    assert code == 0 and "valid" in out


def test_missing_path_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["validate", "no/such/plan.yaml"])
    assert info.value.code == 2
    assert "no such file" in capsys.readouterr().err


def test_bad_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["validate", "--format", "xml", str(GOOD)])
    assert info.value.code == 2


def test_json_format(capsys):
    code, out, _ = run(capsys, "validate", "--format", "json", str(BAD / "self-loop.yaml"))
    data = json.loads(out)
    assert code == 1
    assert data["problems"][0]["rule"] == "PLN210" and data["problems"][0]["line"] == 4


def test_github_format_is_workflow_annotations(capsys):
    _, out, _ = run(capsys, "validate", "--format", "github", str(BAD / "self-loop.yaml"))
    assert out.startswith(f"::error file={BAD / 'self-loop.yaml'},line=4,col=18,title=PLN210::PLN210 ")


def test_junit_has_one_testcase_per_file(capsys):
    _, out, _ = run(capsys, "validate", "--format", "junit", str(BAD / "self-loop.yaml"), str(GOOD / "chain-list.yaml"))
    suite = ET.fromstring(out.split("?>", 1)[1])
    cases = suite.findall("testcase")
    assert len(cases) == 2 and suite.get("failures") == "1"
    assert cases[0].find("failure").get("type") == "PLN210" and cases[1].find("failure") is None


def test_sarif_is_2_1_0_with_rules_and_regions(capsys):
    _, out, _ = run(capsys, "validate", "--format", "sarif", str(BAD / "many-problems.yaml"))
    log = json.loads(out)
    assert log["version"] == "2.1.0"
    run0 = log["runs"][0]
    ids = [r["id"] for r in run0["tool"]["driver"]["rules"]]
    for result in run0["results"]:
        assert ids[result["ruleIndex"]] == result["ruleId"]
        assert result["locations"][0]["physicalLocation"]["region"]["startLine"] >= 1


def test_show_prints_the_sequence_alone_on_its_first_line(capsys):
    code, out, _ = run(capsys, "show", str(GOOD / "sdxl-dag.yaml"))
    assert code == 0
    assert out.splitlines()[:4] == ["text_encoder->text_encoder_2->unet->vae", "device: cuda", "gpu_id: 1",
                                    "exclude: safety_checker"]


def test_show_of_a_bad_plan_exits_1_with_located_problems(capsys):
    code, _, err = run(capsys, "show", str(BAD / "cycle.yaml"))
    assert code == 1 and "PLN211" in err


def test_schema_prints_the_schema_file(capsys):
    code, out, _ = run(capsys, "schema")
    assert code == 0
    assert json.loads(out) == json.loads((ROOT / "schemas" / "plan.schema.json").read_text())


def test_the_schema_itself_is_valid_draft_2020_12():
    import jsonschema

    schema = json.loads((ROOT / "schemas" / "plan.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)


def test_validate_never_imports_torch_diffusers_or_accelerate():
    code = ("import sys; from planner.cli import main; rc = main(['validate', sys.argv[1], sys.argv[2]]); "
            "heavy = [m for m in ('torch', 'diffusers', 'accelerate', 'transformers') if m in sys.modules]; "
            "print('HEAVY', heavy); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(GOOD), str(BAD)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "HEAVY []" in proc.stdout


def test_console_script_runs_validate():
    exe = ROOT / ".venv" / "bin" / "planner"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "planner.cli"]
    proc = subprocess.run(cmd + ["validate", str(GOOD)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_no_input_gives_a_traceback(capsys):
    for path in sorted(BAD.glob("*.yaml")):
        code, out, err = run(capsys, "validate", str(path))
        assert code == 1 and "Traceback" not in out + err


# -- a real tool: version, help, exit status ------------------------------------------------------------------
PLANNER = [str(ROOT / ".venv" / "bin" / "planner")] if (ROOT / ".venv" / "bin" / "planner").exists() \
    else [sys.executable, "-m", "planner.cli"]
EXAMPLE = ROOT / "plans" / "examples" / "tiny-sd.yaml"


def usage_error(capsys, *argv) -> str:
    """Run `argv`, expect exit 2, return stderr."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == 2
    return capsys.readouterr().err


def test_version_prints_the_package_version(capsys):
    import planner

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"planner {planner.__version__}"


@pytest.mark.parametrize("command", [[], ["validate"], ["show"], ["schema"], ["apply"], ["tiny"]])
def test_help_shows_the_exit_status(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "130", "141"):
        assert f"\n  {code}" in out.split("exit status:")[1]


def test_apply_help_shows_defaults_and_no_internal_names(capsys):
    with pytest.raises(SystemExit):
        main(["apply", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "denoising steps per call (default: 2)" in out and "(default: 'an astronaut riding a horse')" in out
    assert "--quiet" in out and "--events" in out
    assert "_positive" not in out and "_seed" not in out


@pytest.mark.parametrize("flag, value, words", [
    ("--steps", "x", "must be a positive integer, not 'x'"),
    ("--steps", "0", "must be a positive integer, not '0'"),
    ("--calls", "-3", "must be a positive integer, not '-3'"),
    ("--height", "1.5", "must be a positive integer, not '1.5'"),
    ("--width", "", "must be a positive integer, not ''"),
    ("--seed", "two", "must be an integer from -2**63 to 2**64-1, not 'two'"),
    ("--seed", str(2**64), f"must be an integer from -2**63 to 2**64-1, not '{2**64}'"),
    ("--gpu-id", "one", "must be an integer, not 'one'"),
])
def test_bad_numbers_are_refused_in_plain_words(flag, value, words, capsys):
    err = usage_error(capsys, "apply", EXAMPLE, flag, value)
    assert f"argument {flag}: {words}" in err
    assert "invalid" not in err and "_positive" not in err and "Traceback" not in err


@pytest.mark.parametrize("value, rule", [("-1", "PLN204"), ("200", "PLN204"), ("128", "PLN204")])
def test_gpu_id_out_of_range_goes_through_the_plan_rules(value, rule, capsys):
    code, _, err = run(capsys, "apply", str(EXAMPLE), "--gpu-id", value, "--dry-run")
    assert code == 1 and err.startswith(f"--gpu-id: {rule} ")


# -- everything apply can check without torch, it checks first -------------------------------------------------
@pytest.fixture
def no_run(monkeypatch):
    """Fail the test if `apply` gets as far as running (loading, generating) or `tiny` as far as building."""
    from planner.executor import generate, tiny

    def refuse(*args, **kwargs):
        raise AssertionError("the checks let a run start")

    monkeypatch.setattr(generate, "run", refuse)
    monkeypatch.setattr(tiny, "build", refuse)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


@pytest.mark.parametrize("flags, words", [
    (["--out", "{tmp}"], "--out: '{tmp}' is a folder: name a file in it"),
    (["--out", "{tmp}/sub/"], "--out: '{tmp}/sub/' names a folder"),
    (["--out", "{tmp}/image.xyz"], "has the extension '.xyz', which names no image format PIL can write"),
    (["--out", "{tmp}/image"], "has no extension, which names no image format PIL can write"),
    (["--out", "{tmp}/image.h5"], "--out: PIL cannot write an RGB image as HDF5"),
    (["--out", "{file}/image.png"], "--out: '{file}' is a file, so '{file}/image.png' cannot be created under it"),
    (["--out", "{file}/deeper/image.png"], "'{file}' is a file, so"),
    (["--out", ""], "--out: an empty path"),
    (["--trace-json", "{tmp}"], "--trace-json: '{tmp}' is a folder: name a file in it"),
    (["--trace-json", "{file}/t.json"], "--trace-json: '{file}' is a file, so"),
    (["--out", "{tmp}/a.png", "--trace-json", "{tmp}/./a.png"], "--out and --trace-json name the same file"),
    (["--image", "{tmp}/missing.png"], "--image: cannot read '{tmp}/missing.png': No such file or directory"),
    (["--image", "{tmp}"], "--image: '{tmp}' is a folder: name an image"),
    (["--image", "{file}"], "--image: '{file}' is not an image PIL can read"),
])
def test_apply_paths_are_checked_before_any_work(flags, words, tmp_path, a_file, no_run, capsys):
    fill = {"tmp": tmp_path, "file": a_file}
    err = usage_error(capsys, "apply", EXAMPLE, "--dry-run", *[f.format(**fill) for f in flags])
    assert err.count("\n") == 1 and err.startswith("planner apply: error: ")
    assert words.format(**fill) in err


def test_unwritable_places_are_found_by_trying(tmp_path, no_run, capsys):
    """/proc takes no new file even from root, whose permission bits never say no: the check creates for real."""
    if not Path("/proc/self").exists():
        pytest.skip("no /proc")
    err = usage_error(capsys, "apply", EXAMPLE, "--out", "/proc/planner-nowhere/image.png")
    assert "--out: cannot create files in '/proc'" in err
    err = usage_error(capsys, "tiny", "sd", "/proc/planner-nowhere")
    assert "cannot create files in '/proc'" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_a_read_only_folder_is_refused(tmp_path, no_run, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert "cannot create files in" in usage_error(capsys, "apply", EXAMPLE, "--trace-json", locked / "t.json")
        assert "cannot create files in" in usage_error(capsys, "tiny", "sd", locked / "tiny")
        (tmp_path / "ro.json").write_text("{}")
        (tmp_path / "ro.json").chmod(0o400)
        assert "cannot be written" in usage_error(capsys, "apply", EXAMPLE, "--trace-json", tmp_path / "ro.json")
    finally:
        locked.chmod(0o700)


def test_path_checks_leave_nothing_behind(tmp_path, capsys):
    """Missing folders pass the check and are created only when the run writes: a run that fails leaves none."""
    code, _, err = run(capsys, "apply", str(EXAMPLE), "--dry-run", "--source", str(tmp_path / "no-such-model"),
                       "--out", str(tmp_path / "new" / "deeper" / "image.png"),
                       "--trace-json", str(tmp_path / "new2" / "trace.json"))
    assert code == 1 and "PLN304" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_existing_output_files_are_checked_without_being_changed(tmp_path, capsys):
    trace = tmp_path / "trace.json"
    trace.write_text("old\n")
    before = trace.stat()
    code, _, _ = run(capsys, "apply", str(EXAMPLE), "--dry-run", "--source", str(tmp_path / "none"),
                     "--trace-json", str(trace))
    assert code == 1 and trace.read_text() == "old\n" and trace.stat().st_mtime_ns == before.st_mtime_ns


@pytest.mark.parametrize("kind", ["show", "apply"])
def test_a_plan_path_that_is_not_a_regular_file_is_a_usage_error(kind, tmp_path, capsys):
    fifo = tmp_path / "plan.yaml"
    os.mkfifo(fifo)
    assert f"planner {kind}: error: {fifo}: not a regular file" in usage_error(capsys, kind, fifo)
    assert f"{tmp_path}: is a folder" in usage_error(capsys, kind, tmp_path)
    assert "no such file" in usage_error(capsys, kind, tmp_path / "none.yaml")


@pytest.mark.parametrize("folder, words", [
    ("", "the folder is an empty string"),
    ("{file}", "'{file}' is a file, not a folder"),
    ("{file}/tiny", "'{file}' is a file, so '{file}/tiny' cannot be created under it"),
    ("{tmp}/full", "'{tmp}/full' is not empty and holds no tiny build (notes.txt): building there would overwrite it"),
])
def test_tiny_folder_is_checked_before_any_work(folder, words, tmp_path, a_file, no_run, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine\n")
    fill = {"tmp": tmp_path, "file": a_file}
    err = usage_error(capsys, "tiny", "sd", folder.format(**fill))
    assert err.startswith(f"planner tiny: error: {words.format(**fill)}") and err.count("\n") == 1
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine\n"


def test_tiny_unknown_kind_is_a_usage_error(tmp_path, no_run, capsys):
    err = usage_error(capsys, "tiny", "flux", tmp_path / "x")
    assert "invalid choice: 'flux'" in err and not (tmp_path / "x").exists()


def _fresh(code: str, *args, blocked=()) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter; modules named in `blocked` cannot be found (a core-only install)."""
    prelude = (
        "import sys, time\n"
        f"BLOCKED = {tuple(blocked)!r}\n"
        "class Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Blocker())\n"
        "from planner.cli import main\n"
    )
    return subprocess.run([sys.executable, "-c", prelude + code, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


HEAVY = ("torch", "diffusers", "accelerate", "transformers")
TIMED = ("start = time.perf_counter()\n"
         "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
         "print('SECONDS', time.perf_counter() - start)\n"
         f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
         "sys.exit(rc)\n")


def _cheap_failures(tmp_path, a_file):
    """Mistakes `apply` must find without torch: (argv, exit status, words in stderr)."""
    (tmp_path / "empty").mkdir()
    for name, index in (("not-json", "{"), ("no-class", "[1]"), ("nested", "[" * 100000)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text(index)
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "model_index.json")
    (tmp_path / "huge").mkdir()
    with open(tmp_path / "huge" / "model_index.json", "wb") as f:
        f.truncate(2 << 20)
    bad_plan = tmp_path / "bad.yaml"
    bad_plan.write_text("version: 1\ndevice: cpu\ncomponents: [unet]\n")
    no_source = tmp_path / "no-source.yaml"
    no_source.write_text("version: 1\ndevice: cuda\ncomponents: [unet]\n")
    missing = tmp_path / "missing.yaml"
    missing.write_text("version: 1\npipeline: {source: ./not-here}\ndevice: cuda\ncomponents: [unet]\n")
    src = ["--dry-run", "--source"]
    return [
        ([bad_plan], 1, "PLN202"),
        ([EXAMPLE, "--device", "cpu"], 1, "--device: PLN202"),
        ([EXAMPLE, "--gpu-id", "-2"], 1, "--gpu-id: PLN204"),
        ([no_source, "--dry-run"], 1, "PLN304 the plan names no pipeline to load"),
        ([missing, "--dry-run"], 1, "missing.yaml:2:12: PLN304 no pipeline folder at './not-here'"),
        ([EXAMPLE, *src, tmp_path / "nowhere"], 1, "--source: PLN304 no pipeline folder at"),
        ([EXAMPLE, *src, ""], 1, "--source: PLN304 the source '' names no pipeline: give --source a folder"),
        ([EXAMPLE, *src, tmp_path / "empty"], 1, "--source: PLN304 '{tmp}/empty' is not a diffusers pipeline "
                                                 "folder: it has no model_index.json: point --source at a folder"),
        ([EXAMPLE, *src, tmp_path / "not-json"], 1, "--source: PLN304 '{tmp}/not-json/model_index.json' is not JSON"),
        ([EXAMPLE, *src, tmp_path / "nested"], 1, "model_index.json' is not JSON"),
        ([EXAMPLE, *src, tmp_path / "no-class"], 1, "model_index.json' names no pipeline class"),
        ([EXAMPLE, *src, tmp_path / "fifo"], 1, "model_index.json' is not a regular file"),
        ([EXAMPLE, *src, tmp_path / "huge"], 1, "too large to be a model_index.json"),
        ([EXAMPLE, "--out", tmp_path / "x.txt"], 2, "--out: "),
        ([EXAMPLE, "--trace-json", a_file / "t.json"], 2, "--trace-json: "),
        ([EXAMPLE, "--image", a_file], 2, "--image: "),
        ([tmp_path / "none.yaml"], 2, "no such file"),
    ]


def test_apply_finds_every_cheap_mistake_before_importing_torch(tmp_path, a_file):
    for argv, status, words in _cheap_failures(tmp_path, a_file):
        proc = _fresh(TIMED, "apply", *argv)
        assert proc.returncode == status, (argv, proc.stderr)
        assert words.format(tmp=tmp_path) in proc.stderr, (argv, proc.stderr)
        assert "HEAVY []" in proc.stdout, (argv, proc.stdout)
        seconds = float(proc.stdout.split("SECONDS ")[1].split()[0])
        assert seconds < 1.0, (argv, seconds)  # what validate costs, not the seconds of importing torch
        assert "Traceback" not in proc.stderr


# -- a core-only install ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["apply", str(EXAMPLE), "--dry-run"], ["tiny", "sd", "{tmp}/tiny"]])
def test_core_only_install_names_the_extra_to_install(argv, tmp_path):
    blocked = ("torch", "diffusers", "accelerate", "transformers", "safetensors", "PIL")
    proc = _fresh("sys.exit(main(sys.argv[1:]))", *[a.format(tmp=tmp_path) for a in argv], blocked=blocked)
    assert proc.returncode == 2
    assert proc.stderr == (f"planner {argv[0]}: error: needs the apply extra (torch, accelerate, diffusers, "
                           "transformers, safetensors, pillow not installed): pip install 'offload-planner[apply]'\n")
    assert not (tmp_path / "tiny").exists()


def test_core_only_install_still_validates_shows_and_prints_the_schema():
    blocked = ("torch", "diffusers", "accelerate", "transformers", "safetensors", "PIL")
    for argv in (["validate", str(GOOD)], ["show", str(GOOD / "sdxl-dag.yaml")], ["schema"]):
        proc = _fresh("sys.exit(main(sys.argv[1:]))", *argv, blocked=blocked)
        assert proc.returncode == 0, proc.stderr


def test_one_missing_dependency_is_named(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # what `import diffusers` refuses, find_spec reports
    err = usage_error(capsys, "apply", EXAMPLE, "--dry-run")
    assert err == ("planner apply: error: needs the apply extra (diffusers not installed): "
                   "pip install 'offload-planner[apply]'\n")


def test_a_dependency_that_fails_to_import_names_the_extra(monkeypatch, capsys, tmp_path):
    from planner.executor import generate

    def broken(plan, request):
        raise ModuleNotFoundError("No module named 'accelerate.hooks'", name="accelerate.hooks")

    monkeypatch.setattr(generate, "run", broken)
    err = usage_error(capsys, "apply", EXAMPLE, "--dry-run")
    assert err.startswith("planner apply: error: cannot import accelerate.hooks") and "offload-planner[apply]" in err


# -- pipes, Ctrl-C ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, status", [
    (["show", str(GOOD / "sdxl-dag.yaml")], 141), (["validate", str(ROOT / "plans")], 141),
    (["validate", str(BAD)], 141), (["schema"], 141),
    (["--help"], 0), (["apply", "--help"], 0),  # argparse itself ignores a failed help write and exits 0
])
def test_a_closed_pipe_exits_quietly(argv, status):
    """As `planner ... | head -1` when head has gone: no "Exception ignored", no traceback; 141 as for SIGPIPE."""
    read, write = os.pipe()
    os.close(read)  # the reader has left before the first byte
    try:
        proc = subprocess.run(PLANNER + argv, stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    finally:
        os.close(write)
    assert proc.stderr == "" and proc.returncode == status


def test_head_in_a_real_shell_pipeline_sees_the_first_line_and_no_error():
    cmd = " ".join(PLANNER) + f" show {GOOD / 'sdxl-dag.yaml'} | head -1"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    assert proc.stdout == "text_encoder->text_encoder_2->unet->vae\n" and proc.stderr == ""


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    from planner.executor import generate

    def interrupted(plan, request):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "run", interrupted)
    code, out, err = run(capsys, "apply", str(EXAMPLE), "--dry-run")
    assert (code, out, err) == (130, "", "planner: interrupted\n")


# -- what apply hands the executor -----------------------------------------------------------------------------
@pytest.fixture
def requests(monkeypatch):
    """The `Request`s apply passes to the executor (which is not run)."""
    from planner.executor import generate

    seen = []

    def capture(plan, request):
        seen.append(request)
        return ""

    monkeypatch.setattr(generate, "run", capture)
    return seen


def test_progress_bars_only_on_a_terminal_and_never_with_quiet(requests, monkeypatch, capsys):
    run(capsys, "apply", str(EXAMPLE), "--dry-run")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    run(capsys, "apply", str(EXAMPLE), "--dry-run")
    run(capsys, "apply", str(EXAMPLE), "--dry-run", "--quiet")
    assert [r.progress for r in requests] == [False, True, False]


def test_events_flag_reaches_the_request(requests, capsys):
    run(capsys, "apply", str(EXAMPLE), "--dry-run", "--events")
    run(capsys, "apply", str(EXAMPLE), "--dry-run")
    assert [r.events for r in requests] == [True, False]


def test_the_request_knows_which_plan_keys_flags_set(requests, capsys):
    run(capsys, "apply", str(EXAMPLE), "--dry-run", "--source", "x/y", "--gpu-id", "0")
    run(capsys, "apply", str(EXAMPLE), "--dry-run")
    assert [r.overridden for r in requests] == [{"pipeline.source", "gpu_id"}, set()]
