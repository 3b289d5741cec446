"""What the rule engine knows about each optimizer and scheduler, and the helpers rules share.

The state is derived from the events alone (never from *when* an object was registered: live, at
first sight; offline, all up front), plus the static facts of the registry (class, arguments, which
optimizer a scheduler drives).
"""

from __future__ import annotations

import math
import os
from typing import Any

from .finding import Finding
from .labels import group_label, groups_text, optimizer_label

# "Many" optimizer steps: below this, a scheduler that has not stepped yet may simply be a
# per-epoch scheduler whose first epoch has not ended (scheduler-never-stepped, -orphaned).
MANY_STEPS = 10
# A schedule whose length is at most this many scheduler steps may be sized in epochs; longer
# ones are taken to be sized in optimizer steps (few runs train for more epochs than this).
EPOCH_SIZED_MAX = 1000
# A decay schedule (StepLR, ExponentialLR) has "run through" once the LR fell this much.
DECAY_DONE = 0.01
INF = math.inf
PLATEAU = "ReduceLROnPlateau"



def where(file: str | None, line: int | None) -> str:
    return f"{os.path.basename(file)}:{line}" if file else "an unknown line"


def as_float(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def as_int(v: Any) -> int | None:
    f = as_float(v)
    return int(f) if f is not None and math.isfinite(f) else None


def as_count(v: Any) -> int:
    """A step count read from a trace (0 when absent or not a usable number)."""
    n = as_int(v)
    return n if n is not None and n > 0 else 0


def fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def same_lrs(a: tuple | None, b: tuple | None) -> bool:
    if a is None or b is None or len(a) != len(b):
        return False
    return all(close_lr(x, y) for x, y in zip(a, b))


def close_lr(a: Any, b: Any) -> bool:
    if a == b:
        return True
    x, y = as_float(a), as_float(b)
    if x is None or y is None:
        return True  # a value not known here (a device LR read later) is not evidence of a change
    if x != x and y != y:
        return True
    return abs(x - y) <= 1e-12 * max(abs(x), abs(y))


class OptState:
    """What the rules track about one optimizer."""

    __slots__ = ("index", "cls", "names", "applied", "skipped", "last_seq", "expected", "from_sched", "driven",
                 "last_sched", "in_epoch", "epoch_mark", "epochs", "restored", "load_seq", "load_lrs", "scheds",
                 "touched", "past", "last_user", "prev_skipped", "after_skip", "pairs", "last_sched_site", "params_key",
                 "written", "tag")

    def __init__(self, index: int) -> None:
        self.index = index
        self.cls = "optimizer"
        self.names: tuple = ()
        self.tag = optimizer_label(None, index)  # its name in messages (labels.optimizer_label), set at registration
        self.applied = 0  # optimizer_step events
        self.skipped = 0  # optimizer_step_skipped events
        self.last_seq = -1  # seq of the last step (applied or skipped)
        self.expected: tuple | None = None  # LRs as last seen (step, scheduler, load, add_param_group)
        self.from_sched = False  # `expected` was left by a scheduler step
        self.driven = False  # a scheduler has stepped this optimizer (user or child step)
        self.last_sched: SchedState | None = None  # the last scheduler that stepped it, and where
        self.last_sched_site: tuple = (None, None)
        self.in_epoch = 0  # steps since the last epoch_start
        self.epoch_mark = -1
        self.epochs = 0  # epochs in which this optimizer stepped
        self.restored: float | None = None  # step count restored by load_state_dict before stepping
        self.load_seq: int | None = None
        self.load_lrs: tuple | None = None
        self.scheds: list[SchedState] = []
        self.touched: list[SchedState] = []  # schedulers stepped by the user since the last step
        self.past: list[SchedState] = []  # schedulers whose position is past their end
        self.last_user: SchedState | None = None  # the scheduler the user stepped last
        self.prev_skipped = False  # the last step was skipped
        self.after_skip = 0  # scheduler steps right after a skipped step
        self.pairs: dict[tuple, tuple] = {}  # (scheduler, scheduler) -> where they were first seen taking turns
        self.params_key: str | None = None  # which parameters it optimizes (equal keys: the same tensors)
        self.written: tuple | None = None  # an LR written by other code, watched until a scheduler steps

    def label(self) -> str:
        """``AdamW``, ``Adam-1``: as every report names it (``labels.optimizer_label``)."""
        return self.tag

    def resumed(self) -> bool:
        """Its state, or a scheduler's constructor, says it had stepped before this run."""
        return bool(as_count(self.restored) or any(as_count(s.init_value) for s in self.scheds))

    def group_label(self, g: int) -> str:
        """The group's ``name``, else ``AdamW/pg1`` (group 0): as every report names it."""
        return group_label(self.tag, self.names[g] if g < len(self.names) else None, g)

    def groups_label(self, groups) -> str:
        """Several groups in one sentence (``labels.groups_text``)."""
        return groups_text([self.group_label(g) for g in groups])


class SchedState:
    """What the rules track about one scheduler."""

    __slots__ = ("index", "cls", "torch_cls", "opt", "children", "is_child", "params", "first_seq", "created_seq",
                 "init_site", "init_value", "init_lrs", "init_pos", "user_steps", "child_steps", "k", "k_epoch",
                 "pos", "loaded", "burst", "burst_from", "k_site", "k_same", "held", "epoch_len", "end", "epoch_flagged", "past_site", "over",
                 "after_opt", "first_site", "on_step", "lrs_before", "factors")

    def __init__(self, index: int) -> None:
        self.index = index
        self.cls = "scheduler"
        self.torch_cls = True
        self.opt: int | None = None
        self.children: tuple = ()
        self.is_child = False
        self.params: dict[str, Any] = {}
        self.first_seq: int | None = None  # first event about this scheduler: it exists from here on
        self.created_seq: int | None = None  # its constructor ran inside the trace
        self.init_site: tuple = (None, None)
        self.init_value: float | None = None  # the optimizer's restored step count at construction
        self.init_lrs: tuple | None = None
        self.init_pos: int | None = None
        self.user_steps = 0
        self.child_steps = 0
        self.k = 0  # user steps since its optimizer's last step
        self.k_epoch = 0  # user steps since the last epoch_start
        self.pos: int | None = None  # last_epoch, as far as the events tell
        self.loaded = False
        self.burst: Finding | None = None  # a scheduler-multiple-steps finding whose count is still open
        self.burst_from = 0
        self.k_site: tuple = (None, None)  # where the first user step since the optimizer's last step was
        self.k_same = True  # every user step since then came from that same line
        self.held: tuple | None = None  # (step, file, line) of a second step, judged when the burst ends
        self.epoch_len: int | None = None  # schedule length if it were sized in epochs
        self.end: int | None = None  # last valid position of a finite schedule
        self.epoch_flagged = False
        self.past_site: tuple = (None, None)
        self.over = 0
        self.after_opt = False  # a user step came after its optimizer's first step
        self.on_step: tuple = ()  # the engine's scheduler_step rules for this scheduler's class
        self.lrs_before: tuple | None = None  # the group LRs just before its constructor ran
        self.factors: list | None = None  # LambdaLR/MultiplicativeLR: what its lambda returned (lambda-returns-lr)
        self.first_site: tuple = (None, None)

    def label(self) -> str:
        return f"scheduler {self.index} ({self.cls})"


def lengths(cls: str, p: dict[str, Any]) -> tuple[int | None, int | None]:
    """(last valid position of a finite schedule, length in steps of one sized like a number of epochs)."""
    end = epoch_len = None
    if cls == "CosineAnnealingLR":
        end = epoch_len = as_int(p.get("T_max"))
    elif cls == "OneCycleLR":
        n = as_int(p.get("total_steps"))
        end = n - 1 if n else None
    elif cls == "PolynomialLR":
        end = as_int(p.get("total_iters"))
    elif cls == "StepLR":
        size, n = as_int(p.get("step_size")), decays(p.get("gamma"))
        epoch_len = size * n if size and n else None
    elif cls == "MultiStepLR":
        milestones = p.get("milestones")
        ms = [m for m in map(as_int, milestones) if m is not None] if isinstance(milestones, list) else []
        epoch_len = max(ms) if ms else None
    elif cls == "ExponentialLR":
        epoch_len = decays(p.get("gamma"))
    if epoch_len is not None and not 0 < epoch_len <= EPOCH_SIZED_MAX:
        epoch_len = None
    return end, epoch_len


def decays(gamma: Any) -> int | None:
    """How many multiplications by gamma bring the LR down to DECAY_DONE of its start."""
    g = as_float(gamma)
    if g is None or not 0 < g < 1:
        return None
    return max(1, math.ceil(math.log(DECAY_DONE) / math.log(g) - 1e-9))


def schedule_text(s: SchedState) -> str:
    p = s.params
    if s.cls == "CosineAnnealingLR":
        return f"T_max={p.get('T_max')}"
    if s.cls == "StepLR":
        return f"step_size={p.get('step_size')}, gamma={p.get('gamma')}"
    if s.cls == "MultiStepLR":
        return f"milestones={p.get('milestones')}"
    if s.cls == "ExponentialLR":
        return f"gamma={p.get('gamma')}"
    if s.cls == "OneCycleLR":
        return f"total_steps={p.get('total_steps')}"
    if s.cls == "PolynomialLR":
        return f"total_iters={p.get('total_iters')}"
    return ""

