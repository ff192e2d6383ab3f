from planner.trace import Trace


def test_records_only_changes_of_residency():
    trace = Trace("cuda:0", sizes={"a": 10, "b": 20})
    trace.load("a")
    trace.load("a")  # already there: accelerate skips the transfer, so does the trace
    trace.offload("b")  # not there: nothing moves
    trace.offload("a")
    assert [(e.event, e.component, e.bytes) for e in trace.events] == [("load", "a", 10), ("offload", "a", 10)]


def test_per_call_bytes_and_peak():
    trace = Trace("cuda:0", sizes={"a": 10, "b": 20})
    trace.load("a")
    trace.load("b")
    trace.offload("a")
    trace.offload_all()
    trace.end_call()
    trace.load("b")
    stats = trace.calls
    assert (stats[1].loaded_bytes, stats[1].offloaded_bytes, stats[1].peak_resident_bytes) == (30, 30, 30)
    assert (stats[2].call, stats[2].loaded_bytes) == (2, 20)
    assert trace.to_json()["events"][-1] == {"call": 2, "event": "load", "component": "b", "bytes": 20,
                                             "device": "cuda:0"}


def test_the_trace_module_is_pure():
    import subprocess
    import sys

    code = "import sys, planner.trace; print([m for m in ('torch', 'diffusers') if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_only_the_last_keep_calls_calls_are_kept():
    trace = Trace("cuda:0", sizes={"a": 10}, keep_calls=2)
    for _ in range(5):
        trace.load("a")
        trace.offload("a")
        trace.end_call()
    assert {e.call for e in trace.events} == {4, 5}
    assert sorted(trace.calls) == [4, 5] and trace.dropped_calls == 3
