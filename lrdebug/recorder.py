"""The ``trace()`` context manager: hook callbacks -> buffered event rows -> Parquet parts.

The hot path (an optimizer step) reads the clock twice, the LR of every group once, looks the call
site up in a cache, and appends one tuple of numbers to a list. Everything else — expanding rows per
group, converting to Arrow, encoding Parquet — happens in the writer thread.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import os
import sys
import threading
import time
import uuid
import warnings
import weakref
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import torch

from . import __version__, lifecycle, patching
from .events import (
    ADD_PARAM_GROUP,
    EPOCH_START,
    GET_LR_CALL,
    GRAD_FRESH,
    GRAD_NONE,
    GRAD_SAME,
    OPTIMIZER_LOAD_STATE,
    OPTIMIZER_STEP,
    OPTIMIZER_STEP_SKIPPED,
    ORIGIN_CHILD,
    ORIGIN_INIT,
    ORIGIN_USER,
    SCHEDULER_INIT,
    SCHEDULER_LOAD_STATE,
    SCHEDULER_STEP,
    SCHEMA_VERSION,
    ZERO_GRAD,
    Event,
    Finding,
    LRDebugError,
    LRDebugWarning,
)
from .events import CODES, SCHEMA
from .storage import FLUSH_ROWS, PartWriter, TraceError, check_output_dir, torchrun_run_id as _torchrun_run_id

_SCHEMA_TYPES = {f.name: f.type for f in SCHEMA}
_make_event = functools.partial(tuple.__new__, Event)  # Event._make without its Python frame

_now = time.perf_counter_ns
_LRDEBUG_DIR = os.path.dirname(os.path.abspath(__file__))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_INTERNAL_PREFIXES = (_LRDEBUG_DIR + os.sep, _TORCH_DIR + os.sep)

# ------------------------------------------------------------------------------ call sites
# Keyed by (id(code), f_lasti): hashing a code object and reading f_lineno both cost microseconds
# in long functions, so they are computed once per new site. Code objects are kept referenced so
# their ids are never reused.
_code_kind: dict[int, int] = {}
_codes_kept: list[Any] = []
_site_ids: dict[tuple, int] = {}
SITES: list[tuple[str, int, str]] = []
# Per site id: when the call came from an installed package (Lightning, transformers, accelerate ...),
# that package's frame as "package/module.py:line", while SITES holds the user's frame that led there.
FRAMEWORK_SITES: list[str | None] = []
_site_lock = threading.Lock()

_USER, _INTERNAL, _FRAMEWORK = 0, 1, 2  # kinds of code, decided once per code object


@functools.lru_cache(maxsize=1)
def _installed_prefixes() -> tuple[str, ...]:
    """Folders of installed code: site-packages (any venv or user site) and the standard library."""
    import site
    import sysconfig

    dirs = set()
    for key in ("purelib", "platlib", "stdlib", "platstdlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.add(path)
    try:
        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except AttributeError:  # a virtualenv's old site module
        pass
    dirs.update(p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages"))
    return tuple(sorted({os.path.abspath(d) + os.sep for d in dirs}, key=len, reverse=True))


def _code_kind_of(code) -> int:
    kind = _code_kind.get(id(code))
    if kind is None:
        name = code.co_filename
        path = os.path.abspath(name)
        if path.startswith(_INTERNAL_PREFIXES):
            kind = _INTERNAL
        elif name.startswith("<frozen ") or path.startswith(_installed_prefixes()):
            kind = _FRAMEWORK
        else:
            kind = _USER
        with _site_lock:
            _codes_kept.append(code)
            _code_kind[id(code)] = kind
    return kind


def _framework_label(code, line: int) -> str:
    path = os.path.abspath(code.co_filename)
    for prefix in _installed_prefixes():
        if path.startswith(prefix):
            path = path[len(prefix):]
            break
    return f"{path}:{line}"


# Per hot callback (SITE_OPTIMIZER, ...): how deep the user's frame was at its last call. A stack of the
# same shape is then answered by one sys._getframe(depth): walking f_back materialises a frame object
# for every torch wrapper in between, the dearest part of a call site.
SITE_ANY, SITE_OPTIMIZER, SITE_SCHEDULER, SITE_ZERO_GRAD = 0, 1, 2, 3
_depth_hint = [0, 0, 0, 0]


def call_site(own: int = 1, hint: int = SITE_ANY) -> int:
    """Id of the call site: the first frame outside lrdebug and torch; when that frame belongs to an
    installed package (a framework's loop called ``optimizer.step()``), the user's frame that led
    there (``trainer.fit(...)``), with the package's frame kept in FRAMEWORK_SITES (-1: no frame).

    ``own``: how many frames above this one are lrdebug's own (the callback and patching's hook), so
    the search starts past them. ``hint``: the callback's slot in ``_depth_hint``. A frame at the
    hinted depth counts only if it is user code whose very call instruction (code object and offset)
    is a registered site, i.e. one that calls into torch directly."""
    depth = _depth_hint[hint]
    if depth:
        try:
            f = sys._getframe(depth)
        except ValueError:
            f = None
        if f is not None and _code_kind.get(id(f.f_code)) == _USER:
            sid = _site_ids.get((id(f.f_code), f.f_lasti))
            if sid is not None:
                return sid
    depth = own + 1
    f = sys._getframe(depth)
    kind_of = _code_kind.get
    kind = kind_of(id(f.f_code))
    while kind == _INTERNAL:
        f = f.f_back
        if f is None:
            return -1
        depth += 1
        kind = kind_of(id(f.f_code))
    if kind == _USER:
        sid = _site_ids.get((id(f.f_code), f.f_lasti))
        if sid is not None:
            if hint:
                _depth_hint[hint] = depth
            return sid
    return _walk_call_site(f)


def _walk_call_site(f) -> int:
    """call_site() the long way: skip every internal frame from ``f`` up, register a new site."""
    known = _code_kind.get
    while f is not None:
        kind = known(id(f.f_code))
        if kind is None:
            kind = _code_kind_of(f.f_code)
        if kind != _INTERNAL:
            break
        f = f.f_back
    if f is None:
        return -1
    user = None
    if kind == _USER:
        key = (id(f.f_code), f.f_lasti)
    else:
        user = f.f_back
        while user is not None:
            kind = known(id(user.f_code))
            if kind is None:
                kind = _code_kind_of(user.f_code)
            if kind == _USER:
                break
            user = user.f_back
        key = (id(f.f_code), f.f_lasti, id(user.f_code), user.f_lasti) if user is not None else (
            id(f.f_code), f.f_lasti, 0, -1)
    sid = _site_ids.get(key)
    if sid is None:
        with _site_lock:
            sid = _site_ids.get(key)
            if sid is None:
                _codes_kept.append(f.f_code)
                framework = None
                if len(key) > 2:
                    framework = _framework_label(f.f_code, f.f_lineno or 0)
                if user is not None:
                    _codes_kept.append(user.f_code)
                    f = user
                SITES.append((f.f_code.co_filename, f.f_lineno or 0, f.f_code.co_name))
                FRAMEWORK_SITES.append(framework)
                sid = len(SITES) - 1
                _site_ids[key] = sid
    return sid


# ------------------------------------------------------------------------------ value helpers
def _read_lrs(groups) -> tuple:
    """The LR of every group, as plain values copied now (one pass; tensors only on the slow path)."""
    lrs = tuple([g["lr"] for g in groups])
    for v in lrs:
        if v.__class__ is not float:
            return tuple([_lr_value(x) for x in lrs])
    return lrs


def _lr_value(v: Any) -> Any:
    """A float for an LR, copied now: tensor LRs are updated in place by schedulers."""
    if isinstance(v, torch.Tensor):
        if v.device.type == "cpu":
            return float(v)
        return _Deferred(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


class _Deferred:
    """A device scalar (or small vector) snapshotted on the device without synchronising, and brought
    to the host by the writer thread. ``seen`` turns on the conversion of live events (the live rules
    get None for it).

    The training thread pays for one device-to-device copy into a slot of a ring on the device (one
    CUDA API call: those cost tens of microseconds each in a virtual machine) and nothing else. The
    writer brings each ring's span of a batch to pinned host memory with one copy and one event,
    queued on the stream that filled it (``_fetch``), and polls the event."""

    __slots__ = ("ring", "start", "n", "scalar", "value")
    seen = False

    def __init__(self, t: torch.Tensor) -> None:
        t = t.detach().reshape(-1)
        self.n = t.numel()
        self.scalar = self.n == 1
        self.ring, self.start = _device_slots(t, self.n)
        self.ring.dev[self.start:self.start + self.n].copy_(t)
        self.value: float | tuple | None = None
        _Deferred.seen = True

    def resolve(self) -> float | tuple:
        if self.value is None:
            _fetch([self])
        return self.value


class _DeviceRing:
    """Slots on one device, of one dtype, written on one stream; never handed out twice (a full ring
    is replaced: values still waiting to be read keep the old one alive)."""

    __slots__ = ("dev", "stream", "pos")

    def __init__(self, like: torch.Tensor, n: int, stream) -> None:
        self.dev = torch.empty(max(_RING_SLOTS, n), dtype=like.dtype, device=like.device)
        self.stream = stream
        self.pos = 0


_RING_SLOTS = 1 << 16
_rings: dict[tuple, _DeviceRing] = {}  # (device, dtype, stream) -> the ring being filled
_device_lock = threading.Lock()


def _device_slots(t: torch.Tensor, n: int) -> tuple[_DeviceRing, int]:
    stream = torch.cuda.current_stream(t.device)
    key = (t.device, t.dtype, stream.cuda_stream)
    with _device_lock:
        ring = _rings.get(key)
        if ring is None or ring.pos + n > ring.dev.numel():
            ring = _rings[key] = _DeviceRing(t, n, stream)
        start = ring.pos
        ring.pos = start + n
    return ring, start


def _fetch(deferred: list[_Deferred]) -> None:
    """Bring device values to the host (writer thread): per ring, one copy of the span they occupy,
    queued on the ring's stream after the copies that filled it, and one event, polled: no
    synchronisation."""
    spans: dict[int, list] = {}
    for d in deferred:
        if d.value is not None:
            continue
        span = spans.get(id(d.ring))
        if span is None:
            spans[id(d.ring)] = [d.ring, d.start, d.start + d.n]
        else:
            span[1], span[2] = min(span[1], d.start), max(span[2], d.start + d.n)
    pending = []
    for ring, lo, hi in spans.values():
        host = torch.empty(hi - lo, dtype=ring.dev.dtype, pin_memory=True)
        with torch.cuda.stream(ring.stream):
            host.copy_(ring.dev[lo:hi], non_blocking=True)
            done = torch.cuda.Event()
            done.record(ring.stream)
        pending.append((ring, lo, host, done))
    values = {}
    for ring, lo, host, done in pending:
        while not done.query():
            time.sleep(0.0005)
        values[id(ring)] = (lo, host.tolist())
    for d in deferred:
        if d.value is not None:
            continue
        lo, host = values[id(d.ring)]
        v = host[d.start - lo:d.start - lo + d.n]
        d.value = float(v[0]) if d.scalar else tuple(v)


def _prefetch(step_values: list, other_rows: list[tuple]) -> None:
    """Fetch every device value of a batch of rows at once (LRs, sampled norms, GradScaler found_inf)."""
    found = []
    for lrs in step_values[7::STEP_FIELDS]:
        found.extend(v for v in lrs if type(v) is _Deferred)
    for extra in step_values[11::STEP_FIELDS]:
        if extra is not None:
            for e in extra[1:]:
                if type(e) is _Deferred:
                    found.append(e)
                elif type(e) is tuple:
                    found.extend(v for v in e if type(v) is _Deferred)
    for row in other_rows:
        if row[8]:
            found.extend(v for v in row[8] if type(v) is _Deferred)
    if found:
        _fetch(found)


def _warn_at(f: Finding) -> None:
    """An LRDebugWarning that points at the user's line, so warning filters and pytest see it there."""
    filename = f.file or "<unknown>"
    via = f" (called from {f.framework})" if f.framework else ""
    warnings.warn_explicit(f"[{f.code}] {f.message}{via}", LRDebugWarning, filename, f.line or 0,
                           module=os.path.splitext(os.path.basename(filename))[0], registry={})



