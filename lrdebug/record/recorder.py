"""The recorder: hook callbacks -> buffered event rows -> the trace writer, with the live rules.

The hot path (an optimizer step) reads the clock twice, the LR of every group once, looks the call
site up in a cache, and appends its values to a flat list. Everything else — expanding rows per
group, converting to Arrow, encoding Parquet — happens in the writer thread.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import os
import sys
import threading
import time
import uuid
import warnings
import weakref
from pathlib import Path
from typing import Any, Iterable

import torch

from .._version import __version__
from ..errors import LRDebugError, LRDebugWarning
from ..rules import CODES, Finding
from ..tracefile.columns import STEP_FIELDS, columns_from_rows
from ..tracefile.schema import (
    ADD_PARAM_GROUP,
    EPOCH_START,
    GET_LR_CALL,
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
)
from ..tracefile.writer import FLUSH_ROWS, FLUSH_SECONDS, PartWriter, check_output_dir
from . import hotpath, lifecycle, patching
from .callsites import FRAMEWORK_SITES, SITE_OPTIMIZER, SITE_SCHEDULER, SITE_ZERO_GRAD, SITES, call_site, site_lines
from .device import _CudaSpan, _Deferred, _lr_value, _prefetch, _read_lrs, _resolve
from .environment import (
    _default_out,
    _dist_rank_world,
    _hostname,
    _known_rank,
    _rank,
    _world_size,
    torchrun_run_id,
)
from .objects import (
    _grad_states,
    _jsonable,
    _optimizer_info,
    _replay_state,
    _scheduler_info,
    _total_steps,
    _unwrap_optimizer,
    _weak,
    effective_lr,
)
from .sampling import _sample_after, _sample_before
from .sink import _SINK

_make_event = functools.partial(tuple.__new__, Event)  # Event._make without its Python frame
_now = time.perf_counter_ns


def _warn_at(f: Finding) -> None:
    """An LRDebugWarning that points at the user's line, so warning filters and pytest see it there."""
    filename = f.file or "<unknown>"
    via = f" (called from {f.framework})" if f.framework else ""
    warnings.warn_explicit(f"[{f.code}] {f.message}{via}", LRDebugWarning, filename, f.line or 0,
                           module=os.path.splitext(os.path.basename(filename))[0], registry={})



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
                 "skipped", "cuda", "scaled", "closure")

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
        self.closure = False  # step() was given a closure (Lightning): its time includes forward and backward
        self.info: dict[str, Any] = {}


class _Sched:
    __slots__ = ("index", "ref", "opt", "info", "steps", "ost", "horizon")

    def __init__(self, index: int, sched, opt_index: int | None) -> None:
        self.index = index
        self.ref = weakref.ref(sched)
        self.opt = opt_index
        self.steps = 0
        self.ost: _Opt | None = None  # state of the optimizer it drives, cached for the hot path
        self.info: dict[str, Any] = {}
        self.horizon: tuple[str, Any] | None = None  # (attribute, value) of a finite schedule's length


_HORIZONS = ("T_max", "total_steps", "total_iters")  # a finite schedule's length, as its class names it
_KEPT_INFO = ("children", "group_lrs_before", "replay")  # what a re-read of a scheduler's arguments keeps


# Recorder.buf holds optimizer steps as flat values, Recorder.other every other event as a row tuple:
# both layouts are described in tracefile/columns.py, which turns them into columns.


