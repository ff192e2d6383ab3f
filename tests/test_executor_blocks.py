"""The budget policy at granularity block (planner.executor.blocks) on real tiny pipelines, dry run: per call the
trace moves exactly the bytes of the block schedule (`planner.budget.blocks`), block by block; what is on the device
never passes the budget (the trace, and a probe that looks at the tensors themselves); images equal a run without the
plan; reality other than the script (more or fewer steps, a component outside the plan) keeps the budget and is
labelled; a budget or a pin request that cannot be met changes nothing; `remove()` restores exactly."""

from __future__ import annotations

import itertools
import warnings
from collections import Counter

import pytest
import torch

import planner
from planner.blocknames import REST, block_of
from planner.budget import blocks, host
from planner.plan import PlanError

diffusers = pytest.importorskip("diffusers")
from diffusers import DiffusionPipeline  # noqa: E402
from PIL import Image  # noqa: E402
from test_applied import attributes, state  # noqa: E402

from planner.budget import decide  # noqa: E402
from planner.executor import blocks as exec_blocks  # noqa: E402
from planner.executor import hooks, reasons, weights  # noqa: E402
from planner.executor.hooks import key_of  # noqa: E402
from planner.executor.modules import module_bytes  # noqa: E402

DENOISERS = blocks.DENOISERS


# -- helpers --------------------------------------------------------------------------------------------------
def load(folder):
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)  # fp16 convolutions crawl on a CPU
    pipe.set_progress_bar_config(disable=True)
    return pipe


