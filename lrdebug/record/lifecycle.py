"""Process lifecycle: a trace is saved however the process ends, and the process ends as it would have.

SIGTERM (torchrun, SLURM preemption, Kubernetes) kills a Python process without running ``finally``
blocks or ``with`` exits: the rows buffered since the last part would be lost and the trace would
stay "running". While a trace is open in the main thread, lrdebug takes SIGTERM and SIGINT, saves
what it holds, and then does what the process would have done:

- default action (SIG_DFL): close every open trace (status ``complete: false``, reason
  ``terminated by SIGTERM``), restore the default and send the signal again, so the process dies by
  the same signal as without lrdebug;
- a Python handler installed before the trace started (the user's): write the buffered rows as a
  part, then call that handler; if it ends the process by an exception or ``sys.exit``, the ``with``
  block closes the trace as for any exception, and if it returns, recording goes on;
- ignored (SIG_IGN), or SIGINT with Python's own handler: left alone. KeyboardInterrupt leaves the
  ``with`` block, which closes the trace (reason ``interrupted by KeyboardInterrupt``).

A handler the user installs while a trace is open replaces lrdebug's and stays when the trace closes;
otherwise the previous handler is restored when the last main-thread trace closes. Handlers can only
be set from the main thread: a trace started in another thread does not touch them. Traces still
open at interpreter exit (``trace().__enter__()`` without an exit) are closed by ``atexit``. A forked
child records nothing, so it has nothing to save and its signals act as they would have.

A signal that arrives while a trace is being closed (after an exception, at normal exit, during the
final merge) never throws the save away: when the close runs in the main thread — where Python runs
signal handlers, on top of the close — the signal is held until the close is done (at most
SAVE_TIMEOUT_S, after which the process exits with status 128 + signal) and then acted on as above;
when the close runs in another thread, the handler waits for it (bounded the same way). A second
signal while one is being handled is held too: the first one ends the process.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from typing import Any, Callable

from ..tracefile.schema import TraceError

SIGNALS = (signal.SIGTERM, signal.SIGINT)
SAVE_TIMEOUT_S = 30.0  # a signal never waits longer than this for the trace to be written

_lock = threading.RLock()
_open: list[Any] = []  # recorders open in this process, in start order
_owners: set[int] = set()  # ids of the open recorders started in the main thread
_previous: dict[int, Any] = {}  # signal -> the handler lrdebug's replaced
_handling = False
_closing: dict[int, int] = {}  # id(recorder) -> ident of the thread closing it, while it closes
_done: dict[int, threading.Event] = {}  # id(recorder) -> set once its close has finished
_pending: int | None = None  # a signal held until the main thread's close is done
_sigint_guarded = False  # SIGINT taken from Python's handler for the time of a close


def check_free(path: Any) -> None:
    """Refuse a folder that another open trace of this process writes."""
    with _lock:
        for other in _open:
            if os.path.abspath(other.path) == os.path.abspath(path):
                raise TraceError(
                    f"{path} is already written by another open trace in this process; "
                    "choose another output directory (out=...)"
                )


def started(rec: Any) -> None:
    """Register an open recorder; the first one in the main thread takes SIGTERM and SIGINT."""
    with _lock:
        _open.append(rec)
        if threading.current_thread() is threading.main_thread():
            _owners.add(id(rec))
            if len(_owners) == 1:
                _install()


def closing(rec: Any) -> None:
    """A recorder starts closing: it stays registered (and its signal handlers installed) until
    ``closed``, so a signal arriving meanwhile waits for the save instead of throwing it away."""
    with _lock:
        _closing[id(rec)] = threading.get_ident()
        _done[id(rec)] = threading.Event()
        if threading.current_thread() is threading.main_thread():
            _guard_sigint()


def closed(rec: Any) -> None:
    """Forget a recorder; the last main-thread one puts the previous signal handlers back. A signal
    held during the close is acted on now."""
    global _pending
    with _lock:
        _closing.pop(id(rec), None)
        done = _done.pop(id(rec), None)
        if done is not None:
            done.set()
        if rec in _open:
            _open.remove(rec)
        signum = previous = None
        if threading.current_thread() is threading.main_thread() and _main_closes() == 0:
            if _pending is not None:
                signum, _pending = _pending, None
                previous = _previous.get(signum, signal.SIG_DFL)
            _unguard_sigint()
        if id(rec) in _owners:
            _owners.discard(id(rec))
            if not _owners and signum is None:
                _restore()
    if signum is not None:
        _act_on(signum, None, previous)  # ends the process, unless a Python handler returns
        with _lock:
            if not _owners:
                _restore()


def _guard_sigint() -> None:
    """While the main thread closes a trace, SIGINT is taken even where Python's own handler is in
    place: a KeyboardInterrupt raised inside the save would throw it away. It is raised once the
    save is done."""
    global _sigint_guarded
    if _sigint_guarded or signal.SIGINT in _previous:
        return
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _handle)
            _previous[signal.SIGINT] = signal.default_int_handler
            _sigint_guarded = True
    except (ValueError, OSError):
        pass


def _unguard_sigint() -> None:
    global _sigint_guarded
    if not _sigint_guarded:
        return
    _sigint_guarded = False
    previous = _previous.pop(signal.SIGINT, signal.default_int_handler)
    try:
        if signal.getsignal(signal.SIGINT) is _handle:
            signal.signal(signal.SIGINT, previous)
    except (ValueError, OSError):
        pass


def _main_closes() -> int:
    main = threading.main_thread().ident
    return sum(1 for ident in list(_closing.values()) if ident == main)


def _install() -> None:
    for sig in SIGNALS:
        previous = signal.getsignal(sig)
        if previous in (signal.SIG_IGN, None, _handle) or previous is signal.default_int_handler:
            continue
        signal.signal(sig, _handle)
        _previous[sig] = previous


def _restore() -> None:
    for sig, previous in list(_previous.items()):
        try:
            if signal.getsignal(sig) is _handle:
                signal.signal(sig, previous)
        except ValueError:  # not the main thread: ours stays and keeps delegating to `previous`
            continue
        del _previous[sig]


def _handle(signum: int, frame: Any) -> Any:
    global _handling, _pending
    if _handling or _main_closes():
        # The main thread, which this handler interrupted, is saving a trace (or another signal is
        # being handled): hold the signal until that save is done.
        if _pending is None:
            _pending = signum
            _watchdog()
        return None
    return _act_on(signum, frame, _previous.get(signum, signal.SIG_DFL))


def _act_on(signum: int, frame: Any, previous: Any) -> Any:
    """Save the traces, then do what ``previous`` (the handler lrdebug took the signal from) would."""
    global _handling, _pending
    if not _handling:
        _handling = True
        try:
            if callable(previous):
                _bounded(_flush_all)
            else:
                name = signal.Signals(signum).name
                _bounded(lambda: _close_all(f"terminated by {name}", f"signal: {name}"))
        finally:
            _handling = False
    held, _pending = _pending, None  # a second signal during the save: this one ends the process
    if callable(previous):
        return previous(signum, frame)
    del held
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # only reached if the signal could not be delivered to this thread


def _bounded(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a thread and wait at most SAVE_TIMEOUT_S: the interrupted main thread may hold a
    lock the writer needs, and saving must never hang the process."""
    worker = threading.Thread(target=_quietly, args=(fn,), name="lrdebug-save", daemon=True)
    worker.start()
    worker.join(SAVE_TIMEOUT_S)
    if worker.is_alive():
        print(f"lrdebug: the trace could not be saved within {SAVE_TIMEOUT_S:.0f} s", file=sys.stderr, flush=True)


