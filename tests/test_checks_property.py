"""Live and offline give the same findings, and the engine never raises, on generated event streams.

Live: events go to ``Checker.feed`` as the recorder sends them, with each object registered when it
is first seen (a scheduler again at its ``scheduler_init``, as the recorder does). Offline: the same
events go through the recorder's own row expansion into an Arrow table of the trace schema and
``check_trace`` rebuilds them from rows and metadata.
"""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrdebug.record import callsites
from lrdebug.rules import Checker, check_trace
from lrdebug.tracefile import Trace
from lrdebug.tracefile.columns import expand_rows
from lrdebug.tracefile.schema import EVENTS, Event
from lrdebug.tracefile.writer import table_from_columns

SCHED_CLASSES = ["StepLR", "MultiStepLR", "CosineAnnealingLR", "ExponentialLR", "OneCycleLR", "PolynomialLR",
                 "LambdaLR", "ReduceLROnPlateau", "SequentialLR", "MyWarmup"]
FILES = ["/src/train.py", "/src/loop.py"]


def _register_site(file: str, line: int) -> int:
    """A call site id as the recorder makes one: call_site() from code at that file and line."""
    scope = {"call_site": callsites.call_site}
    # own=0: no lrdebug frame stands between call_site and this code (the recorder passes its own count)
    exec(compile("\n" * (line - 1) + "site = call_site(0)", file, "exec"), scope)
    return scope["site"]


SITE_IDS = {(f, line): _register_site(f, line) for f in FILES for line in range(1, 6)}


def _site(file, line) -> int:
    return SITE_IDS[(file, line)] if file else -1


lr_values = st.sampled_from([0.1, 0.01, 0.0, 1e-3, -0.5, math.nan, math.inf, 0.05])


@st.composite
def registry(draw):
    n_opt = draw(st.integers(1, 3))
    opts = [{"index": i, "class": draw(st.sampled_from(["SGD", "Adam"])), "module": "torch.optim",
             "groups": [{"index": g, "name": draw(st.sampled_from([None, "head"]))}
                        for g in range(draw(st.integers(1, 2)))]} for i in range(n_opt)]
    scheds = []
    for i in range(draw(st.integers(0, 4))):
        cls = draw(st.sampled_from(SCHED_CLASSES))
        params = {"last_epoch": draw(st.sampled_from([0, 0, 1, 5])), "T_max": draw(st.sampled_from([2, 5, 50])),
                  "step_size": draw(st.sampled_from([1, 3])), "gamma": draw(st.sampled_from([0.1, 0.9, 2.0])),
                  "milestones": draw(st.sampled_from([[2, 4], [40], "Counter"])),
                  "total_steps": draw(st.sampled_from([3, 10])), "total_iters": draw(st.sampled_from([2, 8]))}
        info = {"index": i, "class": cls, "module": "train" if cls == "MyWarmup" else "torch.optim.lr_scheduler",
                "optimizer": draw(st.integers(0, n_opt - 1)), "params": params}
        if cls == "SequentialLR" and i >= 2:
            info["children"] = [i - 2, i - 1]
        scheds.append(info)
    return opts, scheds


