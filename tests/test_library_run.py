"""Library plans are run, not only parsed: each plans/<family>.yaml with a tiny build is applied to it unchanged,
`planner apply --dry-run --calls 2`, and its hooks are diffusers' own for that pipeline."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from planner import tiny
from planner.cli import main

pytest.importorskip("diffusers")
RUNS = [(plan, kind) for kind, spec in tiny.KINDS.items() for plan in spec.plans]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """An input image for the kinds that take one (control image, image to refine, first frame)."""
    from PIL import Image

    path = tmp_path_factory.mktemp("input") / "input.png"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(path)
    return path


def needs(kind: str) -> None:
    """Skip where the installed libraries cannot run `kind` (the dependency floors' diffusers predates it)."""
    if kind == "wan-i2v":  # diffusers' WanImageToVideoPipeline calls ftfy.fix_text unconditionally (0.42 included)
        pytest.importorskip("ftfy", reason="WanImageToVideoPipeline needs ftfy to clean its prompts")


def apply_argv(plan: str, kind: str, folder, image, *extra) -> list[str]:
    spec = tiny.KINDS[kind]
    return ["apply", str(ROOT / "plans" / f"{plan}.yaml"), "--source", str(folder), "--dry-run", "--calls", "2",
            *(["--image", str(image)] if spec.image else []), *spec.call_args, *map(str, extra)]


def check_call(events: list[dict], chain: list[str], own: list[str]) -> None:
    """One call's transfers, as a chain moves them: each load of a chain member comes after its predecessor's
    offload (the member's hook offloads it first); every present member, and every component with a hook of its
    own, is loaded and offloaded, the chain's last offloads in the plan's order (each by the next one's hook, the
    last one when the call ends), and nothing stays loaded. A member can load twice (SD3 runs its CLIP encoders
    again for the negative prompt, after the T5)."""
    resident, last_offload = set(), {}
    for position, event in enumerate(events):
        name = event["component"]
        if event["event"] == "load":
            assert name not in resident, (position, event)
            resident.add(name)
            if name in chain[1:]:
                assert chain[chain.index(name) - 1] not in resident, (position, event)
        else:
            assert name in resident, (position, event)
            resident.discard(name)
            last_offload[name] = position
    assert not resident
    assert set(last_offload) == set(chain + own)
    assert sorted(chain, key=last_offload.__getitem__) == chain


def run_apply(argv: list[str], capsys) -> tuple[int, str, str]:
    """`planner apply` in this process (the wan-i2v case: as a real process, hub switched off, unreachable)."""
    if "wan-i2v" not in argv[3]:
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err
    exe = os.path.join(os.path.dirname(sys.executable), "planner")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "planner.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run(cmd + argv, capture_output=True, text=True, env=env, cwd=ROOT)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("plan, kind", RUNS)
def test_library_plan_runs_unchanged_on_its_tiny_build(plan, kind, tiny_builds, image, tmp_path, capsys):
    from PIL import Image

    needs(kind)
    folder = tiny_builds[kind]
    code, out, err = run_apply(apply_argv(plan, kind, folder, image, "--trace-json", tmp_path / "trace.json",
                                          "--out", tmp_path / "out.png", "--quiet"), capsys)
    assert code == 0, err[-3000:]
    trace = json.loads((tmp_path / "trace.json").read_text())
    present = list(trace["components"])
    chain = [name for name in trace["sequence"] if name in present]
    own = [name for name in present if name not in trace["sequence"] and name not in trace["exclude"]]
    assert chain and sorted(chain + [n for n in trace["skipped"] if n in trace["sequence"]]) == sorted(
        trace["sequence"])
    for call in (1, 2):
        check_call([e for e in trace["events"] if e["call"] == call], chain, own)
    assert all(e["device"] == "cuda:0" for e in trace["events"])
    assert [c["call"] for c in trace["calls"]] == [1, 2] and all(c["seconds"] > 0 for c in trace["calls"])
    assert out.startswith(f"plan {ROOT / 'plans' / plan}.yaml: {'->'.join(trace['sequence'])} on cuda:0")
    assert "Traceback" not in out + err
    with Image.open(tmp_path / "out.png") as picture:  # a video's frames are all written (an animated PNG)
        assert getattr(picture, "n_frames", 1) == {"wan-t2v": 81, "wan-i2v": 81, "cogvideox": 9,
                                                   "ltx-video": 161}.get(kind, 1)


def hooks_of(pipe) -> dict:
    """Per model component: its hook's class, execution device, the component it offloads first, and where its
    weights are; plus the order of diffusers' `_all_hooks` and the offload device."""
    import torch

    models = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    names = {id(m): n for n, m in models.items()}
    table = {}
    for name, module in models.items():
        hook = getattr(module, "_hf_hook", None)
        prev = getattr(hook, "prev_module_hook", None)
        table[name] = (type(hook).__name__, str(getattr(hook, "execution_device", None)),
                       names.get(id(prev.model)) if prev is not None else None, str(next(module.parameters()).device))
    table["_all_hooks"] = [names[id(h.model)] for h in getattr(pipe, "_all_hooks", [])]
    table["_offload_device"] = str(getattr(pipe, "_offload_device", None))
    return table


@pytest.mark.parametrize("plan, kind", RUNS)
def test_library_plan_hooks_equal_diffusers_own(plan, kind, tiny_builds, monkeypatch):
    """The plan's hooks on its tiny build, loaded as the plan loads it, are exactly the ones diffusers'
    `enable_model_cpu_offload(device="cuda")` puts on the same pipeline (torch is told it has cuda devices)."""
    import planner
    from planner.executor import devices
    from planner.executor import source as sources
    from planner.validate import load_plan

    monkeypatch.setattr(devices, "count", lambda kind: 1 if kind == "cuda" else 0)
    library_plan = load_plan(ROOT / "plans" / f"{plan}.yaml")
    pipe = sources.load_pipeline(library_plan, str(tiny_builds[kind]))
    with planner.apply(pipe, library_plan):
        ours = hooks_of(pipe)
    pipe.enable_model_cpu_offload(device="cuda")  # the handle put the pipeline back exactly as it was
    assert ours == hooks_of(pipe)
    assert [name for name in ours["_all_hooks"] if name in library_plan.sequence] == [
        name for name in library_plan.sequence if name in ours]