def _resolve(v: Any) -> Any:
    return v.resolve() if isinstance(v, _Deferred) else v


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


def _guarded(callback):
    """A recorder callback that never breaks training: a bug stops recording (one line on stderr).
    LRDebugError (strict) and warnings the user's filters made errors propagate."""

    @functools.wraps(callback)
    def guarded(self, *args):
        try:
            return callback(self, *args)
        except (LRDebugError, Warning):
            raise
        except Exception as e:  # noqa: BLE001 - never kill the run
            self._internal_error(f"{callback.__name__}: {type(e).__name__}: {e}")

    return guarded


# ------------------------------------------------------------------------------ per-object state
class _Opt:
    __slots__ = ("index", "ref", "steps", "t0", "lrs", "last_t", "grad_ref", "sampled", "info",
                 "skipped", "cuda", "scaled")

    def __init__(self, index: int, opt) -> None:
        self.index = index
        self.ref = weakref.ref(opt)
        self.steps = 0
        self.skipped = 0
        self.t0 = 0
        self.lrs = ()
        self.last_t = 0
        self.grad_ref = None
        self.sampled = None
        self.cuda = None
        self.scaled = False
        self.info: dict[str, Any] = {}


class _Sched:
    __slots__ = ("index", "ref", "opt", "info", "steps", "ost")

    def __init__(self, index: int, sched, opt_index: int | None) -> None:
        self.index = index
        self.ref = weakref.ref(sched)
        self.opt = opt_index
        self.steps = 0
        self.ost: _Opt | None = None  # state of the optimizer it drives, cached for the hot path
        self.info: dict[str, Any] = {}


# Row tuple layout of Recorder.other (kept free of lists and dicts so the GC does not scan it):
# (event, seq, t0, dur, opt, sched, step, site, lrs, grads, origin, parent, value, loader,
#  iter_ns, data_wait, thread, extra)
# An optimizer step's values in Recorder.buf, STEP_FIELDS per step:
# event, seq, t0, dur, opt, step, site, lrs, grads, iter_ns, data_wait, extra
STEP_FIELDS = 12
_NO_GROUPS = (None,)