def models(pipe) -> dict:
    return {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def call_kwargs(kind: str, steps: int = 2, **extra) -> dict:
    kwargs = dict(prompt="a cat", num_inference_steps=steps, output_type="np",
                  generator=torch.Generator().manual_seed(0), **extra)
    if kind == "flux":
        kwargs.update(height=16, width=16)
    return kwargs


def write_plan(tmp_path, components, budget, uses=None, steps=None, exclude=(), prefetch=None, pin=None,
               name="plan.yaml", granularity="block"):
    lines = ["version: 1", "device: cuda", "policy: budget", f"granularity: {granularity}",
             f"components: [{', '.join(components)}]", f"budget: {budget}"]
    for key, value in (("uses", uses), ("exclude", exclude or None)):
        if value is not None:
            lines.append(f"{key}: [{', '.join(value)}]")
    for key, value in (("steps", steps), ("pin", pin),
                       ("prefetch", None if prefetch is None else str(prefetch).lower())):
        if value is not None:
            lines.append(f"{key}: {value}")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return planner.load_plan(path)


def grouped(module) -> dict[str, int]:
    """Bytes per block as the safetensors reader names them, computed here on its own: each tensor once, a tensor
    named in two blocks counted in REST."""
    names: dict[int, set] = {}
    sizes: dict[int, int] = {}
    for name, tensor in itertools.chain(module.named_parameters(remove_duplicate=False),
                                        module.named_buffers(remove_duplicate=False)):
        names.setdefault(id(tensor), set()).add(block_of(name))
        sizes[id(tensor)] = tensor.numel() * tensor.element_size()
    found: dict[str, int] = {}
    for key, blocks_ in names.items():
        block = next(iter(blocks_)) if len(blocks_) == 1 else REST
        found[block] = found.get(block, 0) + sizes[key]
    return found


def budgets(pipe, plan) -> tuple[int, int]:
    """(the least budget block streaming needs, the pipeline's bytes)."""
    found = {name: grouped(module) for name, module in models(pipe).items()}
    model = blocks.model_for(plan, found, 1, granularity="block")
    return decide.least_blocks(plan, found, model).needed, sum(module_bytes(m) for m in models(pipe).values())


def call_order(fired: list[str]) -> tuple[list[str], int]:
    """(uses, steps) from the components' forwards of one call: a denoiser's consecutive forwards are one use."""
    uses, steps = [], 1
    for name, run in itertools.groupby(fired):
        count = len(list(run))
        if name in DENOISERS:
            uses.append(name)
            steps = count
        else:
            uses += [name] * count
    return uses, steps


@pytest.fixture
def device_probe(monkeypatch):
    """`watch(pipe)` starts measuring, after every block load, the bytes of the pipeline's tensors that are not
    their host data (the device copies: in a dry run, new tensors), independently of the trace's bookkeeping;
    the measurements are returned."""
    measured: list[int] = []
    watched: dict = {}

    def watch(pipe):
        for module in models(pipe).values():
            for tensor in itertools.chain(module.parameters(), module.buffers()):
                watched[id(tensor)] = (tensor, tensor.data_ptr())
        return measured

    original = weights.Weights.load

    def load_and_measure(weights, device, keep_host):
        original(weights, device, keep_host)
        if watched:
            measured.append(sum(t.numel() * t.element_size() for t, pointer in watched.values()
                                if t.data_ptr() != pointer))

    monkeypatch.setattr(weights.Weights, "load", load_and_measure)
    return watch


def probed(kind, tiny_builds, tmp_path, fired):
    """The pipeline, the plan's components and the order of uses and steps of one call, found by running it with
    everything resident (whole components: the hooks fire as they will at block granularity)."""
    pipe = load(tiny_builds[kind])
    sequence = (type(pipe).model_cpu_offload_seq or "").split("->")
    components = [n for n in sequence if n in models(pipe)] + [n for n in models(pipe) if n not in sequence]
    total = sum(module_bytes(m) for m in models(pipe).values())
    applied = planner.apply(pipe, write_plan(tmp_path, components, total, name="probe.yaml",
                                             granularity="component"), dry_run=True)
    fired.clear()
    applied(**call_kwargs(kind))
    applied.remove()
    uses, steps = call_order(fired)
    return pipe, components, uses, steps


def loads_per_block(trace, call: int) -> Counter:
    return Counter(e.component for e in trace.events if e.call == call and e.event == "load")


# -- blocks from the module tree --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd", "flux"])
def test_blocks_are_the_readers_blocks_submodules_and_sum_to_the_component(kind, tiny_builds):
    pipe = load(tiny_builds[kind])
    for name, module in models(pipe).items():
        found = exec_blocks.partition(module)
        assert found.sizes == grouped(module), name  # the safetensors reader's naming, block by block
        assert sum(found.sizes.values()) == module_bytes(module)
        assert list(found.sizes)[-1] == REST and set(found.modules) == set(found.sizes) - {REST}
        for block, sub in found.modules.items():
            assert module.get_submodule(block) is sub
        tensors = [id(t) for ts in found.tensors.values() for t in ts]
        assert len(tensors) == len(set(tensors))  # each tensor in one block
    if kind == "flux":  # T5's input embedding is tied to `shared`: one tensor, in REST
        t5 = pipe.text_encoder_2
        rest = {id(t) for t in exec_blocks.partition(t5).tensors[REST]}
        assert t5.shared.weight is t5.encoder.embed_tokens.weight and id(t5.shared.weight) in rest
        assert list(exec_blocks.partition(pipe.transformer).modules) == ["single_transformer_blocks.0",
                                                                      "transformer_blocks.0"]


def test_a_block_that_is_no_submodule_and_a_tied_tensor_belong_to_rest():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])
            self.scales = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(3))])  # "scales.0": a parameter
            self.head = torch.nn.Linear(2, 2)
            self.head.weight = self.layers[1].weight  # tied across a block and REST

    module = Tiny()
    found = exec_blocks.partition(module)
    assert list(found.modules) == ["layers.0", "layers.1"]
    rest = {id(t) for t in found.tensors[REST]}
    assert id(module.scales[0]) in rest and id(module.layers[1].weight) in rest
    assert [id(t) for t in found.tensors["layers.1"]] == [id(module.layers[1].bias)]
    assert sum(found.sizes.values()) == module_bytes(module)


