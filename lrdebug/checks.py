"""The misuse rules: one engine fed the event stream, live inside ``trace()`` and offline over a trace.

Live, the recorder feeds every event to ``Checker.feed`` as it happens (every optimizer step
included), so the common path is a few counter updates and one tuple comparison; a message is
only built when a finding is new. Offline, ``check_trace`` rebuilds the same events from the
stored rows and metadata and feeds the same engine, so both give the same findings and an old
trace gets newer rules.

The rules never depend on *when* an object was registered (live: at first sight; offline: all
up front), only on the events themselves and on the static facts of the registry (class,
parameters, which optimizer a scheduler drives).
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Iterator

from .events import (
    ADD_PARAM_GROUP,
    CODES,
    EPOCH_START,
    GET_LR_CALL,
    GRAD_FRESH,
    GRAD_SAME,
    OPTIMIZER_LOAD_STATE,
    OPTIMIZER_STEP,
    OPTIMIZER_STEP_SKIPPED,
    ORIGIN_CHILD,
    ORIGIN_INIT,
    SCHEDULER_INIT,
    SCHEDULER_LOAD_STATE,
    SCHEDULER_STEP,
    ZERO_GRAD,
    Event,
    Finding,
)

# "Many" optimizer steps: below this, a scheduler that has not stepped yet may simply be a
# per-epoch scheduler whose first epoch has not ended (scheduler-never-stepped, -orphaned).
MANY_STEPS = 10
# A schedule whose length is at most this many scheduler steps may be sized in epochs; longer
# ones are taken to be sized in optimizer steps (few runs train for more epochs than this).
EPOCH_SIZED_MAX = 1000
# A decay schedule (StepLR, ExponentialLR) has "run through" once the LR fell this much.
DECAY_DONE = 0.01
_INF = math.inf
_NONE: tuple = ()  # feed()'s answer when nothing new was found (no allocation per step)
_PLATEAU = "ReduceLROnPlateau"


def _where(file: str | None, line: int | None) -> str:
    return f"{os.path.basename(file)}:{line}" if file else "an unknown line"


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _int(v: Any) -> int | None:
    f = _num(v)
    return int(f) if f is not None and math.isfinite(f) else None


def _count(v: Any) -> int:
    """A step count read from a trace (0 when absent or not a usable number)."""
    n = _int(v)
    return n if n is not None and n > 0 else 0


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _same_lrs(a: tuple | None, b: tuple | None) -> bool:
    if a is None or b is None or len(a) != len(b):
        return False
    return all(_close(x, y) for x, y in zip(a, b))


def _close(a: Any, b: Any) -> bool:
    if a == b:
        return True
    x, y = _num(a), _num(b)
    if x is None or y is None:
        return True  # a value not known here (a device LR read later) is not evidence of a change
    if x != x and y != y:
        return True
    return abs(x - y) <= 1e-12 * max(abs(x), abs(y))


class _Opt:
    """What the rules track about one optimizer."""

    __slots__ = ("index", "cls", "names", "applied", "skipped", "last_seq", "expected", "from_sched", "driven",
                 "last_sched", "in_epoch", "epoch_mark", "epochs", "restored", "load_seq", "load_lrs", "scheds",
                 "touched", "past", "last_user", "prev_skipped", "after_skip", "pairs", "last_sched_site")

    def __init__(self, index: int) -> None:
        self.index = index
        self.cls = "optimizer"
        self.names: tuple = ()
        self.applied = 0  # optimizer_step events
        self.skipped = 0  # optimizer_step_skipped events
        self.last_seq = -1  # seq of the last step (applied or skipped)
        self.expected: tuple | None = None  # LRs as last seen (step, scheduler, load, add_param_group)
        self.from_sched = False  # `expected` was left by a scheduler step
        self.driven = False  # a scheduler has stepped this optimizer (user or child step)
        self.last_sched: _Sched | None = None  # the last scheduler that stepped it, and where
        self.last_sched_site: tuple = (None, None)
        self.in_epoch = 0  # steps since the last epoch_start
        self.epoch_mark = -1
        self.epochs = 0  # epochs in which this optimizer stepped
        self.restored: float | None = None  # step count restored by load_state_dict before stepping
        self.load_seq: int | None = None
        self.load_lrs: tuple | None = None
        self.scheds: list[_Sched] = []
        self.touched: list[_Sched] = []  # schedulers stepped by the user since the last step
        self.past: list[_Sched] = []  # schedulers whose position is past their end
        self.last_user: _Sched | None = None  # the scheduler the user stepped last
        self.prev_skipped = False  # the last step was skipped
        self.after_skip = 0  # scheduler steps right after a skipped step
        self.pairs: dict[tuple, tuple] = {}  # (scheduler, scheduler) -> where they were first seen taking turns

    def label(self) -> str:
        return f"optimizer {self.index} ({self.cls})"

    def group_label(self, g: int) -> str:
        name = self.names[g] if g < len(self.names) else None
        return f"group {g}" + (f" '{name}'" if name else "")


class _Sched:
    """What the rules track about one scheduler."""

    __slots__ = ("index", "cls", "torch_cls", "opt", "children", "is_child", "params", "first_seq", "created_seq",
                 "init_site", "init_value", "init_lrs", "init_pos", "user_steps", "child_steps", "k", "k_epoch",
                 "pos", "loaded", "burst", "burst_from", "k_site", "k_same", "held", "epoch_len", "end", "epoch_flagged", "past_site", "over",
                 "resume_checked", "first_site")

    def __init__(self, index: int) -> None:
        self.index = index
        self.cls = "scheduler"
        self.torch_cls = True
        self.opt: int | None = None
        self.children: tuple = ()
        self.is_child = False
        self.params: dict[str, Any] = {}
        self.first_seq: int | None = None  # first event about this scheduler: it exists from here on
        self.created_seq: int | None = None  # its constructor ran inside the trace
        self.init_site: tuple = (None, None)
        self.init_value: float | None = None  # the optimizer's restored step count at construction
        self.init_lrs: tuple | None = None
        self.init_pos: int | None = None
        self.user_steps = 0
        self.child_steps = 0
        self.k = 0  # user steps since its optimizer's last step
        self.k_epoch = 0  # user steps since the last epoch_start
        self.pos: int | None = None  # last_epoch, as far as the events tell
        self.loaded = False
        self.burst: Finding | None = None  # a scheduler-multiple-steps finding whose count is still open
        self.burst_from = 0
        self.k_site: tuple = (None, None)  # where the first user step since the optimizer's last step was
        self.k_same = True  # every user step since then came from that same line
        self.held: tuple | None = None  # (step, file, line) of a second step, judged when the burst ends
        self.epoch_len: int | None = None  # schedule length if it were sized in epochs
        self.end: int | None = None  # last valid position of a finite schedule
        self.epoch_flagged = False
        self.past_site: tuple = (None, None)
        self.over = 0
        self.resume_checked = False
        self.first_site: tuple = (None, None)

    def label(self) -> str:
        return f"scheduler {self.index} ({self.cls})"


def _lengths(cls: str, p: dict[str, Any]) -> tuple[int | None, int | None]:
    """(last valid position of a finite schedule, length in steps of one sized like a number of epochs)."""
    end = epoch_len = None
    if cls == "CosineAnnealingLR":
        end = epoch_len = _int(p.get("T_max"))
    elif cls == "OneCycleLR":
        n = _int(p.get("total_steps"))
        end = n - 1 if n else None
    elif cls == "PolynomialLR":
        end = _int(p.get("total_iters"))
    elif cls == "StepLR":
        size, decays = _int(p.get("step_size")), _decays(p.get("gamma"))
        epoch_len = size * decays if size and decays else None
    elif cls == "MultiStepLR":
        milestones = p.get("milestones")
        ms = [m for m in map(_int, milestones) if m is not None] if isinstance(milestones, list) else []
        epoch_len = max(ms) if ms else None
    elif cls == "ExponentialLR":
        epoch_len = _decays(p.get("gamma"))
    if epoch_len is not None and not 0 < epoch_len <= EPOCH_SIZED_MAX:
        epoch_len = None
    return end, epoch_len


def _decays(gamma: Any) -> int | None:
    """How many multiplications by gamma bring the LR down to DECAY_DONE of its start."""
    g = _num(gamma)
    if g is None or not 0 < g < 1:
        return None
    return max(1, math.ceil(math.log(DECAY_DONE) / math.log(g) - 1e-9))


def _schedule_text(s: _Sched) -> str:
    p = s.params
    if s.cls == "CosineAnnealingLR":
        return f"T_max={p.get('T_max')}"
    if s.cls == "StepLR":
        return f"step_size={p.get('step_size')}, gamma={p.get('gamma')}"
    if s.cls == "MultiStepLR":
        return f"milestones={p.get('milestones')}"
    if s.cls == "ExponentialLR":
        return f"gamma={p.get('gamma')}"
    if s.cls == "OneCycleLR":
        return f"total_steps={p.get('total_steps')}"
    if s.cls == "PolynomialLR":
        return f"total_iters={p.get('total_iters')}"
    return ""


class Checker:
    """The rule engine. ``feed`` every event in order, then ``finish`` once at the end of the run."""

    def __init__(self, ignore: Iterable[str] = frozenset()) -> None:
        self.ignore = frozenset(ignore)
        self.findings: list[Finding] = []
        self._by_key: dict[tuple, Finding] = {}
        self._new: list[Finding] | None = None
        self._opts: dict[int, _Opt] = {}
        self._scheds: dict[int, _Sched] = {}
        self._zero_seq = -1  # seq of the last zero_grad of any kind
        self._epochs = 0  # epoch_start events so far
        self._finished = False
        # Processes in the run (offline: from the trace's metadata); see _multiple_steps.
        size = os.environ.get("WORLD_SIZE", "")
        self.world_size = max(int(size), 1) if size.isdigit() else 1
        self._handlers = {
            OPTIMIZER_STEP: self._optimizer_step,
            OPTIMIZER_STEP_SKIPPED: self._optimizer_skipped,
            SCHEDULER_STEP: self._scheduler_step,
            SCHEDULER_INIT: self._scheduler_init,
            ZERO_GRAD: self._zero_grad,
            EPOCH_START: self._epoch_start,
            ADD_PARAM_GROUP: self._add_param_group,
            OPTIMIZER_LOAD_STATE: self._optimizer_load_state,
            SCHEDULER_LOAD_STATE: self._scheduler_load_state,
            GET_LR_CALL: self._get_lr_call,
        }

    # ------------------------------------------------------------------ registry
    def register_optimizer(self, index: int, info: dict) -> None:
        o = self._opt(index)
        if o is None or not isinstance(info, dict):
            return
        o.cls = str(info.get("class") or "optimizer")
        groups = info.get("groups")
        if isinstance(groups, list):
            o.names = tuple(g.get("name") if isinstance(g, dict) else None for g in groups)

    def register_scheduler(self, index: int, info: dict) -> None:
        s = self._sched(index)
        if s is None or not isinstance(info, dict):
            return
        s.cls = str(info.get("class") or "scheduler")
        s.torch_cls = str(info.get("module") or "torch").startswith("torch")
        params = info.get("params")
        s.params = params if isinstance(params, dict) else {}
        opt = _int(info.get("optimizer"))
        if opt != s.opt:
            if s.opt is not None and s.opt in self._opts:
                self._opts[s.opt].scheds = [x for x in self._opts[s.opt].scheds if x is not s]
            s.opt = opt
            o = self._opt(opt)
            if o is not None:
                o.scheds.append(s)
        children = info.get("children")
        if isinstance(children, list):
            s.children = tuple(c for c in (_int(c) for c in children) if c is not None and c != index)
            for c in s.children:
                self._sched(c).is_child = True
        s.end, s.epoch_len = _lengths(s.cls, s.params) if s.torch_cls else (None, None)

    def _opt(self, index: Any) -> _Opt | None:
        o = self._opts.get(index)
        if o is None:
            if not isinstance(index, int) or isinstance(index, bool):
                return None
            o = self._opts[index] = _Opt(index)
        return o

    def _sched(self, index: Any) -> _Sched | None:
        s = self._scheds.get(index)
        if s is None:
            if not isinstance(index, int) or isinstance(index, bool):
                return None
            s = self._scheds[index] = _Sched(index)
        return s

    # ------------------------------------------------------------------ findings
    def _add(self, code: str, step: int | None, file: str | None, line: int | None, message, opt: int | None = None,
             sched: int | None = None, group: int | None = None) -> Finding | None:
        """Record an occurrence; a new Finding only for a new (code, optimizer, scheduler, group, site)."""
        if code in self.ignore:
            return None
        key = (code, opt, sched, group, file, line)
        f = self._by_key.get(key)
        if f is not None:
            f.count += 1
            return None
        f = Finding(code, CODES[code], message(), opt, sched, group, step, file, line)
        self._by_key[key] = f
        self.findings.append(f)
        if self._new is None:
            self._new = [f]
        else:
            self._new.append(f)
        return f

    def feed(self, ev: Event) -> list[Finding] | tuple:
        """Findings first raised by this event (any severity); an empty tuple when none."""
        handler = self._handlers.get(ev.event)
        if handler is None or self._finished:
            return _NONE
        self._new = None
        handler(ev)
        new = self._new
        return _NONE if new is None else new

    # ------------------------------------------------------------------ optimizer steps
    def _step_common(self, o: _Opt, ev: Event) -> None:
        """Bookkeeping shared by applied and skipped steps: epochs, bursts, LR changes."""
        if o.epoch_mark != self._epochs:
            o.epoch_mark = self._epochs
            o.epochs += 1
        o.in_epoch += 1
        if o.touched:
            for s in o.touched:
                if s.burst is not None or s.held is not None:
                    self._close_burst(o, s, ev.step)
                s.k = 0
            o.touched.clear()
        lrs = ev.lrs
        exp = o.expected
        if exp is not None and lrs != exp:
            self._lr_changed(o, ev, exp)
        o.expected = lrs
        o.from_sched = False
        o.last_seq = ev.seq

    def _optimizer_step(self, ev: Event) -> None:
        o = self._opts.get(ev.optimizer) or self._opt(ev.optimizer)
        if o is None:
            return
        o.applied += 1
        prev_seq = o.last_seq
        o.prev_skipped = False
        self._step_common(o, ev)
        grads = ev.grads
        if grads:
            if GRAD_SAME in grads:
                if self._zero_seq < prev_seq:
                    self._not_cleared(o, ev, grads.index(GRAD_SAME))
            elif GRAD_FRESH not in grads:
                self._no_grads(o, ev)
        for v in ev.lrs:
            if v.__class__ is not float or not 0.0 <= v < _INF:
                self._bad_lrs(o, ev)
                break
        if o.past:
            self._past_horizon(o, ev)

    def _optimizer_skipped(self, ev: Event) -> None:
        o = self._opt(ev.optimizer)
        if o is None:
            return
        o.skipped += 1
        o.prev_skipped = True
        self._step_common(o, ev)
        self._add("step-skipped", ev.step, ev.file, ev.line, lambda: (
            f"{o.label()}: optimizer step {ev.step} was skipped ({_where(ev.file, ev.line)}) because GradScaler "
            "found inf/NaN gradients (the full count is written at the end of the run)."), opt=o.index)

    def _lr_changed(self, o: _Opt, ev: Event, exp: tuple) -> None:
        lrs = ev.lrs
        for g in range(min(len(lrs), len(exp))):
            before, now = exp[g], lrs[g]
            if _close(before, now):
                continue
            where = _where(ev.file, ev.line)
            if o.driven and o.last_sched is not None:
                s, (sfile, sline) = o.last_sched, o.last_sched_site
                si = s.index
                if o.from_sched:
                    what = (f"{s.label()} set it to {_fmt(before)} at {_where(sfile, sline)}, and other code wrote "
                            f"{_fmt(now)} before the optimizer stepped")
                else:
                    what = (f"it changed from {_fmt(before)} to {_fmt(now)} between two optimizer steps with no "
                            f"scheduler step in between, while {s.label()} (stepped at {_where(sfile, sline)}) "
                            "drives it")
                self._add("lr-conflict", ev.step, ev.file, ev.line, lambda: (
                    f"{o.group_label(g)} of {o.label()} stepped with lr={_fmt(now)} at optimizer step {ev.step} "
                    f"({where}), but {what}. The scheduler computes its next LR from its own state (or from the "
                    "LR it finds), so the two writers fight and the schedule is neither. Let one of them own the "
                    "LR: drop the manual param_groups write, or fold it into the scheduler (LambdaLR, "
                    "SequentialLR)."), opt=o.index, sched=si, group=g)
            else:
                self._add("lr-changed-outside-scheduler", ev.step, ev.file, ev.line, lambda: (
                    f"{o.group_label(g)} of {o.label()}: the LR changed from {_fmt(before)} to {_fmt(now)} before "
                    f"optimizer step {ev.step} ({where}) without any scheduler step: a hand-written schedule "
                    "writes param_groups. Fine on its own; lrdebug records the LR each step used."),
                    opt=o.index, group=g)

    def _not_cleared(self, o: _Opt, ev: Event, g: int) -> None:
        where = _where(ev.file, ev.line)
        self._add("grads-not-cleared", ev.step, ev.file, ev.line, lambda: (
            f"{o.label()} stepped at optimizer step {ev.step} ({where}) with the same gradient tensors as at its "
            "previous step and no zero_grad() in between: backward() adds into .grad, so every step applies the "
            "sum of all gradients so far and the updates grow. Call optimizer.zero_grad() (or model.zero_grad()) "
            "once per optimizer step, after step() or before backward()."), opt=o.index, group=g)

    def _no_grads(self, o: _Opt, ev: Event) -> None:
        where = _where(ev.file, ev.line)
        self._add("step-without-gradients", ev.step, ev.file, ev.line, lambda: (
            f"{o.label()} stepped at optimizer step {ev.step} ({where}) while no parameter of any param group had "
            "a gradient: the step changes nothing (or only applies weight decay and momentum). backward() is "
            "missing, or zero_grad() runs between backward() and step(); call them in the order zero_grad(), "
            "backward(), step()."), opt=o.index)

    def _bad_lrs(self, o: _Opt, ev: Event) -> None:
        for g, v in enumerate(ev.lrs):
            x = _num(v)
            if x is None or 0.0 <= x < _INF:
                continue
            where = _where(ev.file, ev.line)
            kind = "NaN" if x != x else ("infinite" if x == _INF else "negative")
            harm = "climbs the loss (gradient ascent)" if kind == "negative" else "turns the parameters into NaN"
            self._add("lr-nonfinite-or-negative", ev.step, ev.file, ev.line, lambda: (
                f"{o.group_label(g)} of {o.label()} stepped with lr={_fmt(x)} ({kind}) at optimizer step {ev.step} "
                f"({where}): a {kind} LR {harm}. Check the schedule that computed it (a decay sized for fewer "
                "steps than the run, a division by zero, a negative factor) and clamp it at 0."),
                opt=o.index, group=g)

    def _past_horizon(self, o: _Opt, ev: Event) -> None:
        for s in o.past:
            file, line = s.past_site
            over = (s.pos or 0) - (s.end or 0)
            s.over = max(s.over, over)
            self._add("scheduler-past-horizon", ev.step, file, line,
                      lambda: self._past_message(s, over, ev.step), opt=o.index, sched=s.index)

    def _past_message(self, s: _Sched, over: int, step: int | None) -> str:
        file, line = s.past_site
        if s.cls == "CosineAnnealingLR":
            effect = (f"past T_max={s.end} the cosine climbs back from eta_min towards the base LR "
                      f"(it is periodic with period {2 * (s.end or 0)})")
            fix = "set T_max to the number of times you step it in the whole run"
        elif s.cls == "OneCycleLR":
            effect = (f"its {s.end + 1 if s.end is not None else '?'} total_steps are used up, so the LR leaves "
                      "the annealing curve (PyTorch raises on the next step)")
            fix = "set total_steps (or epochs and steps_per_epoch) to the number of optimizer steps in the run"
        else:
            effect = f"past total_iters={s.end} the LR stays frozen at its final value"
            fix = "set total_iters to the number of times you step it in the whole run"
        return (f"{s.label()} was stepped past the end of its schedule ({_schedule_text(s)}): optimizer step "
                f"{step} used the LR of position {(s.end or 0) + over}, {over} step(s) past its end (stepped at "
                f"{_where(file, line)}); {effect}. {fix[0].upper() + fix[1:]}, or stop stepping it at the end.")

    # ------------------------------------------------------------------ schedulers
    def _scheduler_step(self, ev: Event) -> None:
        s = self._scheds.get(ev.scheduler) or self._sched(ev.scheduler)
        if s is None:
            return
        if s.first_seq is None:
            s.first_seq = ev.seq
        o = self._opts.get(ev.optimizer) or self._opt(ev.optimizer)
        origin = ev.origin
        if origin == ORIGIN_INIT:
            if s.created_seq is None:
                s.created_seq = ev.seq
            if o is not None:
                o.expected = ev.lrs
                o.from_sched = False
            return
        if origin == ORIGIN_CHILD:
            s.child_steps += 1
        else:
            s.user_steps += 1
        if s.end is not None:  # the position matters only for a finite schedule
            epoch = _int(ev.value) if ev.value is not None else None
            if epoch is not None:
                s.pos = epoch  # step(epoch): the deprecated explicit position
            elif s.pos is not None:
                s.pos += 1
            else:
                # Registered at this very step (or just before the trace): take the lower estimate.
                s.pos = _int(s.params.get("last_epoch")) or 0
        if o is None:
            return
        o.expected = ev.lrs
        o.from_sched = True
        o.driven = True
        o.last_sched = s
        o.last_sched_site = (ev.file, ev.line)
        if origin != ORIGIN_CHILD:
            self._user_step(o, s, ev)
        if s.end is not None:
            if s.pos > s.end and not s.epoch_flagged:
                if s not in o.past:
                    o.past.append(s)
                    s.past_site = (ev.file, ev.line)
            elif o.past and s in o.past:
                o.past.remove(s)

    def _user_step(self, o: _Opt, s: _Sched, ev: Event) -> None:
        if s.user_steps == 1:
            s.first_site = (ev.file, ev.line)
        if o.prev_skipped:
            o.after_skip += 1
        if o.applied or o.skipped:
            if not s.resume_checked:
                s.resume_checked = True
                self._check_resume(o, s, ev)
            s.k += 1
            if s.k == 1:
                o.touched.append(s)
                s.k_site = (ev.file, ev.line)
                s.k_same = True
            else:
                if s.k_same and (ev.file, ev.line) != s.k_site:
                    s.k_same = False
                if s.k == 2:
                    self._multiple_steps(o, s, ev)
        else:
            self._before_first_step(o, s, ev)
        last = o.last_user
        if last is not s:
            if last is not None and s.user_steps > 1 and last.user_steps > 0:
                self._multiple_schedulers(o, s, last, ev)
            o.last_user = s
        s.k_epoch += 1
        if (s.epoch_len is not None and s.k_epoch > s.epoch_len and not s.epoch_flagged and self._epochs
                and o.in_epoch >= 2 and s.k_epoch >= o.in_epoch - 1):
            self._epoch_per_batch(o, s, ev)

    def _before_first_step(self, o: _Opt, s: _Sched, ev: Event) -> None:
        others = max((x.applied for x in self._opts.values() if x is not o), default=0)
        where = _where(ev.file, ev.line)
        if others >= MANY_STEPS:
            self._orphaned(o, s, ev.step, ev.file, ev.line, others)
            return
        if s.user_steps != 1 or s.cls == _PLATEAU or self._resumed(o, s):
            return
        if s.created_seq is None and (_int(s.params.get("last_epoch")) or 0) > 1:
            return  # it had stepped before the trace started: the run is under way
        lr = _fmt(ev.lrs[0]) if ev.lrs else "?"
        self._add("scheduler-before-optimizer", ev.step, ev.file, ev.line, lambda: (
            f"{s.label()} stepped at {where} before {o.label()} ever stepped, so the schedule's first value is "
            f"skipped: the first optimizer step will use lr={lr}, the schedule's second value, and every later "
            "step is one position ahead (warmup loses a step, decays come a step early). Call "
            "optimizer.step() before scheduler.step() in each iteration."), opt=o.index, sched=s.index)

    def _orphaned(self, o: _Opt, s: _Sched, step, file, line, others: int) -> None:
        where = _where(file, line)
        self._add("scheduler-orphaned", step, file, line, lambda: (
            f"{s.label()} steps {o.label()}, which never stepped, while another optimizer stepped {others} "
            f"times (scheduler stepped at {where}): the optimizer was re-created after the scheduler was built, so "
            "the schedule drives an optimizer nobody uses and training runs at a constant LR. Build the scheduler "
            "from the optimizer you step (after re-creating it)."), opt=o.index, sched=s.index)

    def _resumed(self, o: _Opt, s: _Sched) -> bool:
        return bool(_count(o.restored) or any(_count(x.init_value) for x in o.scheds))

    def _check_resume(self, o: _Opt, s: _Sched, ev: Event) -> None:
        """At a scheduler's first user step after its optimizer started: was the run resumed without it?"""
        restored = _count(o.restored) or _count(s.init_value)
        if not restored or s.cls == _PLATEAU:
            return
        where = _where(ev.file, ev.line)
        built = _where(*s.init_site) if s.init_site[0] else "its constructor"
        if (o.load_seq is not None and s.created_seq is not None and s.created_seq > o.load_seq
                and not _same_lrs(s.init_lrs, o.load_lrs)):
            msg = (f"{s.label()} was built ({built}) after {o.label()}.load_state_dict() restored an optimizer "
                   f"that had taken {restored} steps, and its constructor overwrote the restored LR "
                   f"{_fmt(o.load_lrs[0]) if o.load_lrs else '?'} with {_fmt(s.init_lrs[0]) if s.init_lrs else '?'}: "
                   f"the resumed run restarts the schedule (warmup again; first stepped at {where}). Build the "
                   "scheduler first, then load the optimizer's and the scheduler's state_dict.")
        elif (not s.loaded and s.user_steps == 1
              and ((s.init_pos or 0) <= 0 if s.created_seq is not None
                   else (_int(s.params.get("last_epoch")) or 0) <= 1)):
            msg = (f"{o.label()} resumed with {restored} steps in its state, but {s.label()} starts from "
                   f"scratch (first stepped at {where}, never load_state_dict()): warmup and decay restart while "
                   "the optimizer's moments continue. Save scheduler.state_dict() in the checkpoint and call "
                   "scheduler.load_state_dict() when resuming.")
        else:
            return
        self._add("scheduler-state-not-restored", ev.step, ev.file, ev.line, lambda: msg, opt=o.index,
                  sched=s.index)

    def _multiple_steps(self, o: _Opt, s: _Sched, ev: Event) -> None:
        s.burst_from = o.applied
        if self.world_size > 1:
            # Accelerate's scheduler wrapper steps once per process for every optimizer step: wait for
            # the optimizer's next step to see how many steps this burst had, and from where.
            s.held = (ev.step, ev.file, ev.line)
            return
        where = _where(ev.file, ev.line)
        f = self._add("scheduler-multiple-steps", ev.step, ev.file, ev.line, lambda: self._burst_message(
            s, 2, s.burst_from, None, where), opt=o.index, sched=s.index)
        s.burst = f

    def _burst_message(self, s: _Sched, k: int, start: int, end: int | None, where: str) -> str:
        span = (f"between optimizer steps {start} and {end}" if end is not None
                else f"after optimizer step {start}")
        return (f"{s.label()} stepped {k} times {span} (the extra step at {where}): each step advances the "
                f"schedule, so it moved {k} positions for one optimizer step and runs ahead of training (warmup "
                "ends early, decays come early). Step the scheduler "
                "once per optimizer step (under gradient accumulation: only when the optimizer steps), or once "
                "per epoch, not both.")

    def _close_burst(self, o: _Opt, s: _Sched, end: int | None) -> None:
        if s.held is not None:
            (step, file, line), s.held = s.held, None
            if s.k == self.world_size and s.k_same:
                return  # one step per process from one call: a wrapper such as accelerate's
            k, where = s.k, _where(file, line)
            self._add("scheduler-multiple-steps", step, file, line, lambda: self._burst_message(
                s, k, s.burst_from, end, where), opt=o.index, sched=s.index)
            return
        f, s.burst = s.burst, None
        f.message = self._burst_message(s, s.k, s.burst_from, end, _where(f.file, f.line))

    def _multiple_schedulers(self, o: _Opt, s: _Sched, other: _Sched, ev: Event) -> None:
        """One finding per pair of schedulers, at the site where their taking turns was first seen."""
        pair = (min(s.index, other.index), max(s.index, other.index))
        file, line, step = o.pairs.setdefault(pair, (ev.file, ev.line, ev.step))
        where = _where(file, line)
        first, second = (s, other) if s.index == pair[0] else (other, s)
        self._add("multiple-schedulers", step, file, line, lambda: (
            f"{first.label()} and {second.label()} both step {o.label()}, taking turns (seen at {where}): each "
            "one computes the LR from its own state or from the LR the other left, so the schedule is neither. "
            "Combine them with SequentialLR (one after the other) or ChainedScheduler (multiplied), and step "
            "only that."), opt=o.index, sched=pair[0])

    def _epoch_per_batch(self, o: _Opt, s: _Sched, ev: Event) -> None:
        s.epoch_flagged = True
        if s in o.past:
            o.past.remove(s)
        where = _where(ev.file, ev.line)
        k = s.k_epoch
        self._add("epoch-scheduler-stepped-per-batch", ev.step, ev.file, ev.line, lambda: (
            f"scheduler {s.index} ({s.cls}, {_schedule_text(s)}) is stepped once per batch ({k} steps in the first {o.in_epoch} "
            f"optimizer steps of this epoch, at {where}), but its schedule is sized like a number of epochs: it "
            f"ran through {s.epoch_len} steps within a single epoch, so the LR "
            f"{'cycles' if s.cls == 'CosineAnnealingLR' else 'collapses'} long before training ends. Step it once "
            "per epoch (after the batch loop), or size it in steps (epochs x batches per epoch)."),
            opt=o.index, sched=s.index)

    def _scheduler_init(self, ev: Event) -> None:
        s = self._sched(ev.scheduler)
        if s is None:
            return
        if s.first_seq is None:
            s.first_seq = ev.seq
        if s.created_seq is None:
            s.created_seq = ev.seq
        if s.init_site[0] is None:
            s.init_site = (ev.file, ev.line)
            s.init_value = _num(ev.value)
            s.init_lrs = ev.lrs
            s.init_pos = _int(s.params.get("last_epoch"))
            if s.pos is None and s.cls != _PLATEAU:
                s.pos = s.init_pos
        o = self._opt(ev.optimizer)
        if o is not None:
            o.expected = ev.lrs
            o.from_sched = False

    def _scheduler_load_state(self, ev: Event) -> None:
        s = self._sched(ev.scheduler)
        if s is None:
            return
        if s.first_seq is None:
            s.first_seq = ev.seq
        s.loaded = True
        pos = _int(ev.value)
        if pos is not None and s.cls != _PLATEAU:
            s.pos = pos
            o = self._opts.get(s.opt)
            if o is not None and s in o.past and s.end is not None and pos <= s.end:
                o.past.remove(s)

    def _get_lr_call(self, ev: Event) -> None:
        s = self._sched(ev.scheduler)
        if s is None:
            return
        if s.first_seq is None:
            s.first_seq = ev.seq
        if not s.torch_cls:
            return  # a hand-written get_lr() may well return the current LR
        where = _where(ev.file, ev.line)
        self._add("get-lr-called", None, ev.file, ev.line, lambda: (
            f"{where} calls {s.label()}.get_lr(): outside step() it computes the *next* LR from the current "
            "one (chainable form), not the LR in use, so the logged or used value is wrong. Call "
            "scheduler.get_last_lr() (or read optimizer.param_groups[i]['lr'])."), opt=s.opt, sched=s.index)

    # ------------------------------------------------------------------ other events
    def _zero_grad(self, ev: Event) -> None:
        self.zero_grad(ev.seq)

    def zero_grad(self, seq: int) -> None:
        """A zero_grad of any kind (the recorder calls this directly: it finds nothing by itself)."""
        self._zero_seq = seq

    def _epoch_start(self, ev: Event) -> None:
        self._epochs += 1
        for o in self._opts.values():
            o.in_epoch = 0
        for s in self._scheds.values():
            s.k_epoch = 0

    def _add_param_group(self, ev: Event) -> None:
        o = self._opt(ev.optimizer)
        if o is None:
            return
        o.expected = ev.lrs
        o.from_sched = False
        existing = [s for s in o.scheds if s.first_seq is not None and s.cls != _PLATEAU]
        if not existing:
            return
        s = min(existing, key=lambda x: x.index)
        where = _where(ev.file, ev.line)
        groups = len(ev.lrs) or _int(ev.value) or 0
        self._add("param-group-added-after-scheduler", ev.step, ev.file, ev.line, lambda: (
            f"{where} adds param group {groups - 1} to {o.label()} after {s.label()} was built: the scheduler "
            f"keeps base LRs only for the groups it saw, so the new group does not follow the schedule. "
            "Closed-form schedulers (LambdaLR, OneCycleLR, ...) fail at their next step; chainable ones (StepLR, "
            "LinearLR, ...) apply the rest of the schedule's ratios to whatever LR the new group starts with "
            "(a warmup boosts it, a decay skips ahead). Add every param group before building the scheduler, "
            "or rebuild the scheduler after adding one."),
            opt=o.index, sched=s.index, group=max(groups - 1, 0) if groups else None)

    def _optimizer_load_state(self, ev: Event) -> None:
        o = self._opt(ev.optimizer)
        if o is None:
            return
        o.expected = ev.lrs if ev.lrs else None
        o.from_sched = False
        if o.applied + o.skipped == 0:
            o.restored = _num(ev.value)
            o.load_seq = ev.seq
            o.load_lrs = ev.lrs

    # ------------------------------------------------------------------ end of run
    def finish(self) -> list[Finding]:
        """End of run: close open counts, add the end-of-run findings, return all findings."""
        if not self._finished:
            self._finished = True
            self._new = None
            for o in self._opts.values():
                for s in o.touched:
                    if s.burst is not None or s.held is not None:
                        self._close_burst(o, s, None)
            self._end_of_run()
            self._final_messages()
        return list(self.findings)

    def _end_of_run(self) -> None:
        for o in self._opts.values():
            others = max((x.applied for x in self._opts.values() if x is not o), default=0)
            for s in o.scheds:
                if (s.user_steps and o.applied + o.skipped == 0 and others >= MANY_STEPS
                        and not self._found("scheduler-orphaned", s)):
                    self._orphaned(o, s, None, s.first_site[0], s.first_site[1], others)
            if o.applied < MANY_STEPS or (self._epochs and o.epochs < 2):
                continue
            if any(s.user_steps or s.child_steps for s in o.scheds):
                continue
            for s in o.scheds:
                if s.is_child:
                    continue
                file, line = s.init_site
                built = f"built at {_where(file, line)}" if file else "passed to lrdebug.trace()"
                self._add("scheduler-never-stepped", None, file, line, lambda: (
                    f"{o.label()} stepped {o.applied} times{f' over {o.epochs} epochs' if self._epochs else ''}, "
                    f"but scheduler {s.index} ({s.cls}, {built}) never stepped: the LR stayed at its initial value the whole run. "
                    "Call scheduler.step() after optimizer.step() (per batch or per epoch, as the schedule is "
                    "sized)."), opt=o.index, sched=s.index)

    def _found(self, code: str, s: _Sched) -> bool:
        return any(f.code == code and f.scheduler == s.index for f in self.findings)

    def _final_messages(self) -> None:
        for f in self.findings:
            if f.code == "step-skipped":
                o = self._opts[f.optimizer]
                total = o.applied + o.skipped
                sched = (f" The scheduler still advanced {o.after_skip} time(s) on skipped iterations, so the "
                         f"schedule is {o.after_skip} step(s) ahead of the applied updates; harmless when few."
                         if o.after_skip else "")
                f.message = (f"{o.label()}: {o.skipped} of {total} steps were skipped ({f.count} at "
                             f"{_where(f.file, f.line)}, first at optimizer step {f.step}) because GradScaler found "
                             f"inf/NaN gradients; normal while the loss scale calibrates.{sched} Many skips mean "
                             "the loss or the scale keeps overflowing.")
            elif f.code == "scheduler-past-horizon":
                s = self._scheds[f.scheduler]
                if s.over > 1:
                    f.message += f" It went up to {s.over} steps past its end."