@st.composite
def streams(draw):
    opts, scheds = draw(registry())
    n_opt = len(opts)
    events = []
    for seq in range(draw(st.integers(0, 60))):
        kind = draw(st.sampled_from(EVENTS + ("optimizer_step",) * 3 + ("scheduler_step",) * 2))
        site = draw(st.sampled_from([(None, None), (FILES[0], 1), (FILES[0], 2), (FILES[1], 3), (FILES[1], 5)]))
        o = draw(st.integers(0, n_opt - 1))
        groups = len(opts[o]["groups"])
        lrs = tuple(draw(lr_values) for _ in range(groups))
        fields = dict(file=site[0], line=site[1])
        s = draw(st.integers(0, len(scheds) - 1)) if scheds else None
        if kind in ("optimizer_step", "optimizer_step_skipped"):
            grads = tuple(draw(st.sampled_from([0, 1, 2])) for _ in range(groups))
            if kind == "optimizer_step_skipped" and draw(st.booleans()):
                grads = ()
            fields.update(optimizer=o, step=draw(st.integers(0, 30)), lrs=lrs, grads=grads)
        elif kind in ("scheduler_step", "scheduler_init", "scheduler_load_state", "get_lr_call"):
            if s is None:
                continue
            o = scheds[s]["optimizer"]
            lrs = tuple(draw(lr_values) for _ in range(len(opts[o]["groups"])))
            fields.update(optimizer=o, scheduler=s)
            if kind == "scheduler_step":
                fields.update(step=draw(st.integers(0, 30)), lrs=lrs,
                              origin=draw(st.sampled_from(["user", "user", "init", "child"])),
                              value=draw(st.sampled_from([None, None, 0.0, 2.5, math.nan])))
            elif kind == "scheduler_init":
                fields.update(lrs=lrs, value=draw(st.sampled_from([None, 0.0, 12.0, math.nan, math.inf])))
            elif kind == "scheduler_load_state":
                fields.update(value=draw(st.sampled_from([0.0, 3.0, 60.0, math.nan])))
        elif kind == "zero_grad":
            origin = draw(st.sampled_from(["optimizer", "module"]))
            fields.update(optimizer=o if origin == "optimizer" else None, origin=origin)
        elif kind == "epoch_start":
            fields.update(loader=draw(st.integers(0, 1)))
        elif kind == "add_param_group":
            fields.update(optimizer=o, step=draw(st.integers(0, 30)), lrs=lrs + (0.1,), value=float(groups + 1))
        elif kind == "optimizer_load_state":
            fields.update(optimizer=o, step=0, lrs=lrs, value=draw(st.sampled_from([None, 0.0, 40.0, math.inf, -3.0])))
        events.append(Event(kind, seq, **fields))
    return opts, scheds, events


@st.composite
def loops(draw):
    """Streams shaped like training loops (epochs, batches, a scheduler or two), to reach the
    rules that need many steps: epoch sizing, horizons, resumes, never-stepped, orphaned."""
    opts, scheds = draw(registry())
    events: list[Event] = []

    def add(kind, **fields):
        events.append(Event(kind, len(events), **fields))

    for info in scheds:
        o = info["optimizer"]
        if draw(st.booleans()):
            add("scheduler_step", optimizer=o, scheduler=info["index"], step=0, lrs=(0.1,) * len(opts[o]["groups"]),
                origin="init", file=FILES[0], line=1)
            add("scheduler_init", optimizer=o, scheduler=info["index"], lrs=(0.1,) * len(opts[o]["groups"]),
                value=draw(st.sampled_from([None, 30.0])), file=FILES[0], line=1)
    if draw(st.booleans()):
        add("optimizer_load_state", optimizer=0, step=0, lrs=(0.1,) * len(opts[0]["groups"]),
            value=draw(st.sampled_from([None, 25.0])), file=FILES[0], line=2)
    mode = [draw(st.sampled_from(["batch", "epoch", "never"])) for _ in scheds]
    per_batch = [i for i, m in enumerate(mode) if m == "batch"]
    steps = [0] * len(opts)
    stepping = draw(st.lists(st.integers(0, len(opts) - 1), min_size=1, max_size=2, unique=True))
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            add("epoch_start", loader=0, file=FILES[1], line=1)
        for _ in range(draw(st.integers(1, 14))):
            for o in stepping:
                lrs = (draw(st.sampled_from([0.1, 0.05])),) * len(opts[o]["groups"])
                add("zero_grad", optimizer=o, origin="optimizer", file=FILES[1], line=2)
                steps[o] += 1
                add("optimizer_step", optimizer=o, step=steps[o], lrs=lrs, grads=(1,) * len(lrs), file=FILES[1],
                    line=3)
            for i in per_batch:
                o = scheds[i]["optimizer"]
                add("scheduler_step", optimizer=o, scheduler=i, step=steps[o], origin="user",
                    lrs=(draw(st.sampled_from([0.1, 0.05])),) * len(opts[o]["groups"]), file=FILES[1], line=4)
        for i in range(len(scheds)):
            if mode[i] == "epoch":
                o = scheds[i]["optimizer"]
                add("scheduler_step", optimizer=o, scheduler=i, step=steps[o], origin="user",
                    lrs=(0.1,) * len(opts[o]["groups"]), file=FILES[1], line=5)
    return opts, scheds, events


