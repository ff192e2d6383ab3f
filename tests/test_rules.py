"""The plan corpus (actionlint style): every tests/data/bad/NAME.yaml sits beside NAME.out, the exact problems it
must produce (at least one error); tests/data/warned/ holds plans whose problems are all warnings (they validate,
and fail only --strict); good plans sit beside NAME.seq, their resolved sequence. Then the rules one by one."""

import ast
import re
import subprocess
import sys

import pytest
import yaml
from conftest import DATA, ROOT

import planner
from planner import loader, validate
from planner.plan import Problem
from planner.rules import PLN501, PLN505, RULES, markdown_table
from planner.rules.device import device_problems

BAD = sorted((DATA / "bad").glob("*.yaml"))
WARNED = sorted((DATA / "warned").glob("*.yaml"))
CLASS_RULES = {rule for rule in RULES if rule.startswith("PLN5")}  # against the index: `check` only
GOOD = sorted((DATA / "good").glob("*.yaml"))
# Rules no plan file can produce, each with the test that proves it: the file cannot be read (PLN000), the loaded
# pipeline disagrees at apply time (PLN3xx), a model folder is damaged (PLN4xx). Every other rule needs a corpus case.
PROVEN_ELSEWHERE = {
    "PLN000": "tests/test_plan.py::test_load_plan_raises_plan_error_for_an_unreadable_path",
    "PLN301": "tests/test_run.py::test_plan_pipeline_mismatch_is_located",
    "PLN302": "tests/test_applied.py::test_pipeline_already_mapped_or_offloaded_is_rejected",
    "PLN303": "tests/test_run.py::test_no_accelerator_without_dry_run",
    "PLN304": "tests/test_run.py::test_missing_folder_is_one_line",
    "PLN305": "tests/test_run.py::test_failing_call_is_one_line",
    "PLN306": "tests/test_scaffold.py::test_a_plan_without_pipes_on_a_connected_pipeline_is_refused_unchanged",
    "PLN307": "tests/test_budget.py::test_a_dry_run_needs_a_budget",
    "PLN401": "tests/test_folder.py::test_a_folder_that_is_not_a_pipeline_is_pln401",
    "PLN402": "tests/test_folder.py::test_a_model_index_that_is_not_a_pipeline_index_is_pln402",
    "PLN403": "tests/test_folder.py::test_a_component_without_weights_is_pln403",
    "PLN404": "tests/test_folder.py::test_a_header_that_is_not_valid_is_pln404",
    "PLN405": "tests/test_folder.py::test_a_truncated_file_names_the_bytes_missing",
    "PLN406": "tests/test_folder.py::test_a_missing_shard_is_pln406_naming_it",
    "PLN407": "tests/test_folder.py::test_a_variant_no_component_has_is_refused_as_diffusers_refuses_it",
    "PLN408": "tests/test_folder.py::test_a_hub_id_offline_is_one_problem_and_no_request",
    "PLN409": "tests/test_rules.py::test_a_budget_below_the_largest_offloaded_component_is_pln409_with_the_numbers",
    "PLN410": "tests/test_simulate.py::test_a_plan_component_without_a_size_is_pln410_naming_it",
    "PLN411": "tests/test_blocksim.py::test_pin_true_beyond_the_spare_memory_is_pln411_at_the_plan_key",
}


def test_corpus_is_large_enough():
    assert len(BAD) >= 30


def _rule_of(line: str) -> str:
    """The rule id of one .out line: `path:line:col: [warning: ]RULE message`."""
    return re.search(r": (?:warning: )?(PLN\d{3}) ", line).group(1)