# ---------------------------------------------------------------------------------------- offline
_COLUMNS = ["rank", "seq", "t_ns", "event", "optimizer", "scheduler", "group", "step", "lr", "file", "line",
            "origin", "parent", "value", "grad", "loader", "framework_site"]


def attach_frameworks(found: list[Finding], frameworks: dict[tuple, str]) -> list[Finding]:
    """Name the framework frame behind a finding's call site, when a framework made the call:
    ``frameworks`` maps (file, line, event) to it; the finding's code says which event it is about."""
    for f in found:
        if f.framework is None and f.file is not None:
            event = _CODE_EVENTS.get(f.code, OPTIMIZER_STEP)
            f.framework = frameworks.get((f.file, f.line, event))
            if f.framework is None:  # the code's event made elsewhere: any framework call from that line
                f.framework = next((fw for (file, line, _), fw in frameworks.items()
                                    if (file, line) == (f.file, f.line)), None)
    return found


_CODE_EVENTS = {
    "scheduler-before-optimizer": SCHEDULER_STEP, "scheduler-multiple-steps": SCHEDULER_STEP,
    "epoch-scheduler-stepped-per-batch": SCHEDULER_STEP, "scheduler-orphaned": SCHEDULER_STEP,
    "multiple-schedulers": SCHEDULER_STEP, "scheduler-state-not-restored": SCHEDULER_STEP,
    "scheduler-never-stepped": SCHEDULER_INIT, "get-lr-called": GET_LR_CALL,
    "param-group-added-after-scheduler": ADD_PARAM_GROUP,
}