# -- executor and simulator agree -------------------------------------------------------------------------------
@pytest.mark.parametrize("share", [0.0, 0.25], ids=["least", "quarter"])
@pytest.mark.parametrize("kind", ["sd", "flux", "sdxl"])
def test_the_trace_moves_the_schedules_bytes_within_the_budget_and_images_are_unchanged(kind, share, tiny_builds,
                                                                                        tmp_path, fired,
                                                                                        device_probe):
    pipe, components, uses, steps = probed(kind, tiny_builds, tmp_path, fired)
    expected = pipe(**call_kwargs(kind, steps)).images
    least, total = budgets(pipe, write_plan(tmp_path, components, 1, uses=uses, steps=steps, name="size.yaml"))
    budget = least + int(share * (total - least))
    assert budget < total
    plan = write_plan(tmp_path, components, budget, uses=uses, steps=steps)
    applied = planner.apply(pipe, plan, dry_run=True)
    measured = device_probe(pipe)
    schedule = applied.schedule
    assert schedule.exact and schedule.model.budget == budget
    for _ in range(3):
        fired.clear()
        out = applied(**call_kwargs(kind, steps)).images
        assert call_order(fired) == (uses, steps)
        assert (out == expected).all()
    trace = applied.trace
    assert trace.calls[1].loaded_bytes == schedule.first_call_bytes  # the exclusions (none here) in it too
    assert trace.calls[2].loaded_bytes == trace.calls[3].loaded_bytes == schedule.h2d_bytes
    for call in (2, 3):
        counted = loads_per_block(trace, call)
        assert {f"{c}/{b}": counted[f"{c}/{b}"] for c, b in schedule.model.keys} == \
            {f"{c}/{b}": schedule.loads((c, b)) for c, b in schedule.model.keys}
    assert all(e.reason is None for e in trace.events)  # never off the script
    moved, _ = blocks.replay(schedule, 3)  # the scheduler's own block-by-block replay
    assert [trace.calls[c].loaded_bytes for c in (1, 2, 3)] == [moved[0] + schedule.model.resident_bytes, *moved[1:]]
    assert max(s.peak_resident_bytes for s in trace.calls.values()) <= schedule.peak_bytes <= budget
    assert measured and max(measured) <= budget  # the tensors themselves agree
    assert schedule.h2d_bytes > 0  # below the pipeline's bytes something moves every call
    if kind == "sd" and share == 0.0:  # at the least budget the unet streams: it pays blocks every step
        assert any(key[0] in DENOISERS for key in schedule.streamed)
    applied.remove()


def test_prefetch_copies_the_next_streamed_block_while_the_current_one_runs(tiny_builds, tmp_path, fired):
    pipe, components, uses, steps = probed("sd", tiny_builds, tmp_path, fired)
    least, _ = budgets(pipe, write_plan(tmp_path, components, 1, uses=uses, steps=steps, name="size.yaml"))
    overlaps = {}
    for prefetch in (True, False):
        plan = write_plan(tmp_path, components, least, uses=uses, steps=steps, prefetch=prefetch,
                          name=f"{prefetch}.yaml")
        applied = planner.apply(pipe, plan, dry_run=True)
        for _ in range(2):
            applied(**call_kwargs("sd", steps))
        streamed = {f"{c}/{b}" for c, b in applied.schedule.streamed}
        on, most = set(), 0
        for e in (e for e in applied.trace.events if e.call == 2):
            if e.component in streamed:
                (on.add if e.event == "load" else on.discard)(e.component)
                most = max(most, len(on))
        overlaps[prefetch] = most
        assert applied.trace.calls[2].loaded_bytes == applied.schedule.h2d_bytes
        assert applied.trace.calls[2].peak_resident_bytes <= least
        applied.remove()
    assert overlaps == {True: 2, False: 1}  # one block arriving while one runs; without prefetch one at a time


def test_prefetch_copies_the_next_forwards_first_streamed_block_before_that_forward_starts(tiny_builds, tmp_path,
                                                                                          fired, monkeypatch):
    pipe, components, uses, steps = probed("sd", tiny_builds, tmp_path, fired)
    steps = 3
    least, _ = budgets(pipe, write_plan(tmp_path, components, 1, uses=uses, steps=steps, name="size.yaml"))
    log: list[tuple[str, str]] = []  # ("use", component) as a forward starts, ("load", key) as a block loads
    original = exec_blocks.BlockResidency.use

    def use(residency, name):
        log.append(("use", name))
        original(residency, name)

    monkeypatch.setattr(exec_blocks.BlockResidency, "use", use)
    applied = planner.apply(pipe, write_plan(tmp_path, components, least, uses=uses, steps=steps), dry_run=True)
    loading = applied.trace.load
    monkeypatch.setattr(applied.trace, "load", lambda key, reason=None: (log.append(("load", key)),
                                                                          loading(key, reason))[-1])
    for _ in range(2):
        log.clear()
        applied(**call_kwargs("sd", steps))
    trace, schedule, residency = applied.trace, applied.schedule, applied._installer.residency
    starts = [i for i, (kind, _) in enumerate(log) if kind == "use"]
    ahead = 0
    for previous, at in zip(starts, starts[1:], strict=False):
        name = log[at][1]
        order = next((v for (c, _), v in residency.order.items() if c == name), ())
        streamed = [b for b in order if (name, b) in schedule.streamed]
        if streamed and ("load", key_of(name, streamed[0])) in log[previous:at]:
            ahead += 1  # copied during the forward before this one
    unet_steps = sum(1 for kind, name in log if kind == "use" and name == "unet")
    assert ahead >= unet_steps - 1  # every step after the first finds its first block arriving or there
    assert trace.calls[1].loaded_bytes == schedule.first_call_bytes
    assert trace.calls[2].loaded_bytes == schedule.h2d_bytes
    assert trace.calls[2].peak_resident_bytes <= schedule.peak_bytes <= least
    assert reasons.PREFETCH_UNUSED not in {e.reason for e in trace.events}
    applied.remove()