@pytest.mark.parametrize("path", BAD + WARNED, ids=[f"{p.parent.name}/{p.stem}" for p in BAD + WARNED])
def test_corpus_plan_gives_exactly_its_problems(path, monkeypatch):
    monkeypatch.chdir(path.parent)
    got = [str(p) for p in planner.check(path.name)]
    expected = path.with_suffix(".out").read_text(encoding="utf-8").splitlines()
    assert got == expected
    assert got, "a corpus plan must produce at least one problem"
    severities = {RULES[_rule_of(line)].severity for line in expected}
    assert (severities == {"warning"}) if path in WARNED else ("error" in severities)
    # load_plan reports the file's own problems (planner apply checks the loaded pipeline, not the index); it
    # raises when one is an error, and warnings never keep a plan from loading
    own = [line for line in expected if _rule_of(line) not in CLASS_RULES]
    if all(RULES[_rule_of(line)].severity == "warning" for line in own):
        assert planner.load_plan(path.name).path == path.name
        return
    with pytest.raises(planner.PlanError) as info:
        planner.load_plan(path.name)
    assert [str(p) for p in info.value.problems] == own


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_plan_resolves_to_its_sequence(path):
    plan = planner.load_plan(path)
    assert plan.offload_seq == path.with_suffix(".seq").read_text().strip()
    assert planner.check(path) == []


def test_every_rule_has_a_corpus_case_or_a_listed_test():
    fired = {_rule_of(line) for p in BAD + WARNED
             for line in p.with_suffix(".out").read_text(encoding="utf-8").splitlines()}
    assert fired <= set(RULES), f"rules fired that the rule list lacks: {sorted(fired - set(RULES))}"
    listed = set(PROVEN_ELSEWHERE)
    assert not fired & listed, f"proven by the corpus, no need to list: {sorted(fired & listed)}"
    unproven = set(RULES) - fired - listed
    assert not unproven, f"rules with neither a corpus case nor a listed test: {sorted(unproven)}"
    for rule, test in PROVEN_ELSEWHERE.items():
        path, name = test.split("::")
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        found = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == name]
        assert found, f"{rule}: {test} does not exist"
        source = ast.get_source_segment((ROOT / path).read_text(encoding="utf-8"), found[0])
        assert rule in source or rule.lower() in name, f"{rule}: {test} does not mention it"


def test_the_readme_rule_table_is_the_rule_list():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Rules\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| PLN")]
    table = [line for line in markdown_table().splitlines() if line.startswith("| PLN")]
    assert rows == table, "regenerate the README's rule table: python -c 'import planner.rules as r; " \
        "print(r.markdown_table())'"
    for row, rule in zip(rows, RULES.values(), strict=True):
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        assert cells == [rule.id, rule.severity, rule.title, rule.fix]


def test_rules_are_named_objects_with_one_fix_each():
    assert all(re.fullmatch(r"PLN\d{3}", rule_id) and rule.id == rule_id for rule_id, rule in RULES.items())
    assert all(rule.severity in ("error", "warning") and rule.title and rule.fix for rule in RULES.values())
    assert {rule.id for rule in RULES.values() if rule.severity == "warning"} == {"PLN217", "PLN219", "PLN502",
                                                                                   "PLN505", "PLN507"}


CORE = ["plan", "units", "rules", "loader", "fastschema", "order", "index", "rules.context", "rules.schema",
        "rules.device", "rules.graph", "rules.policy", "rules.pipeline", "validate"]


