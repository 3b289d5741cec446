"""Rules about the order of calls: scheduler vs optimizer steps, how often each steps, and which
scheduler methods user code calls."""

from __future__ import annotations

from ..tracefile.schema import Event
from .registry import listens, rule
from .state import MANY_STEPS, PLATEAU, OptState, SchedState, as_int, fmt, where


@rule("scheduler-orphaned", "error",
      "a scheduler drives an optimizer that never steps while another one does (optimizer re-created after "
      "the scheduler)", on="scheduler_before_optimizer")
@rule("scheduler-before-optimizer", "warning",
      "a scheduler stepped before its optimizer's first step: the first LR of the schedule is skipped",
      on="scheduler_before_optimizer")
def before_first_step(chk, o: OptState, s: SchedState, ev: Event) -> None:
    others = _others(chk, o)
    if others >= MANY_STEPS:
        _orphaned(chk, o, s, ev.step, ev.file, ev.line, others)
        return
    if s.user_steps != 1 or s.cls == PLATEAU or o.resumed():
        return
    if s.created_seq is None and (as_int(s.params.get("last_epoch")) or 0) > 1:
        return  # it had stepped before the trace started: the run is under way
    at = where(ev.file, ev.line)
    lr = fmt(ev.lrs[0]) if ev.lrs else "?"
    chk.add("scheduler-before-optimizer", ev.step, ev.file, ev.line, lambda: (
        f"{s.label()} stepped at {at} before {o.label()} ever stepped, so the schedule's first value is "
        f"skipped: the first optimizer step will use lr={lr}, the schedule's second value, and every later "
        "step is one position ahead (warmup loses a step, decays come a step early). Call "
        "optimizer.step() before scheduler.step() in each iteration."), opt=o.index, sched=s.index)


@listens("scheduler-orphaned", on="end_of_run")
def orphaned_at_end(chk) -> None:
    """A scheduler that stepped an optimizer which never did, while another one stepped later."""
    for o in sorted(chk.opts.values(), key=lambda o: o.index):
        others = _others(chk, o)
        for s in o.scheds:
            if (s.user_steps and o.applied + o.skipped == 0 and others >= MANY_STEPS
                    and not chk.found("scheduler-orphaned", s)):
                _orphaned(chk, o, s, None, s.first_site[0], s.first_site[1], others)


def _others(chk, o: OptState) -> int:
    """The most steps any other optimizer took."""
    return max((x.applied for x in chk.opts.values() if x is not o), default=0)


def _orphaned(chk, o: OptState, s: SchedState, step, file, line, others: int) -> None:
    at = where(file, line)
    chk.add("scheduler-orphaned", step, file, line, lambda: (
        f"{s.label()} steps {o.label()}, which never stepped, while another optimizer stepped {others} "
        f"times (scheduler stepped at {at}): the optimizer was re-created after the scheduler was built, so "
        "the schedule drives an optimizer nobody uses and training runs at a constant LR. Build the scheduler "
        "from the optimizer you step (after re-creating it)."), opt=o.index, sched=s.index)


@rule("scheduler-multiple-steps", "warning",
      "a scheduler stepped more than once between two steps of its optimizer (twice per batch, per "
      "micro-batch under gradient accumulation)", on=("scheduler_repeated", "step_begin"))
def multiple_steps(chk, o: OptState, s: SchedState, ev: Event | int | None) -> None:
    if not isinstance(ev, Event):  # step_begin: the optimizer stepped again (ev is its step, or None at the end)
        if s.burst is not None or s.held is not None:
            _close_burst(chk, o, s, ev)
        return
    if s.k != 2:
        return
    s.burst_from = o.applied
    if chk.world_size > 1:
        # Accelerate's scheduler wrapper steps once per process for every optimizer step: wait for
        # the optimizer's next step to see how many steps this burst had, and from where.
        s.held = (ev.step, ev.file, ev.line)
        return
    at = where(ev.file, ev.line)
    s.burst = chk.add("scheduler-multiple-steps", ev.step, ev.file, ev.line,
                      lambda: _burst_message(s, 2, s.burst_from, None, at), opt=o.index, sched=s.index)


def _burst_message(s: SchedState, k: int, start: int, end: int | None, at: str) -> str:
    span = (f"between optimizer steps {start} and {end}" if end is not None
            else f"after optimizer step {start}")
    return (f"{s.label()} stepped {k} times {span} (the extra step at {at}): each step advances the "
            f"schedule, so it moved {k} positions for one optimizer step and runs ahead of training (warmup "
            "ends early, decays come early). Step the scheduler "
            "once per optimizer step (under gradient accumulation: only when the optimizer steps), or once "
            "per epoch, not both.")