# -- reality other than the script ------------------------------------------------------------------------------
@pytest.mark.parametrize("ran", [3, 1], ids=["more-steps", "fewer-steps"])
def test_more_or_fewer_steps_than_planned_keep_the_budget(ran, tiny_builds, tmp_path, fired, device_probe):
    pipe, components, uses, _ = probed("sd", tiny_builds, tmp_path, fired)
    expected = pipe(**call_kwargs("sd", ran)).images
    least, _ = budgets(pipe, write_plan(tmp_path, components, 1, uses=uses, steps=2, name="size.yaml"))
    applied = planner.apply(pipe, write_plan(tmp_path, components, least, uses=uses, steps=2), dry_run=True)
    measured = device_probe(pipe)
    with pytest.warns(RuntimeWarning, match="'unet' ran a forward the block schedule did not plan") \
            if ran > 2 else warnings.catch_warnings():
        if ran <= 2:
            warnings.simplefilter("error")  # fewer steps: the script passes over the missing ones, silently
        outs = [applied(**call_kwargs("sd", ran)).images for _ in range(3)]
    assert all((out == expected).all() for out in outs)
    trace = applied.trace
    assert max(s.peak_resident_bytes for s in trace.calls.values()) <= least and max(measured) <= least
    seen = {e.reason for e in trace.events}
    if ran > 2:  # the third step streams what it does not hold, labelled
        assert reasons.UNPLANNED_FORWARD in seen
        extra = [e for e in trace.events if e.reason == reasons.UNPLANNED_FORWARD and e.event == "load"]
        assert {e.component.split("/")[0] for e in extra} == {"unet"}
    else:  # what the skipped step would have dropped is dropped before the vae runs; never more than planned
        assert all(trace.calls[c].loaded_bytes <= applied.schedule.h2d_bytes for c in (2, 3))
    assert trace.resident <= {f"{c}/{b}" for c, b in applied.schedule.model.keys}
    applied.remove()


def test_a_component_outside_the_plan_streams_within_the_budget(tiny_builds, tmp_path, device_probe):
    pipe = load(tiny_builds["controlnet"])
    image = Image.new("RGB", (64, 64), (10, 200, 30))
    expected = pipe(**call_kwargs("controlnet", image=image)).images
    components = ["text_encoder", "unet", "vae"]
    uses = ["text_encoder", "text_encoder", "unet", "vae"]
    plan = write_plan(tmp_path, components, 1, uses=uses, steps=2, name="size.yaml")
    least, _ = budgets(pipe, plan)
    applied = planner.apply(pipe, write_plan(tmp_path, components, least, uses=uses, steps=2), dry_run=True)
    measured = device_probe(pipe)
    for _ in range(2):
        out = applied(**call_kwargs("controlnet", image=image)).images
        assert (out == expected).all()
    trace = applied.trace
    own = [e for e in trace.events if e.component.startswith("controlnet/")]
    assert own and all(e.reason == reasons.OWN_HOOK for e in own)
    assert not any(e.component.startswith("controlnet/") for e in trace.events if e.call == 1 and
                   e.event == "load" and e.reason is None)
    assert not {k for k in trace.resident if k.startswith("controlnet/")}  # gone when the call ended
    assert max(s.peak_resident_bytes for s in trace.calls.values()) <= least and max(measured) <= least
    applied.remove()


def test_exclusions_stay_resident_and_count_in_the_first_call(tiny_builds, tmp_path, fired):
    pipe, components, uses, steps = probed("sd", tiny_builds, tmp_path, fired)
    moved = [n for n in components if n != "vae"]
    plan = write_plan(tmp_path, moved, 1, uses=[n for n in uses if n != "vae"], steps=steps, exclude=["vae"],
                      name="size.yaml")
    least, _ = budgets(pipe, plan)
    applied = planner.apply(pipe, write_plan(tmp_path, moved, least, uses=[n for n in uses if n != "vae"],
                                             steps=steps, exclude=["vae"]), dry_run=True)
    for _ in range(2):
        applied(**call_kwargs("sd", steps))
    schedule, trace = applied.schedule, applied.trace
    assert schedule.model.resident_bytes == module_bytes(pipe.vae)
    assert [e.event for e in trace.events if e.component == "vae"] == ["load"]
    assert trace.calls[1].loaded_bytes == schedule.first_call_bytes
    assert trace.calls[2].loaded_bytes == schedule.h2d_bytes
    applied.offload_all()
    assert trace.resident == set()
    applied(**call_kwargs("sd", steps))  # starts as the first call, the exclusion back when it runs
    assert trace.calls[3].loaded_bytes == schedule.first_call_bytes
    assert ("load", "vae", "after offload_all") in [(e.event, e.component, e.reason) for e in trace.events]
    applied.remove()


