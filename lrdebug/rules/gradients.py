"""Rules about gradients at each optimizer step: present, cleared between steps, or skipped by AMP."""

from __future__ import annotations

from ..tracefile.schema import GRAD_FRESH, GRAD_SAME, Event
from .registry import listens, rule
from .state import OptState, where


@rule("grads-not-cleared", "warning",
      "gradients were never cleared between optimizer steps, so they accumulate across steps",
      on="grads_unusual")
@rule("step-without-gradients", "warning",
      "`optimizer.step()` ran with no gradient on any parameter of a group (backward missing, or zero_grad "
      "between backward and step)", on="grads_unusual")
def gradient_state(chk, o: OptState, ev: Event, prev_seq: int) -> None:
    grads = ev.grads
    if GRAD_SAME in grads:
        # The very gradient tensors of the previous step: nothing cleared them, or a zero_grad zeroed
        # them in place (set_to_none=False). A zero_grad that drops gradients (the default) gives new
        # tensors, so one that ran since did not cover this optimizer (a GAN's other network).
        if chk.in_place_zero_seq < prev_seq:
            _not_cleared(chk, o, ev, grads.index(GRAD_SAME))
    elif GRAD_FRESH not in grads:
        at = where(ev.file, ev.line)
        chk.add("step-without-gradients", ev.step, ev.file, ev.line, lambda: (
            f"{o.label()} stepped at optimizer step {ev.step} ({at}) while no parameter of any param group had "
            "a gradient: the step changes nothing (or only applies weight decay and momentum). backward() is "
            "missing, or zero_grad() runs between backward() and step(); call them in the order zero_grad(), "
            "backward(), step()."), opt=o.index)


def _not_cleared(chk, o: OptState, ev: Event, g: int) -> None:
    at = where(ev.file, ev.line)
    chk.add("grads-not-cleared", ev.step, ev.file, ev.line, lambda: (
        f"{o.label()} stepped at optimizer step {ev.step} ({at}) with the same gradient tensors as at its "
        "previous step and no zero_grad() of its parameters in between: backward() adds into .grad, so every "
        "step applies the sum of all gradients so far (with several networks, also what other losses' "
        "backward() left) and the updates grow. Call this optimizer's zero_grad() (or its model's) once per "
        "optimizer step, after step() or before backward()."), opt=o.index, group=g)


@rule("step-skipped", "info",
      "optimizer steps were skipped (AMP GradScaler found inf/NaN); how many, and that the scheduler still "
      "advanced", on="optimizer_skipped")
def step_skipped(chk, o: OptState, ev: Event) -> None:
    chk.add("step-skipped", ev.step, ev.file, ev.line, lambda: (
        f"{o.label()}: optimizer step {ev.step} was skipped ({where(ev.file, ev.line)}) because GradScaler "
        "found inf/NaN gradients (the full count is written at the end of the run)."), opt=o.index)


@listens("step-skipped", on="finalize")
def step_skipped_total(chk, f) -> None:
    """At the end: the whole count, and how often the scheduler advanced on skipped iterations."""
    if f.code != "step-skipped":
        return
    o = chk.opts[f.optimizer]
    total = o.applied + o.skipped
    sched = (f" The scheduler still advanced {o.after_skip} time(s) on skipped iterations, so the "
             f"schedule is {o.after_skip} step(s) ahead of the applied updates; harmless when few."
             if o.after_skip else "")
    f.message = (f"{o.label()}: {o.skipped} of {total} steps were skipped ({f.count} at "
                 f"{where(f.file, f.line)}, first at optimizer step {f.step}) because GradScaler found "
                 f"inf/NaN gradients; normal while the loss scale calibrates.{sched} Many skips mean "
                 "the loss or the scale keeps overflowing.")
