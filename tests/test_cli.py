import json
import subprocess
import sys
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
    assert out.rstrip().endswith("2 problems in 2 of 7 files")


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
