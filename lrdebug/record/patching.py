"""The only code that touches torch internals: hooks and reversible class-level patches.

``install(sink)`` observes every optimizer, scheduler, DataLoader and GradScaler in the process and
reports to ``sink.target`` (the active recorder itself, or a fan-out over nested ones: no dispatch
layer on the hot path); it returns a handle whose ``remove()`` restores every
class and hook exactly as it was. Optimizers are observed through torch's global step hooks, never
by assigning ``opt.step`` (``LRScheduler`` wraps the instance's ``step`` and warns when it is
replaced, pytorch#20124). Schedulers have no hook API, so their methods are patched on the class,
on every subclass that defines its own, and on subclasses defined later (``__init_subclass__``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from typing import Any, Callable

import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler as _sched_mod
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from . import hotpath

LRScheduler = _sched_mod.LRScheduler
_MISSING = object()
_now = time.perf_counter_ns


class _Local(threading.local):
    def __init__(self) -> None:
        self.sched_stack: list[Any] = []  # schedulers whose step() is running, innermost last
        self.init_stack: list[Any] = []  # schedulers / optimizers in their constructor
        self.scaler_opt: Any = None  # optimizer GradScaler.step is running for
        self.scaler_called = False


_local = _Local()
# Calls running in any thread: while 0, the hot paths skip reading the thread-local stacks. Changed
# under _depth_lock (`+=` on a global is not atomic across threads); read without it.
scaler_depth = 0  # GradScaler.step
init_depth = 0  # scheduler and optimizer constructors
_depth_lock = threading.Lock()


def _new_locks_after_fork() -> None:
    global _depth_lock
    _depth_lock = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_after_fork)


def current_local() -> _Local:
    return _local


def _warn_at_caller(fn: Callable, sched: Any, args: tuple, kwargs: dict) -> Any:
    """Call ``fn`` and re-issue the warnings it raised for its caller's caller (the user's line),
    through the user's own filters."""
    caller = sys._getframe(2)
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            return fn(sched, *args, **kwargs)
    finally:
        for w in caught:
            if os.path.abspath(w.filename) == _THIS_FILE:
                registry = caller.f_globals.setdefault("__warningregistry__", {})
                warnings.warn_explicit(w.message, w.category, caller.f_code.co_filename, caller.f_lineno,
                                       module=caller.f_globals.get("__name__"), registry=registry)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


_THIS_FILE = os.path.abspath(__file__)


