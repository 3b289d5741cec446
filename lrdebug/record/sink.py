"""The single installation of hooks and patches, shared by every active recorder (nested traces)."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from . import patching

if TYPE_CHECKING:
    from .recorder import Recorder

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

    __slots__ = ("active", "target", "installation", "lock")  # the hot path reads ``target`` at its offset

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
    for rec in _SINK.active:
        rec.enabled = False
        rec.closed = True
        rec.buf = []
    _SINK.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