def test_checks_refer_to_rule_objects_never_to_an_id_written_out():
    for module in CORE[3:]:
        path = ROOT / "planner" / (module.replace(".", "/") + ("/__init__.py" if module == "index" else ".py"))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree) if isinstance(node, (
            ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                assert not re.search(r"\bPLN\d{3}\b", node.value), f"{path.name}:{node.lineno}: {node.value!r}"


def _planner_imports(module: str) -> set[str]:
    """The planner modules `module` imports at its top level (not inside functions: those are lazy)."""
    path = ROOT / "planner" / module.replace(".", "/")
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("planner"):
            base = node.module.removeprefix("planner").lstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}".lstrip(".")
                found.add(sub if sub.replace(".", "/") in {m.replace(".", "/") for m in CORE} else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("planner.") for a in node.names if a.name.startswith("planner.")}
    return found - {""}


def test_the_core_imports_top_down_with_no_circle():
    assert _planner_imports("plan") == set(), "plan.py holds the values only: it imports nothing from planner"
    for i, module in enumerate(CORE):
        assert _planner_imports(module) <= set(CORE[:i]), (module, _planner_imports(module) - set(CORE[:i]))
    # and each, imported first in a fresh interpreter, in dependency order, loads
    code = "; ".join(f"import planner.{m}" for m in CORE) + "; import sys; " \
        "print(sorted(m for m in ('torch', 'diffusers', 'jsonschema', 'networkx', 'scipy') if m in sys.modules))"
    for i in range(len(CORE)):
        proc = subprocess.run([sys.executable, "-c", f"import planner.{CORE[i]}; {code}"], capture_output=True,
                              text=True, cwd=ROOT)
        assert proc.returncode == 0 and proc.stdout.strip() == "[]", (CORE[i], proc.stderr[-2000:])


def test_overrides_go_through_the_same_rules():
    good = DATA / "good" / "sdxl-dag.yaml"
    problems = planner.check(good, {"device": "cpu"})
    assert [(p.path, p.rule) for p in problems] == [("--device", "PLN202")]
    assert str(problems[0]).startswith("--device: PLN202 device 'cpu' cannot be an offload target")
    # the file's gpu_id: 1 meets an indexed device from the command line
    assert [p.rule for p in planner.check(good, {"device": "cuda:1"})] == ["PLN205"]
    assert planner.load_plan(good, {"device": "xpu", "gpu_id": 0}).gpu_id == 0
    assert [p.path for p in planner.check(good, {"gpu_id": -2})] == ["--gpu-id"]


def test_plan_keeps_locations_of_its_components():
    plan = planner.load_plan(DATA / "good" / "sdxl-dag.yaml")
    assert plan.locations["components.unet"] == (13, 3)
    assert plan.locations["exclude.safety_checker"] == (15, 11)
    assert plan.problem("components.unet", "PLN301", "x").line == 13


@pytest.mark.skipif(not hasattr(yaml, "CSafeLoader"), reason="libyaml is not installed")
@pytest.mark.parametrize("path", BAD + WARNED + GOOD, ids=[f"{p.parent.name}/{p.stem}" for p in BAD + WARNED + GOOD])
def test_results_do_not_depend_on_libyaml(path, monkeypatch):
    found = {}
    for name in ("CSafeLoader", "SafeLoader"):
        monkeypatch.setattr(loader, "_Loader", getattr(yaml, name))
        found[name] = planner.check(path)
    assert found["CSafeLoader"] == found["SafeLoader"]


def test_two_different_problems_at_one_place_are_both_reported():
    doc = loader.load(b"components: [unet]\n", "p.yaml")
    assert [(p.rule, p.line, p.column) for p in validate.check_document(doc)[1]] == [("PLN103", 1, 1)] * 2
    same = Problem("p.yaml", 1, 1, "PLN203", "x", "y")
    assert validate._sorted([same, Problem("p.yaml", 1, 1, "PLN203", "z"), same]) == [same, Problem(
        "p.yaml", 1, 1, "PLN203", "z")]


def _check(text: str, overrides=None) -> list[Problem]:
    return validate.check_document(loader.load(text.encode(), "p.yaml"), overrides)[1]


PLAN = "version: 1\ndevice: {device}\n{extra}components: [unet]\n"


@pytest.mark.parametrize("device, gpu_id, rule", [
    ("cuda:127", None, None), ("cuda", 127, None), ("cuda:0", None, None), ("cuda:128", None, "PLN203"),
    ("cuda:256", None, "PLN203"), ("cuda:99999999999999999999", None, "PLN203"), ("cuda:01", None, "PLN203"),
    ("cuda:00", None, "PLN203"), ("cuda", 128, "PLN204"), ("cuda", 256, "PLN204"), ("cuda", 10 ** 30, "PLN204"),
    ("cuda", -1, "PLN204")])
def test_device_indices_beyond_what_torch_keeps_are_refused_at_validate_time(device, gpu_id, rule):
    extra = "" if gpu_id is None else f"gpu_id: {gpu_id}\n"
    problems = _check(PLAN.format(device=device, extra=extra))
    assert [p.rule for p in problems] == ([rule] if rule else [])
    # the executor's re-check of a hand-built Plan reaches the same verdict
    assert [found[1].id for found in device_problems(device, gpu_id)] == ([rule] if rule else [])


def test_the_executor_recheck_covers_every_gpu_id_problem():
    for gpu_id in (True, 1.0, "1", -1, 128):
        assert [(found[0], found[1].id) for found in device_problems("cuda", gpu_id)] == [("gpu_id", "PLN204")], gpu_id
    assert [found[1].id for found in device_problems("cuda:1", 1)] == ["PLN205"]


def test_an_override_beyond_127_is_located_at_its_flag():
    problems = _check(PLAN.format(device="cuda", extra=""), {"gpu_id": 200})
    assert [(p.path, p.rule) for p in problems] == [("--gpu-id", "PLN204")]
    problems = _check(PLAN.format(device="cuda", extra=""), {"device": "cuda:300"})
    assert [(p.path, p.rule) for p in problems] == [("--device", "PLN203")]


@pytest.mark.parametrize("value, rule", [('device: "cuda\\n"', "PLN203"), ('device: "cuda:1\\n"', "PLN203"),
                                         ('components: ["unet\\n"]', "PLN215"),
                                         ('components: {"unet\\n": {}}', "PLN215"),
                                         ('components: {unet: {after: ["vae\\n"]}, vae: {}}', "PLN215"),
                                         ('exclude: ["vae\\n"]', "PLN215"),
                                         ('pipeline: {class: "FluxPipeline\\n"}', "PLN104")])
def test_patterns_end_at_the_true_end_of_the_string(value, rule):
    plan = {"version": "version: 1", "device": "device: cuda", "components": "components: [unet]"}
    plan[value.split(":")[0]] = value
    problems = _check("\n".join(plan.values()) + "\n")
    assert rule in {p.rule for p in problems} and all(p.line == 1 + list(plan).index(value.split(":")[0])
                                                          for p in problems)


@pytest.mark.parametrize("device, meant", [("gpu", "cuda"), ("nvidia", "cuda"), ("cuda0", "cuda:0"),
                                           ("gpu:0", "cuda:0"), ("gpu1", "cuda:1"), ("rocm", "cuda"),
                                           ("metal", "mps"), ("CUDA", "cuda"), ("Cuda:1", "cuda:1"),
                                           ("cdua", "cuda"), ('"cuda:"', "cuda"), ('"cuda\\n"', "cuda"),
                                           ("xpuu", "xpu"), ("tpu", "xla")])
def test_a_misspelt_device_suggests_the_closest_real_one_cuda_first(device, meant):
    problems = _check(PLAN.format(device=device, extra=""))
    assert [(p.rule, p.fix) for p in problems] == [("PLN203", f"did you mean {meant!r}?")]


def test_allowed_keys_never_list_reserved_keys():
    for text in ("extra: 1\n", "devcie_map: 1\n", "device-map: 1\n"):
        fixes = " ".join(p.fix for p in _check(PLAN.format(device="cuda", extra=text)))
        assert "device_map" not in fixes, fixes
    fix = _check(PLAN.format(device="cuda", extra="extra: 1\n"))[0].fix
    assert all(key in fix for key in ("policy", "budget", "reserve", "keep_host_copy", "uses"))
    assert [p.fix for p in _check(PLAN.format(device="cuda", extra="budgte: 1\n"))] == ["did you mean 'budget'?"]


@pytest.mark.parametrize("text, at, place", [
    ("version: 1\ndevice: cuda\nclass: X\ncomponents: [unet]\n", (3, 1), "under `pipeline:`"),
    ("version: 1\ndevice: cuda\nsource: x/y\ncomponents: [unet]\n", (3, 1), "under `pipeline:`"),
    ("version: 1\npipeline: {device: cuda}\ndevice: cuda\ncomponents: [unet]\n", (2, 12), "at the top level"),
    ("version: 1\ndevice: cuda\nafter: [unet]\ncomponents: [unet]\n", (3, 1), "in an entry of `components:`"),
    ("version: 1\ndevice: cuda\ncomponents:\n  unet: {class: X}\n", (4, 10), "under `pipeline:`"),
    ("version: 1\ndevice: cuda\ncomponents:\n  unet: {}\n  gpu_id: 1\n", (5, 11), "at the top level"),
    ("version: 1\ndevice: cuda\ncomponents:\n  unet: {}\n  after: [unet]\n", (5, 10), "in an entry of")])
def test_a_key_valid_at_another_level_looks_mis_indented(text, at, place):
    problems = _check(text)
    assert [(p.line, p.column) for p in problems] == [at]
    assert problems[0].fix.endswith("it looks mis-indented") and place in problems[0].fix


def _many_names_plan(count: int) -> str:
    lines = ["version: 1", "device: cuda", "components:"]
    for i in range(count):
        after, extra = [f"comp_{(i + 1) % count:04d}"], ""  # a ring: one cycle through every component
        if i % 3 == 0:  # every third entry: a misspelt name in `after` (did you mean) and an unknown key
            after.append(f"comp_{(i * 7) % count:04d}x")
            extra = f", extra_{i}: 1"
        lines.append(f"  comp_{i:04d}: {{after: [{', '.join(after)}]{extra}}}")
    lines.append("exclude: [" + ", ".join(f"comp_{i:04d}" for i in range(0, count, 3)) + "]")
    lines += [f"unknown_{i}: 1" for i in range(count // 3)]
    return "\n".join(lines) + "\n"


def _close_matches_compared(monkeypatch) -> list[tuple[str, int]]:
    """(word, how many names it is compared with) for each difflib "did you mean" asked from now on."""
    import difflib

    asked, spied = [], difflib.get_close_matches

    def spy(word, possibilities, *args, **kwargs):
        possibilities = list(possibilities)
        asked.append((word, len(possibilities)))
        return spied(word, possibilities, *args, **kwargs)

    monkeypatch.setattr(difflib, "get_close_matches", spy)
    return asked


def test_thousands_of_names_and_problems_cost_a_bounded_did_you_mean_and_one_cycle_search(monkeypatch):
    """3,000 components in one ring, 1,000 misspelt names and 2,000 unknown keys: difflib compares at most
    Suggester.TOTAL (word, name) pairs in all, where comparing every word with every name is millions, and the
    cycles are searched once (test_order bounds that search), never once per component."""
    from planner import order
    from planner.rules.context import Suggester

    searches, cycles = [], order.cycles
    monkeypatch.setattr(order, "cycles", lambda *args: searches.append(args) or cycles(*args))
    compared = _close_matches_compared(monkeypatch)
    problems = _check(_many_names_plan(3000))
    assert len(problems) > 4000 and {"PLN101", "PLN209", "PLN211", "PLN212"} <= {p.rule for p in problems}
    assert len(searches) == 1
    assert compared and sum(count for _, count in compared) <= Suggester.TOTAL
    assert max(len(p.fix) for p in problems) < 300  # a fix lists a few names, never all of them


def test_did_you_mean_stays_useful_among_many_names():
    names = [f"component_{i}" for i in range(3000)]
    after = "{after: [component_2999x]}"
    text = "version: 1\ndevice: cuda\ncomponents:\n" + "".join(f"  {n}: {{}}\n" for n in names[:-1])
    text += f"  {names[-1]}: {after}\n"
    assert [p.fix for p in _check(text) if p.rule == "PLN209"] == ["did you mean 'component_2999'?"]


# -- pipeline.class against the index of diffusers pipelines ----------------------------------------------------

def _check_file(tmp_path, text: str) -> list[Problem]:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    return planner.check(path)


CLASS_PLAN = "version: 1\npipeline: {{class: {cls}}}\ndevice: cuda\ncomponents: {components}\n{extra}"


def test_a_component_the_index_cannot_classify_is_accepted(tmp_path):
    # Cosmos' safety checker is declared as a placeholder when cosmos_guardrail is missing: maybe a model
    text = CLASS_PLAN.format(cls="Cosmos2TextToImagePipeline", components="[text_encoder, transformer, vae]",
                             extra="exclude: [safety_checker]\n")
    assert _check_file(tmp_path, text) == []


def test_a_plan_can_name_a_class_in_any_of_its_forms_and_mistakes_are_located(tmp_path):
    text = CLASS_PLAN.format(cls="StableDiffusionXLPipeline", components="{text_encoder: {}, unet: {}, vea: {}}",
                             extra="")
    problems = _check_file(tmp_path, text)
    assert [(p.rule, p.line, p.column, p.fix) for p in problems] == [
        ("PLN505", 4, 1, PLN505.fix), ("PLN503", 4, 42, "did you mean 'vae'?")]
    assert problems[0].message.startswith("vae is not in the plan: it gets its own hook")


def test_a_class_is_checked_by_check_but_not_by_load_plan(tmp_path):
    """planner apply checks the loaded pipeline itself (its diffusers may be newer than the index)."""
    path = tmp_path / "p.yaml"
    path.write_text(CLASS_PLAN.format(cls="StableDiffusion9Pipeline", components="[unet]", extra=""))
    assert [p.rule for p in planner.check(path)] == ["PLN501"]
    assert planner.load_plan(path).pipeline_class == "StableDiffusion9Pipeline"


def test_an_unreadable_index_is_a_warning_not_a_traceback(tmp_path, monkeypatch):
    from planner import index

    def broken(*args):
        raise ValueError("pipeline index format 0 is not 1")

    monkeypatch.setattr(index, "load", broken)
    problems = _check_file(tmp_path, CLASS_PLAN.format(cls="FluxPipeline", components="[transformer]", extra=""))
    assert [(p.rule, p.severity) for p in problems] == [("PLN502", "warning")]
    assert "cannot be read" in problems[0].message


def test_did_you_mean_for_a_class_never_compares_a_huge_name(tmp_path, monkeypatch):
    """A class name far longer than any diffusers class cannot match one: it is reported without difflib ever
    comparing it (that would cost its length times every class name)."""
    compared = _close_matches_compared(monkeypatch)
    problems = _check_file(tmp_path, CLASS_PLAN.format(cls="X" * 100_000 + "Pipeline", components="[unet]",
                                                       extra=""))
    assert [p.rule for p in problems] == ["PLN501"] and compared == []
    assert len(problems[0].text) < 100_200 and problems[0].fix == PLN501.fix
    typo = _check_file(tmp_path, CLASS_PLAN.format(cls="StableDifusionPipeline", components="[unet]", extra=""))
    assert typo[0].fix.startswith("did you mean 'StableDiffusionPipeline'") and compared  # a usual one is compared


def test_checking_a_class_imports_no_torch_diffusers_jsonschema_or_networkx():
    code = ("import sys, planner; problems = [p for f in sys.argv[1:] for p in planner.check(f)]; "
            "print(len(problems), sorted(m for m in ('torch', 'diffusers', 'transformers', 'jsonschema', "
            "'networkx') if m in sys.modules))")
    good = [str(p) for p in GOOD]
    out = subprocess.run([sys.executable, "-c", code, *good], capture_output=True, text=True).stdout
    assert out.split(maxsplit=1) == ["0", "[]\n"]
    out = subprocess.run([sys.executable, "-c", code, str(DATA / "warned" / "model-left-out.yaml")],
                         capture_output=True, text=True).stdout
    assert out.split(maxsplit=1) == ["1", "[]\n"]


def test_problems_of_a_rule_take_its_fix_and_severity():
    doc = loader.load(b"version: 1\n", "p.yaml")
    warning = PLN505.at(doc, ("version",), "vae is not in the plan")
    assert (warning.rule, warning.line, warning.column, warning.fix, warning.severity) == (
        "PLN505", 1, 10, PLN505.fix, "warning")
    assert str(warning) == f"p.yaml:1:10: warning: PLN505 vae is not in the plan: {PLN505.fix}"
    assert PLN501.problem("--device", "x", "did you mean 'y'?").fix == "did you mean 'y'?"
    plan = planner.load_plan(DATA / "good" / "sdxl-with-class.yaml")
    assert plan.problem("components.unet", PLN501, "x") == PLN501.problem(plan.path, "x", None, 11, 3)
    assert plan.problem("components.unet", "PLN301", "x").fix == ""  # an id alone: the executor's own words


def test_model_folder_rules_are_the_rule_lists():
    """planner.folder words its PLN4xx problems; their title and fix are the rule list's (one place for each)."""
    from planner.folder import sizes

    for rule_id, entry in getattr(sizes, "RULES", {}).items():
        rule = RULES[rule_id]
        assert entry is rule or tuple(entry) == (rule.title, rule.fix), rule_id


# -- the budget policy's keys against a model folder's sizes (planner validate --model) ------------------------------

def _sized_folder(root) -> None:
    """A StableDiffusionPipeline folder whose models hold float32 tensors of known sizes: text_encoder 4,000
    bytes, unet 40,000, vae 8,000, safety_checker 12,000."""
    import headers

    models = {"text_encoder": ("transformers", "CLIPTextModel"), "unet": ("diffusers", "UNet2DConditionModel"),
              "vae": ("diffusers", "AutoencoderKL"),
              "safety_checker": ("stable_diffusion", "StableDiffusionSafetyChecker")}
    headers.write_index(root, "StableDiffusionPipeline", models)
    for name, floats in (("text_encoder", 1000), ("unet", 10_000), ("vae", 2000), ("safety_checker", 3000)):
        base = "diffusion_pytorch_model" if models[name][0] == "diffusers" else "model"
        headers.write_file(root / name / f"{base}.safetensors", [("w", "F32", (floats,))])


BUDGET_PLAN = ("version: 1\npipeline: {{class: StableDiffusionPipeline{dtype}}}\ndevice: cuda\n{policy}"
               "budget: {budget}\ncomponents: [text_encoder, unet, vae]\nexclude: [safety_checker]\n{uses}")


def _budget_problems(tmp_path, budget, policy="policy: budget\n", dtype="", uses=""):
    from planner.folder import check as folder_check
    from planner.folder import reader

    folder = tmp_path / "model"
    if not folder.exists():
        _sized_folder(folder)
    path = tmp_path / "p.yaml"
    path.write_text(BUDGET_PLAN.format(budget=budget, policy=policy, dtype=dtype, uses=uses), encoding="utf-8")
    model, read_problems = reader.read(folder)
    assert read_problems == []
    return folder_check.check_plan(planner.load_plan(path), model)


def test_a_budget_below_the_largest_offloaded_component_is_pln409_with_the_numbers(tmp_path):
    # the unet (40,000 bytes) beside the excluded safety_checker (12,000), which stays resident: 52,000 at least
    problems = _budget_problems(tmp_path, 51_999)
    assert [(p.rule, p.line, p.column, p.severity) for p in problems] == [("PLN409", 5, 1, "error")]
    assert problems[0].message == (
        "a budget of 50.78 KiB (51999 bytes) cannot hold unet (39.06 KiB, the largest component it moves) beside the "
        "excluded components (11.72 KiB, resident throughout): at least 50.78 KiB (52000 bytes) is needed for the "
        f"model folder {tmp_path / 'model'} at its stored dtype")
    assert problems[0].fix == "raise budget to at least 52000 bytes (50.78 KiB)"
    assert _budget_problems(tmp_path, 52_000) == [] and _budget_problems(tmp_path, "52 KB") == []


def test_the_budget_check_counts_the_plan_dtype_and_its_call_order_only(tmp_path):
    # at float16 every model is half its float32 size: 26,000 bytes needed
    assert [p.rule for p in _budget_problems(tmp_path, 25_999, dtype=", torch_dtype: float16")] == ["PLN409"]
    assert _budget_problems(tmp_path, 26_000, dtype=", torch_dtype: float16") == []
    # a call order without the unet needs the vae beside the safety_checker (a PLN219 warning says the rest)
    assert _budget_problems(tmp_path, 20_000, uses="uses: [text_encoder, vae]\n") == []
    assert [p.rule for p in _budget_problems(tmp_path, 19_999, uses="uses: [text_encoder, vae]\n")] == ["PLN409"]


def test_a_chain_plan_budget_is_not_checked_against_the_sizes(tmp_path):
    # the chain ignores the budget (PLN217, a warning, says so): nothing to check it against
    assert _budget_problems(tmp_path, 1, policy="") == []