class Recorder:
    """Records one trace. Created by ``trace()``; callbacks arrive from ``patching`` via ``_SINK.target``."""

    writer_class = PartWriter  # a subclass may write lazily or elsewhere (lrdebug.child)

    def __init__(
        self,
        objects: Iterable[Any] = (),
        out: str | os.PathLike | None = None,
        strict: bool = False,
        ignore: Iterable[str] = (),
        sample_updates: int = 0,
        cuda_timing: bool = False,
        flush_rows: int = FLUSH_ROWS,
        flush_seconds: float = 5.0,
        live_checks: bool = True,
        summary: bool = True,
    ) -> None:
        self.explicit = list(objects)
        self.strict = strict
        self.ignore = frozenset(ignore)
        self.sample_updates = int(sample_updates or 0)
        self.cuda_timing = bool(cuda_timing) and torch.cuda.is_available()
        self._cuda_timing_requested = bool(cuda_timing)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.summary = summary
        self.run_id = os.environ.get("LRDEBUG_RUN_ID") or _torchrun_run_id() or uuid.uuid4().hex
        self.path = Path(out) if out is not None else _default_out()
        # Optimizer steps, the hot path: STEP_FIELDS values per step, flat. Appending a row's values
        # (``buf += (...)``) frees the tuple at once, where a list of row tuples kept one GC-tracked
        # object per step: more memory, and collections that walk them all.
        self.buf: list = []
        self._flush_len = flush_rows * STEP_FIELDS
        self.other: list[tuple] = []  # every other event
        self._seq = itertools.count()
        self._opts: dict[int, _Opt] = {}
        self._scheds: dict[int, _Sched] = {}
        self._loaders: dict[int, int] = {}
        self._opt_list: list[_Opt] = []
        self._sched_list: list[_Sched] = []
        self._registry_lock = threading.RLock()
        self._data_wait = 0
        self._late_skips: dict[int, int] = {}  # optimizer -> fused GradScaler skips found on a device so far
        self._filter: set[int] | None = None
        self._instance_patches: list[tuple[Any, Any]] = []
        self.enabled = False
        self.closed = False
        self.incomplete: str | None = None
        self._error_reported = False
        self._pid = os.getpid()
        self.start_unix_ns = time.time_ns()
        self._offset_ns = self.start_unix_ns - _now()
        self._warned: set[tuple[str, str | None, int | None]] = set()
        self._frameworks: dict[tuple, str] = {}  # (file, line, event) -> framework frame
        self.checker = None
        if live_checks and not self.ignore.issuperset(CODES):  # every code ignored: no live engine at all
            try:
                from .checks import Checker

                self.checker = Checker(ignore=self.ignore)
            except ImportError:
                self.checker = None
        self.writer: PartWriter | None = None
        self._dist: tuple[int, int] | None = None  # (rank, world size) once torch.distributed told us
        self._part_rank: int | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Recorder:
        check_output_dir(self.path, self.run_id, _known_rank())
        lifecycle.check_free(self.path)
        self.writer = self.writer_class(
            self.path,
            drain=self._drain,
            metadata=self.metadata,
            rank=self._trace_rank,
            run_id=self.run_id,
            on_error=self._writer_failed,
            interval_s=self.flush_seconds,
        )
        if self.explicit:
            self._filter = set()
            for obj in self.explicit:
                self._add_explicit(obj)
            self.explicit = []  # registered by weak reference; a strong one would outlive the block
        if self._cuda_timing_requested and not self.cuda_timing:
            print("lrdebug: cuda_timing=True but CUDA is not available; nothing to time", file=sys.stderr)
        lifecycle.started(self)
        self.enabled = True
        self.writer.start()
        _SINK.add(self)
        return self

    def _add_explicit(self, obj: Any) -> None:
        if isinstance(obj, torch.optim.Optimizer):
            self._filter.add(id(obj))
            self._opt_state(obj)
        elif callable(getattr(obj, "step", None)) and hasattr(obj, "optimizer"):
            self._filter.add(id(obj))
            self._filter.add(id(obj.optimizer))
            self._opt_state(obj.optimizer)
            self._sched_state(obj)
            for child in getattr(obj, "_schedulers", ()) or ():
                self._add_explicit(child)
            if not isinstance(obj, patching.LRScheduler):
                self._patch_duck_scheduler(obj)
        else:
            raise TypeError(
                f"lrdebug.trace() takes optimizers and schedulers (objects with step() and .optimizer), "
                f"not {type(obj).__name__}"
            )

    def _patch_duck_scheduler(self, sched: Any) -> None:
        """A hand-written scheduler class has no class to patch: wrap this instance's step()."""
        original = sched.__dict__.get("step")
        bound = sched.step
        rec = self

        def step(self_, *args, **kwargs):
            t0 = _now()
            try:
                return bound(*args, **kwargs)
            finally:
                rec.scheduler_step(self_, t0, _now(), None, False, args[0] if args else None)

        import types

        sched.step = types.MethodType(step, sched)
        self._instance_patches.append((sched, original))

    def close(self, exc: BaseException | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        _SINK.remove(self)
        lifecycle.closed(self)
        for obj, original in self._instance_patches:
            if original is None:
                obj.__dict__.pop("step", None)
            else:
                obj.step = original
        self._instance_patches.clear()
        self.enabled = False
        if os.getpid() != self._pid:
            return
        findings = []
        if self.checker is not None:
            try:
                findings = self.checker.finish()
            except Exception as e:  # noqa: BLE001
                self._internal_error(f"checks failed: {type(e).__name__}: {e}")
        if findings and self._frameworks:
            from .checks import attach_frameworks

            attach_frameworks(findings, self._frameworks)
        reason = self.incomplete
        if exc is not None and not isinstance(exc, (Exception, SystemExit)):
            reason = reason or f"interrupted by {type(exc).__name__}"
        if self.writer is not None:
            self.writer.close(reason, [f.to_dict() for f in findings])
        if self.summary:
            print_summary(self, findings)
        if exc is None:
            self._warn_end_of_run(findings)

    def _warn_end_of_run(self, findings: list[Finding]) -> None:
        """Findings only visible at the end (a scheduler never stepped) warn too, once the trace is safe.
        Not raised under strict: there is no offending call to raise at."""
        for f in findings:
            if f.severity in ("warning", "error") and f.code not in self.ignore:
                key = (f.code, f.file, f.line)
                if key not in self._warned:
                    self._warned.add(key)
                    _warn_at(f)

    @property
    def findings(self) -> list[Finding]:
        return list(self.checker.findings) if self.checker is not None else []

    def effective_lr(self, optimizer=None) -> list[float]:
        if optimizer is None:
            live = [o.ref() for o in self._opt_list]
            optimizer = next((o for o in live if o is not None), None)
            if optimizer is None:
                return []
        return effective_lr(optimizer)

    def dataframe(self):
        """The events recorded so far (flushes first)."""
        from .storage import load

        if self.writer is not None and not self.closed:
            self.writer.flush()
        return load(self.path)

    # ------------------------------------------------------------------ errors
    def _writer_failed(self, reason: str) -> None:
        self.incomplete = f"writing the trace failed: {reason}"
        self.enabled = False
        self.buf = []
        self._report_once(f"lrdebug: cannot write the trace to {self.path}: {reason}; "
                          "recording stopped, training continues")

    def _sampling_failed(self, e: Exception) -> None:
        self.sample_updates = 0
        print(f"lrdebug: sample_updates stopped ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
              "recording continues", file=sys.stderr, flush=True)

    def _internal_error(self, reason: str) -> None:
        self.incomplete = self.incomplete or f"internal error: {reason}"
        self._report_once(f"lrdebug: internal error ({reason}); recording stopped, training continues; "
                          f"the trace in {self.path} is incomplete")
        self.enabled = False

    def _report_once(self, line: str) -> None:
        if not self._error_reported:
            self._error_reported = True
            try:
                print(line, file=sys.stderr, flush=True)
            except Exception:  # noqa: BLE001
                pass

    # ------------------------------------------------------------------ registry
    def _opt_state(self, opt) -> _Opt:
        st = self._opts.get(id(opt))
        if st is not None and st.ref() is opt:
            return st
        opt = _unwrap_optimizer(opt)
        st = self._opts.get(id(opt))
        if st is not None and st.ref() is opt:
            return st
        with self._registry_lock:
            st = _Opt(len(self._opt_list), opt)
            st.info = _optimizer_info(opt, st.index)
            self._opt_list.append(st)
            self._opts[id(opt)] = st
        self._observe_rank()
        if self.checker is not None:
            self.checker.register_optimizer(st.index, st.info)
        return st

    def _sched_state(self, sched) -> _Sched:
        st = self._scheds.get(id(sched))
        if st is not None and st.ref() is sched:
            return st
        opt = getattr(sched, "optimizer", None)
        opt_index = self._opt_state(opt).index if isinstance(opt, torch.optim.Optimizer) else None
        with self._registry_lock:
            st = _Sched(len(self._sched_list), sched, opt_index)
            self._sched_list.append(st)
            self._scheds[id(sched)] = st
            st.info = _scheduler_info(sched, st.index, opt_index)
            children = [self._sched_state(c).index for c in getattr(sched, "_schedulers", ()) or ()]
            if children:
                st.info["children"] = children
        if self.checker is not None:
            self.checker.register_scheduler(st.index, st.info)
        return st

    def _wants(self, obj) -> bool:
        return self._filter is None or id(obj) in self._filter

    def _observe_rank(self) -> None:
        """Remember rank and world size while torch.distributed knows them: scripts often call
        destroy_process_group() before the trace is closed."""
        if self._dist is None:
            self._dist = _dist_rank_world()

    def _trace_rank(self) -> int:
        """The rank of this process's partition, fixed when the first part is written."""
        if self._part_rank is None:
            self._observe_rank()
            self._part_rank = self._dist[0] if self._dist else _rank()
        return self._part_rank

    def metadata(self) -> dict[str, Any]:
        self._observe_rank()
        rank, world = self._dist or (_rank(), _world_size())
        with self._registry_lock:
            optimizers = [dict(o.info) for o in self._opt_list]
            for o, info in zip(self._opt_list, optimizers):
                late = self._late_skips.get(o.index, 0)
                info["steps"] = o.steps - late
                info["skipped"] = o.skipped + late
            schedulers = [dict(s.info) for s in self._sched_list]
            for s, info in zip(self._sched_list, schedulers):
                info["steps"] = s.steps
        return {
            "schema_version": SCHEMA_VERSION,
            "lrdebug_version": __version__,
            "torch_version": torch.__version__,
            "python_version": sys.version.split()[0],
            "argv": list(sys.argv),
            "cwd": os.getcwd(),
            "pid": self._pid,
            "host": _hostname(),
            "run_id": self.run_id,
            "rank": self._part_rank if self._part_rank is not None else rank,
            "world_size": world,
            "start_unix_ns": self.start_unix_ns,
            "sample_updates": self.sample_updates,
            "cuda_timing": self.cuda_timing,
            "optimizers": optimizers,
            "schedulers": schedulers,
            "sites": len(SITES),
        }

    # ------------------------------------------------------------------ live checks
    def _check(self, ev: Event) -> None:
        checker = self.checker
        if checker is None:
            return
        if _Deferred.seen and ev.lrs:
            # A device LR is read later, without a sync: the live rules see None for it.
            ev = ev._replace(lrs=tuple([None if type(v) is _Deferred else v for v in ev.lrs]))
        try:
            new = checker.feed(ev)
        except Exception as e:  # noqa: BLE001 - a bug in a rule must stop neither training nor recording
            self.checker = None
            reason = f"a live check failed: {type(e).__name__}: {e}"
            self.incomplete = self.incomplete or reason
            self._report_once(f"lrdebug: internal error ({reason}); checks stopped, recording to {self.path} "
                              "and training continue")
            return
        for f in new:
            self._report_finding(f)

    def _check_step(self, event, seq, opt, sched, step, lrs, grads, site, origin, parent, value, t0) -> None:
        """_check for the optimizer and scheduler steps: the Event built positionally (a third of the
        cost of keywords), with the site's file and line."""
        file, line = self._site_fields(site, event)
        self._check(_make_event((event, seq, opt, sched, step, lrs, grads, file, line, origin, parent, value,
                                 None, 0, t0)))

    def _report_finding(self, f: Finding) -> None:
        if f.severity not in ("warning", "error") or f.code in self.ignore:
            return
        if self._frameworks and f.framework is None:
            from .checks import attach_frameworks

            attach_frameworks([f], self._frameworks)
        if self.strict:
            raise LRDebugError(f"[{f.code}] {f.message}")
        key = (f.code, f.file, f.line)
        if key in self._warned:
            return
        self._warned.add(key)
        _warn_at(f)

    def _site_fields(self, site: int, event: str) -> tuple[str | None, int | None]:
        if site < 0:
            return None, None
        file, line, _ = SITES[site]
        if FRAMEWORK_SITES[site]:  # a framework made this call from the user's line: findings name it
            self._frameworks[(file, line, event)] = FRAMEWORK_SITES[site]
        return file, line

    # ------------------------------------------------------------------ hot path: optimizer step
    # The callbacks below are called by patching's hooks through _SINK.target. Each guards itself: a bug
    # here stops recording (one line on stderr), never training; LRDebugError (strict) and warnings the
    # user's filters turned into errors propagate.
    def optimizer_pre(self, opt, args, kwargs) -> None:
        try:
            st = self._opts.get(id(opt))
            if st is None or st.ref() is not opt:
                if not self.enabled or not self._wants(opt):
                    return
                st = self._opt_state(opt)
            elif not self.enabled:
                return
            if patching.scaler_depth:
                local = patching._local
                st.scaled = local.scaler_opt is opt
                if st.scaled:
                    local.scaler_called = True
            else:
                st.scaled = False
            groups = opt.param_groups
            st.lrs = _read_lrs(groups)
            if self.sample_updates and (st.steps % self.sample_updates == 0):
                try:
                    st.sampled = _sample_before(groups, getattr(opt, "grad_scale", None))
                except Exception as e:  # noqa: BLE001 - an unusual tensor type stops sampling, not recording
                    self._sampling_failed(e)
            if self.cuda_timing:
                st.cuda = _cuda_start()
            st.t0 = _now()
        except Exception as e:  # noqa: BLE001
            self._internal_error(f"optimizer_pre: {type(e).__name__}: {e}")

    def optimizer_post(self, opt, args, kwargs) -> None:
        t1 = _now()
        try:
            st = self._opts.get(id(opt))
            if st is None or st.t0 == 0 or not self.enabled:
                return
            t0, st.t0 = st.t0, 0
            site = call_site(2, SITE_OPTIMIZER)  # above: this callback and patching's hook
            groups = opt.param_groups
            extra = None
            if st.cuda is not None:
                extra = (_cuda_stop(st.cuda), None)
                st.cuda = None
            if st.sampled is not None:
                sampled, st.sampled = st.sampled, None
                try:
                    extra = (extra[0] if extra else None, _sample_after(sampled))
                except Exception as e:  # noqa: BLE001
                    self._sampling_failed(e)
            skipped = False
            if st.scaled:
                # Fused optimizer under GradScaler: the kernel skipped the update when found_inf > 0.
                found_inf = opt.__dict__.get("found_inf")
                if isinstance(found_inf, torch.Tensor):
                    if found_inf.device.type == "cpu":
                        skipped = float(found_inf) > 0
                    else:
                        # On a device it is read later, without a sync (see _apply_late_skips).
                        self._late_skips.setdefault(st.index, 0)
                        extra = (*(extra or (None, None)), _Deferred(found_inf))
            grads = _grad_states(groups, st)
            iter_ns = t1 - st.last_t if st.last_t else None
            st.last_t = t1
            wait = self._data_wait
            if wait:
                self._data_wait = 0
            else:
                wait = None
            if skipped:
                st.skipped += 1
                event, step = OPTIMIZER_STEP_SKIPPED, st.steps + 1
            else:
                st.steps += 1
                event, step = OPTIMIZER_STEP, st.steps
            seq = next(self._seq)
            lrs = st.lrs
            buf = self.buf
            buf += (event, seq, t0, t1 - t0, st.index, step, site, lrs, grads, iter_ns, wait, extra)
            if len(buf) >= self._flush_len:
                if len(buf) >= 8 * self._flush_len:
                    self.writer.flush()  # the writer fell behind (slow disk): write here, memory stays bounded
                else:
                    self.writer.wake()
        except Exception as e:  # noqa: BLE001
            self._internal_error(f"optimizer_post: {type(e).__name__}: {e}")
            return
        if self.checker is not None:
            self._check_step(event, seq, st.index, None, step, lrs, grads, site, None, None, None, t0)

    @_guarded
    def optimizer_skipped(self, opt) -> None:
        """GradScaler found inf/NaN and did not call optimizer.step()."""
        if not self.enabled or not self._wants(opt):
            return
        st = self._opt_state(opt)
        t = _now()
        lrs = tuple([_lr_value(g["lr"]) for g in opt.param_groups])
        site = call_site()
        st.skipped += 1
        seq = next(self._seq)
        self.other.append((OPTIMIZER_STEP_SKIPPED, seq, t, 0, st.index, None, st.steps + 1, site, lrs, None,
                         None, None, None, None, None, None, None, None))
        file, line = self._site_fields(site, OPTIMIZER_STEP_SKIPPED)
        self._check(Event(OPTIMIZER_STEP_SKIPPED, seq, optimizer=st.index, step=st.steps + 1, lrs=lrs,
                          file=file, line=line, t_ns=t))

    # ------------------------------------------------------------------ other events
    def _append(self, event, t0, dur, opt=None, sched=None, step=None, site=-1, lrs=None, origin=None,
                parent=None, value=None, loader=None) -> int:
        seq = next(self._seq)
        self.other.append((event, seq, t0, dur, opt, sched, step, site, lrs, None, origin, parent, value,
                           loader, None, None, None, None))
        return seq

    def scheduler_step(self, sched, t0, t1, parent, in_init, metric) -> None:
        try:
            st = self._scheds.get(id(sched))
            if st is None or st.ref() is not sched:
                if not self.enabled or not self._wants(sched):
                    return
                st = self._sched_state(sched)
            elif not self.enabled:
                return
            opt = getattr(sched, "optimizer", None)
            ost = st.ost
            if ost is None or ost.ref() is not opt:
                ost = st.ost = self._opt_state(opt) if isinstance(opt, torch.optim.Optimizer) else None
            parent_index = None
            if in_init:
                origin = ORIGIN_INIT
            elif parent is not None and self._wants(parent):
                origin = ORIGIN_CHILD
                parent_index = self._sched_state(parent).index
            else:
                origin = ORIGIN_USER
            if ost is not None:
                lrs = _read_lrs(opt.param_groups)
                opt_index, step = ost.index, ost.steps
            else:
                lrs = opt_index = step = None
            value = None
            if metric is not None:
                try:
                    value = float(metric) if not isinstance(metric, torch.Tensor) or metric.device.type == "cpu" else None
                except (TypeError, ValueError):
                    value = None
            if origin != ORIGIN_INIT:
                st.steps += 1
            site = call_site(2, SITE_SCHEDULER)  # above: this callback and patching's step wrapper
            seq = next(self._seq)
            self.other.append((SCHEDULER_STEP, seq, t0, t1 - t0, opt_index, st.index, step, site, lrs, None, origin,
                               parent_index, value, None, None, None, None, None))
        except Exception as e:  # noqa: BLE001
            self._internal_error(f"scheduler_step: {type(e).__name__}: {e}")
            return
        if self.checker is not None:
            self._check_step(SCHEDULER_STEP, seq, opt_index, st.index, step, lrs or (), (), site, origin,
                             parent_index, value, t0)

    @_guarded
    def scheduler_init(self, sched) -> None:
        if not self.enabled or not self._wants(sched):
            return
        st = self._sched_state(sched)
        st.info = _scheduler_info(sched, st.index, st.opt) | {k: v for k, v in st.info.items() if k == "children"}
        opt = getattr(sched, "optimizer", None)
        opt_steps = _total_steps(opt) if isinstance(opt, torch.optim.Optimizer) else None
        site = call_site()
        lrs = tuple([_lr_value(g["lr"]) for g in opt.param_groups]) if st.opt is not None else None
        t = _now()
        seq = self._append(SCHEDULER_INIT, t, 0, st.opt, st.index, None, site, lrs, None, None, opt_steps)
        file, line = self._site_fields(site, SCHEDULER_INIT)
        if self.checker is not None:
            self.checker.register_scheduler(st.index, st.info)
        self._check(Event(SCHEDULER_INIT, seq, optimizer=st.opt, scheduler=st.index, lrs=lrs or (), file=file,
                          line=line, value=opt_steps, t_ns=t))

    @_guarded
    def scheduler_load_state(self, sched) -> None:
        if not self.enabled or not self._wants(sched):
            return
        st = self._sched_state(sched)
        site = call_site()
        value = float(getattr(sched, "last_epoch", 0) or 0)
        t = _now()
        seq = self._append(SCHEDULER_LOAD_STATE, t, 0, st.opt, st.index, None, site, None, None, None, value)
        file, line = self._site_fields(site, SCHEDULER_LOAD_STATE)
        self._check(Event(SCHEDULER_LOAD_STATE, seq, optimizer=st.opt, scheduler=st.index, file=file, line=line,
                          value=value, t_ns=t))

    @_guarded
    def get_lr_call(self, sched) -> None:
        if not self.enabled or not self._wants(sched):
            return
        st = self._sched_state(sched)
        site = call_site()
        t = _now()
        seq = self._append(GET_LR_CALL, t, 0, st.opt, st.index, None, site)
        file, line = self._site_fields(site, GET_LR_CALL)
        self._check(Event(GET_LR_CALL, seq, optimizer=st.opt, scheduler=st.index, file=file, line=line, t_ns=t))

    def zero_grad(self, obj, origin, t0, t1) -> None:
        try:
            if not self.enabled:
                return
            index = None
            if origin == "optimizer":
                st = self._opts.get(id(obj))
                if st is None or st.ref() is not obj:
                    if not self._wants(obj):
                        return
                    st = self._opt_state(obj)
                index = st.index
            site = call_site(2, SITE_ZERO_GRAD)  # above: this callback and patching's zero_grad wrapper
            seq = next(self._seq)
            self.other.append((ZERO_GRAD, seq, t0, t1 - t0, index, None, None, site, None, None, origin, None, None,
                               None, None, None, None, None))
        except Exception as e:  # noqa: BLE001
            self._internal_error(f"zero_grad: {type(e).__name__}: {e}")
            return
        checker = self.checker
        if checker is not None:
            checker.zero_grad(seq)  # the only rule state a zero_grad changes; it finds nothing by itself

    @_guarded
    def add_param_group(self, opt) -> None:
        if not self.enabled or not self._wants(opt):
            return
        st = self._opt_state(opt)
        with self._registry_lock:
            st.info = _optimizer_info(opt, st.index)
        if self.checker is not None:
            self.checker.register_optimizer(st.index, st.info)
        site = call_site()
        lrs = tuple([_lr_value(g["lr"]) for g in opt.param_groups])
        t = _now()
        seq = self._append(ADD_PARAM_GROUP, t, 0, st.index, None, st.steps, site, lrs, None, None,
                           float(len(opt.param_groups)))
        file, line = self._site_fields(site, ADD_PARAM_GROUP)
        self._check(Event(ADD_PARAM_GROUP, seq, optimizer=st.index, step=st.steps, lrs=lrs, file=file, line=line,
                          value=float(len(opt.param_groups)), t_ns=t))

    @_guarded
    def optimizer_load_state(self, opt) -> None:
        if not self.enabled or not self._wants(opt):
            return
        st = self._opt_state(opt)
        with self._registry_lock:
            st.info = _optimizer_info(opt, st.index)
        steps = _total_steps(opt)
        site = call_site()
        lrs = tuple([_lr_value(g["lr"]) for g in opt.param_groups])
        t = _now()
        seq = self._append(OPTIMIZER_LOAD_STATE, t, 0, st.index, None, st.steps, site, lrs, None, None, steps)
        file, line = self._site_fields(site, OPTIMIZER_LOAD_STATE)
        self._check(Event(OPTIMIZER_LOAD_STATE, seq, optimizer=st.index, step=st.steps, lrs=lrs, file=file,
                          line=line, value=steps, t_ns=t))

    @_guarded
    def epoch_start(self, loader) -> None:
        if not self.enabled:
            return
        index = self._loaders.get(id(loader))
        if index is None:
            index = self._loaders[id(loader)] = len(self._loaders)
            weakref.finalize(loader, self._loaders.pop, id(loader), None)
        site = call_site()
        t = _now()
        seq = self._append(EPOCH_START, t, 0, site=site, loader=index)
        self._data_wait = 0
        if self.checker is not None:
            file, line = self._site_fields(site, EPOCH_START)
            self._check(Event(EPOCH_START, seq, loader=index, file=file, line=line, t_ns=t))

    def data_wait(self, ns: int) -> None:
        self._data_wait += ns

    # ------------------------------------------------------------------ writer thread
    def _drain(self):
        """Take the buffered rows (safe against concurrent appends: only whole prefixes are removed;
        a step's values are added to ``buf`` by one list operation, so its length is always whole rows)."""
        steps, other = self.buf, self.other
        n_steps, n_other = len(steps), len(other)
        if n_steps == 0 and n_other == 0:
            return None
        step_values, other_rows = steps[:n_steps], other[:n_other]
        del steps[:n_steps]
        del other[:n_other]
        if _Deferred.seen:
            _prefetch(step_values, other_rows)
        if self._late_skips:
            self._apply_late_skips(step_values, other_rows)
        return columns_from_rows(step_values, other_rows, self._offset_ns, self._trace_rank())

    def _apply_late_skips(self, step_values: list, other_rows: list[tuple]) -> None:
        """A fused optimizer on a device tells a GradScaler skip in a tensor, read only now: make those
        rows skipped steps and renumber the optimizer's later rows, as the CPU path numbers them live."""
        done = dict(self._late_skips)
        new: dict[int, list[int]] = {}
        for k in range(0, len(step_values), STEP_FIELDS):
            seq, opt, extra = step_values[k + 1], step_values[k + 4], step_values[k + 11]
            step_values[k + 5] -= done.get(opt, 0) + len(new.get(opt, ()))
            if extra is not None and len(extra) > 2:
                if _resolve(extra[2]) > 0:
                    step_values[k] = OPTIMIZER_STEP_SKIPPED
                    new.setdefault(opt, []).append(seq)
                step_values[k + 11] = extra[:2] if extra[0] is not None or extra[1] is not None else None
        for k, row in enumerate(other_rows):
            opt, step = row[4], row[6]
            if opt is not None and step is not None and opt in done:
                shift = done[opt] + bisect.bisect(new.get(opt, ()), row[1])
                if shift:
                    other_rows[k] = row[:6] + (step - shift,) + row[7:]
        for opt, seqs in new.items():
            self._late_skips[opt] = done.get(opt, 0) + len(seqs)


def columns_from_rows(step_values: list, other_rows: list[tuple], offset_ns: int,
                      rank: int) -> tuple[dict[str, Any], int]:
    """Expand both buffers (flat step values, other rows) into one column dict of chunked arrays
    (readers sort by seq)."""
    import gc

    was_enabled = gc.isenabled()
    gc.disable()  # millions of short-lived tuples: a collection pass here is pure waste
    try:
        parts = []
        if step_values:
            parts.append(expand_steps(step_values, offset_ns, rank))
        if other_rows:
            parts.append(expand_rows(other_rows, offset_ns, rank))
    finally:
        if was_enabled:
            gc.enable()
    if len(parts) == 1:
        return parts[0]
    (a, na), (b, nb) = parts
    names = set(a) | set(b)
    columns = {}
    for name in names:
        chunks = []
        for cols, n in ((a, na), (b, nb)):
            arr = cols.get(name)
            chunks.append(arr if arr is not None else pa.nulls(n, _SCHEMA_TYPES[name]))
        types = {c.type for c in chunks}
        if len(types) > 1:
            chunks = [c.cast(_SCHEMA_TYPES[name]) for c in chunks]
        columns[name] = pa.chunked_array(chunks)
    return columns, na + nb


def expand_steps(values: list, offset_ns: int, rank: int) -> tuple[dict[str, Any], int]:
    """Optimizer steps (``Recorder.buf``'s flat values) into per-group columns.

    Each column is one strided slice of the flat list (a C-level copy), then one conversion.
    """
    F = STEP_FIELDS
    n = len(values) // F
    lrs = values[7::F]
    total = sum(map(len, lrs))
    uniform = total == n  # one group per step (an optimizer has at least one)
    counts = np.ones(n, dtype=np.int64) if uniform else np.fromiter(map(len, lrs), dtype=np.int64, count=n)
    idx = None if uniform else pa.array(np.repeat(np.arange(n), counts))

    def per_group(arr):
        return arr if uniform else arr.take(idx)

    def ints(i, dtype=np.int64):
        return per_group(pa.array(_int_column(values[i::F], dtype)))

    def maybe(i):
        col = values[i::F]
        nulls = col.count(None)
        if nulls == n:
            return pa.nulls(total, pa.int64())
        if nulls == 0:
            return per_group(pa.array(_int_column(col)))
        return per_group(pa.array(col, type=pa.int64()))

    try:
        lr = pa.array(np.fromiter(itertools.chain.from_iterable(lrs), dtype=np.float64, count=total))
    except (TypeError, ValueError):  # a None (unreadable) or a device value fetched by the writer
        lr = pa.array([_resolve(v) for v in itertools.chain.from_iterable(lrs)], type=pa.float64())
    if uniform:
        group = pa.array(np.zeros(n, dtype=np.int32))
    else:
        group = pa.array((np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)).astype(np.int32))
    site = _int_column(values[6::F], np.int32)
    file_col, line_col, func_col = _site_columns(site)
    dur = _int_column(values[3::F])
    # t_ns is when the event completed: rows are numbered (seq) at completion, so t_ns is monotone
    # in seq even for nested calls (SequentialLR's children, zero_grad inside an LBFGS closure).
    t_abs = _int_column(values[2::F]) + dur + offset_ns
    events = values[0::F]
    if events.count(OPTIMIZER_STEP) == n:
        event = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([OPTIMIZER_STEP]))
    else:
        event = pa.array(events, pa.string()).dictionary_encode()
    grad_col = values[8::F]
    if uniform and grad_col.count(grad_col[0]) == n:
        grads = np.full(n, grad_col[0][0], dtype=np.int8)
    else:
        grads = np.fromiter(itertools.chain.from_iterable(grad_col), dtype=np.int8, count=total)
    columns: dict[str, Any] = {
        "rank": pa.array(np.full(total, rank, dtype=np.int32)),
        "seq": ints(1),
        "t_ns": per_group(pa.array(t_abs)),
        "event": per_group(event),
        "optimizer": ints(4, np.int32),
        "group": group,
        "step": ints(5),
        "lr": lr,
        "dur_ns": per_group(pa.array(dur)),
        "file": per_group(file_col),
        "line": per_group(line_col),
        "func": per_group(func_col),
        "framework_site": per_group(_framework_column(site)),
        "grad": pa.array(grads),
        "iter_ns": maybe(9),
        "data_wait_ns": maybe(10),
    }
    extra = values[11::F]
    if extra.count(None) != n:
        columns.update(_extra_columns(extra, counts, total))
    return columns, total


