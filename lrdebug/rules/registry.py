"""The rule registry: every finding code, its severity and summary, and the function that finds it.

A rule is a function in its family module, registered with ``@rule(code, severity, summary, on=MOMENT)``.
The engine (``engine.Checker``) keeps the state every rule reads, and at each *moment* of the event
stream calls the functions registered for it, in registration order. Adding a rule is one function
and one decorator; nothing central changes.

Every optimizer and scheduler step passes through the engine, so the moments of those steps are
*narrow*: the engine tests a cheap fact inline and calls a rule only when it holds (a correct loop
calls almost no rule function at all). Moments and the arguments their rules get (``chk`` is the
engine, ``o``/``s`` its optimizer and scheduler state, ``ev`` the event):

- ``grads_unusual(chk, o, ev, prev_seq)``: an applied step whose gradients were not all fresh
- ``lr_invalid(chk, o, ev)``: an applied step with an LR that is no finite, non-negative float
- ``past_end(chk, o, ev)``: an applied step while one of its schedulers is past its end (``o.past``)
- ``optimizer_skipped(chk, o, ev)``: a step GradScaler skipped
- ``lr_changed(chk, o, ev, before)``: a group's LR differs from what was last seen (``before``)
- ``step_begin(chk, o, s, end)``: the optimizer stepped again after ``s`` stepped 2+ times (or at the end)
- ``scheduler_before_optimizer(chk, o, s, ev)``: the user stepped a scheduler whose optimizer never stepped
- ``scheduler_first_after_optimizer(chk, o, s, ev)``: its first user step once its optimizer has stepped
- ``scheduler_repeated(chk, o, s, ev)``: a user step that is the 2nd+ since the optimizer's last step
- ``scheduler_turn(chk, o, s, ev)``: a user step of a scheduler other than the one last stepped by the user
- ``epoch_size_overrun(chk, o, s, ev)``: a user step of a scheduler sized like a number of epochs
  (``s.epoch_len``) that has stepped more times than that, in a run with epoch boundaries
- ``scheduler_step(chk, o, s, ev)``: any step but the constructor's (user's or a parent's); rules
  registered with ``classes=`` are called only for schedulers of those classes
- ``scheduler_after_lr_write(chk, o, s, ev)``: a scheduler step after other code wrote the LR a
  rule is watching (``o.written``, set by a ``lr_changed`` rule)
- ``scheduler_init(chk, o, s, ev)``, ``scheduler_load_state(chk, o, s, ev)``
- ``get_lr_call(chk, s, ev)``, ``add_param_group(chk, o, ev)``
- ``end_of_run(chk)``: the run ended; ``finalize(chk, finding)``: once per finding, to complete its message
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

MOMENTS = ("grads_unusual", "lr_invalid", "past_end", "optimizer_skipped", "lr_changed",
           "step_begin", "scheduler_before_optimizer", "scheduler_first_after_optimizer", "scheduler_repeated",
           "scheduler_turn", "epoch_size_overrun", "scheduler_step", "scheduler_after_lr_write", "scheduler_init",
           "scheduler_load_state",
           "get_lr_call", "add_param_group", "end_of_run", "finalize")


@dataclass(frozen=True)
class Rule:
    code: str
    severity: str  # error, warning or info
    summary: str  # one line: what it means (the README's table)
    family: str  # the module that holds it


RULES: dict[str, Rule] = {}
CODES: dict[str, str] = {}  # code -> severity: the contract's table
# moment -> [(codes the function can report, function, scheduler classes or None)], in registration order
LISTENERS: dict[str, list[tuple[frozenset[str], Callable, frozenset[str] | None]]] = {m: [] for m in MOMENTS}


def define(code: str, severity: str, summary: str, family: str) -> None:
    """Register a code whose finder is not an engine listener (rank-divergence compares ranks)."""
    if code in RULES:
        raise ValueError(f"finding code {code!r} registered twice")
    if severity not in ("error", "warning", "info"):
        raise ValueError(f"{code}: unknown severity {severity!r}")
    RULES[code] = Rule(code, severity, summary, family)
    CODES[code] = severity


def rule(code: str, severity: str, summary: str, on: str | tuple[str, ...] = (),
         classes: tuple[str, ...] | None = None) -> Callable:
    """Register ``code`` and the decorated function as a listener of the moment(s) ``on``.

    Several codes may share one function (stack the decorators): it is registered once per moment.
    """

    def register(fn: Callable) -> Callable:
        define(code, severity, summary, fn.__module__.rsplit(".", 1)[-1])
        return listens(code, on=on, classes=classes)(fn)

    return register


def listens(*codes: str, on: str | tuple[str, ...], classes: tuple[str, ...] | None = None) -> Callable:
    """Another function reporting codes already registered, as a listener of the moment(s) ``on``."""
    moments = (on,) if isinstance(on, str) else tuple(on)
    for m in moments:
        if m not in LISTENERS:
            raise ValueError(f"{codes}: unknown moment {m!r}")

    def register(fn: Callable) -> Callable:
        codes_ = getattr(fn, "_codes", frozenset()) | set(codes)
        fn._codes = codes_
        only = frozenset(classes) if classes is not None else None
        for m in moments:
            entries = LISTENERS[m]
            for i, (_, f, _) in enumerate(entries):
                if f is fn:
                    entries[i] = (codes_, fn, only)
                    break
            else:
                entries.append((codes_, fn, only))
        return fn

    return register


def listeners(moment: str, ignore: frozenset[str], cls: str | None = None) -> tuple[Callable, ...]:
    """The functions of a moment that can still report something not ignored (for a scheduler class:
    those registered for every class or for that one)."""
    return tuple(fn for codes, fn, only in LISTENERS[moment]
                 if not codes <= ignore and (only is None or cls in only))
