import dataclasses
import errno
import os
import threading

import pytest
from conftest import DATA

import planner
from planner.plan import Problem
from planner.planfile import MAX_PLAN_BYTES, read_plan_bytes


def test_plan_is_frozen_and_compares_by_value():
    a = planner.load_plan(DATA / "good" / "sdxl-dag.yaml")
    b = planner.load_plan(DATA / "good" / "sdxl-dag.yaml")
    assert a == b and hash(a.sequence) == hash(b.sequence)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.device = "xpu"
    with pytest.raises(TypeError):
        a.locations["device"] = (1, 1)


def test_plan_fields():
    plan = planner.load_plan(DATA / "good" / "sdxl-dag.yaml")
    assert (plan.version, plan.device, plan.gpu_id, plan.policy) == (1, "cuda", 1, "chain")
    assert plan.exclude == frozenset({"safety_checker"})
    assert plan.edges == (("text_encoder", "unet"), ("text_encoder_2", "unet"), ("unet", "vae"))
    assert (plan.pipeline_class, plan.torch_dtype, plan.variant) == (None, "float16", "fp16")
    assert planner.load_plan(DATA / "good" / "sdxl-with-class.yaml").pipeline_class == "StableDiffusionXLPipeline"


def test_a_chain_plan_has_the_budget_defaults_and_calls_in_its_sequence():
    plan = planner.load_plan(DATA / "good" / "sdxl-dag.yaml")
    assert (plan.budget, plan.reserve, plan.keep_host_copy, plan.uses) == (None, None, True, None)
    assert plan.call_order == plan.sequence


def test_budget_plan_fields_hold_bytes_and_the_call_order():
    plan = planner.load_plan(DATA / "good" / "budget-policy.yaml")
    assert (plan.policy, plan.budget, plan.reserve, plan.keep_host_copy) == ("budget", 8 << 30, 1_500_000_000, True)
    assert plan.uses == plan.call_order == ("text_encoder", "vae", "unet", "vae", "safety_checker")
    assert plan.sequence == ("text_encoder", "unet", "vae")
    assert plan.locations["budget"] == (6, 1) and plan.locations["uses"] == (14, 1)


def test_budget_overrides_are_parsed_and_checked_like_the_file(tmp_path):
    good = DATA / "good" / "budget-policy.yaml"
    assert planner.load_plan(good, {"budget": "6.5GB"}).budget == 6_500_000_000
    assert planner.load_plan(good, {"budget": 1024, "keep_host_copy": False}).keep_host_copy is False
    chain = planner.load_plan(DATA / "good" / "sdxl-dag.yaml", {"policy": "budget", "budget": "8GiB"})
    assert (chain.policy, chain.budget) == ("budget", 8 << 30)
    with pytest.raises(planner.PlanError) as info:
        planner.load_plan(good, {"budget": "8gb"})
    assert [str(p) for p in info.value.problems] == [
        "--budget: PLN214 budget must be a size, not '8gb': did you mean '8GB'?"]
    problems = planner.check(DATA / "good" / "sdxl-dag.yaml", {"budget": "8GiB"})
    assert [(p.path, p.rule, p.severity) for p in problems] == [("--budget", "PLN217", "warning")]


def test_unreadable_file_is_a_problem_not_an_exception(tmp_path):
    problems = planner.check(tmp_path)  # a folder cannot be read as a plan
    assert [p.rule for p in problems] == ["PLN000"]


def test_problem_formats_with_and_without_a_place():
    assert str(Problem("p.yaml", 7, 3, "PLN211", "a cycle", "break it")) == "p.yaml:7:3: PLN211 a cycle: break it"
    assert str(Problem("--device", 0, 0, "PLN202", "no")) == "--device: PLN202 no"


# -- reading plan files: bounded, never blocking, PLN000 naming the path and what it is -------------------------