_held_count = 0


def _watchdog() -> None:
    """A held signal ends the process after SAVE_TIMEOUT_S even if the save never finishes (by exit
    status 128 + signal: only the main thread could restore the default action and re-raise it)."""
    global _held_count
    _held_count += 1
    held = _held_count

    def expire() -> None:
        signum = _pending
        if signum is not None and _held_count == held:
            print(f"lrdebug: the trace could not be saved within {SAVE_TIMEOUT_S:.0f} s", file=sys.stderr,
                  flush=True)
            os._exit(128 + signum)

    timer = threading.Timer(SAVE_TIMEOUT_S, expire)
    timer.daemon = True
    timer.start()


def _quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - saving the trace must not change how the process ends
        print(f"lrdebug: saving the trace failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def _flush_all() -> None:
    for rec in list(_open):
        if not rec.closed and rec.writer is not None:
            rec.writer.flush()


def _close_all(reason: str | None, ended: str | None = None) -> None:
    for rec in reversed(list(_open)):  # innermost first
        if not rec.closed:
            if reason:
                rec.incomplete = rec.incomplete or reason
            if ended:
                rec.ended = rec.ended or ended  # an exception that came first stays the cause
            rec.close()
    for done in list(_done.values()):  # closes running in other threads: let them finish
        done.wait(SAVE_TIMEOUT_S)


@atexit.register
def _at_exit() -> None:
    _close_all(None)


def _after_fork_in_child() -> None:
    global _handling, _lock, _pending, _sigint_guarded
    _pending = None
    _sigint_guarded = False
    _lock = threading.RLock()  # another thread may have held it at the fork
    _open.clear()
    _owners.clear()
    _closing.clear()
    _done.clear()
    _handling = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