def _trace_frameworks(table) -> dict[tuple, str]:
    if "framework_site" not in table.column_names or table.column("framework_site").null_count == len(table):
        return {}
    import pyarrow.compute as pc

    cols = ("file", "line", "event", "framework_site")
    rows = table.filter(pc.is_valid(table.column("framework_site"))).select(list(cols))
    out: dict[tuple, str] = {}
    for file, line, event, fw in zip(*(rows.column(c).to_pylist() for c in cols)):
        out[(file, line, event)] = fw  # the last call, as live
    return out


def _pylist(table, name: str) -> list:
    """A column as Python values (None for nulls), built with numpy rather than value by value."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    if name not in table.column_names:
        return [None] * n
    col = table.column(name).combine_chunks()
    if pa.types.is_dictionary(col.type):
        words = np.array(col.dictionary.to_pylist() + [None], dtype=object)
        return words[col.indices.fill_null(len(words) - 1).to_numpy(zero_copy_only=False)].tolist()
    values = np.array(col.fill_null(0).to_numpy(zero_copy_only=False), dtype=object)
    if col.null_count:
        values[pc.is_null(col).to_numpy(zero_copy_only=False)] = None
    return values.tolist()


def events_from_table(table) -> Iterator[Event]:
    """Rebuild the Events of one rank from its rows (one row per param group for per-group events)."""
    import numpy as np

    if not table.num_rows:
        return
    table = table.sort_by([("seq", "ascending"), ("group", "ascending")])
    seq_np = table.column("seq").to_numpy()
    starts = np.flatnonzero(np.concatenate(([True], seq_np[1:] != seq_np[:-1]))).tolist()
    ends = starts[1:] + [table.num_rows]
    event, opt, sched, step, lr, file, line, origin, parent, value, grad, group, loader = (
        _pylist(table, c) for c in ("event", "optimizer", "scheduler", "step", "lr", "file", "line", "origin",
                                    "parent", "value", "grad", "group", "loader"))
    seq = seq_np.tolist()
    make = Event._make
    empty: tuple = ()
    for i, j in zip(starts, ends):
        if group[i] is None:
            lrs = grads = empty
        elif j == i + 1:
            lrs = (lr[i],)
            grads = empty if grad[i] is None else (grad[i],)
        else:
            lrs = tuple(lr[i:j])
            grads = tuple(grad[i:j])
            if all(g is None for g in grads):
                grads = empty
        yield make((event[i], seq[i], opt[i], sched[i], step[i], lrs, grads, file[i], line[i], origin[i], parent[i],
                    value[i], loader[i], 0, 0))


def check_rank(table, meta: dict[str, Any]) -> list[Finding]:
    """Run the engine over the rows of one rank, with that rank's object registry."""
    checker = Checker()
    checker.world_size = _int((meta or {}).get("world_size")) or 1
    for key, register in (("optimizers", checker.register_optimizer), ("schedulers", checker.register_scheduler)):
        for info in (meta or {}).get(key) or []:
            if isinstance(info, dict) and _int(info.get("index")) is not None:
                register(_int(info["index"]), info)
    for ev in events_from_table(table):
        checker.feed(ev)
    return checker.finish()


