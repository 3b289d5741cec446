"""How optimizers and param groups are named, in finding messages and in every report: one convention.

- An optimizer is named by its class (``AdamW``), and when it is not the first optimizer of the run,
  by its class and index (``Adam``, ``Adam-1``: a GAN's two Adams). The name depends on nothing but
  the optimizer, so it never changes as a run goes on, and live findings name it as the offline
  report does.
- A param group is named by its ``name`` key when it has one, else ``{optimizer}/pg{group + 1}``
  (Lightning's convention: group 0 is ``pg1``).
- Several groups named in one sentence: ``groups_text``.
"""

from __future__ import annotations

from typing import Any, Sequence


def optimizer_label(cls: Any, opt: int) -> str:
    """``cls``: the optimizer's class name; ``opt``: its index. The first optimizer (index 0) is its class,
    ``AdamW``; every later one has its index too, ``Adam-1``, ``SGD-2``: a name that depends on nothing
    but the optimizer itself, so the rules name it the same live (where optimizers are met one by
    one) and offline, and it never changes as a run goes on."""
    cls = cls or "optimizer"
    return str(cls) if opt == 0 else f"{cls}-{opt}"


def group_label(optimizer: str, name: Any, group: int) -> str:
    """``name`` when set (not None, not empty), else ``{optimizer}/pg{group + 1}``."""
    if name is not None and name != "":
        return str(name)
    return f"{optimizer}/pg{group + 1}"


def groups_text(labels: Sequence[str], most: int = 4) -> str:
    """``a``, ``a and b``, ``a, b and c``; more than ``most``: ``12 groups (a, b, … l)``."""
    labels = list(labels)
    if len(labels) <= 1:
        return "".join(labels)
    if len(labels) <= most:
        return ", ".join(labels[:-1]) + " and " + labels[-1]
    return f"{len(labels)} groups ({labels[0]}, {labels[1]}, … {labels[-1]})"
