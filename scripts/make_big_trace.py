"""Write a large synthetic trace, to measure the report at scale (not kept in git).

    python scripts/make_big_trace.py --rows 10000000 /tmp/big
    python scripts/make_big_trace.py --ranks 256 --rows 200000 --groups 2 --diverge 7:50000 --short 200:90000 \
        --slow 13:1.8 /tmp/big256    # 256 ranks x 100k steps x 2 groups: one diverging, one short, one slow

``--rows`` counts optimizer_step rows (per rank with ``--ranks``). Each iteration also records a
zero_grad and a scheduler_step, as a loop stepping a per-batch scheduler does; a DataLoader epoch starts every ``--epoch`` steps and
the update is sampled every 100 steps. Parts are written through ``tracefile.writer.PartWriter``, 65,536
events each: about a real fast loop's part (16,384 steps of 3-5 events), so the files look like a
real run's.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from lrdebug import __version__
from lrdebug.tracefile.schema import SCHEMA_VERSION
from lrdebug.tracefile.writer import PartWriter

EVENTS_PER_PART = 65536


def lr_at(step: np.ndarray, total: int, groups: int, diverge: int | None = None) -> list[np.ndarray]:
    """Linear warmup over 1% of the steps, then cosine decay; group g runs at 1/(g+1) of the base.
    From step ``diverge`` on, the LR is 10% higher (a rank that disagrees)."""
    warm = max(1, total // 100)
    frac = np.clip((step - warm) / max(1, total - warm), 0.0, 1.0)
    base = np.where(step < warm, step / warm, 0.5 * (1 + np.cos(math.pi * frac)))
    if diverge is not None:
        base = np.where(step >= diverge, base * 1.1, base)
    return [3e-4 / (g + 1) * base for g in range(groups)]


def iteration_columns(first: int, count: int, total: int, groups: int, epoch: int, rng,
                      t_base: int, diverge: int | None = None, slow: float = 1.0) -> tuple[dict, int, np.ndarray]:
    """Rows of ``count`` iterations starting at step ``first``, in recording order."""
    steps = np.arange(first, first + count, dtype=np.int64)
    epoch_rows = (steps - 1) % epoch == 0
    # Per iteration: [epoch_start], zero_grad, optimizer_step x groups, scheduler_step x groups.
    per_iter = 1 + 2 * groups + epoch_rows.astype(np.int64)
    n = int(per_iter.sum())
    start = np.cumsum(per_iter) - per_iter
    event = np.empty(n, dtype=object)
    group = np.full(n, -1, dtype=np.int32)
    step = np.zeros(n, dtype=np.int64)
    lr = np.full(n, np.nan)

    pos = start.copy()
    event[pos[epoch_rows]] = "epoch_start"
    pos += epoch_rows
    event[pos] = "zero_grad"
    zero_pos = pos.copy()
    pos += 1
    lrs = lr_at(steps, total, groups, diverge)
    opt_pos, sched_pos = [], []
    for g in range(groups):
        event[pos + g] = "optimizer_step"
        group[pos + g], step[pos + g], lr[pos + g] = g, steps, lrs[g]
        opt_pos.append(pos + g)
    pos += groups
    after = lr_at(steps + 1, total, groups, diverge)
    for g in range(groups):
        event[pos + g] = "scheduler_step"
        group[pos + g], step[pos + g], lr[pos + g] = g, steps, after[g]
        sched_pos.append(pos + g)
    opt_pos, sched_pos = np.concatenate(opt_pos), np.concatenate(sched_pos)

    # seq counts events, not rows: rows of one optimizer/scheduler step share it.
    ev_seq = np.cumsum(group <= 0) - 1

    dur = np.zeros(n, dtype=np.int64)
    opt_dur = (slow * rng.lognormal(math.log(400_000), 0.3, count)).astype(np.int64)
    wait = rng.lognormal(math.log(150_000), 0.8, count).astype(np.int64)
    iter_ns = opt_dur + wait + rng.lognormal(math.log(3_000_000), 0.2, count).astype(np.int64)
    iter_col = np.zeros(n, dtype=np.int64)
    wait_col = np.zeros(n, dtype=np.int64)
    for g in range(groups):
        p = opt_pos[len(steps) * g:len(steps) * (g + 1)]
        dur[p], iter_col[p], wait_col[p] = opt_dur, iter_ns, wait
    dur[sched_pos] = rng.lognormal(math.log(8_000), 0.3, len(sched_pos)).astype(np.int64)
    dur[zero_pos] = rng.lognormal(math.log(30_000), 0.3, count).astype(np.int64)
    t_ns = t_base + np.cumsum(np.repeat(iter_ns // per_iter, per_iter))

    is_opt = event == "optimizer_step"
    is_sched = event == "scheduler_step"
    sampled = is_opt & ((step - 1) % 100 == 0)
    grad_norm = np.where(sampled, rng.uniform(0.5, 2.0, n), np.nan)
    param_norm = np.where(sampled, 40.0, np.nan)
    update_norm = np.where(sampled, lr * rng.uniform(50, 70, n), np.nan)

    def masked(values, mask, type_):
        return pa.array(values, type=type_, mask=~mask)

    columns = {
        "rank": pa.array(np.zeros(n, np.int32)),
        "seq": pa.array(ev_seq, type=pa.int64()),
        "t_ns": pa.array(t_ns),
        "event": pa.array(event, type=pa.string()).dictionary_encode(),
        "optimizer": masked(np.zeros(n, np.int32), event != "epoch_start", pa.int32()),
        "scheduler": masked(np.zeros(n, np.int32), is_sched, pa.int32()),
        "group": masked(group, group >= 0, pa.int32()),
        "step": masked(step, is_opt | is_sched, pa.int64()),
        "lr": masked(lr, is_opt | is_sched, pa.float64()),
        "dur_ns": pa.array(dur),
        "file": pa.array(np.full(n, "train.py", dtype=object), type=pa.string()).dictionary_encode(),
        "line": pa.array(np.where(is_opt, 42, np.where(is_sched, 43, 40)).astype(np.int32)),
        "origin": pa.array(np.where(is_sched, "user", np.where(event == "zero_grad", "optimizer", None)),
                           type=pa.string()).dictionary_encode(),
        "grad": masked(np.ones(n, np.int8), is_opt, pa.int8()),
        "loader": masked(np.zeros(n, np.int32), event == "epoch_start", pa.int32()),
        "iter_ns": masked(iter_col, is_opt & (step > 1), pa.int64()),
        "data_wait_ns": masked(wait_col, is_opt, pa.int64()),
        "grad_norm": masked(grad_norm, sampled, pa.float64()),
        "param_norm": masked(param_norm, sampled, pa.float64()),
        "update_norm": masked(update_norm, sampled, pa.float64()),
        "update_ratio": masked(update_norm / param_norm, sampled, pa.float64()),
        "eff_lr": masked(update_norm / grad_norm, sampled, pa.float64()),
    }
    return columns, n, ev_seq


def _rank_map(items: list[str], kind) -> dict[int, object]:
    out = {}
    for item in items:
        rank, _, value = item.partition(":")
        out[int(rank)] = kind(value)
    return out


def write_rank(out: Path, rank: int, ranks: int, total: int, args, run_id: str, start_ns: int) -> tuple[int, int]:
    """One rank's partition: ``total`` steps (fewer for a --short rank). Returns (rows, parts)."""
    diverge = _rank_map(args.diverge, int).get(rank)
    slow = _rank_map(args.slow, float).get(rank, 1.0)
    last = min(total, _rank_map(args.short, int).get(rank, total))
    per_part = max(1, args.part_events // 3)
    rng = np.random.default_rng(rank)
    state = {"next": 1, "seq": 0, "t": start_ns}

    def metadata() -> dict:
        return {
            "schema_version": SCHEMA_VERSION, "lrdebug_version": __version__, "torch_version": "synthetic",
            "python_version": "", "argv": ["train.py", "--synthetic"], "cwd": "/", "pid": 0, "host": "synthetic",
            "run_id": "synthetic", "rank": rank, "world_size": ranks, "start_unix_ns": start_ns,
            "sample_updates": 100, "cuda_timing": False,
            "optimizers": [{"index": 0, "class": "AdamW", "groups": [
                {"index": g, "name": "backbone" if g == 0 and args.groups > 1 else None} for g in range(args.groups)],
                "steps": state["next"] - 1, "skipped": 0}],
            "schedulers": [{"index": 0, "class": "LambdaLR", "optimizer": 0, "params": {}, "steps": state["next"] - 1}],
        }

    def drain():
        first = state["next"]
        if first > last:
            return None
        count = min(per_part, last - first + 1)
        columns, n, ev_seq = iteration_columns(first, count, total, args.groups, args.epoch, rng, state["t"],
                                               diverge, slow)
        state["t"] = int(columns["t_ns"][-1].as_py())
        columns["seq"] = pa.array(ev_seq + state["seq"])
        state["seq"] += int(ev_seq[-1]) + 1
        state["next"] = first + count
        return columns, n

    errors = []
    writer = PartWriter(out, drain, metadata, rank=lambda: rank, run_id=run_id, on_error=errors.append)
    writer.merge_parts = False  # keep one file per part: the reader is measured streaming over many files
    while state["next"] <= last and not errors:
        writer.flush()
    writer.close(None, [])
    if errors:
        raise SystemExit(f"writing rank {rank} failed: {errors[0]}")
    return writer.rows, writer.parts


def _write_ranks(job) -> tuple[int, int]:
    out, ranks_of_job, ranks, total, args, run_id, start_ns = job
    rows = parts = 0
    for r in ranks_of_job:
        n, p = write_rank(out, r, ranks, total, args, run_id, start_ns)
        rows, parts = rows + n, parts + p
    return rows, parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--rows", type=int, default=10_000_000, help="optimizer_step rows per rank (default 10M)")
    ap.add_argument("--groups", type=int, default=1, help="param groups of the optimizer")
    ap.add_argument("--epoch", type=int, default=1000, help="optimizer steps per epoch")
    ap.add_argument("--part-events", type=int, default=EVENTS_PER_PART, help="events per part file")
    ap.add_argument("--ranks", type=int, default=1, help="ranks (partitions), each its own synthetic process")
    ap.add_argument("--diverge", action="append", default=[], metavar="RANK:STEP",
                    help="this rank's LR is 10%% higher from STEP on (repeatable)")
    ap.add_argument("--short", action="append", default=[], metavar="RANK:STEPS",
                    help="this rank stops after STEPS steps (repeatable)")
    ap.add_argument("--slow", action="append", default=[], metavar="RANK:FACTOR",
                    help="this rank's optimizer steps take FACTOR times as long (repeatable)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes writing ranks")
    args = ap.parse_args()

    total = args.rows // args.groups
    start_ns = time.time_ns() - int(total * 3.6e6)  # the synthetic run ends now
    run_id = "synthetic-" + uuid.uuid4().hex
    t0 = time.perf_counter()
    jobs = max(1, min(args.jobs, args.ranks))
    work = [(args.out, list(range(j, args.ranks, jobs)), args.ranks, total, args, run_id, start_ns)
            for j in range(jobs)]
    if jobs == 1:
        results = [_write_ranks(w) for w in work]
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = pool.map(_write_ranks, work)
    rows, parts = sum(r for r, _ in results), sum(p for _, p in results)
    size = sum(p.stat().st_size for p in args.out.rglob("*.parquet"))
    print(f"{args.out}: {args.ranks} rank(s), {rows:,} rows ({total * args.groups:,} optimizer_step rows per rank) "
          f"in {parts} parts, {size / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
