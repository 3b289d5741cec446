"""Rules about the schedule itself: its size against the run, the LR values it produced, and other
code writing the LR it owns."""

from __future__ import annotations

import math

from ..tracefile.schema import Event
from .registry import listens, rule
from .state import (
    INF,
    MANY_STEPS,
    PLATEAU,
    OptState,
    SchedState,
    as_float,
    as_int,
    close_lr,
    fmt,
    schedule_text,
    where,
)


@rule("epoch-scheduler-stepped-per-batch", "warning",
      "a schedule sized in epochs (StepLR, MultiStepLR, CosineAnnealingLR, ExponentialLR ...) is stepped "
      "every batch", on="epoch_size_overrun")
def epoch_per_batch(chk, o: OptState, s: SchedState, ev: Event) -> None:
    """Stepped with every batch of this epoch, and already past its whole length: within one epoch, or
    (a decay schedule that decays at least once per epoch) over a few short epochs while fewer epochs
    have run than it is long, so stepped once per epoch it would still be running. A decay sized in
    iterations (a step size of hundreds) decays less than once per epoch of tens of batches and is
    still far from its end. A cosine sized in steps and run past its end is scheduler-past-horizon."""
    if s.epoch_flagged or o.in_epoch < 2 or s.k_epoch < o.in_epoch - 1 or s.k_epoch < 2:
        return
    within_epoch = s.k_epoch > s.epoch_len
    if not within_epoch and (chk.epochs > s.epoch_len or not _decays_every_epoch(s, o.in_epoch)):
        return
    s.epoch_flagged = True
    if s in o.past:
        o.past.remove(s)
    at = where(ev.file, ev.line)
    k, steps, epochs = s.k_epoch, s.user_steps, chk.epochs
    effect = "cycles" if s.cls == "CosineAnnealingLR" else "collapses"
    if within_epoch:
        seen = (f"{k} steps in the first {o.in_epoch} optimizer steps of this epoch, at {at}), but its schedule is "
                f"sized like a number of epochs: it ran through {s.epoch_len} steps within a single epoch")
    else:
        seen = (f"{k} steps in the {o.in_epoch} optimizer steps of this epoch, at {at}), but its schedule is "
                f"sized like a number of epochs: it has taken {steps} steps in {epochs} epochs, past the "
                f"{s.epoch_len} steps it takes to run through (stepped once per epoch it would be at step "
                f"{epochs})")
    chk.add("epoch-scheduler-stepped-per-batch", ev.step, ev.file, ev.line, lambda: (
        f"scheduler {s.index} ({s.cls}, {schedule_text(s)}) is stepped once per batch ({seen}, so the LR "
        f"{effect} long before training ends. Step it once per epoch (after the batch loop), or size it in "
        "steps (epochs x batches "
        "per epoch)."), opt=o.index, sched=s.index)


def _decays_every_epoch(s: SchedState, batches: int) -> bool:
    """A decay schedule that, stepped once per batch, decays at least once in ``batches`` steps."""
    if s.cls == "ExponentialLR":
        return True
    if s.cls == "StepLR":
        size = as_int(s.params.get("step_size"))
        return bool(size) and size <= batches
    if s.cls == "MultiStepLR":
        ms = s.params.get("milestones")
        ms = sorted(m for m in map(as_int, ms) if m is not None) if isinstance(ms, list) else []
        return any(b - a <= batches for a, b in zip([0] + ms, ms))
    return False


@rule("scheduler-past-horizon", "warning",
      "a finite schedule (CosineAnnealingLR T_max, OneCycleLR total_steps, PolynomialLR ...) stepped past its "
      "end, so the LR rises again or freezes", on="past_end")
def past_horizon(chk, o: OptState, ev: Event) -> None:
    """Reported at the optimizer steps that use an LR from past the end (not at the scheduler step that
    reached it: stepping to the end after the last optimizer step is normal)."""
    for s in o.past:
        file, line = s.past_site
        over = (s.pos or 0) - (s.end or 0)
        s.over = max(s.over, over)
        chk.add("scheduler-past-horizon", ev.step, file, line,
                lambda: _past_message(s, over, ev.step), opt=o.index, sched=s.index)


@listens("scheduler-past-horizon", on="scheduler_step", classes=("CosineAnnealingLR", "OneCycleLR", "PolynomialLR"))
def track_horizon(chk, o: OptState, s: SchedState, ev: Event) -> None:
    """Which of the optimizer's schedulers are past their end, and where they went past it."""
    if s.end is None:
        return
    if s.pos > s.end and not s.epoch_flagged:
        if s not in o.past:
            o.past.append(s)
            s.past_site = (ev.file, ev.line)
    elif o.past and s in o.past:
        o.past.remove(s)


