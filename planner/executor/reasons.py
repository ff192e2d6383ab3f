"""Why a transfer happened when it is not the plan's own load-before-use or offload-after-use: the labels the trace
gives such events (`planner.trace.Event.reason`), for every policy in one place."""

from __future__ import annotations

OFFLOAD_ALL = "offload_all"  # a transfer made by AppliedPlan.offload_all()


AFTER_OFFLOAD_ALL = "after offload_all"  # an excluded component coming back after offload_all()


# Why a transfer happened, when it is not the schedule's (Event.reason); chain.OFFLOAD_ALL and AFTER_OFFLOAD_ALL too.
UNPREDICTED = "unpredicted use"  # a planned component ran where the schedule did not expect it


OFF_SCHEDULE = "off schedule"  # an expected use found the device otherwise than the schedule planned


OWN_HOOK = "own hook"  # a component outside the plan: loaded when it runs, evicted when the call ends


SWAPPED = "component swapped"  # the pipeline's component was replaced: the old module leaves the device


MOVED = "moved outside the plan"  # someone else moved the weights the residency had put on the device


COPIED_BACK = "changed on the device: copied back"


# Why a transfer happened, when the script did not plan it (Event.reason); budget's labels too (UNPREDICTED: a
# planned component ran where the script has no forward of it; OWN_HOOK: a component outside the plan ran).
UNPLANNED_FORWARD = "forward the schedule did not plan"  # one more forward of the component just run


RAN_AGAIN = "ran again within its forward"  # a streamed block its forward runs twice (a VAE's per-frame loop)


OUTSIDE = "ran outside its component's forward"


PREFETCH_UNUSED = "prefetched, did not run"


REPLANNED = "component changed: re-planned"
