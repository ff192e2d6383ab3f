"""Print the README's table of the plans library (markdown): model and plan file, pipeline class, the sequence the
plan resolves to, and the size of each component at the plan's torch_dtype, from the models' published configs
(benchmarks/published.py); and write benchmarks/published_sizes.json, the sizes the transfer benchmarks read.

    .venv/bin/python scripts/library_table.py               # the table on stdout, the json rewritten
    .venv/bin/python scripts/library_table.py --no-write    # the table only

Needs torch, diffusers and transformers (the `apply` extra): the models are built on the meta device, no weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import planner  # noqa: E402
from benchmarks import published  # noqa: E402

HEADER = ("Sizes in GB (10^9 bytes, two decimals) as loaded at the plan's `torch_dtype`, built from each model's "
          "published config on the meta device (`benchmarks/published.py`, which names every config's source); "
          "`*` marks a size no published figure confirms; `?` a component whose config could not be sourced. "
          "Components the repository does not ship (the IP-Adapter `image_encoder`, the refiner's `text_encoder`, "
          "Wan 2.1's `transformer_2`) are None at load and left out.")


def gb(n: int) -> str:
    return f"{n / 1e9:.2f}"


def model_name(stem: str) -> str:
    """The model's name: the plan's first comment line after the modeline, up to its colon."""
    for line in (published.PLANS_DIR / f"{stem}.yaml").read_text(encoding="utf-8").splitlines()[1:]:
        if line.startswith("# "):
            return line[2:].split(":", 1)[0].strip()
    return stem


def row(stem: str, sizes: dict) -> str:
    """One table row for plan `stem` and its `published.plan_sizes`."""
    plan = planner.load_plan(published.PLANS_DIR / f"{stem}.yaml")
    head = f"| {model_name(stem)} ([{stem}.yaml](plans/{stem}.yaml)) | `{plan.pipeline_class}` | " \
           f"`{' -> '.join(plan.sequence)}` | {sizes['dtype']} |"
    if "*" in sizes["unknown"]:
        return f"{head} ? | unknown: {sizes['unknown']['*']} |"
    models = published.PLANS[stem].components
    parts = [f"{name} {gb(n)}{'' if _checked(models[name]) else '*'}" for name, n in sizes["components"].items()]
    parts += [f"{name} ?" for name in sizes["unknown"] if name in plan.sequence]
    total = gb(sum(sizes["components"].values()))
    if any(name in plan.sequence for name in sizes["unknown"]):
        total = f"≥ {total}"
    extra = [f"{name} {gb(o['bytes'])} outside the plan" for name, o in sizes["others"].items()]
    extra += [f"{name} ? outside the plan" for name in sizes["unknown"] if name not in plan.sequence]
    detail = ", ".join(parts) + (f" (+ {', '.join(extra)})" if extra else "")
    return f"{head} {total} | {detail} |"


def _checked(key: str) -> bool:
    return bool(published.MODELS[key].checks)


def table(all_sizes: dict) -> str:
    lines = [HEADER, "", "| model (plan) | class | sequence | dtype | total GB | components GB |",
             "|---|---|---|---|---|---|"]
    lines += [row(stem, sizes) for stem, sizes in all_sizes.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help=f"do not rewrite {published.JSON_PATH.name}")
    args = parser.parse_args(argv)
    all_sizes = published.compute_all()
    sys.stdout.write(table(all_sizes))
    if not args.no_write:
        published.JSON_PATH.write_text(json.dumps(all_sizes, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
