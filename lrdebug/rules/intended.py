"""The schedule the code meant, beside the one it ran, and the damage in numbers.

For a finding about a built-in scheduler whose intent is unambiguous, the LR every optimizer step
would have used had the scheduler been driven as meant is computed by replaying the real scheduler
class: rebuilt from the state it had when it was constructed (recorded by the recorder under
``replay``) on a stand-in optimizer, then stepped as meant over the same optimizer steps. torch is
imported only here, only for that, and only when it is installed; without it, or for a scheduler
whose state cannot be stored (a lambda), the intended schedule is unavailable and the report says
why. Every intended curve states its assumption.
"""

from __future__ import annotations

import collections
import warnings
from typing import Any

import numpy as np
import pyarrow.compute as pc

from ..tracefile import read_trace
from ..tracefile.schema import (
    EPOCH_START,
    OPTIMIZER_LOAD_STATE,
    OPTIMIZER_STEP,
    ORIGIN_INIT,
    SCHEDULER_INIT,
    SCHEDULER_STEP,
)
from .labels import group_label, optimizer_label
from .state import lengths

REPLAY_MAX_STEPS = 1_000_000  # an optimizer with more steps is not replayed (seconds of Python per million)
OFF = 0.01  # a step is "off" when its LR differs from the intended one by more than 1 % (relative)
_EXACT = 1e-12
_BUILT_IN = "torch.optim.lr_scheduler"

# What "driven as meant" is for each finding code.
PER_STEP, PER_EPOCH, RESUMED, HELD, UNSHIFTED = "per-step", "per-epoch", "resumed", "held", "unshifted"
_MEANT = {
    "scheduler-before-optimizer": UNSHIFTED,
    "scheduler-multiple-steps": PER_STEP,
    "epoch-scheduler-stepped-per-batch": PER_EPOCH,
    "scheduler-never-stepped": None,  # per epoch when sized in epochs and the run has epochs, else per step
    "scheduler-state-not-restored": RESUMED,
    "scheduler-past-horizon": HELD,
}
CODES = tuple(_MEANT)


class Unavailable(Exception):
    """The intended schedule cannot be computed; the message says why."""


def intended_schedules(path, findings: list[dict[str, Any]], meta: dict[str, Any], rank: int,
                       epoch_steps=None, max_steps: int | None = None
                       ) -> dict[int, tuple[dict[str, Any], dict[int, tuple[np.ndarray, np.ndarray]]]]:
    """Per index into ``findings`` (those with a code in CODES): (the summary for the JSON and the text:
    assumption and per-group damage, or ``unavailable`` with the reason; per group the steps and the
    intended LRs for the charts). ``epoch_steps(optimizer)`` gives the optimizer's step count at
    each epoch start (default: read from the trace); ``rank`` is the rank whose steps are compared;
    ``max_steps`` lowers the replay's limit (the end-of-run summary keeps the close short)."""
    wanted = [i for i, f in enumerate(findings) if f.get("code") in _MEANT and f.get("scheduler") is not None]
    if not wanted:
        return {}
    table = read_trace(path, columns=["rank", "seq", "event", "optimizer", "group", "step", "lr", "value",
                                      "scheduler", "origin", "loader"], ranks=[rank]).table
    if table.num_rows:
        table = table.filter(pc.equal(table["rank"], rank))
    if epoch_steps is None:
        epoch_steps = _epoch_steps(table)
    scheds = {s.get("index"): s for s in meta.get("schedulers") or [] if isinstance(s, dict)}
    opts = {o.get("index"): o for o in meta.get("optimizers") or [] if isinstance(o, dict)}
    out = {}
    for i in wanted:
        f = findings[i]
        try:
            out[i] = _one(f, scheds.get(f["scheduler"]), table, epoch_steps, max_steps or REPLAY_MAX_STEPS)
        except Unavailable as why:
            out[i] = ({"unavailable": str(why)}, {})
            continue
        opt = opts.get(f["optimizer"]) or {}
        names = [g.get("name") if isinstance(g, dict) else None for g in opt.get("groups") or []]
        for d in out[i][0]["groups"]:
            g = d["group"]
            d["label"] = group_label(optimizer_label(opt.get("class"), f["optimizer"]),
                                     names[g] if g < len(names) else None, g)
    return out