class Recorder:
    """Records one trace. Created by ``trace()``; callbacks arrive from ``patching`` via ``_SINK.target``."""

    # What every event reads or writes: slots, which the compiled hot path reads at their offsets.
    __slots__ = ("enabled", "buf", "other", "_seq", "_opts", "_scheds", "_data_wait", "_flush_len", "checker",
                 "sample_updates", "cuda_timing", "_frameworks", "__dict__", "__weakref__")

    writer_class = PartWriter  # a subclass may write lazily or elsewhere (record.child)

    def __init__(
        self,
        objects: Iterable[Any] = (),
        out: str | os.PathLike | None = None,
        strict: bool = False,
        ignore: Iterable[str] = (),
        sample_updates: int = 0,
        cuda_timing: bool = False,
        flush_rows: int = FLUSH_ROWS,
        flush_seconds: float = FLUSH_SECONDS,
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
        self.run_id = os.environ.get("LRDEBUG_RUN_ID") or torchrun_run_id() or uuid.uuid4().hex
        self.path = Path(out) if out is not None else _default_out()
        # Optimizer steps, the hot path: STEP_FIELDS values per step, flat. Appending a row's values
        # (``buf += (...)``) frees the tuple at once, where a list of row tuples kept one GC-tracked
        # object per step: more memory, and collections that walk them all.
        self.buf: list = []
        # The first optimizer step takes the flush branch of optimizer_post (no test of its own on the
        # hot path), which wakes the writer at once and sets the real threshold.
        self._flush_len = STEP_FIELDS
        self._full_len = flush_rows * STEP_FIELDS
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
        self._wrappers: dict[int, tuple[Any, _Opt]] = {}  # id(wrapper) -> (weak ref, the inner optimizer's state)
        self.enabled = False
        self.closed = False
        self.incomplete: str | None = None
        self.ended: str | None = None  # how the process left the trace: see ended_by()
        self._error_reported = False
        self._pid = os.getpid()
        self.start_unix_ns = time.time_ns()
        self._offset_ns = self.start_unix_ns - _now()
        self._warned: set[tuple[str, str | None, int | None]] = set()
        self._frameworks: dict[tuple, str] = {}  # (file, line, event) -> framework frame
        self.checker = None
        if live_checks and not self.ignore.issuperset(CODES):  # every code ignored: no live engine at all
            try:
                from ..rules import Checker

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
            self._filter.add(id(self._opt_state(obj).ref()))
        elif callable(getattr(obj, "step", None)) and hasattr(obj, "optimizer"):
            self._filter.add(id(obj))
            self._filter.add(id(obj.optimizer))
            if isinstance(obj.optimizer, torch.optim.Optimizer):
                self._filter.add(id(self._opt_state(obj.optimizer).ref()))
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
        self.ended = self.ended or ended_by(exc)
        lifecycle.closing(self)  # a signal from here on waits for the save (see lifecycle)
        try:
            self._close(exc)
        finally:
            lifecycle.closed(self)

    def _close(self, exc: BaseException | None) -> None:
        _SINK.remove(self)
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
                findings = self.checker.finish(completed=self.ended == "normally")
            except Exception as e:  # noqa: BLE001
                self._internal_error(f"checks failed: {type(e).__name__}: {e}")
        if findings and self._frameworks:
            from ..rules import attach_frameworks

            attach_frameworks(findings, self._frameworks)
        reason = self.incomplete
        if exc is not None and not isinstance(exc, (Exception, SystemExit)):
            reason = reason or f"interrupted by {type(exc).__name__}"
        if self.writer is not None:
            self.writer.close(reason, [f.to_dict() for f in findings], ended=self.ended)
        if self.summary:
            print_summary(self, findings, exc)
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
        from ..tracefile import load

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
        alias = self._wrappers.get(id(opt))
        if alias is not None and alias[0]() is opt and alias[1].ref() is not None:
            return alias[1]
        wrapper, opt = opt, _unwrap_optimizer(opt)
        st = self._opts.get(id(opt))
        if st is None or st.ref() is not opt:
            with self._registry_lock:
                st = _Opt(len(self._opt_list), opt)
                st.info = _optimizer_info(opt, st.index)
                self._opt_list.append(st)
                self._opts[id(opt)] = st
            self._observe_rank()
            if self.checker is not None:
                self.checker.register_optimizer(st.index, st.info)
            installation = _SINK.installation
            if installation is not None:
                installation.install_timm()  # a script that imported timm since the trace started
        if wrapper is not opt:  # its steps are the inner optimizer's: one optimizer, two handles
            self._wrappers[id(wrapper)] = (_weak(wrapper), st)
            with self._registry_lock:
                names = st.info.setdefault("wrappers", [])
                if type(wrapper).__name__ not in names:
                    names.append(type(wrapper).__name__)
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
            children = [self._sched_state(c).index for c in getattr(sched, "_schedulers", ()) or ()]
            self._refresh_info(st, sched, {"children": children} if children else {})
        return st

    def _refresh_info(self, st: _Sched, sched, keep: dict[str, Any]) -> None:
        """Read a scheduler's arguments again (at construction, after load_state_dict, when its length
        changed) and tell the rules: they judge the schedule as it is now."""
        with self._registry_lock:
            st.info = _scheduler_info(sched, st.index, st.opt) | keep
            # getattr, not sched.__dict__: reading that slows the scheduler's own step (objects.keep_attributes_fast)
            name = next((a for a in _HORIZONS if getattr(sched, a, None) is not None), None)
            st.horizon = (name, getattr(sched, name)) if name else None
        if self.checker is not None:
            self.checker.register_scheduler(st.index, st.info)

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
                if o.closure:
                    info["step_closure"] = True
            schedulers = [dict(s.info) for s in self._sched_list]
            for s, info in zip(self._sched_list, schedulers):
                info["steps"] = s.steps
        return {
            "schema_version": SCHEMA_VERSION,
            "lrdebug_version": __version__,
            "hot_path": hotpath.IMPLEMENTATION,
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
            "site_lines": site_lines(),
            "frameworks": _framework_versions(),
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
            self._checks_failed(e)
            return
        for f in new:
            self._report_finding(f)

    def _checks_failed(self, e: Exception) -> None:
        self.checker = None
        reason = f"a live check failed: {type(e).__name__}: {e}"
        self.incomplete = self.incomplete or reason
        self._report_once(f"lrdebug: internal error ({reason}); checks stopped, recording to {self.path} "
                          "and training continue")

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
            from ..rules import attach_frameworks

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
            if kwargs or len(args) > 1:  # args[0] is the optimizer; step(closure): forward and backward inside
                if not st.closure and (args[1] if len(args) > 1 else kwargs.get("closure")) is not None:
                    st.closure = True
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
                st.cuda = _CudaSpan()
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
            site = call_site(1, SITE_OPTIMIZER)  # patching's hook, if one is between, is skipped as internal
            groups = opt.param_groups
            extra = None
            if st.cuda is not None:
                extra = (st.cuda.stop(), None)
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
                found_inf = getattr(opt, "found_inf", None)
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
                self._buffer_filled()
        except Exception as e:  # noqa: BLE001
            self._internal_error(f"optimizer_post: {type(e).__name__}: {e}")
            return
        if self.checker is not None:
            self._check_step(event, seq, st.index, None, step, lrs, grads, site, None, None, None, t0)

    def _buffer_filled(self) -> None:
        """The step buffer reached its threshold: wake the writer, or write here if it fell behind."""
        if len(self.buf) >= 8 * self._flush_len and self._flush_len == self._full_len:
            self.writer.flush(full=True)  # the writer fell behind (slow disk): write here, memory stays bounded
        else:
            self.writer.wake(first=self._flush_len != self._full_len)
            self._flush_len = self._full_len

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
            horizon = st.horizon
            if horizon is not None and getattr(sched, horizon[0], None) != horizon[1]:  # the user resized it
                self._refresh_info(st, sched, {k: v for k, v in st.info.items()
                                               if k in _KEPT_INFO})
            site = call_site(1, SITE_SCHEDULER)  # patching's step wrapper (Python, or none when compiled) is skipped
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
    def scheduler_init(self, sched, lrs_before: tuple | None = None) -> None:
        if not self.enabled or not self._wants(sched):
            return
        st = self._sched_state(sched)
        keep = {k: v for k, v in st.info.items() if k == "children"}
        if lrs_before is not None:
            keep["group_lrs_before"] = [_jsonable(_lr_value(v)) for v in lrs_before]
        if "children" not in keep and isinstance(sched, patching.LRScheduler):
            replay = _replay_state(sched)
            if replay is not None:
                keep["replay"] = replay  # as built: the report can run the schedule as it was meant
        self._refresh_info(st, sched, keep)
        opt = getattr(sched, "optimizer", None)
        opt_steps = _total_steps(opt) if isinstance(opt, torch.optim.Optimizer) else None
        site = call_site()
        lrs = tuple([_lr_value(g["lr"]) for g in opt.param_groups]) if st.opt is not None else None
        t = _now()
        seq = self._append(SCHEDULER_INIT, t, 0, st.opt, st.index, None, site, lrs, None, None, opt_steps)
        file, line = self._site_fields(site, SCHEDULER_INIT)
        self._check(Event(SCHEDULER_INIT, seq, optimizer=st.opt, scheduler=st.index, lrs=lrs or (), file=file,
                          line=line, value=opt_steps, t_ns=t))

    @_guarded
    def scheduler_load_state(self, sched) -> None:
        if not self.enabled or not self._wants(sched):
            return
        st = self._sched_state(sched)
        # load_state_dict restores the schedule's arguments too (a checkpoint's total_iters wins over the
        # constructor's): the rules judge the schedule as restored.
        self._refresh_info(st, sched, {k: v for k, v in st.info.items() if k in _KEPT_INFO})
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

    def zero_grad(self, obj, origin, t0, t1, in_place=False) -> None:
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
            site = call_site(1, SITE_ZERO_GRAD)  # patching's zero_grad wrapper is skipped as internal
            seq = next(self._seq)
            self.other.append((ZERO_GRAD, seq, t0, t1 - t0, index, None, None, site, None, None, origin, None,
                               1.0 if in_place else None, None, None, None, None, None))
        except Exception as e:  # noqa: BLE001
            self._internal_error(f"zero_grad: {type(e).__name__}: {e}")
            return
        checker = self.checker
        if checker is not None:
            checker.zero_grad(seq, in_place)  # the only rule state a zero_grad changes; it finds nothing by itself

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
        return columns_from_rows(step_values, other_rows, self._offset_ns, self._trace_rank(), SITES,
                                 FRAMEWORK_SITES)

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



hotpath.bind(Recorder, _Opt, _Sched, type(_SINK), patching)

_VERSIONS: dict[str, str | None] = {}


def _framework_versions() -> dict[str, str]:
    """The installed packages whose code called optimizer.step() & co. (their frames in FRAMEWORK_SITES,
    ``lightning/pytorch/...py:123``) with their versions: ``{"lightning": "2.4.0"}``. Packages without a
    version (the standard library) are left out; each is looked up once per process."""
    out = {}
    for label in set(FRAMEWORK_SITES):
        if not label or label.startswith("<"):
            continue
        top = label.split("/", 1)[0].split(os.sep, 1)[0]
        if top not in _VERSIONS:
            version = None
            try:
                import importlib.metadata

                version = importlib.metadata.version(top)
            except Exception:  # noqa: BLE001 - not a distribution's name: the module may say
                v = getattr(sys.modules.get(top), "__version__", None)
                version = v if isinstance(v, str) else None
            _VERSIONS[top] = version
        if _VERSIONS[top]:
            out[top] = _VERSIONS[top]
    return dict(sorted(out.items()))


def ended_by(exc: BaseException | None) -> str:
    """The status file's ``ended``: "normally", "exception: <type>" (a ``sys.exit`` with a status
    other than 0 counts as an exception), or — set by lifecycle — "signal: <name>"."""
    if exc is None or (isinstance(exc, SystemExit) and exc.code in (None, 0)):
        return "normally"
    return f"exception: {type(exc).__name__}"


def print_summary(rec: Recorder, findings: list[Finding], exc: BaseException | None = None) -> None:
    """The job's one summary on stderr at the end (``record/summary.py``): where the trace is and
    what every rank found, printed by the process the user started or local rank 0 alone. After
    Ctrl-C or a termination signal it waits for no other rank."""
    if rec._error_reported:
        return  # the one line reporting the failure already said it all; findings would be partial
    from . import summary

    stopped = (exc is not None and not isinstance(exc, (Exception, SystemExit))) or \
        str(rec.incomplete or "").startswith("terminated by")
    summary.print_summary(rec.path, ignore=rec.ignore, wait_s=0.0 if stopped else None)
