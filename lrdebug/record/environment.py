"""The run's environment: rank, world size and launcher (torchrun), host, and the default output
directory, all derived locally (no collective call: a dead rank must not hang the others)."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path


def torchrun_run_id() -> str | None:
    """An id every rank of one torchrun launch derives alike from its environment, without talking."""
    if "TORCHELASTIC_RUN_ID" in os.environ and "MASTER_PORT" in os.environ:
        return "torchrun-{}-{}-{}".format(os.environ["TORCHELASTIC_RUN_ID"], os.environ.get("MASTER_ADDR", ""),
                                          os.environ["MASTER_PORT"])
    return None


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

