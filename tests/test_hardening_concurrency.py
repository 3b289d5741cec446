"""Forked children, threads, nested and repeated traces, and long runs: no row lost, none added."""

from __future__ import annotations

import json
import os
import textwrap
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import run_python

import lrdebug

FORKS = textwrap.dedent('''
    import json, os, sys
    import torch
    import torch.multiprocessing as mp
    from torch.utils.data import DataLoader, Dataset
    import lrdebug

    def side_training(steps):
        """What a child might do: train a model of its own. None of it may reach the trace."""
        m = torch.nn.Linear(2, 1)
        o = torch.optim.SGD(m.parameters(), lr=0.5)
        s = torch.optim.lr_scheduler.StepLR(o, 2)
        for _ in range(steps):
            o.zero_grad()
            m(torch.ones(1, 2)).sum().backward()
            o.step()
            s.step()

    class Data(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            side_training(3)
            return torch.full((4,), float(i))

    def child(queue):
        side_training(5)
        queue.put(os.getpid())

    if __name__ == "__main__":
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, 3)
        loader = DataLoader(Data(), batch_size=2, num_workers=2, multiprocessing_context="fork")
        steps = 0
        with lrdebug.trace(out=sys.argv[1], flush_seconds=0.01):
            for epoch in range(2):
                for xb in loader:
                    opt.zero_grad()
                    model(xb).sum().backward()
                    opt.step()
                    sched.step()
                    steps += 1
            ctx = mp.get_context("fork")
            queue = ctx.SimpleQueue()
            proc = ctx.Process(target=child, args=(queue,))
            proc.start()
            queue.get()
            proc.join()
            pid = os.fork()
            if pid == 0:  # leaves through sys.exit: the `with` and atexit run in the child too
                side_training(4)
                sys.exit(0)
            _, fork_status = os.waitpid(pid, 0)
        print(json.dumps({"steps": steps, "pid": os.getpid(), "mp_exit": proc.exitcode,
                          "fork_exit": os.waitstatus_to_exitcode(fork_status)}))
''')


def test_forked_children_write_nothing_and_add_no_rows(tmp_path):
    script = tmp_path / "forks.py"
    script.write_text(FORKS)
    out = tmp_path / "trace"
    proc = run_python(str(script), str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.splitlines()[-1])
    assert info["mp_exit"] == 0 and info["fork_exit"] == 0 and info["steps"] == 8
    assert proc.stderr.count("lrdebug: trace written to") == 1  # only the parent closes a trace
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert all(f.startswith("rank=0/part-") or f.startswith("_") or f == "rank=0/_lrdebug_status.json"
               for f in files), files
    df = lrdebug.load(out)
    steps = df[df.event == "optimizer_step"]
    assert steps["step"].tolist() == list(range(1, 9))
    assert set(df["optimizer"].dropna()) == {0}  # the children's optimizers never appear
    assert set(df["scheduler"].dropna()) == {0}
    assert df["seq"].is_unique
    status = json.loads((out / "rank=0" / "_lrdebug_status.json").read_text())
    assert status["complete"] is True and status["meta"]["pid"] == info["pid"]
    assert len(status["meta"]["optimizers"]) == 1 and status["rows"] == len(df)


def _train(model, opt, sched, steps, x):
    for _ in range(steps):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        sched.step()


def _objects(seed: int):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.9)
    return model, opt, sched