# -- refusals change nothing; remove restores -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_below_the_first_levels_least_the_blocks_nest_and_the_trace_and_images_still_agree(kind, tiny_builds,
                                                                                         tmp_path, fired,
                                                                                         device_probe):
    pipe, components, uses, steps = probed(kind, tiny_builds, tmp_path, fired)
    expected = pipe(**call_kwargs(kind, steps)).images
    least, _ = budgets(pipe, write_plan(tmp_path, components, 1, uses=uses, steps=steps, name="size.yaml"))
    budget = least * 3 // 4  # the first repeated level cannot run here: pieces inside blocks must
    applied = planner.apply(pipe, write_plan(tmp_path, components, budget, uses=uses, steps=steps), dry_run=True)
    measured = device_probe(pipe)
    schedule = applied.schedule
    assert any(b.count(".") > 1 for _, b in schedule.model.keys)  # nested pieces (`down_blocks.1.attentions.0`)
    for _ in range(3):
        out = applied(**call_kwargs(kind, steps)).images
        assert (out == expected).all()
    trace = applied.trace
    assert trace.calls[1].loaded_bytes == schedule.first_call_bytes
    assert trace.calls[2].loaded_bytes == trace.calls[3].loaded_bytes == schedule.h2d_bytes
    assert all(e.reason is None for e in trace.events)
    assert max(s.peak_resident_bytes for s in trace.calls.values()) <= schedule.peak_bytes <= budget
    assert measured and max(measured) <= budget
    applied.remove()


def test_a_budget_below_the_least_block_budget_is_pln307_and_changes_nothing(tiny_builds, tmp_path):
    pipe = load(tiny_builds["sd"])
    pipe(**call_kwargs("sd"))  # transformers' first-call hooks, so that `attributes` compares like with like
    components = ["text_encoder", "unet", "vae"]
    plan = write_plan(tmp_path, components, 1024, steps=2)  # below its largest piece split no further
    before, pipe_before = attributes(pipe), state(pipe)
    with pytest.raises(PlanError) as info:
        planner.apply(pipe, plan, dry_run=True)
    problem, = info.value.problems
    assert problem.rule == "PLN307" and (problem.line, problem.column) == plan.locations["budget"] != (0, 0)
    assert "block by block" in problem.message and "split no further" in problem.message
    least = int(problem.fix.split("at least ")[1].split(" bytes")[0])
    assert attributes(pipe) == before and state(pipe) == pipe_before
    assert planner.apply(pipe, write_plan(tmp_path, components, least, steps=2, name="ok.yaml"),
                         dry_run=True).schedule is not None  # the least it names is enough


def test_pin_true_beyond_what_the_host_can_spare_is_pln411_and_changes_nothing(tiny_builds, tmp_path, monkeypatch):
    pipe = load(tiny_builds["sd"])
    pipe(**call_kwargs("sd"))
    components = ["text_encoder", "unet", "vae"]
    least, _ = budgets(pipe, write_plan(tmp_path, components, 1, steps=2, name="size.yaml"))
    small = host.HostMemory(total=8 << 30, available=(1 << 30) + 4096)  # 4 KiB past the margin
    monkeypatch.setattr(host, "read_host_memory", lambda: small)
    plan = write_plan(tmp_path, components, least, steps=2, pin="true")
    before, pipe_before = attributes(pipe), state(pipe)
    with pytest.raises(PlanError) as info:
        planner.apply(pipe, plan, dry_run=True)
    problem, = info.value.problems
    assert problem.rule == "PLN411" and (problem.line, problem.column) == plan.locations["pin"] != (0, 0)
    assert "the host can spare only 4.00 KiB" in problem.message
    assert attributes(pipe) == before and state(pipe) == pipe_before
    auto = planner.apply(pipe, write_plan(tmp_path, components, least, steps=2, name="auto.yaml"), dry_run=True)
    assert auto.host.pinned == 0 and "a dry run" in auto.host.note  # nothing pinned where nothing moves
    model = auto.schedule.model
    assert auto.host.held == sum(model.size(key) for key in model.keys)  # the host copies of every moved block
    assert auto._installer.decision.pinning.pinned_bytes <= small.spare  # the choice stays within the host budget


