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


def test_events_can_be_sliced_and_stay_bounded():
    trace = Trace("cuda:0", sizes={"a": 10, "b": 20}, keep_calls=3)
    for _ in range(10):
        trace.load("a")
        trace.load("b")
        trace.offload_all()
        trace.end_call()
    last = trace.events[-2:]
    assert [(e.call, e.event, e.component) for e in last] == [(10, "offload", "a"), (10, "offload", "b")]
    assert trace.events[0].call == 8 and len(trace.events) == 12  # 3 calls of 4 events, the rest dropped
    assert [e.component for e in trace.events[::4]] == ["a", "a", "a"]


def test_a_reason_labels_an_event_and_appears_in_json_only_when_set():
    trace = Trace("cuda:0", sizes={"a": 10, "ex": 5})
    trace.load("ex")
    trace.load("a")
    trace.offload_all({"ex": "exclusion round trip"})
    trace.end_call()
    trace.load("ex", "exclusion round trip")
    assert [(e.call, e.event, e.component, e.reason) for e in trace.events] == [
        (1, "load", "ex", None), (1, "load", "a", None), (1, "offload", "a", None),
        (1, "offload", "ex", "exclusion round trip"), (2, "load", "ex", "exclusion round trip")]
    events = trace.to_json()["events"]
    assert "reason" not in events[0]
    assert events[-1] == {"call": 2, "event": "load", "component": "ex", "bytes": 5, "device": "cuda:0",
                          "reason": "exclusion round trip"}


def test_a_call_is_timed_from_its_first_begin_to_its_end():
    trace = Trace("cuda:0", sizes={"a": 10})
    trace.begin(100.0)
    trace.load("a")
    trace.begin(101.0)  # a later hook firing in the same call does not restart the clock
    assert trace.end_call(103.5).seconds == 3.5
    trace.load("a")
    assert trace.end_call(200.0).seconds is None  # no begin: nothing to time (a simulated trace)
    trace.begin(300.0)
    assert trace.end_call().seconds is None and trace.started is None
    assert [s.seconds for s in trace.calls.values()] == [3.5, None, None]
