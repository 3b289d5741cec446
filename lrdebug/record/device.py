"""Values read from the user's tensors without a device synchronisation: learning rates (tensor LRs
included), device scalars brought to the host later by the writer thread, and CUDA step timing.

Each device value is an object with ``resolve()``, which the trace's column conversion calls off the
training thread.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

import torch

from ..tracefile.columns import STEP_FIELDS


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



class _CudaSpan:
    """Start and end events around an optimizer step; ``resolve()`` polls the end (no sync), in ns."""

    __slots__ = ("start", "end")

    def __init__(self) -> None:
        self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.start.record()

    def stop(self) -> _CudaSpan:
        self.end.record()
        return self

    def resolve(self) -> int:
        while not self.end.query():
            time.sleep(0.0005)
        return int(self.start.elapsed_time(self.end) * 1e6)


def _after_fork_in_child() -> None:
    global _device_lock
    _device_lock = threading.Lock()  # another thread may have held it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _resolve(v: Any) -> Any:
    return v.resolve() if isinstance(v, _Deferred) else v
