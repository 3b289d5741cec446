"""What the recorder reads off the user's optimizers and schedulers: their registry entries (class,
arguments, groups), restored step counts, gradient states, and the optimizer inside a wrapper."""

from __future__ import annotations

import collections
import hashlib
import itertools
import math
import sys
import weakref
from typing import Any

import torch

from ..tracefile.schema import GRAD_FRESH, GRAD_NONE, GRAD_SAME


def _jsonable(v: Any, depth: int = 0) -> Any:
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, torch.Tensor):
        return _jsonable(float(v), depth) if v.numel() == 1 and v.device.type == "cpu" else f"tensor{tuple(v.shape)}"
    if isinstance(v, (list, tuple)) and depth < 2:
        return [_jsonable(x, depth + 1) for x in v][:64]
    if callable(v):
        return getattr(v, "__qualname__", type(v).__name__)
    return type(v).__name__


def _state_json(v: Any, depth: int = 0) -> Any:
    """A scheduler's state_dict as JSON, enough to rebuild the scheduler without its constructor (the
    intended-schedule replay): numbers, strings, lists, dicts; a Counter (MultiStepLR's milestones)
    as ``{"counter": [[key, count], ...]}``. A callable (LambdaLR's lambda) cannot be stored: None."""
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, torch.Tensor):
        return float(v) if v.numel() == 1 and v.device.type == "cpu" else None
    if depth >= 4:
        return None
    if isinstance(v, collections.Counter):
        return {"counter": [[_state_json(k, depth + 1), int(n)] for k, n in v.items()][:256]}
    if isinstance(v, dict):
        return {str(k): _state_json(x, depth + 1) for k, x in list(v.items())[:256]}
    if isinstance(v, (list, tuple)):
        return [_state_json(x, depth + 1) for x in v][:256]
    return None


def keep_attributes_fast(obj) -> None:
    """Undo what reading ``obj.__dict__`` did to its speed (CPython 3.11-3.12): the first read moves an
    instance's attributes out of its inline values into a split dict, after which every attribute load
    and store in its methods takes the generic path (``StepLR.step()`` 3.0 -> 4.6 us). Given a plain dict
    of the same contents, its methods are specialised again. For an object lrdebug just read at
    construction, which nothing else holds the dict of."""
    if sys.version_info < (3, 13):
        try:
            obj.__dict__ = dict(obj.__dict__)
        except (AttributeError, TypeError):
            pass


def _replay_state(sched) -> dict[str, Any] | None:
    """What a replay needs of a scheduler just built: its state and its groups' scalar keys."""
    try:
        state = _state_json(sched.state_dict())  # reads sched.__dict__
        keep_attributes_fast(sched)
        groups = [{k: _state_json(x) for k, x in g.items() if k != "params" and not isinstance(x, (list, dict))}
                  for g in sched.optimizer.param_groups]
    except Exception:  # noqa: BLE001 - a scheduler whose state cannot be read: no replay for it
        return None
    return {"state": state, "groups": groups}


_SCHED_ATTRS = (
    "last_epoch", "base_lrs", "T_max", "eta_min", "step_size", "gamma", "milestones", "total_steps",
    "total_iters", "power", "T_0", "T_i", "T_mult", "factor", "start_factor", "end_factor", "patience",
    "mode", "cooldown", "max_lrs", "total_size", "step_ratio", "epochs", "steps_per_epoch",
)


def _total_steps(opt) -> float | None:
    """The step count kept in an optimizer's state (a resumed optimizer has one), read without a sync."""
    for state in opt.state.values():
        step = state.get("step") if isinstance(state, dict) else None
        if step is None:
            continue
        if isinstance(step, torch.Tensor):
            return float(step) if step.device.type == "cpu" else None
        return float(step)
    return None



def _grad_states(groups, st) -> tuple:
    """Per group: no gradient, fresh gradient tensors, or the very tensor of the previous step."""
    out = []
    first = True
    for g in groups:
        state = GRAD_NONE
        for p in g["params"]:
            grad = p.grad
            if grad is not None:
                state = GRAD_FRESH
                if first:
                    first = False
                    prev = st.grad_ref() if st.grad_ref is not None else None
                    if prev is grad:
                        state = GRAD_SAME
                    st.grad_ref = weakref.ref(grad)
                break
        out.append(state)
    return tuple(out)


