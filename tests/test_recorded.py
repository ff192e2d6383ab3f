"""Every command prints what it printed when tests/data/recorded.json was recorded (stdout, stderr, exit status,
byte for byte): reshaping the code must not change what users see. `scripts/record_outputs.py` re-records it, in a
commit of its own that lists each changed message."""

import json

import pytest
import recorded


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("recorded").resolve()
    return str(root), recorded.build_inputs(root)


def test_every_recorded_command_prints_the_same(inputs):
    root, folders = inputs
    expected = json.loads(recorded.RECORDED.read_text(encoding="utf-8"))
    argvs = recorded.commands(folders)
    assert len(argvs) == len(expected), "the command list changed: re-record (scripts/record_outputs.py)"
    changed = []
    for argv, want in zip(argvs, expected, strict=True):
        got = recorded.run(argv, root)
        assert got["argv"] == want["argv"], "the command list changed: re-record (scripts/record_outputs.py)"
        if got != want:
            changed.append((got, want))
    assert not changed, "\n\n".join(_diff(got, want) for got, want in changed[:5]) + f"\n({len(changed)} differ)"


def _diff(got: dict, want: dict) -> str:
    import difflib

    lines = [f"$ planner {' '.join(got['argv'])}: exit {got['code']} (recorded {want['code']})"]
    for stream in ("stdout", "stderr"):
        lines += difflib.unified_diff(want[stream].splitlines(), got[stream].splitlines(), f"recorded {stream}",
                                      f"now {stream}", lineterm="", n=1)
    return "\n".join(lines[:60])
