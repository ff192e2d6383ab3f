"""`planner simulate`: a plan's residency under ours and the peers' rules, on known sizes. Pure (no torch).

`components` simulates whole components over several calls, `blocks` one steady call block by block; `table` lays
out both tables; `plot` draws the component timeline. Both ask `planner.budget` for every schedule.
"""
