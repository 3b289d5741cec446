"""Call sites: where in the user's code each recorded call came from, found cheaply per event.

A site is keyed by (id(code), f_lasti): hashing a code object and reading f_lineno both cost
microseconds in long functions, so they are computed once per new site. Code objects are kept
referenced so their ids are never reused.
"""

from __future__ import annotations

import functools
import linecache
import os
import sys
import threading
from typing import Any

import torch

_LRDEBUG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_INTERNAL_PREFIXES = (_LRDEBUG_DIR + os.sep, _TORCH_DIR + os.sep)

_code_kind: dict[int, int] = {}
_codes_kept: list[Any] = []
_site_ids: dict[tuple, int] = {}
SITES: list[tuple[str, int, str]] = []
# Per site id: when the call came from an installed package (Lightning, transformers, accelerate ...),
# that package's frame as "package/module.py:line", while SITES holds the user's frame that led there.
FRAMEWORK_SITES: list[str | None] = []
# Per site id: the text of the user's line (stripped, at most SITE_LINE_MAX characters), read once when the
# site is registered, so a report shows it on another machine; "" when the file cannot be read.
SITE_LINES: list[str] = []
SITE_LINE_MAX = 200
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
                SITES.append((_absolute(f.f_code.co_filename), f.f_lineno or 0, f.f_code.co_name))
                FRAMEWORK_SITES.append(framework)
                SITE_LINES.append(_line_text(f.f_code.co_filename, f.f_lineno or 0))
                sid = len(SITES) - 1
                _site_ids[key] = sid
    return sid



def _line_text(filename: str, line: int) -> str:
    """The source text of a site's line, once per new site (never per event); "" when unreadable."""
    try:
        text = linecache.getline(filename, line).strip() if line > 0 else ""
    except Exception:  # noqa: BLE001 - a loader that fails must not stop the recording
        return ""
    return text[:SITE_LINE_MAX]


def site_lines() -> dict[str, str]:
    """``"file:line" -> text`` of every registered site whose line could be read (the run metadata)."""
    with _site_lock:
        pairs = list(zip(SITES, SITE_LINES))
    return {f"{file}:{line}": text for (file, line, _), text in pairs if text}


def _absolute(filename: str) -> str:
    """A site's file as an absolute path (once per new site), so every rank of a job names a file the same
    way: ``python train.py`` compiles ``train.py`` relative, a launcher's worker may compile it absolute.
    Pseudo-files (``<string>``, ``<stdin>``) stay as they are."""
    if not filename or filename.startswith("<") or os.path.isabs(filename):
        return filename
    return os.path.abspath(filename)


def _after_fork_in_child() -> None:
    global _site_lock
    _site_lock = threading.Lock()  # another thread may have held it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
