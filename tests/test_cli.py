import json
import os
import struct
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
            "heavy = [m for m in ('torch', 'diffusers', 'accelerate', 'transformers', 'scipy') if m in sys.modules]; "
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
    assert "denoising steps per call (default: 2; a block plan is scheduled for them)" in out
    assert "(default: 'an astronaut riding a horse')" in out
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
    from planner import tiny
    from planner.executor import run as executor_run

    def refuse(*args, **kwargs):
        raise AssertionError("the checks let a run start")

    monkeypatch.setattr(executor_run, "run", refuse)
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
    err = usage_error(capsys, "tiny", "flux9", tmp_path / "x")
    assert "invalid choice: 'flux9'" in err and not (tmp_path / "x").exists()


def _fresh(code: str, *args, blocked=()) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter; modules named in `blocked` cannot be found (a core-only install)."""
    prelude = (
        "import sys\n"
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
HEAVY_PROBE = ("try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
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
        proc = _fresh(HEAVY_PROBE, "apply", *argv)
        assert proc.returncode == status, (argv, proc.stderr)
        assert words.format(tmp=tmp_path) in proc.stderr, (argv, proc.stderr)
        assert "HEAVY []" in proc.stdout, (argv, proc.stdout)  # what validate needs, never torch and its kin
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
    from planner.executor import run as executor_run

    def broken(plan, request):
        raise ModuleNotFoundError("No module named 'accelerate.hooks'", name="accelerate.hooks")

    monkeypatch.setattr(executor_run, "run", broken)
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
    from planner.executor import run as executor_run

    def interrupted(plan, request):
        raise KeyboardInterrupt

    monkeypatch.setattr(executor_run, "run", interrupted)
    code, out, err = run(capsys, "apply", str(EXAMPLE), "--dry-run")
    assert (code, out, err) == (130, "", "planner: interrupted\n")


# -- what apply hands the executor -----------------------------------------------------------------------------
@pytest.fixture
def requests(monkeypatch):
    """The `Request`s apply passes to the executor (which is not run)."""
    from planner.executor import run as executor_run

    seen = []

    def capture(plan, request):
        seen.append(request)
        return ""

    monkeypatch.setattr(executor_run, "run", capture)
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


def test_show_names_the_own_hooks_and_each_connected_chain(capsys):
    code, out, _ = run(capsys, "show", str(GOOD / "controlnet-own-hook.yaml"))
    assert code == 0 and out.splitlines()[0] == "text_encoder->unet->vae" and "own_hook: controlnet" in out
    code, out, _ = run(capsys, "show", str(GOOD / "combined-class.yaml"))
    assert code == 0
    first = "prior_pipe(prior_text_encoder->prior_image_encoder->prior_prior) decoder_pipe(unet->movq)"
    assert out.splitlines()[0] == first


# -- planner inspect: a model folder's sizes from its safetensors headers --------------------------------------
SMALL = [("conv.weight", "F32", (4, 3, 3, 3)), ("conv.bias", "F32", (4,)), ("down_blocks.0.w", "F16", (8, 4))]
SD_MODELS = {"text_encoder": ("transformers", "CLIPTextModel"), "unet": ("diffusers", "UNet2DConditionModel"),
             "vae": ("diffusers", "AutoencoderKL")}
SD_OTHERS = {"safety_checker": (None, None), "tokenizer": ("transformers", "CLIPTokenizer"),
             "scheduler": ("diffusers", "PNDMScheduler")}


def small_sd(root: Path) -> Path:
    """A StableDiffusionPipeline folder of small real safetensors files (no torch needed): three models, a
    tokenizer and a scheduler (configs only), no safety checker."""
    import headers

    headers.write_index(root, "StableDiffusionPipeline", {**SD_MODELS, **SD_OTHERS})
    for name, (library, _) in SD_MODELS.items():
        headers.write_file(root / name / f"{'model' if library == 'transformers' else 'diffusion_pytorch_model'}"
                                         ".safetensors", SMALL)
    return root


@pytest.fixture(scope="module")
def sdxl_headers(tmp_path_factory):
    import headers

    return headers.sdxl(tmp_path_factory.mktemp("inspect") / "sdxl")


def test_inspect_prints_each_model_with_its_sizes_and_blocks(sdxl_headers, capsys):
    code, out, err = run(capsys, "inspect", str(sdxl_headers), "--variant", "fp16", "--dtype", "float16")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"StableDiffusionXLPipeline  {sdxl_headers}  variant fp16"
    assert lines[5].split() == ["unet", "UNet2DConditionModel", "4.78", "GiB", "F16", "4.78", "GiB", "7", "2.25",
                                "GiB"]
    assert lines[7].split() == ["total", "6.46", "GiB", "6.46", "GiB"]
    code, out, _ = run(capsys, "inspect", str(sdxl_headers), "--dtype", "float16")  # the float32 files, halved
    assert code == 0 and out.splitlines()[7].split() == ["total", "12.92", "GiB", "6.46", "GiB"]


def test_inspect_json_has_the_shape_the_issue_gives(sdxl_headers, capsys):
    code, out, _ = run(capsys, "inspect", str(sdxl_headers), "--variant", "fp16", "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["class"] == "StableDiffusionXLPipeline" and doc["problems"] == []
    unet = doc["components"]["unet"]
    assert (unet["class"], unet["bytes"], unet["dtype"]) == ("UNet2DConditionModel", 5_134_927_368, "F16")
    assert unet["bytes_at_dtype"] == 2 * unet["bytes"]  # no --dtype: diffusers loads its models in float32
    assert list(unet["blocks"])[:3] == ["down_blocks.0", "down_blocks.1", "down_blocks.2"]
    for comp in doc["components"].values():
        assert sum(comp["blocks"].values()) == comp["bytes_at_dtype"]


def _damaged(kind: str, root: Path) -> tuple[Path, str, str]:
    """A damaged source of `kind`: (path to inspect, the path the problem names, its rule and words)."""
    if kind == "missing":
        return root / "nowhere", str(root / "nowhere"), "PLN401 " + f"{root / 'nowhere'} does not exist"
    if kind == "a file":
        (root / "file").write_text("x")
        return root / "file", str(root / "file"), "PLN401 " + f"{root / 'file'} is a file, not a folder"
    if kind == "no model_index.json":
        (root / "empty").mkdir()
        return root / "empty", str(root / "empty"), "PLN401 " + f"{root / 'empty'} is not a diffusers pipeline folder"
    folder = small_sd(root / "p")
    if kind == "model_index.json not JSON":
        (folder / "model_index.json").write_text("{")
        return folder, str(folder / "model_index.json"), "PLN402 model_index.json is not valid JSON"
    if kind == "no weights":
        (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
        return folder, str(folder / "unet"), "PLN403 unet has no weights: none of"
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    if kind == "header not JSON":
        weights.write_bytes(struct.pack("<Q", 8) + b"not json" + b"\0" * 16)
        return folder, str(weights), "PLN404 not a valid safetensors header: not a JSON object"
    size = weights.stat().st_size
    os.truncate(weights, size - 100)
    return folder, str(weights), f"PLN405 truncated: 100 bytes missing (the header declares {size:,} bytes"


DAMAGED = ["missing", "a file", "no model_index.json", "model_index.json not JSON", "no weights", "header not JSON",
           "truncated"]


@pytest.mark.parametrize("kind", DAMAGED)
def test_inspect_a_damaged_source_is_a_located_rule_tagged_error(kind, tmp_path, capsys):
    source, where, words = _damaged(kind, tmp_path)
    code, out, err = run(capsys, "inspect", str(source))
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith(f"{where}: {words}"), err
    assert "Traceback" not in out + err
    if kind in ("no weights", "header not JSON", "truncated"):  # the other models are still sized
        assert "not read (see the problems): " in out and "text_encoder  CLIPTextModel" in out
    code, out, _ = run(capsys, "inspect", str(source), "--format", "json")
    problems = json.loads(out)["problems"]
    assert code == 1 and [(p["path"], p["rule"]) for p in problems] == [(where, words[:6])]


def test_inspect_imports_no_torch_diffusers_accelerate_or_transformers(tmp_path):
    """inspect reads model_index.json and safetensors headers with the core alone, for a good folder (text or
    JSON), a damaged one and a hub id."""
    folder = small_sd(tmp_path / "p")
    source, _, _ = _damaged("truncated", tmp_path / "t")
    for argv, status in (([folder], 0), ([folder, "--format", "json"], 0), ([source], 1), (["org/name"], 1)):
        proc = _fresh(HEAVY_PROBE, "inspect", *argv)
        assert proc.returncode == status, (argv, proc.stderr)
        assert "HEAVY []" in proc.stdout and "Traceback" not in proc.stderr, (argv, proc.stdout, proc.stderr)


def test_inspect_a_hub_id_offline_or_unreachable_says_so_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    for extra, words in (({"HF_HUB_OFFLINE": "1"}, "org/name: PLN408 org/name is no folder, and offline"),
                         ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "org/name: PLN408 cannot reach http://127.0.0.1:9")):
        proc = subprocess.run(PLANNER + ["inspect", "org/name"], capture_output=True, text=True, cwd=tmp_path,
                              env={**env, "HF_HOME": str(tmp_path / "hf"), **extra})
        assert proc.returncode == 1 and proc.stdout == "", proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(words), proc.stderr


def test_inspect_a_hub_id_reads_the_headers_from_the_hub_stand_in(tmp_path, monkeypatch, capsys):
    import headers
    from huggingface_hub import constants

    folder = small_sd(tmp_path / "p")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with headers.HubServer({"org/sd": folder}) as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        code, out, err = run(capsys, "inspect", "org/sd", "--format", "json", "--dtype", "bfloat16")
    assert (code, err) == (0, "")
    remote = json.loads(out)
    _, out, _ = run(capsys, "inspect", str(folder), "--format", "json", "--dtype", "bfloat16")
    local = json.loads(out)
    assert remote["source"] == "org/sd" and {**remote, "source": None} == {**local, "source": None}


@pytest.mark.parametrize("argv, words", [
    (["--dtype", "half"], "argument --dtype: invalid choice: 'half'"),
    (["--variant", ""], "--variant: an empty name"),
])
def test_inspect_bad_flags_are_usage_errors(argv, words, tmp_path, capsys):
    err = usage_error(capsys, "inspect", small_sd(tmp_path / "p"), *argv)
    assert words in err
    assert "an empty name" in usage_error(capsys, "inspect", "")


def test_inspect_help_shows_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    out = capsys.readouterr().out
    assert "--dtype {float16,bfloat16,float32,float64}" in out and "exit status:" in out


def test_inspect_and_validate_model_into_a_closed_pipe_exit_quietly(tmp_path):
    folder = small_sd(tmp_path / "p")
    for argv in (["inspect", str(folder)], ["validate", "--model", str(folder), str(EXAMPLE)]):
        read, write = os.pipe()
        os.close(read)
        try:
            proc = subprocess.run(PLANNER + argv, stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        finally:
            os.close(write)
        assert (proc.returncode, proc.stderr) == (141, ""), argv
    proc = subprocess.run(["bash", "-c", " ".join(PLANNER) + f" inspect {folder} | head -1"], capture_output=True,
                          text=True)
    assert proc.stdout == f"StableDiffusionPipeline  {folder}\n" and proc.stderr == ""


# -- planner validate --model: plans against a model folder ----------------------------------------------------
def test_validate_model_prints_the_sizes_and_checks_each_plan_against_the_folder(tmp_path, capsys):
    folder = small_sd(tmp_path / "p")
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("version: 1\npipeline: {class: StableDiffusionImg2ImgPipeline}\ndevice: cuda\n"
                    "components: [text_encoder, unet, vae]\nexclude: [safety_checker]\n")
    bad.write_text("version: 1\npipeline:\n  class: StableDiffusionXLPipeline\ndevice: cuda\n"
                   "components: [text_encoder, text_encoder_2, unet, vae]\n")
    code, out, _ = run(capsys, "validate", "--model", str(folder), str(good))
    assert code == 0 and out.startswith(f"StableDiffusionPipeline  {folder}\n") and out.endswith("1 plan valid\n")
    code, out, _ = run(capsys, "validate", "--model", str(folder), str(good), str(bad))
    assert code == 1 and out.startswith(f"StableDiffusionPipeline  {folder}\n")
    problems = [line for line in out.splitlines() if ": PLN" in line]
    assert [line.split(" ")[:2] for line in problems] == [[f"{bad}:3:3:", "PLN304"], [f"{bad}:5:28:", "PLN301"]]
    assert "which holds a StableDiffusionPipeline (its model_index.json)" in problems[0]
    assert "has no component 'text_encoder_2' (its models: text_encoder, unet, vae)" in problems[1]
    assert out.endswith("2 problems in 1 of 2 files\n")


@pytest.mark.parametrize("kind", DAMAGED)
def test_validate_model_a_damaged_folder_is_located_rule_tagged_errors(kind, tmp_path, capsys):
    source, where, words = _damaged(kind, tmp_path)
    code, out, err = run(capsys, "validate", "--model", str(source), str(EXAMPLE))
    assert code == 1 and f"{where}: {words}" in out and "Traceback" not in out + err
    code, out, _ = run(capsys, "validate", "--model", str(source), "--format", "json", str(EXAMPLE))
    doc = json.loads(out)
    assert code == 1 and [(p["path"], p["rule"]) for p in doc["problems"]] == [(where, words[:6])]
    if kind in ("no weights", "header not JSON", "truncated"):
        assert len(doc["sizes"]) == 1 and len(doc["sizes"][0]["unread"]) == 1
    else:
        assert "sizes" not in doc  # nothing could be read


def test_validate_model_in_the_ci_formats_lists_the_problems_only(tmp_path, capsys):
    source, where, _ = _damaged("truncated", tmp_path)
    outputs = {}
    for fmt in ("sarif", "github", "junit"):
        code, outputs[fmt], _ = run(capsys, "validate", "--model", str(source), "--format", fmt, str(EXAMPLE))
        assert code == 1 and "UNet2DConditionModel" not in outputs[fmt]
    results = json.loads(outputs["sarif"])["runs"][0]["results"]
    assert [r["ruleId"] for r in results] == ["PLN405"]
    assert outputs["github"].startswith(f"::error file={where},title=PLN405::PLN405 truncated")
    suite = ET.fromstring(outputs["junit"].split("?>", 1)[1])
    assert suite.get("failures") == "1"


def test_validate_model_a_variant_the_folder_lacks_is_located_at_the_plan(tmp_path, capsys):
    folder = small_sd(tmp_path / "p")
    plan = tmp_path / "half.yaml"
    plan.write_text("version: 1\npipeline:\n  variant: fp16\ndevice: cuda\ncomponents: [text_encoder, unet, vae]\n")
    code, out, _ = run(capsys, "validate", "--model", str(folder), str(plan))
    assert code == 1 and f"{plan}:3:3: PLN407 no component of the model folder {folder} has files of the variant " \
        "'fp16'" in out


def test_validate_model_imports_no_torch(tmp_path):
    source, _, _ = _damaged("truncated", tmp_path)
    proc = _fresh(HEAVY_PROBE, "validate", "--model", source, EXAMPLE, GOOD / "sdxl-with-class.yaml")
    assert proc.returncode == 1 and "HEAVY []" in proc.stdout and "PLN405" in proc.stdout, proc.stderr


# -- planner apply --dtype / --variant -------------------------------------------------------------------------
def test_apply_dtype_and_variant_go_through_the_plan_rules_before_torch(tmp_path):
    folder = small_sd(tmp_path / "p")
    in_plan = tmp_path / "half.yaml"
    in_plan.write_text(f"version: 1\npipeline:\n  source: {folder}\n  variant: fp16\ndevice: cuda\n"
                       "components: [text_encoder, unet, vae]\n")
    cases = [
        ([EXAMPLE, "--dtype", "half"], "--dtype: PLN104 pipeline.torch_dtype 'half' is not allowed"),
        ([EXAMPLE, "--variant", ""], "--variant: PLN104 pipeline.variant '' is not allowed"),
        ([EXAMPLE, "--source", folder, "--variant", "fp16"],
         f"--variant: PLN407 no component of '{folder}' has files of the variant 'fp16'"),
        ([in_plan], f"{in_plan}:4:3: PLN407 no component of '{folder}' has files of the variant 'fp16'"),
    ]
    for argv, words in cases:
        proc = _fresh(HEAVY_PROBE, "apply", *argv, "--dry-run")
        assert proc.returncode == 1 and words in proc.stderr, (argv, proc.stderr)
        assert "HEAVY []" in proc.stdout and "Traceback" not in proc.stderr, (argv, proc.stdout)


@pytest.fixture
def runs(monkeypatch):
    """The (plan, request) pairs apply passes to the executor (which is not run)."""
    from planner.executor import run as executor_run

    seen = []
    monkeypatch.setattr(executor_run, "run", lambda plan, request: seen.append((plan, request)) or "")
    return seen


def test_apply_dtype_and_variant_override_the_plan_and_the_request_knows(runs, tmp_path, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text("version: 1\npipeline: {torch_dtype: float32, variant: fp16}\ndevice: cuda\ncomponents: [unet]\n")
    run(capsys, "apply", str(plan), "--dry-run", "--dtype", "bfloat16", "--variant", "bf16")
    run(capsys, "apply", str(plan), "--dry-run")
    run(capsys, "apply", str(EXAMPLE), "--dry-run", "--dtype", "float16")
    assert [(p.torch_dtype, p.variant) for p, _ in runs] == [("bfloat16", "bf16"), ("float32", "fp16"),
                                                               ("float16", None)]
    assert [r.overridden for _, r in runs] == [{"pipeline.torch_dtype", "pipeline.variant"}, set(),
                                               {"pipeline.torch_dtype"}]


def test_apply_loads_the_variant_at_the_dtype_and_says_so(tiny_pipelines, tmp_path, capsys):
    import shutil

    import torch
    from diffusers import DiffusionPipeline

    folder = tmp_path / "sd"
    shutil.copytree(tiny_pipelines["sd"], folder)
    DiffusionPipeline.from_pretrained(folder).to(torch.float16).save_pretrained(folder, variant="fp16")
    for weights in folder.glob("*/*.safetensors"):
        if ".fp16." not in weights.name:
            os.truncate(weights, 100)  # only the variant can load now
    code, out, err = run(capsys, "apply", str(EXAMPLE), "--source", str(folder), "--dry-run", "--steps", "1",
                         "--variant", "fp16", "--dtype", "float16", "--trace-json", str(tmp_path / "t.json"))
    assert code == 0, err
    assert out.splitlines()[0].endswith("text_encoder->unet->vae on cuda:0, torch_dtype float16, variant fp16 (dry "
                                        "run: hooks executed on the CPU; figures are what the device would have "
                                        "received)")
    moved = json.loads((tmp_path / "t.json").read_text())["components"]
    main(["inspect", str(folder), "--variant", "fp16", "--dtype", "float16", "--format", "json"])
    inspected = json.loads(capsys.readouterr().out)["components"]
    position_ids = 8 * 77  # CLIP's non-persistent buffer: moved with the model, in no weights file
    assert moved == {"text_encoder": inspected["text_encoder"]["bytes_at_dtype"] + position_ids,
                     "unet": inspected["unet"]["bytes_at_dtype"], "vae": inspected["vae"]["bytes_at_dtype"]}
    code, _, err = run(capsys, "apply", str(EXAMPLE), "--source", str(folder), "--dry-run", "--steps", "1")
    assert code == 1 and "PLN304 cannot load the pipeline" in err  # without the variant: the damaged files


# -- outputs never destroy the run's inputs; a full disk and an early Ctrl-C are one line -----------------------


def test_apply_outputs_never_overwrite_the_plan_or_the_model_folder(tiny_pipelines, tmp_path, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text(EXAMPLE.read_text())
    folder = tiny_pipelines["sd"]
    index = (Path(folder) / "model_index.json").read_text()
    for flag, target in (("--trace-json", plan), ("--out", plan), ("--trace-json", Path(folder) / "model_index.json")):
        argv = ["apply", str(plan), "--source", str(folder), "--dry-run", flag, str(target)]
        if flag == "--out":
            argv[-1] = str(tmp_path / "p.png")
            from PIL import Image

            Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
            argv += ["--image", str(tmp_path / "p.png")]
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2, argv
        assert "this run reads" in capsys.readouterr().err
    assert plan.read_text() == EXAMPLE.read_text() and (Path(folder) / "model_index.json").read_text() == index


def test_init_never_overwrites_a_file_of_the_model_folder_it_reads(tiny_pipelines, capsys):
    folder = Path(tiny_pipelines["sd"])
    index = (folder / "model_index.json").read_text()
    with pytest.raises(SystemExit) as caught:
        main(["init", "--model", str(folder), "-o", str(folder / "model_index.json"), "--force"])
    assert caught.value.code == 2 and "the model folder this run reads" in capsys.readouterr().err
    assert (folder / "model_index.json").read_text() == index


def test_init_refuses_an_empty_variant(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["init", "--pipeline-class", "StableDiffusionPipeline", "--variant", ""])
    assert caught.value.code == 2 and "an empty name" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("argv", [["init", "--pipeline-class", "StableDiffusionPipeline"], ["schema"],
                                  ["show", str(GOOD / "sdxl-dag.yaml")]])
def test_a_full_disk_on_stdout_is_one_line_and_exit_2(argv):
    with open("/dev/full", "w") as full:
        out = subprocess.run([sys.executable, "-m", "planner.cli", *argv], stdout=full, stderr=subprocess.PIPE,
                             text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2, out.stderr
    assert out.stderr == "planner: error: cannot write the output: No space left on device\n"


def test_ctrl_c_while_the_cli_is_still_importing_is_one_line(monkeypatch, capsys):
    import importlib.abc

    from planner import console

    class Interrupting(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "planner.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "planner.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    assert console.main() == 130
    assert capsys.readouterr().err == "planner: interrupted\n"


def test_sizes_beyond_any_memory_are_problems_not_tracebacks(capsys):
    from planner import units
    from planner.folder import sizes

    huge = "9" * 400
    with pytest.raises(ValueError, match="too large"):
        units.parse_size("9" * 23 + "TiB")
    with pytest.raises(ValueError, match="is not a size"):
        units.parse_size("9" * 5000)  # before Python's own 4,300-digit limit speaks
    assert units.human(10 ** 400).endswith(" TiB") and sizes.human(10 ** 400).endswith(" GiB")
    assert units.human(5134927368) == sizes.human(5134927368) == "4.78 GiB"
    with pytest.raises(SystemExit) as caught:
        main(["simulate", str(ROOT / "plans" / "sdxl-base.yaml"), "--budget", huge])
    assert caught.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_a_closed_standard_output_is_one_line_and_exit_2_never_a_traceback():
    plan = ROOT / "plans" / "examples" / "tiny-sd.yaml"
    for command in (["show", str(plan)], ["validate", str(plan)]):
        proc = subprocess.run(["sh", "-c", '"$0" -m planner.cli "$@" >&-', sys.executable, *command],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr == "planner: error: standard output is closed: nothing can be written\n"


def test_a_reader_that_leaves_during_one_large_write_gives_141():
    """`planner simulate ... --calls 1000 --format json | head -c 1`: the reader leaves while the 5 MB document is
    being written; a write(2) cut short returns a short count, no EPIPE, so the output is written a pipe's worth at
    a time and the next piece raises (141, as `yes | head -c 1`), never a silent exit 0."""
    argv = ["simulate", str(ROOT / "plans" / "flux.1-dev.yaml"), "--sizes",
            "transformer=12GB,text_encoder=200MB,text_encoder_2=9GB,vae=160MB,image_encoder=none",
            "--budget", "16GiB", "--calls", "1000", "--format", "json"]
    proc = subprocess.Popen(PLANNER + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout.read(1) == b"{"
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (141, b"")