def _int_column(col: list, dtype=np.int64) -> np.ndarray:
    """A list of ints as an array; one np.full when they are all equal (the optimizer and the call
    site of a steady loop), which costs a C-level count instead of a conversion per value."""
    first = col[0] if col else 0
    if type(first) is int and col[-1] == first and col.count(first) == len(col):
        return np.full(len(col), first, dtype=dtype)
    return np.fromiter(col, dtype=dtype, count=len(col))


def _site_columns(site: np.ndarray):
    """file/line/func as dictionary arrays indexed by site id: strings looked up once per site."""
    ids = pa.array(site, mask=site < 0, type=pa.int32())
    sites = SITES[: int(site.max()) + 1] if len(site) and site.max() >= 0 else []
    files = pa.DictionaryArray.from_arrays(ids, pa.array([s[0] for s in sites], pa.string()))
    funcs = pa.DictionaryArray.from_arrays(ids, pa.array([s[2] for s in sites], pa.string()))
    lines = pa.array([s[1] for s in sites], pa.int32()).take(ids)
    return files, lines, funcs


def _framework_column(site: np.ndarray):
    """framework_site as a dictionary array indexed by site id (null for the user's own calls)."""
    labels = FRAMEWORK_SITES[: int(site.max()) + 1] if len(site) and site.max() >= 0 else []
    has_label = np.array([label is not None for label in labels] + [False], dtype=bool)
    ids = pa.array(site, mask=~has_label[site], type=pa.int32())  # site -1 reads the final False
    return pa.DictionaryArray.from_arrays(ids, pa.array([label or "" for label in labels], pa.string()))