def _promptly(call, seconds=5.0):
    """call() in a daemon thread; its result, or a failure when it is still running after `seconds`."""
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("result", call()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    return box["result"]


def _only_pln000(problems, *words):
    assert [p.rule for p in problems] == ["PLN000"]
    assert all(word in problems[0].message for word in words), problems[0].message
    return problems[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_promptly_without_being_opened(tmp_path, monkeypatch):
    fifo = tmp_path / "plan.yaml"
    os.mkfifo(fifo)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *args, **kw: opened.append(path) or real_open(path, *args, **kw))
    try:
        problem = _only_pln000(_promptly(lambda: planner.check(fifo)), str(fifo), "named pipe (FIFO)")
    finally:  # should it block after all, a writer lets the reader go
        if opened:
            os.close(real_open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert problem.path == str(fifo) and problem.line == 0
    assert str(fifo) not in map(str, opened)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_swapped_in_after_the_stat_is_opened_without_blocking_and_refused(tmp_path, monkeypatch):
    fifo, regular = tmp_path / "plan.yaml", tmp_path / "regular.yaml"
    os.mkfifo(fifo)
    regular.write_text("version: 1\n")
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, **kw: real_stat(regular if str(path) == str(fifo) else path,
                                                                      *a, **kw))
    _only_pln000(_promptly(lambda: planner.check(fifo)), str(fifo), "named pipe (FIFO)")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
def test_dev_zero_is_refused_promptly():
    _only_pln000(_promptly(lambda: planner.check("/dev/zero")), "/dev/zero", "character device")


def test_a_file_that_grows_past_its_stat_is_read_with_a_bound(tmp_path, monkeypatch):
    big = tmp_path / "plan.yaml"
    big.write_bytes(b"#" * (3 * MAX_PLAN_BYTES))
    real_stat = os.stat

    def small(path, *args, **kw):  # the size seen at stat time: a file that grows while being read
        found = real_stat(path, *args, **kw)
        return os.stat_result((found.st_mode, *found[1:6], 10, *found[7:]))

    monkeypatch.setattr(os, "stat", small)
    reads = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    _only_pln000(planner.check(big), "larger than", "1 MiB")
    assert sum(reads) <= MAX_PLAN_BYTES + 1 + 8192


def test_the_size_limit_is_one_mib(tmp_path):
    at_limit, over = tmp_path / "at.yaml", tmp_path / "over.yaml"
    body = b"version: 1\ndevice: cuda\ncomponents: [unet]\n"
    at_limit.write_bytes(body + b"#" * (MAX_PLAN_BYTES - len(body)))
    over.write_bytes(body + b"#" * (MAX_PLAN_BYTES - len(body) + 1))
    assert MAX_PLAN_BYTES == 1024 * 1024
    assert planner.check(at_limit) == []
    _only_pln000(planner.check(over), str(over), "larger than the 1048576 bytes (1 MiB)")


def test_a_folder_is_named_as_a_folder(tmp_path):
    _only_pln000(planner.check(tmp_path), str(tmp_path), "is a folder")


def test_a_dangling_symlink_names_its_missing_target(tmp_path):
    link = tmp_path / "plan.yaml"
    link.symlink_to("gone.yaml")
    _only_pln000(planner.check(link), str(link), "symbolic link to 'gone.yaml', which does not exist")


def test_a_missing_file_and_a_path_through_a_file_are_named(tmp_path):
    (tmp_path / "file").write_text("x")
    _only_pln000(planner.check(tmp_path / "nope.yaml"), "does not exist")
    _only_pln000(planner.check(tmp_path / "file" / "plan.yaml"), "a part of it is a file")
    _only_pln000(planner.check("pl\0an.yaml"), "NUL byte")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions, not root")
def test_a_folder_without_search_permission_is_a_problem_not_a_traceback(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "plan.yaml").write_text("version: 1\n")
    folder.chmod(0)
    try:
        _only_pln000(planner.check(folder / "plan.yaml"), "permission denied")
        _only_pln000(planner.check(folder), "is a folder")
    finally:
        folder.chmod(0o755)


def test_a_permission_error_is_a_problem_even_when_root_skips_the_check(tmp_path, monkeypatch):
    plan = tmp_path / "locked" / "plan.yaml"
    real_stat = os.stat

    def refused(path, *args, **kw):  # what a folder without search permission does to a non-root user
        if str(path) == str(plan):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_stat(path, *args, **kw)

    monkeypatch.setattr(os, "stat", refused)
    problem = _only_pln000(planner.check(plan), str(plan), "permission denied")
    assert "folders above it" in problem.fix


def test_load_plan_raises_plan_error_for_an_unreadable_path(tmp_path):
    with pytest.raises(planner.PlanError) as info:
        planner.load_plan(tmp_path)
    assert [p.rule for p in info.value.problems] == ["PLN000"]
    with pytest.raises(planner.PlanError):
        read_plan_bytes(tmp_path)
