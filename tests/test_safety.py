"""lrdebug never costs the training run or its data: killed processes, full disks, forked workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import torch

import lrdebug

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals, ulimit and fork")

@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The models here are tiny: on shared cores a second intra-op thread only spins."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ENDLESS = """
import sys
import torch
import lrdebug

model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.999)
x, y = torch.randn(16, 8), torch.randn(16, 1)
with lrdebug.trace(out=sys.argv[1], flush_rows=32, flush_seconds=0.05):
    for _ in range(10_000_000):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()
"""


def parts(out: Path) -> list[Path]:
    return sorted((out / "rank=0").glob("part-*.parquet"))


def test_sigkill_mid_run_leaves_every_written_part_readable(tmp_path, capfd):
    script, out = tmp_path / "endless.py", tmp_path / "trace"
    script.write_text(ENDLESS)
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 120
        while len(parts(out)) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(parts(out)) >= 4, proc.stderr.read() if proc.poll() is not None else "no parts written"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    df = lrdebug.load(out)
    assert "skipped" not in capfd.readouterr().err
    steps = df[df["event"] == "optimizer_step"]
    assert len(steps) >= 4
    assert steps["step"].tolist() == list(range(1, len(steps) + 1))  # whole parts, in order, no gap
    assert ds.dataset(out).to_table().num_rows == len(df)
    status = json.loads((out / "rank=0" / "_lrdebug_status.json").read_text())
    assert status["complete"] is False

    import duckdb

    count = duckdb.sql(f"select count(*) from read_parquet('{out}/rank=*/part-*.parquet')").fetchall()[0][0]
    assert count == len(df)


FINISHES_WITH_3 = """
import sys
import torch

torch.manual_seed(0)
model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=50, gamma=0.5)
x, y = torch.randn(16, 8), torch.randn(16, 1)
for step in range(200):
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()
    scheduler.step()
print("finished", step + 1, "steps")
sys.exit(3)
"""


def test_full_disk_reports_one_line_and_the_run_keeps_its_exit_status(tmp_path):
    """A 4 KiB file size limit (ulimit -f) makes every Parquet part write fail like a full disk."""
    script, out = tmp_path / "train.py", tmp_path / "trace"
    script.write_text(FINISHES_WITH_3)
    lrdebug_exe = Path(sys.executable).with_name("lrdebug")
    proc = subprocess.run(["bash", "-c", 'ulimit -f 4 && exec "$0" run --out "$1" "$2"', lrdebug_exe, out, script],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1"))
    assert proc.returncode == 3, proc.stderr
    assert "finished 200 steps" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lrdebug: ") and str(out) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not parts(out)
    status_file = out / "rank=0" / "_lrdebug_status.json"
    if status_file.exists():  # small enough to fit under the limit: it must say the trace is incomplete
        assert json.loads(status_file.read_text())["complete"] is False


class WorkerProbe(torch.utils.data.Dataset):
    """Each item runs what lrdebug would record, inside a DataLoader worker process."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        param = torch.nn.Parameter(torch.ones(2))
        optimizer = torch.optim.SGD([param], lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
        param.grad = torch.ones(2)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        for _ in torch.utils.data.DataLoader([0, 1]):
            pass
        return torch.tensor([float(os.getpid()), float(i)])


def test_forked_dataloader_workers_add_no_rows_and_write_nothing(tmp_path):
    out = tmp_path / "trace"
    model = torch.nn.Linear(2, 1)
    pids = set()
    with lrdebug.trace(out=out, summary=False):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = torch.utils.data.DataLoader(WorkerProbe(), batch_size=2, num_workers=2,
                                             multiprocessing_context="fork")
        for _ in range(2):
            for item in loader:
                pids.update(int(p) for p in item[:, 0])
                optimizer.zero_grad()
                model(item).sum().backward()
                optimizer.step()
    assert pids and os.getpid() not in pids  # the probe really ran in worker processes

    df = lrdebug.load(out)
    assert df["event"].value_counts().to_dict() == {"optimizer_step": 8, "zero_grad": 8, "epoch_start": 2}
    assert set(df["optimizer"].dropna()) == {0}
    assert set(df["loader"].dropna()) == {0}
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["rank=0"]
    status = json.loads((out / "rank=0" / "_lrdebug_status.json").read_text())
    assert status["complete"] is True and status["rows"] == len(df)
    written = sorted(p.name for p in (out / "rank=0").iterdir())
    # only this process's parts (merged at close or not) and its status: no worker wrote anything
    assert written in (["_lrdebug_status.json"] + [f"part-{i:06d}.parquet" for i in range(status["parts"])],
                       ["_lrdebug_status.json", f"part-000000-{status['parts'] - 1:06d}.parquet"]), written
    assert status["meta"]["pid"] == os.getpid()