def check_trace(trace) -> list[Finding]:
    """Findings of a stored trace (a ``storage.Trace``), every rank, recomputed with the current rules.

    Ranks of one run usually find the same things: findings with the same code, objects, group and
    call site are merged (first step, largest count).
    """
    import pyarrow.compute as pc

    table = trace.table
    if not {"rank", "seq", "event"} <= set(table.column_names):
        from .storage import read_trace

        table = read_trace(trace.path, columns=_COLUMNS).table
    ranks = sorted(set(trace.meta) | {r for r in table.column("rank").unique().to_pylist() if r is not None})
    merged: dict[tuple, Finding] = {}
    for rank in ranks:
        sub = table.filter(pc.equal(table.column("rank"), rank)) if len(ranks) > 1 else table
        for f in check_rank(sub, trace.meta.get(rank, {})):
            key = (f.code, f.optimizer, f.scheduler, f.group, f.file, f.line)
            if key in merged:
                m = merged[key]
                m.count = max(m.count, f.count)
                if f.step is not None and (m.step is None or f.step < m.step):
                    m.step = f.step
            else:
                merged[key] = f
    out = attach_frameworks(list(merged.values()), _trace_frameworks(table))
    try:
        from .ranks import rank_findings
    except ImportError:
        return out
    return out + list(rank_findings(trace))


def findings(path) -> list[Finding]:
    """``lrdebug.findings(path)``: the findings of a stored trace, recomputed with the current rules."""
    from .storage import read_trace

    return check_trace(read_trace(path, columns=_COLUMNS))