def _epoch_steps(table):
    """``epoch_steps(optimizer)`` from the rows: the optimizer's step count at each epoch start of the
    busiest DataLoader (as the report's scan counts them)."""
    starts = table.filter(pc.equal(table["event"], EPOCH_START))
    loaders = collections.Counter(starts["loader"].to_pylist())
    if not loaders:
        return lambda opt: []
    busiest = min(loaders, key=lambda k: (-loaders[k], -1 if k is None else k))
    seqs = np.sort(np.asarray([s for s, ld in zip(starts["seq"].to_pylist(), starts["loader"].to_pylist())
                               if ld == busiest], dtype=np.int64))

    def steps_at(opt: int) -> list[int]:
        rows = table.filter(pc.and_(pc.equal(table["event"], OPTIMIZER_STEP), pc.equal(table["optimizer"], opt)))
        rows = rows.filter(pc.equal(pc.fill_null(rows["group"], 0), 0))
        done = np.sort(rows["seq"].to_numpy(zero_copy_only=False))
        return np.searchsorted(done, seqs).tolist()

    return steps_at


def _one(f: dict[str, Any], sched: dict[str, Any] | None, table, epoch_steps, max_steps: int):
    opt = f.get("optimizer")
    if sched is None or opt is None:
        raise Unavailable("the scheduler is not in the trace's metadata")
    steps, actual = _actual(table, opt)
    if not len(steps):
        raise Unavailable("its optimizer has no recorded step")
    meant = _MEANT[f["code"]]
    if meant is None:
        _, epoch_len = lengths(str(sched.get("class")), sched.get("params") or {})
        meant = PER_EPOCH if epoch_len is not None and len(epoch_steps(opt)) > 1 else PER_STEP
    if meant == HELD:
        return _held(f, steps, actual)
    if sched.get("module") != _BUILT_IN:
        raise Unavailable(f"{sched.get('class')} is not one of PyTorch's schedulers: it cannot be replayed")
    if len(steps) > max_steps:
        raise Unavailable(f"{len(steps):,} optimizer steps: longer than the {max_steps:,} replayed")
    if meant == UNSHIFTED:
        positions = np.maximum(_positions_as_run(table, opt, f["scheduler"]) - 1, 0)
        assumption = "the scheduler stepped when it did, minus the step taken before the optimizer's first"
    elif meant == PER_STEP:
        positions = steps - 1
        assumption = "one scheduler step per optimizer step (per accumulation cycle), from its construction"
    elif meant == PER_EPOCH:
        starts = sorted(epoch_steps(opt))
        if len(starts) < 1:
            raise Unavailable("the trace has no epoch boundaries to step it at")
        positions = np.maximum(np.searchsorted(np.asarray(starts), steps, side="left") - 1, 0)
        assumption = "one scheduler step per epoch, at the recorded epoch boundaries"
    else:
        restored = _restored_steps(table, opt)
        if not restored:
            raise Unavailable("the optimizer's restored step count is not in the trace")
        positions = steps - 1 + restored
        assumption = (f"continued from the optimizer's resumed step {restored}, one scheduler step per "
                      "optimizer step")
    intended = _replay(sched, positions, actual.shape[1])
    return _damage(assumption, steps, actual, intended)