def test_two_threads_training_under_one_trace(tmp_path):
    n = 600
    out = tmp_path / "trace"
    start = threading.Barrier(2)
    errors = []

    def work(seed):
        try:
            model, opt, sched = _objects(seed)
            start.wait()
            _train(model, opt, sched, n, torch.ones(2, 4))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    with lrdebug.trace(out=out, flush_rows=128, flush_seconds=0.01, summary=False):
        threads = [threading.Thread(target=work, args=(seed,)) for seed in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    df = lrdebug.load(out)
    assert df["seq"].is_unique and sorted(df["seq"]) == list(range(len(df)))
    steps = df[df.event == "optimizer_step"]
    assert sorted(steps["optimizer"].unique()) == [0, 1]
    for _, rows in steps.groupby("optimizer"):
        assert sorted(rows["step"]) == list(range(1, n + 1))
    user_steps = df[(df.event == "scheduler_step") & (df.origin == "user")]
    assert user_steps.groupby("scheduler").size().tolist() == [n, n]
    assert (df.event == "zero_grad").sum() == 2 * n
    status = json.loads((out / "rank=0" / "_lrdebug_status.json").read_text())
    assert status["parts"] > 2  # the writer drained while both threads appended


def _opt_lrs(path: Path) -> list[tuple[int, float]]:
    df = lrdebug.load(path)
    steps = df[df.event == "optimizer_step"]
    return list(zip(steps["step"].tolist(), steps["lr"].tolist()))


def test_nested_traces_each_record_their_span(tmp_path):
    """Decided: a trace inside a trace records in both; each writes its own complete trace."""
    model, opt, sched = _objects(0)
    x = torch.ones(2, 4)
    with lrdebug.trace(out=tmp_path / "outer", summary=False):
        _train(model, opt, sched, 5, x)
        with lrdebug.trace(out=tmp_path / "inner", summary=False):
            _train(model, opt, sched, 10, x)
        _train(model, opt, sched, 5, x)
    outer, inner = _opt_lrs(tmp_path / "outer"), _opt_lrs(tmp_path / "inner")
    assert [s for s, _ in outer] == list(range(1, 21))
    assert [s for s, _ in inner] == list(range(1, 11))  # steps count from the trace's start
    assert [lr for _, lr in inner] == [lr for _, lr in outer[5:15]]
    for name in ("outer", "inner"):
        status = json.loads((tmp_path / name / "rank=0" / "_lrdebug_status.json").read_text())
        assert status["complete"] is True and status["state"] == "closed"


def test_nested_traces_cannot_share_a_folder(tmp_path):
    model, opt, sched = _objects(0)
    with lrdebug.trace(out=tmp_path / "t", summary=False):
        with pytest.raises(lrdebug.LRDebugError, match="another open trace"):
            with lrdebug.trace(out=tmp_path / "t", summary=False):
                pass
        _train(model, opt, sched, 3, torch.ones(2, 4))
    assert [s for s, _ in _opt_lrs(tmp_path / "t")] == [1, 2, 3]


def test_a_block_entered_twice_writes_two_traces(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, opt, sched = _objects(0)
    x = torch.ones(2, 4)
    block = lrdebug.trace(summary=False)
    with block:
        _train(model, opt, sched, 3, x)
    first = block.path
    with block:
        _train(model, opt, sched, 4, x)
    second = block.path

    @lrdebug.trace(summary=False)
    def run():
        _train(model, opt, sched, 2, x)

    run()
    third = run.last_trace.path
    run()
    fourth = run.last_trace.path
    with lrdebug.trace(summary=False) as outer:  # nested with out=None: a folder each
        with lrdebug.trace(summary=False) as inner:
            _train(model, opt, sched, 1, x)
    paths = [first, second, third, fourth, outer.path, inner.path]
    assert len({p.resolve() for p in paths}) == 6
    assert all(p.parent.resolve() == (tmp_path / "lrdebug-traces").resolve() for p in paths)
    assert [len(_opt_lrs(p)) for p in paths] == [3, 4, 2, 2, 1, 1]


def test_long_run_keeps_the_buffer_bounded(tmp_path):
    """30k steps with flushes every 1024 rows: every row is kept and no part (one drain of the
    buffer) is larger than the recorder's bound of 8 flushes' worth."""
    n, flush_rows = 30_000, 1024
    p = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([p], lr=0.01)
    p.grad = torch.ones(())
    out = tmp_path / "trace"
    with lrdebug.trace(opt, out=out, flush_rows=flush_rows, summary=False, ignore=["grads-not-cleared"]):
        for _ in range(n):
            opt.step()
        # before the close, which writes the rest and merges the parts into fewer files
        sizes = [pq.ParquetFile(f).metadata.num_rows for f in (out / "rank=0").glob("part-*.parquet")]
    assert sum(sizes) > n - 8 * flush_rows - 8
    assert max(sizes) <= 8 * flush_rows + 8 and len(sizes) >= n // (8 * flush_rows)
    df = lrdebug.load(out, columns=["event", "step"])
    assert df["step"].tolist() == list(range(1, n + 1))


def test_full_parts_stay_files_small_parts_merge(tmp_path):
    """Parts written early by a flush (few rows) are merged into one file; a part of a full buffer
    (16,384 rows or more) is left as written; every step is read back once."""
    p = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([p], lr=0.01)
    p.grad = torch.ones(())
    out = tmp_path / "trace"
    total = 0

    def steps(n):
        nonlocal total
        for _ in range(n):
            opt.step()
        total += n

    with lrdebug.trace(opt, out=out, summary=False, flush_seconds=3600, ignore=["grads-not-cleared"]) as t:
        for _ in range(3):
            steps(10)
            t.dataframe()  # writes what is buffered: a small part
        steps(20_000)  # the buffer fills (16,384 steps by default): the writer writes a full part
        for _ in range(2):
            steps(7)
            t.dataframe()
    files = sorted((out / "rank=0").glob("part-*.parquet"))
    rows = {f.name: pq.ParquetFile(f).metadata.num_rows for f in files}
    # the first optimizer step wakes the writer at once: one more early part than the three flushes
    assert files[0].name in ("part-000000-000002.parquet", "part-000000-000003.parquet")
    assert rows[files[0].name] == 30
    singles = [name for name in rows if name.count("-") == 1]
    assert singles and all(rows[name] >= 16_384 for name in singles)
    assert files[-1].name.count("-") == 2  # the small parts after the full one, merged at close
    assert sum(rows.values()) == total
    assert lrdebug.load(out, columns=["step"])["step"].tolist() == list(range(1, total + 1))


def test_parts_merged_while_the_trace_is_read_are_read_once(tmp_path, monkeypatch):
    """A trace still being written (the end-of-run summary reads the ranks as the last of them merges
    its small parts): parts merged into one file after they were listed and before they were opened
    are read from the merged file, every step once, by ``lrdebug.load`` and by the report."""
    from lrdebug.report import Report
    from lrdebug.tracefile import reader

    p = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([p], lr=0.01)
    p.grad = torch.ones(())
    out = tmp_path / "trace"
    with lrdebug.trace(opt, out=out, summary=False, ignore=["grads-not-cleared"]):
        for _ in range(30):
            opt.step()
    [written] = (out / "rank=0").glob("part-*.parquet")
    whole = pq.ParquetFile(written).read()
    merged_bytes = written.read_bytes()
    written.unlink()
    merged = out / "rank=0" / "part-000000-000002.parquet"  # the name the writer gives three merged parts

    def unmerge() -> list[Path]:
        """The rank as its writer left it before the final merge: three small parts."""
        merged.unlink(missing_ok=True)
        small = []
        for i in range(3):
            small.append(out / "rank=0" / f"part-{i:06d}.parquet")
            pq.write_table(whole.slice(10 * i, 10), small[-1])
        return small

    def merge(small: list[Path]) -> None:
        """What the writer does: the merged file appears whole, then the small parts go."""
        tmp = merged.parent / f".{merged.name}.tmp"
        tmp.write_bytes(merged_bytes)
        os.replace(tmp, merged)
        for part in small:
            part.unlink()

    real = reader.find_parts
    for read, expected in ((lambda: lrdebug.load(out, columns=["step"])["step"].tolist(), list(range(1, 31))),
                           (lambda: Report(out).to_dict()["optimizers"][0]["steps"], 30)):
        small = unmerge()
        listings = []

        def listed_then_merged(root, ranks=None):
            parts = real(root, ranks)
            listings.append([f.name for _, _, f in parts])
            if len(listings) == 1:
                merge(small)
            return parts

        monkeypatch.setattr(reader, "find_parts", listed_then_merged)
        got = read()
        monkeypatch.setattr(reader, "find_parts", real)
        assert listings[0] == [f.name for f in small]  # the race happened: the small parts were listed
        assert got == expected
