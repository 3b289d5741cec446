"""Rules about the schedule itself: its size against the run, the LR values it produced, and other
code writing the LR it owns."""

from __future__ import annotations

from ..tracefile.schema import Event
from .registry import listens, rule
from .state import INF, OptState, SchedState, as_float, close_lr, fmt, schedule_text, where


@rule("epoch-scheduler-stepped-per-batch", "warning",
      "a schedule sized in epochs (StepLR, MultiStepLR, CosineAnnealingLR, ExponentialLR ...) is stepped "
      "every batch", on="epoch_size_overrun")
def epoch_per_batch(chk, o: OptState, s: SchedState, ev: Event) -> None:
    if not (s.k_epoch > s.epoch_len and not s.epoch_flagged and chk.epochs
            and o.in_epoch >= 2 and s.k_epoch >= o.in_epoch - 1):
        return
    s.epoch_flagged = True
    if s in o.past:
        o.past.remove(s)
    at = where(ev.file, ev.line)
    k = s.k_epoch
    chk.add("epoch-scheduler-stepped-per-batch", ev.step, ev.file, ev.line, lambda: (
        f"scheduler {s.index} ({s.cls}, {schedule_text(s)}) is stepped once per batch ({k} steps in the first "
        f"{o.in_epoch} optimizer steps of this epoch, at {at}), but its schedule is sized like a number of "
        f"epochs: it ran through {s.epoch_len} steps within a single epoch, so the LR "
        f"{'cycles' if s.cls == 'CosineAnnealingLR' else 'collapses'} long before training ends. Step it once "
        "per epoch (after the batch loop), or size it in steps (epochs x batches per epoch)."),
        opt=o.index, sched=s.index)


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
    before, now = exp[g], lrs[g]
    at = where(ev.file, ev.line)
    who = o.groups_label(changed)
    if len(changed) == 1:
        values = f"from {fmt(before)} to {fmt(now)}"
    elif len(changed) <= 4:
        values = "; ".join(f"{o.group_label(c)} from {fmt(exp[c])} to {fmt(lrs[c])}" for c in changed)
    else:
        values = f"{o.group_label(g)} from {fmt(before)} to {fmt(now)}, and so on"
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
    else:
        chk.add("lr-changed-outside-scheduler", ev.step, ev.file, ev.line, lambda: (
            f"{who}: the LR changed ({values}) before optimizer step {ev.step} ({at}) without any scheduler "
            "step: a hand-written schedule writes param_groups. Fine on its own; lrdebug records the LR each "
            "step used."), opt=o.index, group=g)
