"""The rule engine: one state machine fed the event stream, live inside ``trace()`` and offline.

Live, the recorder feeds every event to ``Checker.feed`` as it happens (every optimizer step
included), so the common path is a few counter updates and one tuple comparison; a message is only
built when a finding is new. Offline, ``offline.check_trace`` rebuilds the same events from the
stored rows and metadata and feeds the same engine, so both give the same findings and an old trace
gets newer rules.

The engine keeps the state (``state.OptState``/``SchedState``) and, at each moment of the stream,
calls the rules registered for it (``registry``); the rules themselves live in their family modules.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from ..tracefile.schema import (
    ADD_PARAM_GROUP,
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
)
from .finding import Finding
from .labels import optimizer_label
from .registry import CODES, MOMENTS, listeners
from .state import INF, PLATEAU, OptState, SchedState, as_float, as_int, lengths

_NONE: tuple = ()  # feed()'s answer when nothing new was found (no allocation per step)


class Checker:
    """The rule engine. ``feed`` every event in order, then ``finish`` once at the end of the run."""

    def __init__(self, ignore: Iterable[str] = frozenset()) -> None:
        self.ignore = frozenset(ignore)
        self.findings: list[Finding] = []
        self._by_key: dict[tuple, Finding] = {}
        self._new: list[Finding] | None = None
        self.opts: dict[int, OptState] = {}
        self.scheds: dict[int, SchedState] = {}
        self.zero_seq = -1  # seq of the last zero_grad of any kind
        self.in_place_zero_seq = -1  # seq of the last zero_grad(set_to_none=False): gradients zeroed in their tensors
        self.completed = True  # the run ended normally (finish() is told otherwise)
        self.epochs = 0  # epoch_start events so far
        self._finished = False
        # Processes in the run (offline: from the trace's metadata); see ordering.multiple_steps.
        size = os.environ.get("WORLD_SIZE", "")
        self.world_size = max(int(size), 1) if size.isdigit() else 1
        on = {m: listeners(m, self.ignore) for m in MOMENTS}
        self._on_grads, self._on_bad_lr, self._on_past = on["grads_unusual"], on["lr_invalid"], on["past_end"]
        self._on_skipped, self._on_lr_changed, self._on_step_begin = (
            on["optimizer_skipped"], on["lr_changed"], on["step_begin"])
        self._on_before_opt, self._on_first_after, self._on_repeated, self._on_turn, self._on_sized = (
            on["scheduler_before_optimizer"], on["scheduler_first_after_optimizer"], on["scheduler_repeated"],
            on["scheduler_turn"], on["epoch_size_overrun"])
        self._on_init, self._on_load, self._on_get_lr, self._on_add_group, self._on_after_write = (
            on["scheduler_init"], on["scheduler_load_state"], on["get_lr_call"], on["add_param_group"],
            on["scheduler_after_lr_write"])
        self._on_end, self._on_finalize = on["end_of_run"], on["finalize"]
        self._handlers: dict[str, Callable[[Event], None]] = {
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
        o = self.opt(index)
        if o is None or not isinstance(info, dict):
            return
        o.cls = str(info.get("class") or "optimizer")
        o.tag = optimizer_label(o.cls, index)
        groups = info.get("groups")
        if isinstance(groups, list):
            o.names = tuple(g.get("name") if isinstance(g, dict) else None for g in groups)
        key = info.get("params_key")
        o.params_key = key if isinstance(key, str) else None

    def register_scheduler(self, index: int, info: dict) -> None:
        s = self.sched(index)
        if s is None or not isinstance(info, dict):
            return
        s.cls = str(info.get("class") or "scheduler")
        s.torch_cls = str(info.get("module") or "torch").startswith("torch")
        params = info.get("params")
        s.params = params if isinstance(params, dict) else {}
        opt = as_int(info.get("optimizer"))
        if opt != s.opt:
            if s.opt is not None and s.opt in self.opts:
                self.opts[s.opt].scheds = [x for x in self.opts[s.opt].scheds if x is not s]
            s.opt = opt
            o = self.opt(opt)
            if o is not None:
                o.scheds.append(s)
        children = info.get("children")
        if isinstance(children, list):
            s.children = tuple(c for c in (as_int(c) for c in children) if c is not None and c != index)
            for c in s.children:
                self.sched(c).is_child = True
        s.end, s.epoch_len = lengths(s.cls, s.params) if s.torch_cls else (None, None)
        before = info.get("group_lrs_before")
        s.lrs_before = tuple(before) if isinstance(before, list) else None
        s.on_step = listeners("scheduler_step", self.ignore, s.cls)

    def opt(self, index: Any) -> OptState | None:
        o = self.opts.get(index)
        if o is None:
            if not isinstance(index, int) or isinstance(index, bool):
                return None
            o = self.opts[index] = OptState(index)
        return o

    def sched(self, index: Any) -> SchedState | None:
        s = self.scheds.get(index)
        if s is None:
            if not isinstance(index, int) or isinstance(index, bool):
                return None
            s = self.scheds[index] = SchedState(index)
            s.on_step = listeners("scheduler_step", self.ignore, s.cls)
        return s

    # ------------------------------------------------------------------ findings
    def add(self, code: str, step: int | None, file: str | None, line: int | None, message: Callable[[], str],
            opt: int | None = None, sched: int | None = None, group: int | None = None) -> Finding | None:
        """Record an occurrence; a new Finding only for a new (code, optimizer, scheduler, group, site).
        ``message`` is called only for a new finding."""
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

    def found(self, code: str, s: SchedState) -> bool:
        return any(f.code == code and f.scheduler == s.index for f in self.findings)

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
    def _step_common(self, o: OptState, ev: Event) -> None:
        """Bookkeeping shared by applied and skipped steps: epochs, schedulers stepped since, LR changes."""
        if o.epoch_mark != self.epochs:
            o.epoch_mark = self.epochs
            o.epochs += 1
        o.in_epoch += 1
        if o.touched:
            for s in o.touched:
                if s.k >= 2:
                    for fn in self._on_step_begin:
                        fn(self, o, s, ev.step)
                s.k = 0
            o.touched.clear()
        lrs = ev.lrs
        exp = o.expected
        if exp is not None and lrs != exp:
            for fn in self._on_lr_changed:
                fn(self, o, ev, exp)
        o.expected = lrs
        o.from_sched = False
        o.last_seq = ev.seq

    def _optimizer_step(self, ev: Event) -> None:
        o = self.opts.get(ev.optimizer) or self.opt(ev.optimizer)
        if o is None:
            return
        o.applied += 1
        prev_seq = o.last_seq
        o.prev_skipped = False
        self._step_common(o, ev)
        grads = ev.grads
        if grads and (GRAD_SAME in grads or GRAD_FRESH not in grads):
            for fn in self._on_grads:
                fn(self, o, ev, prev_seq)
        for v in ev.lrs:
            if v.__class__ is not float or not 0.0 <= v < INF:
                for fn in self._on_bad_lr:
                    fn(self, o, ev)
                break
        if o.past:
            for fn in self._on_past:
                fn(self, o, ev)

    def _optimizer_skipped(self, ev: Event) -> None:
        o = self.opt(ev.optimizer)
        if o is None:
            return
        o.skipped += 1
        o.prev_skipped = True
        self._step_common(o, ev)
        for fn in self._on_skipped:
            fn(self, o, ev)

    # ------------------------------------------------------------------ schedulers
    def _scheduler_step(self, ev: Event) -> None:
        s = self.scheds.get(ev.scheduler) or self.sched(ev.scheduler)
        if s is None:
            return
        if s.first_seq is None:
            s.first_seq = ev.seq
        o = self.opts.get(ev.optimizer) or self.opt(ev.optimizer)
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
            epoch = as_int(ev.value) if ev.value is not None else None
            if epoch is not None:
                s.pos = epoch  # step(epoch): the deprecated explicit position
            elif s.pos is not None:
                s.pos += 1
            else:
                # Registered at this very step (or just before the trace): take the lower estimate.
                s.pos = as_int(s.params.get("last_epoch")) or 0
        if o is None:
            return
        o.expected = ev.lrs
        o.from_sched = True
        o.driven = True
        o.last_sched = s
        o.last_sched_site = (ev.file, ev.line)
        if origin != ORIGIN_CHILD:
            self._user_step(o, s, ev)
        for fn in s.on_step:
            fn(self, o, s, ev)
        if o.written is not None:
            for fn in self._on_after_write:
                fn(self, o, s, ev)

    def _user_step(self, o: OptState, s: SchedState, ev: Event) -> None:
        if s.user_steps == 1:
            s.first_site = (ev.file, ev.line)
        if o.prev_skipped:
            o.after_skip += 1
        if o.applied or o.skipped:
            if not s.after_opt:
                s.after_opt = True
                for fn in self._on_first_after:
                    fn(self, o, s, ev)
            s.k += 1
            if s.k == 1:
                o.touched.append(s)
                s.k_site = (ev.file, ev.line)
                s.k_same = True
            else:
                if s.k_same and (ev.file, ev.line) != s.k_site:
                    s.k_same = False
                for fn in self._on_repeated:
                    fn(self, o, s, ev)
        else:
            for fn in self._on_before_opt:
                fn(self, o, s, ev)
        last = o.last_user
        if last is not s:
            if last is not None:
                for fn in self._on_turn:
                    fn(self, o, s, ev)
            o.last_user = s
        s.k_epoch += 1
        if s.epoch_len is not None and s.user_steps > s.epoch_len and self.epochs:
            for fn in self._on_sized:
                fn(self, o, s, ev)

    def _scheduler_init(self, ev: Event) -> None:
        s = self.sched(ev.scheduler)
        if s is None:
            return
        if s.first_seq is None:
            s.first_seq = ev.seq
        if s.created_seq is None:
            s.created_seq = ev.seq
        if s.init_site[0] is None:
            s.init_site = (ev.file, ev.line)
            s.init_value = as_float(ev.value)
            s.init_lrs = ev.lrs
            s.init_pos = as_int(s.params.get("last_epoch"))
            if s.pos is None and s.cls != PLATEAU:
                s.pos = s.init_pos
        o = self.opt(ev.optimizer)
        if o is not None:
            o.expected = ev.lrs
            o.from_sched = False
        for fn in self._on_init:
            fn(self, o, s, ev)

    def _scheduler_load_state(self, ev: Event) -> None:
        s = self.sched(ev.scheduler)
        if s is None:
            return
        if s.first_seq is None:
            s.first_seq = ev.seq
        s.loaded = True
        pos = as_int(ev.value)
        if pos is not None and s.cls != PLATEAU:
            s.pos = pos
        o = self.opts.get(s.opt)
        for fn in self._on_load:
            fn(self, o, s, ev)

    def _get_lr_call(self, ev: Event) -> None:
        s = self.sched(ev.scheduler)
        if s is None:
            return
        if s.first_seq is None:
            s.first_seq = ev.seq
        for fn in self._on_get_lr:
            fn(self, s, ev)

    # ------------------------------------------------------------------ other events
    def _zero_grad(self, ev: Event) -> None:
        self.zero_grad(ev.seq, ev.value == 1.0)

    def zero_grad(self, seq: int, in_place: bool = False) -> None:
        """A zero_grad of any kind (the recorder calls this directly: it finds nothing by itself).
        ``in_place``: set_to_none=False, the gradients were zeroed in their tensors (the trace's
        ``value`` is 1 for such a zero_grad)."""
        self.zero_seq = seq
        if in_place:
            self.in_place_zero_seq = seq

    def _epoch_start(self, ev: Event) -> None:
        self.epochs += 1
        for o in self.opts.values():
            o.in_epoch = 0
        for s in self.scheds.values():
            s.k_epoch = 0

    def _add_param_group(self, ev: Event) -> None:
        o = self.opt(ev.optimizer)
        if o is None:
            return
        o.expected = ev.lrs
        o.from_sched = False
        for fn in self._on_add_group:
            fn(self, o, ev)

    def _optimizer_load_state(self, ev: Event) -> None:
        o = self.opt(ev.optimizer)
        if o is None:
            return
        o.expected = ev.lrs if ev.lrs else None
        o.from_sched = False
        if o.applied + o.skipped == 0:
            o.restored = as_float(ev.value)
            o.load_seq = ev.seq
            o.load_lrs = ev.lrs

    # ------------------------------------------------------------------ end of run
    def finish(self, completed: bool = True) -> list[Finding]:
        """End of run: close open counts, add the end-of-run findings, return all findings.
        ``completed``: the run ended normally (not by an exception, a signal or a crash)."""
        if not self._finished:
            self._finished = True
            self.completed = completed
            self._new = None
            for o in self.opts.values():
                for s in o.touched:
                    if s.k >= 2:
                        for fn in self._on_step_begin:
                            fn(self, o, s, None)
            for fn in self._on_end:
                fn(self)
            for f in self.findings:
                for fn in self._on_finalize:
                    fn(self, f)
        return list(self.findings)