@listens("scheduler-past-horizon", on="scheduler_load_state")
def horizon_after_load(chk, o: OptState | None, s: SchedState, ev: Event) -> None:
    """A restored position back inside the schedule is no longer past its end."""
    if o is not None and s in o.past and s.end is not None and s.pos is not None and s.pos <= s.end:
        o.past.remove(s)


@listens("scheduler-past-horizon", on="finalize")
def past_horizon_extent(chk, f) -> None:
    if f.code == "scheduler-past-horizon":
        s = chk.scheds[f.scheduler]
        if s.over > 1:
            f.message += f" It went up to {s.over} steps past its end."


def _past_message(s: SchedState, over: int, step: int | None) -> str:
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
    return (f"{s.label()} was stepped past the end of its schedule ({schedule_text(s)}): optimizer step "
            f"{step} used the LR of position {(s.end or 0) + over}, {over} step(s) past its end (stepped at "
            f"{where(file, line)}); {effect}. {fix[0].upper() + fix[1:]}, or stop stepping it at the end.")


@rule("lr-nonfinite-or-negative", "error", "a group's LR is NaN, infinite or negative at a step",
      on="lr_invalid")
def bad_lr(chk, o: OptState, ev: Event) -> None:
    for g, v in enumerate(ev.lrs):
        x = as_float(v)
        if x is None or 0.0 <= x < INF:
            continue
        at = where(ev.file, ev.line)
        kind = "NaN" if x != x else ("infinite" if x == INF else "negative")
        harm = "climbs the loss (gradient ascent)" if kind == "negative" else "turns the parameters into NaN"
        chk.add("lr-nonfinite-or-negative", ev.step, ev.file, ev.line, lambda: (
            f"{o.group_label(g)} stepped with lr={fmt(x)} ({kind}) at optimizer step {ev.step} "
            f"({at}): a {kind} LR {harm}. Check the schedule that computed it (a decay sized for fewer "
            "steps than the run, a division by zero, a negative factor) and clamp it at 0."),
            opt=o.index, group=g)


@rule("lr-conflict", "warning", "a group's LR is written both by a scheduler and by other code, which fight",
      on="lr_changed")
@rule("lr-changed-outside-scheduler", "info",
      "a group's LR was changed by code that is no scheduler (a hand-written schedule)", on="lr_changed")
def lr_written_outside(chk, o: OptState, ev: Event, exp: tuple) -> None:
    """One finding per optimizer step and call site, naming every group whose LR changed there (a
    hand-written schedule writes all groups at once: nanoGPT's two, layer-wise decay's dozen)."""
    lrs = ev.lrs
    changed = [g for g in range(min(len(lrs), len(exp))) if not close_lr(exp[g], lrs[g])]
    if not changed:
        return
    g = changed[0]
    at = where(ev.file, ev.line)
    who = o.groups_label(changed)
    values = _values(o, changed, exp, lrs)
    if o.driven and o.last_sched is not None:
        s, (sfile, sline) = o.last_sched, o.last_sched_site
        if o.from_sched:
            what = (f"{s.label()} set it at {where(sfile, sline)}, and other code changed it ({values}) "
                    "before the optimizer stepped")
        else:
            what = (f"it changed ({values}) between two optimizer steps with no scheduler step in between, "
                    f"while {s.label()} (stepped at {where(sfile, sline)}) drives it")
        chk.add("lr-conflict", ev.step, ev.file, ev.line, lambda: (
            f"{who} stepped with a changed LR at optimizer step {ev.step} ({at}), but {what}. The scheduler "
            "computes its next LR from its own state (or from the LR it finds), so the two writers fight and "
            "the schedule is neither. Let one of them own the LR: drop the manual param_groups write, or fold "
            "it into the scheduler (LambdaLR, SequentialLR)."), opt=o.index, sched=s.index, group=g)
    elif o.written is None and any(x.first_seq is not None and x.cls != PLATEAU for x in o.scheds):
        # A scheduler exists but has not stepped in this run (a resumed run): whether the write
        # lasts is known at its next step.
        o.written = (changed, exp, lrs, ev.step, ev.file, ev.line)
    else:
        _outside(chk, o, changed, exp, lrs, ev.step, ev.file, ev.line)


def _values(o: OptState, changed: list[int], exp: tuple, lrs: tuple) -> str:
    g = changed[0]
    if len(changed) == 1:
        return f"from {fmt(exp[g])} to {fmt(lrs[g])}"
    if len(changed) <= 4:
        return "; ".join(f"{o.group_label(c)} from {fmt(exp[c])} to {fmt(lrs[c])}" for c in changed)
    return f"{o.group_label(g)} from {fmt(exp[g])} to {fmt(lrs[g])}, and so on"