def _extra_columns(extra: list, counts: np.ndarray, total: int) -> dict[str, list]:
    """Sampled update norms and CUDA times, per group, for the rows that have them."""
    per_group = {k: [None] * total for k in ("cuda_ns", "grad_norm", "param_norm", "update_norm",
                                              "update_ratio", "eff_lr")}
    pos = 0
    for e, c in zip(extra, counts.tolist()):
        if e is not None:
            cuda, norms = e
            cuda = _resolve_cuda(cuda)
            for g in range(c):
                per_group["cuda_ns"][pos + g] = cuda
                if norms is not None and g < len(norms):
                    gn, pn, un = _resolve(norms[g])
                    per_group["grad_norm"][pos + g] = gn
                    per_group["param_norm"][pos + g] = pn
                    per_group["update_norm"][pos + g] = un
                    per_group["update_ratio"][pos + g] = un / pn if (pn and un is not None) else None
                    per_group["eff_lr"][pos + g] = un / gn if (gn and un is not None) else None
        pos += c
    return {k: pa.array(v, type=_SCHEMA_TYPES[k]) for k, v in per_group.items()}


def expand_rows(rows: list[tuple], offset_ns: int, rank: int) -> tuple[dict[str, Any], int]:
    """Generic event rows (everything but optimizer steps) into per-group columns."""
    n = len(rows)
    (event, seq, t0, dur, opt, sched, step, site, lrs, grads, origin, parent, value, loader, iter_ns, wait,
     thread, extra) = zip(*rows)
    lrs = [_NO_GROUPS if x is None else x for x in lrs]
    counts = np.fromiter(map(len, lrs), dtype=np.int64, count=n)
    total = int(counts.sum())
    idx = pa.array(np.repeat(np.arange(n), counts))

    def col(values, type_):
        return pa.array(values, type=type_).take(idx)

    grouped = np.repeat(np.fromiter(map(_NO_GROUPS.__ne__, lrs), dtype=bool, count=n), counts)
    group = (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)).astype(np.int32)
    flat_lr = [_resolve(v) for v in itertools.chain.from_iterable(lrs)]
    grads = [(None,) * c if g is None else g for g, c in zip(grads, counts.tolist())]
    file_col, line_col, func_col = _site_columns(np.array(site, dtype=np.int32))
    columns: dict[str, Any] = {
        "rank": pa.array(np.full(total, rank, dtype=np.int32)),
        "seq": col(seq, pa.int64()),
        "t_ns": pa.array(np.array(t0, dtype=np.int64) + np.array(dur, dtype=np.int64) + offset_ns).take(idx),
        "event": pa.array(event, pa.string()).dictionary_encode().take(idx),
        "optimizer": col(opt, pa.int32()),
        "scheduler": col(sched, pa.int32()),
        "group": pa.array(group, mask=~grouped),
        "step": col(step, pa.int64()),
        "lr": pa.array(flat_lr, type=pa.float64()),
        "dur_ns": col(dur, pa.int64()),
        "file": file_col.take(idx),
        "line": line_col.take(idx),
        "func": func_col.take(idx),
        "framework_site": _framework_column(np.array(site, dtype=np.int32)).take(idx),
        "origin": col(origin, pa.string()),
        "parent": col(parent, pa.int32()),
        "value": col(value, pa.float64()),
        "grad": pa.array(list(itertools.chain.from_iterable(grads)), type=pa.int8()),
        "loader": col(loader, pa.int32()),
    }
    if any(e is not None for e in extra):
        columns.update(_extra_columns(list(extra), counts, total))
    return columns, total