# ------------------------------------------------------------------------------ object info
def _optimizer_info(opt, index: int) -> dict[str, Any]:
    groups = []
    for i, g in enumerate(opt.param_groups):
        params = g.get("params", [])
        groups.append({
            "index": i,
            "name": str(g["name"]) if g.get("name") is not None else None,
            "params": len(params),
            "numel": int(sum(p.numel() for p in params)),
            "lr": _jsonable(g.get("lr")),
        })
    defaults = {k: _jsonable(v) for k, v in (getattr(opt, "defaults", {}) or {}).items()}
    return {"index": index, "class": type(opt).__name__, "module": type(opt).__module__, "defaults": defaults,
            "groups": groups, "params_key": _params_key(opt)}


_param_serials: dict[int, tuple[Any, int]] = {}  # id(tensor) -> (weak ref, serial)
_serials = itertools.count()


def _params_key(opt) -> str:
    """Which tensors an optimizer updates, as a short key: equal keys, the same parameter objects.
    Parameters get a serial number at first sight (ids are reused once a model is freed)."""
    serials = []
    for g in opt.param_groups:
        for p in g.get("params", ()):
            known = _param_serials.get(id(p))
            if known is not None and known[0]() is p:
                serials.append(known[1])
                continue
            n = next(_serials)
            _param_serials[id(p)] = (_weak(p), n)
            serials.append(n)
    return hashlib.blake2b(repr(sorted(serials)).encode(), digest_size=8).hexdigest()


def _scheduler_info(sched, index: int, opt_index: int | None) -> dict[str, Any]:
    params = {}
    for name in _SCHED_ATTRS:
        if hasattr(sched, name):
            try:
                params[name] = _jsonable(getattr(sched, name))
            except Exception:  # noqa: BLE001
                pass
    if hasattr(sched, "_milestones"):
        params["milestones"] = _jsonable(sched._milestones)
    elif isinstance(getattr(sched, "milestones", None), dict):  # MultiStepLR keeps a Counter
        params["milestones"] = sorted(int(m) for m in sched.milestones.elements())[:64]
    return {"index": index, "class": type(sched).__name__, "module": type(sched).__module__,
            "optimizer": opt_index, "params": params}


def _unwrap_optimizer(opt):
    """The optimizer inside wrappers that share its param groups: the wrapper's step runs the inner
    optimizer's, which is the one torch's step hooks see. accelerate's AcceleratedOptimizer (which HF
    Trainer's scheduler holds) and timm's Lookahead/Ranger (an Optimizer subclass that never runs
    ``Optimizer.__init__`` and takes the inner optimizer's ``param_groups`` list) are recognised by
    what they share — the same list or the same group dicts — not by attribute names."""
    seen = {id(opt)}
    while True:
        inner = _inner_optimizer(opt)
        if inner is None or id(inner) in seen:
            return opt
        seen.add(id(inner))
        opt = inner


def _inner_optimizer(opt):
    """An optimizer held in ``opt``'s attributes whose param groups ``opt`` shares, or None."""
    if type(opt).__module__.startswith("torch.optim."):
        return None  # PyTorch's own optimizers hold none (and vars() would slow their attribute reads)
    try:
        groups = opt.param_groups
        attrs = list(vars(opt).values())
    except Exception:  # noqa: BLE001 - a wrapper whose attributes cannot be read is no wrapper we know
        return None
    for value in attrs:
        if not isinstance(value, torch.optim.Optimizer) or value is opt:
            continue
        inner = getattr(value, "param_groups", None)
        if inner is groups or (isinstance(inner, list) and isinstance(groups, list)
                               and any(a is b for a in inner for b in groups)):
            return value
    return None


def effective_lr(optimizer) -> list[float]:
    """Per param group, the LR the next ``optimizer.step()`` will use (a copy, as floats)."""
    out = []
    for g in optimizer.param_groups:
        v = g["lr"]
        out.append(float(v.detach().cpu()) if isinstance(v, torch.Tensor) else float(v))
    return out


def _weak(obj: Any):
    try:
        return weakref.ref(obj)
    except TypeError:  # no weak reference support (__slots__): keep the object
        return lambda: obj
