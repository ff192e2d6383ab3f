"""`action.yml`, the composite GitHub Action, run as GitHub runs it: each `run:` step a bash script with its `${{ }}`
expressions substituted (github.action_path: this repository; inputs.*: the test's), on a temporary repository,
with this checkout's `planner` on PATH instead of a fresh pip install (OFFLOAD_PLANNER_SKIP_INSTALL)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import DATA, ROOT

ACTION = ROOT / "action.yml"
EXPRESSION = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")


def action() -> dict:
    return yaml.safe_load(ACTION.read_text())


def run_action(tmp_path, inputs: dict | None = None, skip_install: bool = True):
    """Every step of the action in order, as the runner would; returns (exit status, output) of the first step that
    fails, else of the last."""
    spec = action()
    values = {f"inputs.{name}": str(given.get("default", "")) for name, given in spec["inputs"].items()}
    values.update({f"inputs.{k}": v for k, v in (inputs or {}).items()})
    values["github.action_path"] = str(ROOT)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    planner = bin_dir / "planner"  # this checkout's planner, as the installed console script would run it
    planner.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m planner.cli "$@"\n')
    planner.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RUNNER_TEMP": str(tmp_path),
           "GITHUB_PATH": str(tmp_path / "github_path")}
    env.pop("OFFLOAD_PLANNER_SKIP_INSTALL", None)
    if skip_install:
        env["OFFLOAD_PLANNER_SKIP_INSTALL"] = "1"

    def substitute(text: str) -> str:
        return EXPRESSION.sub(lambda m: values[m.group(1)], text)  # a KeyError: an expression the test lacks

    assert spec["runs"]["using"] == "composite"
    proc = None
    for step in spec["runs"]["steps"]:
        assert step["shell"] == "bash"
        step_env = {**env, **{k: substitute(str(v)) for k, v in step.get("env", {}).items()}}
        proc = subprocess.run(["bash", "-e", "-c", substitute(step["run"])], cwd=tmp_path / "repo", env=step_env,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode:
            break
    return proc


@pytest.fixture
def repo(tmp_path):
    """A repository with a plans/ folder holding one good plan."""
    plans = tmp_path / "repo" / "plans"
    plans.mkdir(parents=True)
    shutil.copy(DATA / "good" / "sdxl-dag.yaml", plans / "good.yaml")
    return tmp_path / "repo"


def test_the_install_step_installs_the_action_path_core_only():
    install = action()["runs"]["steps"][0]
    assert install["env"]["ACTION_PATH"] == "${{ github.action_path }}"
    assert '-m pip install --quiet --disable-pip-version-check "$ACTION_PATH"' in install["run"]
    assert "[apply]" not in install["run"] and "torch" not in install["run"]


def test_good_plans_pass(repo, tmp_path):
    proc = run_action(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "::error" not in proc.stdout


def test_a_bad_plan_fails_with_an_annotation_at_its_file(repo, tmp_path):
    bad = repo / "deploy"
    bad.mkdir()
    shutil.copy(DATA / "bad" / "device-cpu.yaml", bad / "bad.yaml")
    proc = run_action(tmp_path, {"paths": "plans deploy"})
    assert proc.returncode == 1
    assert re.search(r"^::error file=deploy/bad\.yaml,line=2,", proc.stdout, re.M), proc.stdout


def test_paths_are_neither_globbed_nor_run(repo, tmp_path):
    proc = run_action(tmp_path, {"paths": "plans/*.yaml $(touch pwned)"})
    assert not (repo / "pwned").exists() and not (tmp_path / "pwned").exists()
    assert proc.returncode != 0  # the literal names do not exist