# ------------------------------------------------------------------------------ sampling, CUDA
def _group_tensors(group):
    params = [p for p in group["params"] if p.grad is not None]
    return params, [p.grad for p in params]


def _norm(tensors) -> Any:
    """L2 norm over a list of tensors, as a float32 tensor on their device (no sync)."""
    if not tensors:
        return None
    dense = [t.detach().coalesce().values() if t.is_sparse else t.detach() for t in tensors]
    norms = torch._foreach_norm(dense)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


def _sample_before(groups, grad_scale=None):
    """Per group: params, a copy of them, grad norm and param norm, before a sampled step.

    A fused optimizer under GradScaler gets the gradients still scaled (its kernel unscales them,
    ``grad_scale`` is set on the optimizer for the step): divide, so grad_norm is the real one.
    """
    with torch.no_grad():
        out = []
        for g in groups:
            params, grads = _group_tensors(g)
            gn = _norm(grads)
            if gn is not None and isinstance(grad_scale, torch.Tensor):
                gn = gn / grad_scale.to(gn.device)
            before = [p.detach().clone() for p in params]
            out.append((params, before, gn, _norm(params)))
        return out


def _sample_after(sampled):
    """Per group (grad_norm, param_norm, update_norm): floats on CPU; on a device, a copy read later
    by the writer thread, so a sampled step does not synchronise either."""
    with torch.no_grad():
        result = []
        for params, before, gn, pn in sampled:
            if not params:
                result.append((None, None, None))
                continue
            torch._foreach_sub_(before, [p.detach() for p in params])  # the copy becomes -update
            un = _norm(before)
            values = torch.stack([gn, pn, un])
            result.append(tuple(values.tolist()) if values.device.type == "cpu" else _Deferred(values))
        return tuple(result)