@pytest.mark.parametrize("kind", ["sd", "flux"])
def test_remove_restores_every_submodule_and_tensor_exactly(kind, tiny_builds, tmp_path, fired):
    pipe, components, uses, steps = probed(kind, tiny_builds, tmp_path, fired)
    before, pipe_before = attributes(pipe), state(pipe)
    pipe(**call_kwargs(kind, steps))  # what the pipeline's own call reassigns (flux: _joint_attention_kwargs)
    volatile = {k for k, v in state(pipe)["attrs"].items() if pipe_before["attrs"].get(k) != v}
    pipe_before["attrs"] = state(pipe)["attrs"]
    pointers = {f"{n}.{p}": t.data_ptr() for n, m in models(pipe).items() for p, t in m.named_parameters()}
    least, _ = budgets(pipe, write_plan(tmp_path, components, 1, uses=uses, steps=steps, name="size.yaml"))
    applied = planner.apply(pipe, write_plan(tmp_path, components, least, uses=uses, steps=steps), dry_run=True)
    hooked = [sub for m in models(pipe).values() for sub in m.modules()
              if isinstance(getattr(sub, "_hf_hook", None), hooks.BlockHook)]
    assert hooked and applied.active
    applied(**call_kwargs(kind, steps))
    pipe(**call_kwargs(kind, steps))  # a plain call ends through the shadows
    applied.remove()
    after = state(pipe)
    after["attrs"] = {k: v if k not in volatile else pipe_before["attrs"][k] for k, v in after["attrs"].items()}
    assert attributes(pipe) == before and after == pipe_before
    assert {f"{n}.{p}": t.data_ptr() for n, m in models(pipe).items() for p, t in m.named_parameters()} == pointers
    assert not applied.active and applied.state == "removed" and applied.trace.resident == set()


def test_hooks_removed_behind_the_handle_come_back_and_the_blocks_stay(tiny_builds, tmp_path, fired):
    pipe, components, uses, steps = probed("sd", tiny_builds, tmp_path, fired)
    least, total = budgets(pipe, write_plan(tmp_path, components, 1, uses=uses, steps=steps, name="size.yaml"))
    applied = planner.apply(pipe, write_plan(tmp_path, components, total, uses=uses, steps=steps), dry_run=True)
    applied(**call_kwargs("sd", steps))
    pipe.remove_all_hooks()  # every hook, the blocks' too
    assert applied.state == "displaced"
    applied(**call_kwargs("sd", steps))
    assert applied.active and applied.trace.calls[2].loaded_bytes == 0  # everything fits: nothing moved again
    assert isinstance(pipe.unet.down_blocks[0]._hf_hook, hooks.BlockHook)


def test_a_swapped_component_leaves_the_device_and_the_new_one_is_hooked_block_by_block(tiny_builds, tmp_path,
                                                                                       fired):
    pipe, components, uses, steps = probed("sd", tiny_builds, tmp_path, fired)
    old = pipe.unet
    pointers = {n: p.data_ptr() for n, p in old.named_parameters()}
    total = sum(module_bytes(m) for m in models(pipe).values())
    applied = planner.apply(pipe, write_plan(tmp_path, components, total, uses=uses, steps=steps), dry_run=True)
    expected = applied(**call_kwargs("sd", steps)).images
    pipe.unet = load(tiny_builds["sd"]).unet
    assert (applied(**call_kwargs("sd", steps)).images == expected).all()
    swapped = {e.component for e in applied.trace.events if e.reason == reasons.SWAPPED}
    assert swapped == {k for k in applied.trace.sizes if k.startswith("unet/")}  # every old block left the device
    assert not any(hasattr(sub, "_hf_hook") for sub in old.modules())
    assert {n: p.data_ptr() for n, p in old.named_parameters()} == pointers
    assert isinstance(pipe.unet.mid_block._hf_hook, hooks.BlockHook) and applied.active
    applied.remove()