def _actual(table, opt: int) -> tuple[np.ndarray, np.ndarray]:
    """The optimizer's steps (ascending) and, per step and group, the LR it used."""
    t = table.filter(pc.and_(pc.equal(table["event"], OPTIMIZER_STEP), pc.equal(table["optimizer"], opt)))
    if not t.num_rows:
        return np.empty(0, np.int64), np.empty((0, 0))
    step = t["step"].to_numpy(zero_copy_only=False).astype(np.int64)
    group = t["group"].fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    lr = t["lr"].fill_null(np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
    steps = np.unique(step)
    out = np.full((len(steps), int(group.max()) + 1), np.nan)
    out[np.searchsorted(steps, step), group] = lr
    return steps, out


def _positions_as_run(table, opt: int, sched: int) -> np.ndarray:
    """Per optimizer step (ascending, as ``_actual`` lists them), how many times the scheduler had
    stepped (not counting its constructor's step) before it. A step recorded twice (a damaged or
    duplicated part) counts once, at its first row."""
    steps = table.filter(pc.and_(pc.equal(table["event"], OPTIMIZER_STEP), pc.equal(table["optimizer"], opt)))
    moves = table.filter(pc.and_(pc.equal(table["event"], SCHEDULER_STEP), pc.equal(table["scheduler"], sched)))
    moves = moves.filter(pc.invert(pc.fill_null(pc.equal(moves["origin"], ORIGIN_INIT), False)))
    before = np.sort(moves["seq"].to_numpy(zero_copy_only=False))
    step = steps["step"].to_numpy(zero_copy_only=False).astype(np.int64)
    seq = steps["seq"].to_numpy(zero_copy_only=False)
    order = np.lexsort((seq, step))
    _, first = np.unique(step[order], return_index=True)
    return np.searchsorted(before, seq[order][first])


def _restored_steps(table, opt: int) -> int | None:
    """The step count in the optimizer's state when the run resumed (load_state_dict, or a scheduler's
    constructor that saw it)."""
    for event in (OPTIMIZER_LOAD_STATE, SCHEDULER_INIT):
        t = table.filter(pc.and_(pc.equal(table["event"], event), pc.equal(table["optimizer"], opt)))
        values = [v for v in t["value"].to_pylist() if v]
        if values:
            return int(values[0])
    return None


def _replay(sched: dict[str, Any], positions: np.ndarray, n_groups: int) -> np.ndarray:
    """Per entry of ``positions`` (nondecreasing scheduler positions), the group LRs the real scheduler
    class gives there, rebuilt from its state at construction on a stand-in optimizer."""
    try:
        import torch
        from torch.optim import lr_scheduler
    except ImportError:
        raise Unavailable("replaying a schedule needs torch, which is not installed here") from None
    replay = sched.get("replay")
    cls = getattr(lr_scheduler, str(sched.get("class")), None)
    if not isinstance(replay, dict) or not isinstance(cls, type) or not issubclass(cls, lr_scheduler.LRScheduler):
        raise Unavailable("the trace did not store this scheduler's state at construction")
    state = dict(replay.get("state") or {})
    if state.get("lr_lambdas") is not None and None in state["lr_lambdas"]:
        raise Unavailable(f"{cls.__name__}'s lambda cannot be stored in a trace, so it cannot be replayed")
    for key, value in list(state.items()):
        if isinstance(value, dict) and set(value) == {"counter"}:  # MultiStepLR's milestones
            state[key] = collections.Counter({k: n for k, n in value["counter"]})
    groups = [{k: tuple(v) if isinstance(v, list) else v for k, v in g.items()} for g in replay.get("groups") or []]
    if len(groups) != n_groups or not all(isinstance(g.get("lr"), (int, float)) for g in groups):
        raise Unavailable("the stored state does not match the optimizer's groups")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's order checks: the stand-in optimizer never steps
            standin = torch.optim.SGD([{**g, "params": [torch.zeros(1, requires_grad=True)]} for g in groups],
                                      lr=groups[0]["lr"])
            scheduler = cls.__new__(cls)
            scheduler.optimizer = standin
            scheduler.__dict__.update(state)
            scheduler.load_state_dict(dict(state))
            out = np.empty((len(positions), n_groups))
            at = 0
            for k, pos in enumerate(positions.tolist()):
                while at < pos:
                    scheduler.step()
                    at += 1
                out[k] = [float(g["lr"]) for g in standin.param_groups]
    except Unavailable:
        raise
    except Exception as e:  # noqa: BLE001 - a state this torch cannot load: say so, report the rest
        raise Unavailable(f"replaying {cls.__name__} failed ({type(e).__name__}: {e})") from None
    return out


def _held(f: dict[str, Any], steps: np.ndarray, actual: np.ndarray):
    """Past the end: the last in-range LR held, from the first step that used a value past the end."""
    first = f.get("step")
    k = int(np.searchsorted(steps, first)) if first is not None else len(steps)
    if k == 0:
        raise Unavailable("no step used an in-range LR before the schedule ran past its end")
    intended = actual.copy()
    intended[k:] = actual[k - 1]
    return _damage(f"the schedule held at its last in-range LR (that of step {int(steps[k - 1])}) from step "
                   f"{int(steps[k]) if k < len(steps) else first} on", steps, actual, intended)


def _damage(assumption: str, steps: np.ndarray, actual: np.ndarray, intended: np.ndarray):
    groups, curves = [], {}
    for g in range(actual.shape[1]):
        a, i = actual[:, g], intended[:, g]
        ok = ~np.isnan(a) & ~np.isnan(i)
        a, i, s = a[ok], i[ok], steps[ok]
        differs = np.abs(a - i) > _EXACT * np.maximum(np.abs(a), np.abs(i))
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(i != 0, np.abs(a / i - 1), np.where(a != 0, np.inf, 0.0))
            ratios = a[i > 0] / i[i > 0]
        groups.append({
            "group": g,
            "first_diff_step": int(s[np.argmax(differs)]) if differs.any() else None,
            "share_off": float((rel > OFF).mean()) if len(rel) else 0.0,
            "max_ratio": float(ratios.max()) if len(ratios) else None,
            "min_ratio": float(ratios.min()) if len(ratios) else None,
            "lr_sum_actual": float(a.sum()),
            "lr_sum_intended": float(i.sum()),
        })
        curves[g] = (s, i)
    return {"assumption": assumption, "groups": groups}, curves


def damage_line(intended: dict[str, Any]) -> list[str]:
    """One line per group: how far the run was from the schedule it meant."""
    if "unavailable" in intended:
        return [f"intended schedule unavailable: {intended['unavailable']}"]
    lines = []
    for d in intended.get("groups") or []:
        name = d.get("label") or f"group {d['group']}"
        if d["first_diff_step"] is None:
            lines.append(f"{name}: the LR was the intended one at every step ({intended['assumption']})")
            continue
        parts = []
        if d["max_ratio"] is not None and d["max_ratio"] > 1 + OFF:
            parts.append(f"up to {_x(d['max_ratio'])} the intended LR")
        if d["min_ratio"] is not None and d["min_ratio"] < 1 - OFF:
            parts.append(f"down to {_x(d['min_ratio'])} of it")
        ratio = (", " + " and ".join(parts)) if parts else ""
        total_a, total_i = d["lr_sum_actual"], d["lr_sum_intended"]
        change = 100 * (total_a / total_i - 1) if total_i else 0.0
        budget = f"; LR sum {total_a:.4g} vs {total_i:.4g} intended" + (
            f" ({change:+.0f} %)" if abs(change) >= 0.5 else "")
        lines.append(f"{name}: differs from step {d['first_diff_step']}, {100 * d['share_off']:.0f} % of "
                     f"steps off by > 1 %{ratio}{budget} — intended: {intended['assumption']}")
    return lines


def _x(ratio: float) -> str:
    return "0" if ratio < 1e-3 else f"{ratio:.3g}×"

