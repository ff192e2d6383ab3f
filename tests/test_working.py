"""Long work says what it is doing on a terminal (planner.cli.common.working): one line on stderr after a second,
ended with how long it took; nothing when stderr is no terminal, nor with --format json into a pipe."""

from __future__ import annotations

import io
import sys

import pytest
from conftest import ROOT

from planner.cli import common, main

PLAN = ROOT / "plans" / "examples" / "tiny-sd.yaml"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def sd(tiny_pipelines):
    return str(tiny_pipelines["sd"])


def run(monkeypatch, argv, stderr, stdout=None):
    monkeypatch.setattr(common, "WORKING_DELAY", 0.0)
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(sys, "stdout", stdout or io.StringIO())
    return main(argv)


def block_argv(sd, *extra):
    return ["simulate", str(PLAN), "--model", sd, "--granularity", "block", "--budget", "400KB", "--steps", "50",
            *extra]


def test_a_block_solve_on_a_terminal_says_what_it_is_doing_and_how_long_it_took(sd, monkeypatch):
    err = Terminal()
    assert run(monkeypatch, block_argv(sd), err) == 0
    text = err.getvalue()
    assert text.startswith("planner simulate: solving the block schedule (") and "blocks, 50 steps per call)..." in text
    assert text.endswith(" s\n") and " done in " in text and text.count("\n") == 1


def test_a_component_simulation_says_so_too(monkeypatch):
    err = Terminal()
    argv = ["simulate", str(ROOT / "plans" / "flux.1-dev.yaml"), "--sizes",
            "transformer=12GB,text_encoder=200MB,text_encoder_2=9GB,vae=160MB,image_encoder=none", "--budget", "16GiB",
            "--calls", "300"]
    assert run(monkeypatch, argv, err) == 0
    assert err.getvalue().startswith("planner simulate: simulating 300 calls of ")


def test_no_terminal_or_json_into_a_pipe_stays_quiet(sd, monkeypatch):
    err = io.StringIO()
    assert run(monkeypatch, block_argv(sd), err) == 0
    assert err.getvalue() == ""
    err = Terminal()
    assert run(monkeypatch, block_argv(sd, "--format", "json"), err) == 0  # stdout a StringIO: not a terminal
    assert err.getvalue() == ""
    assert run(monkeypatch, block_argv(sd, "--format", "json"), err, Terminal()) == 0
    assert "solving the block schedule" in err.getvalue()


def test_work_that_fails_ends_the_line_without_done(monkeypatch):
    err = Terminal()
    monkeypatch.setattr(common, "WORKING_DELAY", 0.0)
    monkeypatch.setattr(sys, "stderr", err)
    with pytest.raises(RuntimeError):
        with common.working("simulate", "solving"):
            import time

            time.sleep(0.05)
            raise RuntimeError("no")
    assert err.getvalue() == "planner simulate: solving...\n"