def test_dropping_the_pipeline_and_the_handle_frees_both(tiny_builds, tmp_path):
    import gc
    import weakref

    pipe = load(tiny_builds["sd"])
    plan = write_plan(tmp_path, ["text_encoder", "unet", "vae"], 1, steps=2, name="size.yaml")
    applied = planner.apply(pipe, write_plan(tmp_path, ["text_encoder", "unet", "vae"], budgets(pipe, plan)[0],
                                             steps=2), dry_run=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the text encoder runs twice where the plan's uses say once
        applied(**call_kwargs("sd"))
    refs = [weakref.ref(pipe), weakref.ref(applied), weakref.ref(pipe.unet), weakref.ref(applied._installer.residency)]
    del pipe, applied
    gc.collect()
    assert [r() for r in refs] == [None] * 4


def test_a_lora_loaded_and_fused_while_blocks_are_resident_is_never_lost(tiny_builds, tmp_path, fired):
    from test_budget import _lora

    lora = _lora(tmp_path, tiny_builds["sd"])
    pipe, components, uses, steps = probed("sd", tiny_builds, tmp_path, fired)
    total = sum(module_bytes(m) for m in models(pipe).values())
    applied = planner.apply(pipe, write_plan(tmp_path, components, 4 * total, uses=uses, steps=steps), dry_run=True)
    applied(**call_kwargs("sd", steps))
    pipe.load_lora_weights(**lora)  # adapters added to resident blocks: counted, re-planned when the call ends
    applied(**call_kwargs("sd", steps))
    grown = sum(v for k, v in applied.trace.sizes.items() if k.startswith("unet/"))
    assert grown == module_bytes(pipe.unet) and applied.active
    assert (reasons.REPLANNED in {e.reason for e in applied.trace.events})
    applied(**call_kwargs("sd", steps))  # every block resident again
    pipe.fuse_lora()  # peft adds into `weight.data` of the device copies
    applied.offload_all()
    assert applied.copied_back.get(applied.trace.call, 0) > 0
    reference = load(tiny_builds["sd"])
    reference.load_lora_weights(**lora)
    reference.fuse_lora()
    ours = dict(pipe.unet.named_parameters())
    for name, param in reference.unet.named_parameters():
        assert ours[name].device.type == "cpu" and torch.equal(ours[name].detach(), param.detach()), name
    assert (applied(**call_kwargs("sd", steps)).images == reference(**call_kwargs("sd", steps)).images).all()
    applied.remove()


def test_planner_apply_prints_the_block_plan_and_the_hosts_side(tiny_builds, tmp_path, capsys):
    from planner.cli import main

    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\ndevice: cuda\npolicy: budget\ngranularity: block\nsteps: 2\n"
                    "components: [text_encoder, unet, vae]\nuses: [text_encoder, text_encoder, unet, vae]\n")
    pipe = load(tiny_builds["sd"])
    least, _ = budgets(pipe, planner.load_plan(plan))
    argv = ["apply", str(plan), "--source", str(tiny_builds["sd"]), "--dry-run", "--quiet", "--calls", "2",
            "--steps", "2", "--policy", "budget"]
    assert main([*argv, "--budget", str(least)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("policy budget: ") and "exact" in out[1]
    assert out[2].startswith("granularity block: ") and "host copies held " in out[2] and "pinned 0 B: nothing " \
        "pinned (a dry run" in out[2]
    table = out[out.index(f"{'component':<20}{'size':>12}") + 1:][:3]
    assert [line.split()[0] for line in table] == ["text_encoder", "unet", "vae"]  # blocks summed per component
    assert main([*argv, "--budget", "1024"]) == 1  # below the largest piece split no further
    err = capsys.readouterr().err
    assert err.startswith("--budget: PLN307 ") and "at least" in err and "split no further" in err


# -- the side stream -----------------------------------------------------------------------------------------------
class FakeCuda:
    """torch.cuda's stream API as far as SideStream uses it, writing down what happens in order."""

    def __init__(self):
        self.log = []
        fake = self

        class Stream:
            def __init__(self, device=None):
                self.name = "side"

            def wait_event(self, event):
                fake.log.append(("wait", self.name, event.name))

        class Event:
            count = 0

            def __init__(self):
                Event.count += 1
                self.name = f"event{Event.count}"

            def record(self, stream):
                fake.log.append(("record", stream.name, self.name))

        self.Stream, self.Event = Stream, Event
        self.compute = Stream()
        self.compute.name = "compute"
        self.current = self.compute

    def current_stream(self, device=None):
        return self.current

    def stream(self, stream):
        fake = self

        class Context:
            def __enter__(self):
                fake.log.append(("enter", stream.name))
                fake.current = stream

            def __exit__(self, *exc):
                fake.log.append(("exit", stream.name))
                fake.current = fake.compute

        return Context()


def test_side_stream_copies_on_its_stream_then_the_compute_stream_waits_before_the_block_runs():
    cuda = FakeCuda()

    class Recorded(exec_blocks.StreamCopier):
        def record(self, tensor, stream):
            cuda.log.append(("record_stream", stream.name, tuple(tensor.shape)))

    side = Recorded(torch.device("cuda"), cuda=cuda)

    def load():
        cuda.log.append(("copy", cuda.current_stream().name))
        return [torch.zeros(2), torch.zeros(3)]

    event = side.copy(load)
    cuda.log.append(("block runs",))  # nothing waits yet: the copy overlaps what runs now
    side.wait(event)
    assert cuda.log == [("enter", "side"), ("copy", "side"), ("record", "side", event.name), ("exit", "side"),
                        ("record_stream", "compute", (2,)), ("record_stream", "compute", (3,)), ("block runs",),
                        ("wait", "compute", event.name)]
    assert isinstance(exec_blocks.copier_for(torch.device("cuda"), prefetch=True),
                      exec_blocks.StreamCopier if torch.cuda.is_available() else exec_blocks.SyncCopier)
    assert isinstance(exec_blocks.copier_for(torch.device("cpu"), prefetch=True), exec_blocks.SyncCopier)


def test_a_prefetched_block_waits_for_its_copy_before_it_runs_and_before_it_is_dropped(tiny_builds, tmp_path,
                                                                                     fired):
    pipe, components, uses, steps = probed("sd", tiny_builds, tmp_path, fired)
    least, _ = budgets(pipe, write_plan(tmp_path, components, 1, uses=uses, steps=steps, name="size.yaml"))
    applied = planner.apply(pipe, write_plan(tmp_path, components, least, uses=uses, steps=steps), dry_run=True)
    residency = applied._installer.residency
    log = []

    class Logged(exec_blocks.SyncCopier):
        def copy(self, load):
            load()
            log.append(("copy", len(log)))
            return len(log) - 1

        def wait(self, event):
            log.append(("wait", event))

    residency.copier = Logged()
    for _ in range(2):
        applied(**call_kwargs("sd", steps))
    copies = [token for kind, token in log if kind == "copy"]
    waits = [token for kind, token in log if kind == "wait"]
    assert copies and sorted(waits) == copies  # every prefetched copy waited for, once
    assert all(log.index(("copy", token)) < log.index(("wait", token)) for token in copies)
    assert residency.events == {}
    applied.remove()


# -- on a real accelerator (skipped on CPU-only machines) -----------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@gpu
@pytest.mark.parametrize("kind", ["sd", "flux"])
def test_on_gpu_the_budget_holds_in_device_memory_and_images_match_no_offload(kind, tiny_builds, tmp_path, fired):
    pipe, components, uses, steps = probed(kind, tiny_builds, tmp_path, fired)
    least, _ = budgets(pipe, write_plan(tmp_path, components, 1, uses=uses, steps=steps, name="size.yaml"))
    reference = load(tiny_builds[kind]).to("cuda")
    expected = reference(**call_kwargs(kind, steps)).images
    del reference
    torch.cuda.empty_cache()
    applied = planner.apply(pipe, write_plan(tmp_path, components, least, uses=uses, steps=steps))
    for call in (1, 2):
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = applied(**call_kwargs(kind, steps)).images
        assert abs(out - expected).max() < 1e-3
        assert applied.trace.calls[call].loaded_bytes == (applied.schedule.first_call_bytes if call == 1 else
                                                          applied.schedule.h2d_bytes)
        assert baseline <= least  # weights on the device between calls
    assert applied.host.pinned <= applied._installer.decision.pinning.spare
    applied.remove()
    assert all(next(m.parameters()).device.type == "cpu" for m in models(pipe).values())


def test_planner_apply_schedules_the_steps_it_runs_not_the_plans(tiny_builds, tmp_path, capsys):
    """`planner apply --steps 3` on a plan written for 30 steps: the schedule counts the 3 the run makes, so every
    transfer is the schedule's own (no warning, no label)."""
    import json
    import warnings

    from planner.cli import main

    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\ndevice: cuda\npolicy: budget\ngranularity: block\nsteps: 30\n"
                    "components: [text_encoder, unet, vae]\nuses: [text_encoder, text_encoder, unet, vae]\n")
    least, total = budgets(load(tiny_builds["sd"]), planner.load_plan(plan))
    trace = tmp_path / "trace.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        code = main(["apply", str(plan), "--source", str(tiny_builds["sd"]), "--dry-run", "--quiet", "--calls", "3",
                     "--steps", "3", "--budget", str((least + total) // 2), "--trace-json", str(trace)])
    assert code == 0, capsys.readouterr()
    events = json.loads(trace.read_text())["events"]
    assert events and not [e for e in events if e.get("reason")]
