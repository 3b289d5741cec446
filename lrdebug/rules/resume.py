"""Rules about state carried through a run: a resume restores the scheduler with the optimizer, and a
schedule is not rebuilt from scratch inside the loop."""

from __future__ import annotations

from ..tracefile.schema import Event
from .registry import rule
from .state import PLATEAU, OptState, SchedState, as_count, as_int, fmt, same_lrs, where


@rule("scheduler-state-not-restored", "warning",
      "a resumed optimizer (its state has steps) is driven by a scheduler starting from scratch: warmup restarts",
      on="scheduler_first_after_optimizer")
def state_not_restored(chk, o: OptState, s: SchedState, ev: Event) -> None:
    """At a scheduler's first user step after its optimizer started: was the run resumed without it?"""
    restored = as_count(o.restored) or as_count(s.init_value)
    if not restored or s.cls == PLATEAU:
        return
    at = where(ev.file, ev.line)
    built = where(*s.init_site) if s.init_site[0] else "its constructor"
    if (o.load_seq is not None and s.created_seq is not None and s.created_seq > o.load_seq
            and not same_lrs(s.init_lrs, o.load_lrs)):
        msg = (f"{s.label()} was built ({built}) after {o.label()}.load_state_dict() restored an optimizer "
               f"that had taken {restored} steps, and its constructor overwrote the restored LR "
               f"{fmt(o.load_lrs[0]) if o.load_lrs else '?'} with {fmt(s.init_lrs[0]) if s.init_lrs else '?'}: "
               f"the resumed run restarts the schedule (warmup again; first stepped at {at}). Build the "
               "scheduler first, then load the optimizer's and the scheduler's state_dict.")
    elif (not s.loaded and s.user_steps == 1
          and ((s.init_pos or 0) <= 0 if s.created_seq is not None
               else (as_int(s.params.get("last_epoch")) or 0) <= 1)):
        msg = (f"{o.label()} resumed with {restored} steps in its state, but {s.label()} starts from "
               f"scratch (first stepped at {at}, never load_state_dict()): warmup and decay restart while "
               "the optimizer's moments continue. Save scheduler.state_dict() in the checkpoint and call "
               "scheduler.load_state_dict() when resuming.")
    else:
        return
    chk.add("scheduler-state-not-restored", ev.step, ev.file, ev.line, lambda: msg, opt=o.index, sched=s.index)


@rule("schedule-restarted", "warning",
      "the scheduler (often with its optimizer) is created again inside the training loop, so the schedule "
      "starts over and optimizer state is lost", on="scheduler_init")
def restarted(chk, o: OptState | None, s: SchedState, ev: Event) -> None:
    """One construction site builds a scheduler for the same parameters as an earlier scheduler from that
    site which had already stepped: the loop rebuilds it (per epoch, per task). A new model per fold, or
    a second phase built at another line, is no restart."""
    if o is None or o.params_key is None or s.init_site[0] is None:
        return
    earlier = [t for t in chk.scheds.values()
               if t is not s and t.init_site == s.init_site and (t.user_steps or t.child_steps)
               and t.opt is not None and chk.opts[t.opt].params_key == o.params_key]
    if not earlier:
        return
    first = min(earlier, key=lambda t: t.index)
    steps = sum(t.user_steps + t.child_steps for t in earlier)
    new_optimizer = all(t.opt != o.index for t in earlier)
    file, line = s.init_site
    chk.add("schedule-restarted", None, file, line, lambda: (
        f"{s.label()} is built again at {where(file, line)} for the same parameters as {first.label()} built "
        f"there before, which had stepped {steps} time(s): the schedule starts over (warmup again, decay "
        "undone) each time it is rebuilt"
        + (f", and {o.label()} is a new optimizer too, so its state (momentum, Adam's moments) is thrown away"
           if new_optimizer else "")
        + ". Build the optimizer and the scheduler once, before the training loop, and step them across "
          "epochs; for restarts on purpose use CosineAnnealingWarmRestarts or SequentialLR."),
        opt=first.opt, sched=first.index)