class Patches:
    """A list of (owner, name, original) to put back, in reverse order."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        self._undo.append((owner, name, owner.__dict__.get(name, _MISSING)))
        setattr(owner, name, value)

    def restore(self) -> None:
        while self._undo:
            owner, name, original = self._undo.pop()
            if original is _MISSING:
                try:
                    delattr(owner, name)
                except AttributeError:
                    pass
            else:
                setattr(owner, name, original)


def _in_place(args: tuple, kwargs: dict) -> bool:
    """zero_grad(set_to_none=False): the gradients are zeroed in their tensors, not dropped."""
    return (args[0] if args else kwargs.get("set_to_none", True)) is False


def _group_lrs(opt: Any) -> tuple | None:
    """The group LRs of an optimizer as they are now (before a scheduler's constructor changes them)."""
    try:
        return tuple(g["lr"] for g in opt.param_groups)
    except Exception:  # noqa: BLE001 - not an optimizer, or an unusual one: nothing to compare
        return None


def _subclasses(cls: type) -> list[type]:
    seen, todo = [], [cls]
    while todo:
        c = todo.pop()
        if c not in seen:
            seen.append(c)
            todo.extend(type.__subclasses__(c))
    return seen


class Installation:
    """Everything installed for one sink; ``remove()`` is idempotent."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.patches = Patches()
        self.handles: list[Any] = []
        self._removed = False
        self._timm_done = False

    # --------------------------------------------------------------------------- schedulers
    def _wrap_sched_step(self, fn: Callable) -> Callable:
        local = _local
        record = hotpath.hook(self.sink, "scheduler_step")

        def step(sched, *args, **kwargs):
            # PyTorch's order checks warn on the first step with stacklevel=2, which would name this
            # wrapper: on that step only, its warnings are re-issued at the caller's line.
            first = getattr(sched, "_step_count", None) == 1
            stack = local.sched_stack
            if stack and stack[-1] is sched:  # a subclass's step() calling super().step()
                return _warn_at_caller(fn, sched, args, kwargs) if first else fn(sched, *args, **kwargs)
            parent = stack[-1] if stack else None
            in_init = bool(init_depth and local.init_stack)
            stack.append(sched)
            t0 = _now()
            try:
                if first:
                    return _warn_at_caller(fn, sched, args, kwargs)
                # a call with *args costs a tuple and a dict: most steps pass nothing
                return fn(sched, *args, **kwargs) if args or kwargs else fn(sched)
            finally:
                t1 = _now()
                stack.pop()
                metric = args[0] if args else kwargs.get("metrics")
                record(sched, t0, t1, parent, in_init, metric)

        step.__wrapped__ = fn
        step.__name__ = getattr(fn, "__name__", "step")
        step.__qualname__ = getattr(fn, "__qualname__", "step")
        step.__doc__ = getattr(fn, "__doc__", None)
        return hotpath.method("step", fn, step, record, local)

    def _wrap_sched_init(self, fn: Callable) -> Callable:
        sink, local = self.sink, _local

        def __init__(sched, *args, **kwargs):
            global init_depth
            before = _group_lrs(args[0] if args else kwargs.get("optimizer"))
            local.init_stack.append(sched)
            with _depth_lock:
                init_depth += 1
            try:
                fn(sched, *args, **kwargs)
            finally:
                with _depth_lock:
                    init_depth -= 1
                local.init_stack.pop()
            if not any(s is sched for s in local.init_stack):
                sink.target.scheduler_init(sched, before)

        __init__.__wrapped__ = fn
        __init__.__doc__ = getattr(fn, "__doc__", None)
        return __init__

    def _wrap_get_lr(self, fn: Callable) -> Callable:
        sink, local = self.sink, _local

        def get_lr(sched, *args, **kwargs):
            # Only a scheduler's own step (or constructor) may compute its get_lr(): a call from user
            # code, or from another scheduler's step (a warmup wrapper handing over), is reported.
            stack = local.sched_stack
            if (not stack or stack[-1] is not sched) and not (init_depth and local.init_stack):
                sink.target.get_lr_call(sched)
            return fn(sched, *args, **kwargs) if args or kwargs else fn(sched)

        get_lr.__wrapped__ = fn
        get_lr.__doc__ = getattr(fn, "__doc__", None)
        return hotpath.method("get_lr", fn, get_lr, sink, local)

    def _wrap_sched_load(self, fn: Callable) -> Callable:
        sink = self.sink

        def load_state_dict(sched, *args, **kwargs):
            out = fn(sched, *args, **kwargs)
            sink.target.scheduler_load_state(sched)
            return out

        load_state_dict.__wrapped__ = fn
        return load_state_dict

    def _patch_scheduler_class(self, cls: type) -> None:
        d = cls.__dict__
        wrappers = {
            "step": self._wrap_sched_step,
            "__init__": self._wrap_sched_init,
            "get_lr": self._wrap_get_lr,
            "load_state_dict": self._wrap_sched_load,
        }
        for name, wrap in wrappers.items():
            fn = d.get(name)
            if callable(fn) and not getattr(fn, "_lrdebug_patched", False):
                new = wrap(fn)
                new._lrdebug_patched = True
                self.patches.set(cls, name, new)

    def _install_schedulers(self) -> None:
        for cls in _subclasses(LRScheduler):
            self._patch_scheduler_class(cls)
        install = self
        previous = LRScheduler.__dict__.get("__init_subclass__")

        def __init_subclass__(cls, **kwargs):
            if previous is not None:
                previous.__func__(cls, **kwargs)
            else:
                super(LRScheduler, cls).__init_subclass__(**kwargs)
            if not install._removed:
                install._patch_scheduler_class(cls)

        self.patches.set(LRScheduler, "__init_subclass__", classmethod(__init_subclass__))

    # --------------------------------------------------------------------------- optimizers
    def _install_optimizers(self) -> None:
        sink, local = self.sink, _local

        # torch calls these from Optimizer.step's wrapper: the user's frame is the wrapper's caller.
        self.handles.append(register_optimizer_step_pre_hook(hotpath.hook(sink, "optimizer_pre")))
        self.handles.append(register_optimizer_step_post_hook(hotpath.hook(sink, "optimizer_post")))
        record = hotpath.hook(sink, "zero_grad")

        def wrap_zero_grad(fn, origin: str):
            def zero_grad(obj, *args, **kwargs):
                t0 = _now()
                if args or kwargs:
                    out = fn(obj, *args, **kwargs)
                    record(obj, origin, t0, _now(), _in_place(args, kwargs))
                else:
                    out = fn(obj)
                    record(obj, origin, t0, _now(), False)
                return out

            zero_grad.__wrapped__ = fn
            zero_grad.__doc__ = fn.__doc__
            return hotpath.method("zero_grad", fn, zero_grad, record, local, origin)

        for cls in _subclasses(Optimizer):
            fn = cls.__dict__.get("zero_grad")
            if callable(fn):
                self.patches.set(cls, "zero_grad", wrap_zero_grad(fn, "optimizer"))
        self.patches.set(torch.nn.Module, "zero_grad", wrap_zero_grad(torch.nn.Module.zero_grad, "module"))

        opt_init = Optimizer.__init__

        def optimizer_init(opt, *args, **kwargs):
            global init_depth
            local.init_stack.append(opt)
            with _depth_lock:
                init_depth += 1
            try:
                opt_init(opt, *args, **kwargs)
            finally:
                with _depth_lock:
                    init_depth -= 1
                local.init_stack.pop()

        optimizer_init.__wrapped__ = opt_init
        self.patches.set(Optimizer, "__init__", optimizer_init)

        add_group = Optimizer.add_param_group

        def add_param_group(opt, *args, **kwargs):
            out = add_group(opt, *args, **kwargs)
            if not any(o is opt for o in local.init_stack):
                sink.target.add_param_group(opt)
            return out

        add_param_group.__wrapped__ = add_group
        add_param_group.__doc__ = add_group.__doc__
        self.patches.set(Optimizer, "add_param_group", add_param_group)

        load_state = Optimizer.load_state_dict

        def load_state_dict(opt, *args, **kwargs):
            out = load_state(opt, *args, **kwargs)
            sink.target.optimizer_load_state(opt)
            return out

        load_state_dict.__wrapped__ = load_state
        load_state_dict.__doc__ = load_state.__doc__
        self.patches.set(Optimizer, "load_state_dict", load_state_dict)

    # --------------------------------------------------------------------------- AMP, data
    def _install_scaler(self) -> None:
        sink, local = self.sink, _local
        scaler_cls = torch.amp.GradScaler
        scaler_step = scaler_cls.step

        def step(scaler, optimizer, *args, **kwargs):
            global scaler_depth
            saved = local.scaler_opt, local.scaler_called
            local.scaler_opt, local.scaler_called = optimizer, False
            with _depth_lock:
                scaler_depth += 1
            try:
                out = scaler_step(scaler, optimizer, *args, **kwargs)
                if not local.scaler_called and getattr(scaler, "_enabled", True):
                    sink.target.optimizer_skipped(optimizer)
                return out
            finally:
                with _depth_lock:
                    scaler_depth -= 1
                local.scaler_opt, local.scaler_called = saved

        step.__wrapped__ = scaler_step
        step.__doc__ = scaler_step.__doc__
        self.patches.set(scaler_cls, "step", step)

    def _install_data(self) -> None:
        sink = self.sink
        from torch.utils.data import DataLoader
        from torch.utils.data.dataloader import _BaseDataLoaderIter

        loader_iter = DataLoader.__iter__

        def __iter__(loader):
            it = loader_iter(loader)
            sink.target.epoch_start(loader)
            return it

        __iter__.__wrapped__ = loader_iter
        self.patches.set(DataLoader, "__iter__", __iter__)

        next_batch = _BaseDataLoaderIter.__next__

        def __next__(it):
            # Only a delivered batch counts: the wait that ends in StopIteration belongs to no step.
            t0 = _now()
            batch = next_batch(it)
            sink.target.data_wait(_now() - t0)
            return batch

        __next__.__wrapped__ = next_batch
        self.patches.set(_BaseDataLoaderIter, "__next__", __next__)

    def install(self) -> Installation:
        try:
            self._install_optimizers()
            self._install_schedulers()
            self._install_scaler()
            self._install_data()
            self.install_timm()
        except BaseException:
            self.remove()
            raise
        return self

    # --------------------------------------------------------------------------- timm's schedulers
    def install_timm(self) -> None:
        """timm's schedulers (``timm.scheduler.Scheduler``) are no LRScheduler: they write param_groups
        from ``step(epoch)`` or ``step_update(num_updates)``, whichever their ``t_in_epochs`` says moves
        the LR (the other call is a no-op, and a timm loop makes both). Patched once timm's scheduler
        module is imported (never imported here: on some builds importing timm has side effects); the
        recorder asks again when it first sees an optimizer."""
        if self._timm_done or self._removed:
            return
        module = sys.modules.get("timm.scheduler.scheduler")
        cls = getattr(module, "Scheduler", None) if module is not None else None
        if not isinstance(cls, type):
            return
        self._timm_done = True
        sink = self.sink

        def wrap(fn, per_epoch: bool):
            def method(sched, *args, **kwargs):
                t0 = _now()
                out = fn(sched, *args, **kwargs)
                if bool(getattr(sched, "t_in_epochs", True)) == per_epoch:  # this call moved the LR
                    metric = kwargs.get("metric", args[1] if len(args) > 1 else None)
                    sink.target.scheduler_step(sched, t0, _now(), None, False, metric)
                return out

            method.__wrapped__ = fn
            method.__doc__ = getattr(fn, "__doc__", None)
            method._lrdebug_patched = True
            return method

        for name, per_epoch in (("step", True), ("step_update", False)):
            fn = cls.__dict__.get(name)
            if callable(fn) and not getattr(fn, "_lrdebug_patched", False):
                self.patches.set(cls, name, wrap(fn, per_epoch))

    def remove(self) -> None:
        if self._removed:
            return
        self._removed = True
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.patches.restore()


def install(sink: Any) -> Installation:
    return Installation(sink).install()


def is_pristine() -> bool:
    """True when no lrdebug hook or patch is installed (used by the tests' autouse fixture)."""
    from torch.optim import optimizer as opt_mod

    if opt_mod._global_optimizer_pre_hooks or opt_mod._global_optimizer_post_hooks:
        return False
    classes = _subclasses(LRScheduler) + _subclasses(Optimizer) + [torch.nn.Module, torch.amp.GradScaler]
    from torch.utils.data import DataLoader
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    classes += [DataLoader, _BaseDataLoaderIter]
    timm = getattr(sys.modules.get("timm.scheduler.scheduler"), "Scheduler", None)
    if isinstance(timm, type):
        classes.append(timm)
    for cls in classes:
        for value in cls.__dict__.values():
            fn = value.__func__ if isinstance(value, classmethod) else value
            if getattr(fn, "__wrapped__", None) is not None and getattr(fn, "__module__", "") == __name__:
                return False
    return "__init_subclass__" not in LRScheduler.__dict__