def _outside(chk, o: OptState, changed: list[int], exp: tuple, lrs: tuple, step, file, line) -> None:
    at, who, values = where(file, line), o.groups_label(changed), _values(o, changed, exp, lrs)
    chk.add("lr-changed-outside-scheduler", step, file, line, lambda: (
        f"{who}: the LR changed ({values}) before optimizer step {step} ({at}) without any scheduler "
        "step: a hand-written schedule writes param_groups. Fine on its own; lrdebug records the LR each "
        "step used."), opt=o.index, group=changed[0])


@listens("lr-conflict", "lr-changed-outside-scheduler", on="scheduler_after_lr_write")
def write_undone(chk, o: OptState, s: SchedState, ev: Event) -> None:
    """An LR written while a scheduler waited (after a resume), judged at that scheduler's next step:
    brought back towards where it was (a closed-form schedule recomputing from base_lrs), the write
    lasted until then and the two fight; kept (a chainable schedule continuing from it), it was a change."""
    changed, exp, lrs, step, file, line = o.written
    o.written = None
    g = changed[0]
    before, now = exp[g], lrs[g]
    after = as_float(ev.lrs[g]) if g < len(ev.lrs) else None
    a, b = as_float(before), as_float(now)
    if not all(x is not None and 0 < x < INF for x in (after, a, b)) or abs(math.log(after / a)) >= abs(
            math.log(after / b)):
        _outside(chk, o, changed, exp, lrs, step, file, line)
        return
    at, sat = where(file, line), where(ev.file, ev.line)
    chk.add("lr-conflict", step, file, line, lambda: (
        f"{o.groups_label(changed)}: other code wrote lr={fmt(now)} (it was {fmt(before)}), first used "
        f"at optimizer step {step} ({at}), and the next step of {s.label()} ({sat}) set it back to "
        f"{fmt(after)}, on its own schedule: the write lasted until then. {s.cls} computes its LR from its own "
        "state (base_lrs and its position), not from the LR it finds. To change the LR of a resumed run, "
        "scale scheduler.base_lrs along with the groups' LR, or build the scheduler for the new LR instead "
        "of loading the old one's state."), opt=o.index, sched=s.index, group=g)


@listens("lr-changed-outside-scheduler", on="end_of_run")
def write_never_judged(chk) -> None:
    for o in sorted(chk.opts.values(), key=lambda o: o.index):  # live and offline register in other orders
        if o.written is not None:
            changed, exp, lrs, step, file, line = o.written
            o.written = None
            _outside(chk, o, changed, exp, lrs, step, file, line)


# ------------------------------------------------------------------------------ the schedule's arguments
_LAMBDAS = ("LambdaLR", "MultiplicativeLR")


@rule("lambda-returns-lr", "warning",
      "a `LambdaLR`/`MultiplicativeLR` lambda returns an LR instead of a factor: the LR is base_lr x lr",
      on="scheduler_step", classes=_LAMBDAS)
def lambda_factors(chk, o: OptState, s: SchedState, ev: Event) -> None:
    """Keep, per group, what the lambda returned: LambdaLR's factor is lr / base_lr; MultiplicativeLR's is
    lr / the previous LR. A factor on the scale of the base LR itself, far below 1, is an LR."""
    base = s.params.get("base_lrs")
    if not isinstance(base, list) or not ev.lrs:
        return
    if s.factors is None:
        s.factors = [[None, 0.0, 0, 0, 0] for _ in ev.lrs]  # previous LR, largest factor, at step, steps, LR-like
    for g, lr in enumerate(ev.lrs[:len(s.factors)]):
        f = s.factors[g]
        x, b = as_float(lr), as_float(base[g]) if g < len(base) else None
        if x is None or b is None or b <= 0:
            continue
        factor = x / b if s.cls == "LambdaLR" else (x / f[0] if f[0] else None)
        f[0] = x
        f[3] += 1
        if factor is None:
            continue
        if factor > f[1] * (1 + 1e-9):
            f[1], f[2] = factor, f[3]
        if s.cls == "MultiplicativeLR" and _lr_like(factor, b):
            f[4] += 1
            if f[4] == 2:  # the LR shrank by a factor that looks like an LR twice: it is collapsing
                _report_lambda(chk, o, s, g, b, factor)


@listens("lambda-returns-lr", on="end_of_run")
def lambda_peaked_as_lr(chk) -> None:
    """LambdaLR: its largest factor is on the scale of the base LR, and was reached before the last step
    (a warmup that the run did not finish may still be rising on purpose)."""
    for s in sorted(chk.scheds.values(), key=lambda s: s.index):
        if s.cls != "LambdaLR" or not s.factors:
            continue
        base = s.params.get("base_lrs") or []
        for g, (_, peak, at, steps, _) in enumerate(s.factors):
            b = as_float(base[g]) if g < len(base) else None
            if b and steps >= MANY_STEPS and at < steps and _lr_like(peak, b):
                _report_lambda(chk, chk.opts.get(s.opt), s, g, b, peak)
                break


