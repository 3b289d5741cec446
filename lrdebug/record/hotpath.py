"""Which implementation runs the per-event callbacks on the training thread.

The compiled one (``lrdebug/record/_hot.c``, built by ``pip install``) runs the common path of an
optimizer step, a scheduler step and a zero_grad in C; the pure-Python one (the Recorder's methods) is
the reference, and the fallback where the extension was not built or ``LRDEBUG_PURE_PYTHON=1``. Both
write the same rows and feed the same events to the rules: the compiled callbacks hand any unusual
call (a new optimizer, tensor LRs, GradScaler, sampling, CUDA timing, nested traces) to the Python
method before touching any state.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

CALLBACKS = ("optimizer_pre", "optimizer_post", "scheduler_step", "zero_grad")


def _load() -> tuple[Any, str]:
    if os.environ.get("LRDEBUG_PURE_PYTHON", "") not in ("", "0"):
        return None, "python (LRDEBUG_PURE_PYTHON is set)"
    try:
        from . import _hot
    except ImportError:
        return None, "python (the compiled extension is not built)"
    return _hot, "compiled"


_HOT, DESCRIPTION = _load()
IMPLEMENTATION = "compiled" if _HOT is not None else "python"


def bind(recorder_class: type, opt_state: type, sched_state: type, sink_class: type, patching: Any) -> None:
    """Hand the extension the objects it shares with the Python implementation (recorder.py calls this
    once, so this module imports neither the recorder nor patching). The classes' ``__slots__`` are
    where the extension reads and writes the per-event state."""
    if _HOT is None:
        return
    from ..tracefile.schema import (
        GRAD_FRESH,
        GRAD_NONE,
        GRAD_SAME,
        OPTIMIZER_STEP,
        ORIGIN_USER,
        SCHEDULER_STEP,
        ZERO_GRAD,
        Event,
    )
    from . import callsites

    _HOT.bind({
        "Recorder": recorder_class, "OptState": opt_state, "SchedState": sched_state, "Sink": sink_class,
        "Event": Event, "code_kind": callsites._code_kind,
        "site_ids": callsites._site_ids, "SITES": callsites.SITES, "FRAMEWORK_SITES": callsites.FRAMEWORK_SITES,
        "walk_call_site": callsites._walk_call_site, "patching_globals": vars(patching),
        "getframe": sys._getframe, "perf_counter_ns": time.perf_counter_ns, "KIND_USER": callsites._USER,
        "KIND_INTERNAL": callsites._INTERNAL, "GRAD_NONE": GRAD_NONE, "GRAD_FRESH": GRAD_FRESH,
        "GRAD_SAME": GRAD_SAME, "OPTIMIZER_STEP": OPTIMIZER_STEP, "SCHEDULER_STEP": SCHEDULER_STEP,
        "ZERO_GRAD": ZERO_GRAD, "ORIGIN_USER": ORIGIN_USER,
    })


def hook(sink: Any, name: str) -> Callable[..., None]:
    """What patching installs for callback ``name``: calls ``sink.target.<name>(*args)``, compiled where
    it can be."""
    if _HOT is not None:
        return _HOT.Hook(sink, name)  # until bind() it calls the Python methods

    def forward(*args):
        getattr(sink.target, name)(*args)

    forward.__name__ = forward.__qualname__ = name
    return forward


def method(kind: str, fn: Callable, python: Callable, record: Any, local: Any, origin: str | None = None) -> Callable:
    """A scheduler class's patched ``step`` or ``get_lr``, or an optimizer's or module's ``zero_grad``
    (``origin`` says which): compiled where it can be, with ``python`` (patching's wrapper of ``fn``) as
    the reference it calls for unusual calls and whose attributes it shows. ``record``: the
    scheduler_step or zero_grad hook, or the sink (get_lr)."""
    if _HOT is None:
        return python
    return _HOT.Method(kind, fn, python, record, local, origin)