def _close_burst(chk, o: OptState, s: SchedState, end: int | None) -> None:
    if s.held is not None:
        (step, file, line), s.held = s.held, None
        if s.k == chk.world_size and s.k_same:
            return  # one step per process from one call: a wrapper such as accelerate's
        k, at = s.k, where(file, line)
        chk.add("scheduler-multiple-steps", step, file, line,
                lambda: _burst_message(s, k, s.burst_from, end, at), opt=o.index, sched=s.index)
        return
    f, s.burst = s.burst, None
    f.message = _burst_message(s, s.k, s.burst_from, end, where(f.file, f.line))


@rule("multiple-schedulers", "warning",
      "two or more schedulers step one optimizer without SequentialLR/ChainedScheduler",
      on="scheduler_turn")
def multiple_schedulers(chk, o: OptState, s: SchedState, ev: Event) -> None:
    """One finding per pair of schedulers, at the site where their taking turns was first seen."""
    other = o.last_user
    if s.user_steps <= 1 or other.user_steps <= 0:
        return
    pair = (min(s.index, other.index), max(s.index, other.index))
    file, line, step = o.pairs.setdefault(pair, (ev.file, ev.line, ev.step))
    at = where(file, line)
    first, second = (s, other) if s.index == pair[0] else (other, s)
    chk.add("multiple-schedulers", step, file, line, lambda: (
        f"{first.label()} and {second.label()} both step {o.label()}, taking turns (seen at {at}): each "
        "one computes the LR from its own state or from the LR the other left, so the schedule is neither. "
        "Combine them with SequentialLR (one after the other) or ChainedScheduler (multiplied), and step "
        "only that."), opt=o.index, sched=pair[0])


@rule("scheduler-never-stepped", "warning", "the optimizer stepped many times; its scheduler never did",
      on="end_of_run")
def never_stepped(chk) -> None:
    for o in sorted(chk.opts.values(), key=lambda o: o.index):
        if o.applied < MANY_STEPS or (chk.epochs and o.epochs < 2):
            continue
        if any(s.user_steps or s.child_steps for s in o.scheds):
            continue
        for s in o.scheds:
            if s.is_child:
                continue
            file, line = s.init_site
            built = f"built at {where(file, line)}" if file else "passed to lrdebug.trace()"
            chk.add("scheduler-never-stepped", None, file, line, lambda: (
                f"{o.label()} stepped {o.applied} times{f' over {o.epochs} epochs' if chk.epochs else ''}, "
                f"but scheduler {s.index} ({s.cls}, {built}) never stepped: the LR stayed at its initial value "
                "the whole run. Call scheduler.step() after optimizer.step() (per batch or per epoch, as the "
                "schedule is sized)."), opt=o.index, sched=s.index)


@rule("get-lr-called", "warning",
      "user code called `scheduler.get_lr()`, which is not the current LR (use `get_last_lr()`)",
      on="get_lr_call")
def get_lr_called(chk, s: SchedState, ev: Event) -> None:
    if not s.torch_cls:
        return  # a hand-written get_lr() may well return the current LR
    at = where(ev.file, ev.line)
    chk.add("get-lr-called", None, ev.file, ev.line, lambda: (
        f"{at} calls {s.label()}.get_lr(): outside step() it computes the *next* LR from the current "
        "one (chainable form), not the LR in use, so the logged or used value is wrong. Call "
        "scheduler.get_last_lr() (or read optimizer.param_groups[i]['lr'])."), opt=s.opt, sched=s.index)


@rule("param-group-added-after-scheduler", "warning",
      "`add_param_group` after the scheduler was built: the scheduler does not drive the new group",
      on="add_param_group")
def group_added_after_scheduler(chk, o: OptState, ev: Event) -> None:
    existing = [s for s in o.scheds if s.first_seq is not None and s.cls != PLATEAU]
    if not existing:
        return
    s = min(existing, key=lambda x: x.index)
    at = where(ev.file, ev.line)
    groups = len(ev.lrs) or as_int(ev.value) or 0
    chk.add("param-group-added-after-scheduler", ev.step, ev.file, ev.line, lambda: (
        f"{at} adds param group {groups - 1} to {o.label()} after {s.label()} was built: the scheduler "
        f"keeps base LRs only for the groups it saw, so the new group does not follow the schedule. "
        "Closed-form schedulers (LambdaLR, OneCycleLR, ...) fail at their next step; chainable ones (StepLR, "
        "LinearLR, ...) apply the rest of the schedule's ratios to whatever LR the new group starts with "
        "(a warmup boosts it, a decay skips ahead). Add every param group before building the scheduler, "
        "or rebuild the scheduler after adding one."),
        opt=o.index, sched=s.index, group=max(groups - 1, 0) if groups else None)