def _lr_like(factor: float, base: float) -> bool:
    return 0 < factor <= 0.1 and base / 10 <= factor <= base * 10


def _report_lambda(chk, o: OptState | None, s: SchedState, g: int, base: float, factor: float) -> None:
    file, line = s.init_site
    kind = "its largest factor" if s.cls == "LambdaLR" else "the factor it applies each step"
    chk.add("lambda-returns-lr", None, file, line, lambda: (
        f"{s.label()} (built at {where(file, line)}): {kind} is {fmt(factor)}, on the scale of the base "
        f"LR {fmt(base)} itself: the lambda returns a learning rate, not a factor, so the LR used is "
        f"base_lr x lr = {fmt(base * factor)}"
        + (" and shrinks that much at every step" if s.cls == "MultiplicativeLR" else "")
        + ". Return a factor (1.0 = the base LR), e.g. min(1, (step + 1) / warmup), and keep the LR in the "
          "optimizer."), opt=s.opt, sched=s.index, group=None)


@rule("group-lr-ratios-overridden", "warning",
      "groups built with different LRs are set equal by a scheduler given one scalar (`OneCycleLR(max_lr=...)`, "
      "`CyclicLR`)", on="scheduler_init")
def ratios_overridden(chk, o: OptState | None, s: SchedState, ev: Event) -> None:
    if s.cls not in ("OneCycleLR", "CyclicLR") or not s.lrs_before or len(s.lrs_before) < 2 or o is None:
        return
    before = [as_float(v) for v in s.lrs_before]
    after = [as_float(v) for v in ev.lrs]
    if None in before or None in after or len(after) != len(before) or min(before) <= 0:
        return
    if max(before) <= min(before) * (1 + 1e-6) or not all(close_lr(x, after[0]) for x in after):
        return
    file, line = ev.file, ev.line
    groups = ", ".join(f"{o.group_label(g)}: {fmt(v)}" for g, v in enumerate(before))
    what = "max_lr" if s.cls == "OneCycleLR" else "base_lr/max_lr"
    chk.add("group-lr-ratios-overridden", None, file, line, lambda: (
        f"{s.label()} built at {where(file, line)} with one scalar {what} for {len(before)} param groups "
        f"whose LRs were set apart ({groups}): from its first step every group runs the same LR "
        f"({fmt(after[0])}), so the ratio between them (x{fmt(max(before) / min(before))}) is gone. Pass one "
        f"value per group ({what}=[...]) in the ratio you built the groups with."),
        opt=o.index, sched=s.index)


@rule("schedule-not-completed", "info",
      "a run that ended normally stopped far short of its finite schedule's end: the LR never annealed",
      on="end_of_run")
def not_completed(chk) -> None:
    if not chk.completed:
        return  # a crashed or interrupted run stops wherever it stopped
    for s in sorted(chk.scheds.values(), key=lambda s: s.index):
        horizon = _horizon(s)
        if horizon is None or s.is_child or s.epoch_flagged or s.user_steps == 0:
            continue
        pos = s.pos if s.end is not None and s.pos is not None else s.user_steps
        if pos >= horizon * NOT_COMPLETED or s.over:
            continue
        file, line = s.init_site
        o = chk.opts.get(s.opt)
        chk.add("schedule-not-completed", None, file, line, lambda: (
            f"scheduler {s.index} ({s.cls}, {schedule_text(s) or f'total_iters={horizon}'}, built at "
            f"{where(file, line)}) was "
            f"stepped {s.user_steps} times and the run ended at position {pos} of {horizon} "
            f"({100 * pos / horizon:.0f}%): the schedule never reached its end, so the LR never annealed. "
            "Size it for the steps the run really takes (max_steps and epochs agree, T_max/total_steps = "
            "len(loader) x epochs); ignore this when the run is one part of a longer one that resumes from a "
            "checkpoint."), opt=o.index if o else None, sched=s.index)


NOT_COMPLETED = 0.5  # a run that ended before this share of its finite schedule


def _horizon(s: SchedState) -> int | None:
    """The number of steps a finite schedule takes to reach its end (None: not finite, or unknown)."""
    if not s.torch_cls:
        return None
    if s.end is not None:
        return s.end if s.end > 0 else None
    if s.cls == "LinearLR":
        n = as_int(s.params.get("total_iters"))
        return n if n and n > 0 else None
    return None