def _live(opts, scheds, events):
    """Feed as the recorder does: register at first sight, a scheduler again at its scheduler_init."""
    checker = Checker()
    registered_o, registered_s, meta_s = set(), set(), {}
    for ev in events:
        if ev.optimizer is not None and ev.optimizer not in registered_o:
            registered_o.add(ev.optimizer)
            checker.register_optimizer(ev.optimizer, opts[ev.optimizer])
        if ev.scheduler is not None and (ev.scheduler not in registered_s or ev.event == "scheduler_init"):
            registered_s.add(ev.scheduler)
            info = scheds[ev.scheduler]
            if ev.event == "scheduler_step" and ev.origin == "init":
                info = {k: v for k, v in info.items() if k != "children"}  # the constructor has not finished
            meta_s[ev.scheduler] = info
            checker.register_scheduler(ev.scheduler, info)
        checker.feed(ev)
    meta = {"optimizers": [opts[i] for i in sorted(registered_o)],
            "schedulers": [meta_s[i] for i in sorted(meta_s)]}
    return checker.finish(), meta


def _offline(events, meta, path: Path):
    rows = [(ev.event, ev.seq, ev.seq * 10, 1, ev.optimizer, ev.scheduler, ev.step, _site(ev.file, ev.line),
             ev.lrs or None, ev.grads or None, ev.origin, None, ev.value, ev.loader, None, None, None, None)
            for ev in events]
    if rows:
        columns, n = expand_rows(rows, 0, 0, callsites.SITES, callsites.FRAMEWORK_SITES)
    else:
        columns, n = {}, 0
    table = table_from_columns(columns, n, meta)
    # as a run that closed normally leaves it (live, finish() is told so too)
    return check_trace(Trace(path=path, table=table, meta={0: meta}, status={0: {"state": "closed", "complete": True}}))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(streams(), loops()))
def test_live_equals_offline_and_never_raises(tmp_path_factory, stream):
    opts, scheds, events = stream
    live, meta = _live(opts, scheds, events)
    offline = _offline(events, meta, tmp_path_factory.getbasetemp())
    assert [f.to_dict() for f in offline] == [f.to_dict() for f in live]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.builds(
    Event, event=st.sampled_from(EVENTS + ("other",)), seq=st.integers(-5, 50),
    optimizer=st.none() | st.integers(-1, 3), scheduler=st.none() | st.integers(-1, 3),
    step=st.none() | st.integers(-3, 40),
    lrs=st.tuples() | st.lists(st.none() | st.floats() | st.integers(-3, 3) | st.text(max_size=2), max_size=3).map(tuple),
    grads=st.lists(st.none() | st.integers(-1, 3), max_size=3).map(tuple),
    file=st.none() | st.text(max_size=5), line=st.none() | st.integers(-1, 9),
    origin=st.none() | st.sampled_from(["user", "init", "child", "optimizer", "module", "x"]),
    value=st.none() | st.floats() | st.integers(-2, 100)), max_size=40),
    st.lists(st.tuples(st.integers(-1, 3), st.dictionaries(st.sampled_from(
        ["class", "module", "optimizer", "params", "children", "groups"]), st.none() | st.integers(-1, 3)
        | st.text(max_size=3) | st.lists(st.integers(-1, 3), max_size=3)
        | st.fixed_dictionaries({"T_max": st.none() | st.floats() | st.integers(-2, 5),
                                 "gamma": st.none() | st.floats() | st.text(max_size=2),
                                 "milestones": st.lists(st.floats() | st.none(), max_size=2)})
    )), max_size=4))
def test_arbitrary_input_never_raises(events, registrations):
    checker = Checker()
    for index, info in registrations:
        checker.register_optimizer(index, info)
        checker.register_scheduler(index, info)
    for ev in events:
        checker.feed(ev)
    for f in checker.finish():
        assert isinstance(f.message, str) and f.count >= 1
