"""Every budget question, answered once: is the budget enough, which schedule, what to pin, the least that works.

Pure (no torch; scipy only inside a block solve). `decide.decide` is the one entry point the executor, `planner
simulate` and `planner validate --model` share; `problems` builds the feasibility problems (PLN307, PLN409,
PLN411) in one wording. The modules: `components` (whole-component schedules), `blocks` (the block model),
`solve` (its exact solution), `timing` (the time model), `peers` (the other tools' rules, both granularities),
`host` (the host's memory and pinning), `problems`, `decide`.
"""