def _cuda_start():
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    return start, end


def _cuda_stop(events):
    events[1].record()
    return events


def _resolve_cuda(value):
    if value is None or isinstance(value, int):
        return value
    start, end = value
    while not end.query():
        time.sleep(0.0005)
    return int(start.elapsed_time(end) * 1e6)


def _grad_states(groups, st: _Opt) -> tuple:
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
            "groups": groups}


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
    """The torch optimizer inside a wrapper that subclasses Optimizer (accelerate's
    AcceleratedOptimizer, which HF Trainer's scheduler holds): the wrapper's step runs the inner
    optimizer's, which is the one the step hooks see."""
    inner = getattr(opt, "optimizer", None)
    while isinstance(inner, torch.optim.Optimizer) and inner is not opt:
        opt, inner = inner, getattr(inner, "optimizer", None)
    return opt


def effective_lr(optimizer) -> list[float]:
    """Per param group, the LR the next ``optimizer.step()`` will use (a copy, as floats)."""
    out = []
    for g in optimizer.param_groups:
        v = g["lr"]
        out.append(float(v.detach().cpu()) if isinstance(v, torch.Tensor) else float(v))
    return out


# ------------------------------------------------------------------------------ environment
def _dist_rank_world() -> tuple[int, int] | None:
    """Rank and world size when torch.distributed is initialised (local calls, no communication)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank()), int(dist.get_world_size())
    except Exception:  # noqa: BLE001
        pass
    return None


def _known_rank() -> int | None:
    """The rank if already known (torch.distributed, else RANK), for refusing an existing partition
    before training. None after a torchrun restart: refusing would kill the restarted worker, so its
    writer reports the existing partition once and training goes on."""
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0"):
        return None
    known = _dist_rank_world()
    if known is not None:
        return known[0]
    v = os.environ.get("RANK", "")
    return int(v) if v.strip().isdigit() else None


def _launch_name() -> str | None:
    """A directory name that every rank of one torchrun launch derives alike, without talking."""
    rid = os.environ.get("TORCHELASTIC_RUN_ID")
    if rid is None:
        return None
    if rid in ("", "none"):  # torchrun's default id is the same at every launch: add the agent's pid
        rid = f"{os.environ.get('MASTER_PORT', '')}-{os.getppid()}"
    return "torchrun-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in rid)


def _rank() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank())
    except Exception:  # noqa: BLE001
        pass
    for var in ("RANK", "LOCAL_RANK"):
        v = os.environ.get(var)
        if v is not None and v.strip().isdigit():
            return int(v)
    return 0


def _world_size() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return int(dist.get_world_size())
    except Exception:  # noqa: BLE001
        pass
    v = os.environ.get("WORLD_SIZE", "1")
    return int(v) if v.strip().isdigit() else 1


@functools.lru_cache(maxsize=1)
def _hostname() -> str:
    import socket

    return socket.gethostname()


def _default_out() -> Path:
    shared = os.environ.get("LRDEBUG_TRACE_DIR")
    if shared:
        return Path(shared)
    launch = _launch_name()  # under torchrun, all ranks share one directory
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = path = Path("lrdebug-traces") / (launch or f"{stamp}-{os.getpid()}")
    n = 1
    # A second trace in the same second (nested, re-entered); under torchrun every rank counts alike.
    while path in _DEFAULT_OUTS or (launch is None and path.exists()):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    _DEFAULT_OUTS.add(path)
    return path


_DEFAULT_OUTS: set[Path] = set()


def print_summary(rec: Recorder, findings: list[Finding]) -> None:
    """One screen on stderr at the end: where the trace is and what was found."""
    if rec._error_reported:
        return  # the one line reporting the failure already said it all; findings would be partial
    try:
        lines = [f"lrdebug: trace written to {rec.path}" + ("" if not rec.incomplete else f" (incomplete: {rec.incomplete})")]
        shown = [f for f in findings if f.code not in rec.ignore]
        order = {"error": 0, "warning": 1, "info": 2}
        shown.sort(key=lambda f: (order.get(f.severity, 3), f.step or 0))
        if shown:
            lines.append(f"lrdebug: {len(shown)} finding(s):")
            for f in shown[:12]:
                where = f" at {f.file}:{f.line}" if f.file else ""
                where += f" via {f.framework}" if f.framework else ""
                lines.append(f"  {f.severity:7} {f.code}{where} (x{f.count}): {f.message.splitlines()[0][:160]}")
            if len(shown) > 12:
                lines.append(f"  ... and {len(shown) - 12} more: lrdebug report {rec.path}")
        else:
            lines.append("lrdebug: no findings")
        print("\n".join(lines), file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001
        pass


# ------------------------------------------------------------------------------ dispatch
class _Fan:
    """Forwards every callback to several active recorders (nested traces), each guarded on its own."""

    def __init__(self, recorders: tuple[Recorder, ...]) -> None:
        self.recorders = recorders

    def __getattr__(self, name: str):
        def forward(*args):
            for rec in self.recorders:
                getattr(rec, name)(*args)  # each callback guards itself

        return forward


class _Idle:
    """The target while no recorder is active (between the last close and the removal of the hooks)."""

    def __getattr__(self, name: str):
        return _ignore


def _ignore(*args) -> None:
    return None


class _Sink:
    """The single installation of hooks and patches, shared by all active recorders. The hooks call
    ``_SINK.target``: the one active recorder itself (no dispatch layer on the hot path), a ``_Fan``
    over several, or ``_Idle``."""

    def __init__(self) -> None:
        self.active: tuple[Recorder, ...] = ()
        self.target: Any = _Idle()
        self.installation = None
        self.lock = threading.Lock()

    def _retarget(self) -> None:
        n = len(self.active)
        self.target = self.active[0] if n == 1 else _Fan(self.active) if n else _Idle()

    def add(self, rec: Recorder) -> None:
        with self.lock:
            if self.installation is None:
                self.installation = patching.install(self)
            self.active = self.active + (rec,)
            self._retarget()

    def remove(self, rec: Recorder) -> None:
        with self.lock:
            self.active = tuple(r for r in self.active if r is not rec)
            self._retarget()
            if not self.active and self.installation is not None:
                self.installation.remove()
                self.installation = None

    def clear(self) -> None:
        """In a forked child: nothing inherited records."""
        self.active = ()
        self._retarget()


_SINK = _Sink()


def _after_fork_in_child() -> None:
    # Forked DataLoader workers and multiprocessing children record nothing and write nothing.
    global _site_lock, _device_lock
    _site_lock, _device_lock = threading.Lock(), threading.Lock()  # another thread may have held them
    for rec in _SINK.active:
        rec.enabled = False
        rec.closed = True
        rec.buf = []
    _SINK.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ------------------------------------------------------------------------------ public API
def _weak(obj: Any):
    try:
        return weakref.ref(obj)
    except TypeError:  # no weak reference support (__slots__): keep the object
        return lambda: obj


class trace:  # noqa: N801 - used like a function: `with lrdebug.trace(...)` / `@lrdebug.trace()`
    """Record what the optimizers and schedulers do inside a block (or a decorated function).

    ``trace(opt, sched, ...)`` records just those objects; ``trace()`` records every optimizer and
    scheduler used in the block, including ones created inside it. Leaving the block flushes and
    closes the trace and removes every hook and patch; exceptions propagate unchanged.
    """

    def __init__(self, *objects: Any, out: str | os.PathLike | None = None, strict: bool = False,
                 ignore: Iterable[str] = (), sample_updates: int = 0, cuda_timing: bool = False,
                 flush_rows: int = FLUSH_ROWS, flush_seconds: float = 5.0, summary: bool = True) -> None:
        if isinstance(ignore, str):
            ignore = [c.strip() for c in ignore.split(",") if c.strip()]
        self._kwargs = dict(out=out, strict=strict, ignore=tuple(ignore), sample_updates=sample_updates,
                            cuda_timing=cuda_timing, flush_rows=flush_rows, flush_seconds=flush_seconds,
                            summary=summary)
        self._objects = tuple(_weak(o) for o in objects)  # the handle must not keep them alive
        self.recorder: Recorder | None = None

    def _live_objects(self) -> tuple:
        objects = tuple(ref() for ref in self._objects)
        if any(o is None for o in objects):
            raise LRDebugError("an optimizer or scheduler passed to lrdebug.trace() no longer exists")
        return objects

    def __enter__(self) -> trace:
        if self.recorder is not None and not self.recorder.closed:
            raise LRDebugError("this lrdebug.trace block is already active")
        try:
            self.recorder = Recorder(self._live_objects(), **self._kwargs).start()
        except TraceError as e:
            raise LRDebugError(str(e)) from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        rec = self.recorder
        if rec is not None:
            rec.close(exc)
        return None

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with trace(*self._live_objects(), **self._kwargs) as t:
                wrapper.last_trace = t
                return fn(*args, **kwargs)

        return wrapper

    # live access
    @property
    def path(self) -> Path | None:
        return self.recorder.path if self.recorder else None

    @property
    def findings(self) -> list[Finding]:
        return self.recorder.findings if self.recorder else []

    def effective_lr(self, optimizer=None) -> list[float]:
        return self.recorder.effective_lr(optimizer) if self.recorder else []

    def dataframe(self):
        return self.recorder.dataframe() if self.recorder else None
