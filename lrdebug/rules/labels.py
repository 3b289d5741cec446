"""How optimizers and param groups are named, in finding messages and in every report: one convention.

- An optimizer is named by its class (``AdamW``); a later optimizer of a class already seen gets its
  index (``Adam``, ``Adam-1``: a GAN's two Adams). The name depends only on the optimizers before it,
  so it never changes as a run goes on, and live findings name it as the offline report does.
- A param group is named by its ``name`` key when it has one, else ``{optimizer}/pg{group + 1}``
  (Lightning's convention: group 0 is ``pg1``).
- Several groups named in one sentence: ``groups_text``.
"""

from __future__ import annotations

from typing import Any, Sequence


def optimizer_label(classes: Sequence[Any], opt: int) -> str:
    """``classes``: the class name of each optimizer by index (at least up to ``opt``)."""
    cls = classes[opt] if 0 <= opt < len(classes) and classes[opt] else "optimizer"
    earlier = [c or "optimizer" for c in classes[:max(opt, 0)]]
    return str(cls) if cls not in earlier else f"{cls}-{opt}"


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
