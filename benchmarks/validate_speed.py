"""Validate 200 DAG plans as whole processes and print two ratios measured in the same run:
`planner validate` against check-jsonschema (same schema, same files), and against a floor that only imports
pyyaml, jsonschema and networkx and parses the files (with the same libyaml parser planner uses).

    .venv/bin/python benchmarks/validate_speed.py [--plans 200] [--repeat 7]

Goal: planner / check-jsonschema <= 0.6 and planner / floor <= 1.15. Not a test: it prints, it never asserts.
"""

from __future__ import annotations

import argparse
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


def write_plans(folder: Path, count: int) -> list[str]:
    """`count` valid DAG plans of 4 to 12 components, each a little different."""
    paths = []
    for i in range(count):
        n = 4 + i % 9
        names = [f"text_encoder_{k}" for k in range(n - 2)] + ["unet", "vae"]
        lines = ["# yaml-language-server: $schema=../schemas/plan.schema.json", "version: 1", "pipeline:",
                 f"  class: Pipeline{i}", f"  source: org/model-{i}", "  torch_dtype: float16",
                 "device: cuda", f"gpu_id: {i % 4}", "components:"]
        for k, name in enumerate(names[:-2]):
            lines.append(f"  {name}: {{after: [{names[k - 1]}]}}" if k else f"  {name}: {{}}")
        lines.append(f"  unet: {{after: [{', '.join(names[:-2])}]}}")
        lines.append("  vae: {after: [unet]}")
        lines.append("exclude: [safety_checker]")
        path = folder / f"plan_{i:03d}.yaml"
        path.write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    return paths


def timed(cmd: list[str], repeat: int, ok=(0,)) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode not in ok:
            raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stdout[-500:]}{proc.stderr[-500:]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plans", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    bindir = Path(sys.executable).parent
    check_jsonschema = shutil.which("check-jsonschema", path=str(bindir)) or shutil.which("check-jsonschema")
    with tempfile.TemporaryDirectory() as tmp:
        files = write_plans(Path(tmp), args.plans)
        planner = [sys.executable, "-m", "planner.cli", "validate", *files]
        floor = [sys.executable, "-c", FLOOR, *files]
        peer = [check_jsonschema, "--schemafile", str(ROOT / "schemas" / "plan.schema.json"), *files]
        progress(f"{args.plans} plans written; warming the file cache and the bytecode")
        timed(planner, 1), timed(floor, 1)
        progress(f"timing planner validate ({args.repeat} runs)")
        t_planner = timed(planner, args.repeat)
        progress(f"timing the parse floor ({args.repeat} runs)")
        t_floor = timed(floor, args.repeat)
        if check_jsonschema:
            progress(f"timing check-jsonschema ({args.repeat} runs)")
        t_peer = timed(peer, args.repeat) if check_jsonschema else None
    print(f"{args.plans} plans, median of {args.repeat} whole-process runs")
    print(f"planner validate : {t_planner * 1000:8.1f} ms")
    print(f"floor (parse)    : {t_floor * 1000:8.1f} ms")
    print(f"planner / floor            = {t_planner / t_floor:.2f}  (goal <= 1.15)")
    if t_peer is not None:
        print(f"check-jsonschema : {t_peer * 1000:8.1f} ms")
        print(f"planner / check-jsonschema = {t_planner / t_peer:.2f}  (goal <= 0.60)")
    else:
        print("check-jsonschema not installed: pip install -e '.[bench]'")


if __name__ == "__main__":
    main()
