"""Validate N DAG plans naming real pipeline classes as whole processes and print two ratios measured in the same
run: `planner validate` (schema, rules and the pipeline-class check against the index) against check-jsonschema
(same schema, same files), and against a floor that only imports pyyaml, jsonschema and networkx and parses the
files (with the same libyaml parser planner uses). The three commands take turns in each round, so a machine
whose load changes during the run weighs on all of them alike; the load average is printed with the figures.

    .venv/bin/python benchmarks/validate_speed.py [--plans 200 2000] [--repeat 7]

With several counts it also prints what one more plan costs (the slope between the first and the last count), for
planner and for the floor: the per-plan work, apart from what each process pays once (start, imports).
Goal: planner / check-jsonschema <= 0.6 and planner / floor <= 1.15. Not a test: it prints, it never asserts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _progress import progress

ROOT = Path(__file__).resolve().parent.parent
FLOOR = """
import sys
import jsonschema, networkx, yaml
loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        yaml.load(f.read().decode("utf-8"), Loader=loader)
"""


# Real classes, so that the pipeline-class check against the index is measured too (each plan names one).
CLASSES = ("StableDiffusionXLPipeline", "StableDiffusionPipeline", "FluxPipeline", "StableDiffusion3Pipeline",
           "StableDiffusionControlNetPipeline", "StableDiffusionXLControlNetPipeline", "PixArtSigmaPipeline",
           "WanPipeline", "CogVideoXPipeline", "HunyuanVideoPipeline", "LTXPipeline", "SanaPipeline",
           "QwenImagePipeline", "HiDreamImagePipeline", "Kandinsky3Pipeline", "StableDiffusionXLImg2ImgPipeline")


def write_plans(folder: Path, count: int) -> list[str]:
    """`count` valid DAG plans, each naming a real pipeline class with its real components: the class's diffusers
    chain as a DAG (each after the one before), its other required models after nothing, its exclusions. No plan
    has a problem, not even a warning (checked)."""
    from planner import index

    records = [index.get(name) for name in CLASSES if index.get(name) is not None]
    paths = []
    for i in range(count):
        record = records[i % len(records)]
        chain = list(record.effective_sequence)
        excluded = list(record.effective_exclude)
        rest = [n for n, c in record.components.items() if c.model and n not in record.optional
                and n not in chain and n not in excluded]
        lines = ["# yaml-language-server: $schema=../schemas/plan.schema.json", "version: 1", "pipeline:",
                 f"  class: {record.name}", f"  source: org/model-{i}", "  torch_dtype: float16",
                 "device: cuda", f"gpu_id: {i % 4}", "components:"]
        for k, name in enumerate(chain):
            lines.append(f"  {name}: {{after: [{chain[k - 1]}]}}" if k else f"  {name}: {{}}")
        lines += [f"  {name}: {{}}" for name in rest]
        if excluded:
            lines.append(f"exclude: [{', '.join(excluded)}]")
        path = folder / f"plan_{i:04d}.yaml"
        path.write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    return paths


def timed(commands: dict[str, list[str]], repeat: int) -> dict[str, float]:
    """The median wall time of each command over `repeat` rounds, the commands taking turns in each round."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, cmd in commands.items():
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            times[name].append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed ({proc.returncode}): {proc.stdout[-500:]}{proc.stderr[-500:]}")
    return {name: statistics.median(values) for name, values in times.items()}


def measure(count: int, repeat: int, check_jsonschema: str | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        files = write_plans(Path(tmp), count)
        commands = {"planner": [sys.executable, "-m", "planner.cli", "validate", *files],
                    "floor": [sys.executable, "-c", FLOOR, *files]}
        if check_jsonschema:
            commands["check-jsonschema"] = [check_jsonschema, "--schemafile",
                                            str(ROOT / "schemas" / "plan.schema.json"), *files]
        out = subprocess.run(commands["planner"], capture_output=True, text=True).stdout  # warms the file cache
        if out.strip().splitlines()[-1] != f"{count} plans valid":
            raise SystemExit(f"the generated plans are not all clean:\n{out[-2000:]}")
        progress(f"{count} plans written; timing {', '.join(commands)} ({repeat} rounds)")
        return timed(commands, repeat)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plans", type=int, nargs="+", default=[200])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    bindir = Path(sys.executable).parent
    check_jsonschema = shutil.which("check-jsonschema", path=str(bindir)) or shutil.which("check-jsonschema")
    load_before = os.getloadavg()
    results = {count: measure(count, args.repeat, check_jsonschema) for count in args.plans}
    load_after = os.getloadavg()
    for count, t in results.items():
        print(f"{count} plans, median of {args.repeat} whole-process runs")
        print(f"planner validate : {t['planner'] * 1000:8.1f} ms")
        print(f"floor (parse)    : {t['floor'] * 1000:8.1f} ms")
        print(f"planner / floor            = {t['planner'] / t['floor']:.2f}  (goal <= 1.15)")
        if "check-jsonschema" in t:
            print(f"check-jsonschema : {t['check-jsonschema'] * 1000:8.1f} ms")
            print(f"planner / check-jsonschema = {t['planner'] / t['check-jsonschema']:.2f}  (goal <= 0.60)")
        else:
            print("check-jsonschema not installed: pip install -e '.[bench]'")
    if len(results) > 1:
        (low, t_low), (high, t_high) = min(results.items()), max(results.items())
        per_plan = {name: (t_high[name] - t_low[name]) / (high - low) for name in ("planner", "floor")}
        print(f"one more plan ({low} -> {high}): planner {per_plan['planner'] * 1e6:.0f} us, floor "
              f"{per_plan['floor'] * 1e6:.0f} us, planner / floor = {per_plan['planner'] / per_plan['floor']:.2f}")
    print("load average (1, 5, 15 min): before " + " ".join(f"{x:.2f}" for x in load_before) + ", after "
          + " ".join(f"{x:.2f}" for x in load_after) + f" on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
