"""Step timings and the measured update (``sample_updates``), read back from real traces.

The expected norms are computed here by hand, in float64, from gradients and parameters captured
inside the training loop; the recorder computes them its own way (foreach norms in float32).
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import itertools
import math
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from conftest import ROOT
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, Dataset

import lrdebug

torch.set_num_threads(1)
REL = 1e-5


def _steps(path) -> pd.DataFrame:
    df = lrdebug.load(path)
    return df[df.event == "optimizer_step"].sort_values(["seq", "group"]).reset_index(drop=True)


def _norm64(tensors) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def _model(seed=0, sizes=(6, 5, 3)):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]
    return torch.nn.Sequential(*layers)


def _train(model, opt, steps, out=None, sched=None, capture=False, **trace_kwargs):
    """A full-batch loop; with ``capture``, per step and group the grads and params before the step
    and the params after it (cloned)."""
    torch.manual_seed(1)
    x, y = torch.randn(16, model[0].in_features), torch.randn(16, model[-1].out_features)
    seen = []
    ctx = lrdebug.trace(out=out, summary=False, **trace_kwargs) if out is not None else None
    if ctx is not None:
        ctx.__enter__()
    try:
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            if capture:
                groups = [[p for p in g["params"] if p.grad is not None] for g in opt.param_groups]
                before = [([p.grad.clone() for p in ps], [p.detach().clone() for p in ps]) for ps in groups]
            opt.step()
            if sched is not None:
                sched.step()
            if capture:
                seen.append([(grads, params, [p.detach().clone() for p in ps])
                             for (grads, params), ps in zip(before, groups)])
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    return seen


# ------------------------------------------------------------------------------ eff_lr
def test_plain_sgd_eff_lr_equals_the_lr_of_every_sampled_step(tmp_path):
    model = _model()
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.02}],
                          lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))  # the LR moves every step
    _train(model, opt, 6, tmp_path / "t", sched=sched, sample_updates=1)
    df = _steps(tmp_path / "t")
    assert len(df) == 12 and df.eff_lr.notna().all()
    np.testing.assert_allclose(df.eff_lr, df.lr, rtol=REL)
    np.testing.assert_allclose(df[df.group == 0].lr, [0.1 / (1 + s) for s in range(6)], rtol=1e-12)


def test_sgd_momentum_eff_lr_grows_as_momentum_builds(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    _train(model, opt, 5, tmp_path / "t", sample_updates=1)
    eff = _steps(tmp_path / "t").eff_lr.to_numpy()
    assert eff[0] == pytest.approx(1e-3, rel=REL)  # no momentum yet: a plain SGD step
    assert (np.diff(eff) > 0).all(), eff
    # With slowly changing gradients the step tends to lr * (1 + 0.9 + 0.81 + ...).
    assert eff[-1] == pytest.approx(1e-3 * sum(0.9 ** k for k in range(5)), rel=0.05)


def test_adam_first_update_is_a_sign_update_of_size_lr(tmp_path):
    model = _model()
    lr, eps = 0.01, 1e-8
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=eps)
    seen = _train(model, opt, 3, tmp_path / "t", capture=True, sample_updates=1)
    first = _steps(tmp_path / "t").iloc[0]
    grads, params, after = seen[0][0]
    numel = sum(p.numel() for p in params)
    assert all(bool((g != 0).all()) for g in grads)
    # Step 1 of Adam: m_hat = g, v_hat = g^2, so each element moves by lr * g / (|g| + eps).
    expected = _norm64([lr * g.double() / (g.double().abs() + eps) for g in grads])
    assert first.update_norm == pytest.approx(expected, rel=REL)
    assert first.update_norm == pytest.approx(lr * math.sqrt(numel), rel=1e-4)
    assert first.grad_norm == pytest.approx(_norm64(grads), rel=REL)
    assert first.eff_lr == pytest.approx(lr * math.sqrt(numel) / _norm64(grads), rel=1e-4)
    assert first.param_norm == pytest.approx(_norm64(params), rel=REL)
    assert first.update_ratio == pytest.approx(first.update_norm / first.param_norm, rel=1e-12)


def test_each_group_gets_its_own_norms(tmp_path):
    model = _model(sizes=(6, 5, 4, 3))
    frozen_group = list(model[2].parameters())
    opt = torch.optim.SGD([{"params": model[0].parameters(), "weight_decay": 0.1},
                           {"params": model[1].parameters(), "lr": 0.3, "momentum": 0.5},
                           {"params": frozen_group, "name": "frozen"}], lr=0.05)
    for p in frozen_group:  # in a group, but never given a gradient
        p.requires_grad_(False)
    seen = _train(model, opt, 4, tmp_path / "t", capture=True, sample_updates=1)
    df = _steps(tmp_path / "t")
    assert len(df) == 12
    for step, groups in enumerate(seen, start=1):
        for g, (grads, before, after) in enumerate(groups):
            row = df[(df.step == step) & (df.group == g)].iloc[0]
            if g == 2:
                assert pd.isna(row.grad_norm) and pd.isna(row.update_norm) and pd.isna(row.eff_lr)
                continue
            update = _norm64([a.double() - b.double() for a, b in zip(after, before)])
            assert row.grad_norm == pytest.approx(_norm64(grads), rel=REL)
            assert row.param_norm == pytest.approx(_norm64(before), rel=REL)
            assert row.update_norm == pytest.approx(update, rel=1e-4)
            assert row.eff_lr == pytest.approx(update / _norm64(grads), rel=1e-4)
    # Weight decay makes group 0's step bigger than lr * grad.
    assert (df[df.group == 0].eff_lr > 0.05).all()


def test_fused_adam_under_grad_scaler_reports_unscaled_gradients(tmp_path):
    """The fused kernel unscales inside the step: grad_norm must not carry the loss scale."""
    model = _model()
    lr = 1e-3
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    torch.manual_seed(1)
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    scaled_norms = []
    with lrdebug.trace(out=tmp_path / "t", summary=False, sample_updates=1):
        for i in range(4):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            scaler.scale(loss * (math.inf if i == 1 else 1.0)).backward()
            scaled_norms.append((_norm64([p.grad for p in model.parameters()]), scaler.get_scale()))
            scaler.step(opt)
            scaler.update()
    df = lrdebug.load(tmp_path / "t").sort_values("seq")
    events = df[df.event.str.startswith("optimizer")]
    assert list(events.event) == ["optimizer_step", "optimizer_step_skipped", "optimizer_step", "optimizer_step"]
    assert list(events.step) == [1, 2, 2, 3]
    first = events.iloc[0]
    norm, scale = scaled_norms[0]
    assert first.grad_norm == pytest.approx(norm / scale, rel=REL)
    numel = sum(p.numel() for p in model.parameters())
    assert first.update_norm == pytest.approx(lr * math.sqrt(numel), rel=1e-3)
    assert events.iloc[1].update_norm == 0  # the kernel skipped the update


# ------------------------------------------------------------------------------ which steps
def test_sampled_at_steps_1_then_every_n_and_null_elsewhere(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _train(model, opt, 10, tmp_path / "t", sample_updates=3)
    df = _steps(tmp_path / "t")
    columns = ["grad_norm", "param_norm", "update_norm", "update_ratio", "eff_lr"]
    sampled = df[columns].notna().all(axis=1)
    assert sorted(df[sampled].step) == [1, 4, 7, 10]
    assert df[~sampled][columns].isna().all().all()


def test_without_sampling_the_norm_columns_are_null(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _train(model, opt, 3, tmp_path / "t")
    df = _steps(tmp_path / "t")
    assert len(df) == 3
    assert df[["grad_norm", "param_norm", "update_norm", "update_ratio", "eff_lr", "cuda_ns"]].isna().all().all()


class _CountOps(TorchFunctionMode):
    """Counts every torch function and tensor method called while active."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls[getattr(func, "__qualname__", repr(func))] += 1
        return func(*args, **(kwargs or {}))


def test_sample_updates_0_adds_no_copy_and_no_norm(tmp_path):
    outs = itertools.count()

    def ops(traced, **trace_kwargs):
        model = _model()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        torch.manual_seed(1)
        x = torch.randn(4, 6)
        out = tmp_path / str(next(outs))
        ctx = lrdebug.trace(out=out, summary=False, **trace_kwargs) if traced else contextlib.nullcontext()
        with ctx, _CountOps() as counter:
            for _ in range(3):
                opt.zero_grad()
                model(x).sum().backward()
                opt.step()
        return counter.calls

    plain = ops(False)
    unsampled = ops(True, sample_updates=0)
    sampled = ops(True, sample_updates=1) - plain
    # Only reads of p.grad (the per-group gradient state) and, once, numel() when registering.
    assert set(unsampled - plain) <= {"getset_descriptor.__get__", "TensorBase.numel"}, unsampled - plain
    assert not (plain - unsampled)
    # The counter does see the sampling work when it is asked for.
    assert sampled["TensorBase.clone"] > 0 and sampled["_VariableFunctionsClass._foreach_norm"] > 0


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.01),
    lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    lambda ps: torch.optim.AdamW(ps, lr=torch.tensor(0.01), foreach=False),
], ids=["adam", "sgd-nesterov", "adamw-tensor-lr"])
def test_sampling_leaves_parameters_bit_identical(tmp_path, make_opt):
    def final(out, **kw):
        model = _model()
        opt = make_opt(model.parameters())
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        _train(model, opt, 7, out, sched=sched, **kw)
        return [p.detach().clone() for p in model.parameters()]

    untraced = final(None)
    sampled = final(tmp_path / "t", sample_updates=1)
    every_third = final(tmp_path / "t3", sample_updates=3)
    assert all(torch.equal(a, b) for a, b in zip(untraced, sampled))
    assert all(torch.equal(a, b) for a, b in zip(untraced, every_third))
    assert _steps(tmp_path / "t").update_norm.notna().all()


# ------------------------------------------------------------------------------ timings
class _SlowData(Dataset):
    """Each item takes at least 1 ms to produce: a lower bound for the recorded data wait."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        time.sleep(0.001)
        return torch.full((6,), float(i))


@pytest.fixture(scope="module")
def timed_trace(tmp_path_factory):
    """Two epochs over a DataLoader, SequentialLR (nested scheduler steps), then a loop without data."""
    out = tmp_path_factory.mktemp("timed") / "t"
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=2)
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, decay], milestones=[2])
    loader = DataLoader(_SlowData(), batch_size=3)
    other = torch.nn.Linear(6, 1)
    opt2 = torch.optim.SGD(other.parameters(), lr=0.1)
    with lrdebug.trace(out=out, summary=False):
        for _ in range(2):
            for x in loader:
                opt.zero_grad()
                model(x).sum().backward()
                opt.step()
                sched.step()
        x = torch.randn(4, 6)
        for _ in range(3):
            opt2.zero_grad()
            other(x).sum().backward()
            opt2.step()
    return lrdebug.load(out).sort_values("seq").reset_index(drop=True)


def test_durations_are_positive_for_steps_schedulers_and_zero_grad(timed_trace):
    df = timed_trace
    assert (df.event == "optimizer_step").sum() == 11 and (df.event == "zero_grad").sum() == 11
    assert ((df.event == "scheduler_step") & (df.origin == "user")).sum() == 8
    for event in ("optimizer_step", "scheduler_step", "zero_grad"):
        assert (df[df.event == event].dur_ns > 0).all(), event


def test_t_ns_is_monotone_within_a_rank(timed_trace):
    df = timed_trace
    assert (df["rank"] == 0).all()
    assert df.t_ns.is_monotonic_increasing
    assert (df.t_ns > 1_500_000_000 * 10**9).all()  # wall-clock nanoseconds since the epoch


def test_iter_ns_is_null_at_a_first_step_and_spans_step_ends(timed_trace):
    steps = timed_trace[timed_trace.event == "optimizer_step"]
    for _, rows in steps.groupby("optimizer"):
        assert pd.isna(rows.iter_ns.iloc[0])
        later = rows.iter_ns.iloc[1:]
        assert later.notna().all() and (later > 0).all()
        # iter_ns is the time between the ends of two consecutive steps of one optimizer.
        ends = rows.t_ns.astype("int64")
        assert list(later.astype("int64")) == list(np.diff(ends.to_numpy()))
    assert sorted(steps.optimizer.unique()) == [0, 1]


def test_data_wait_is_recorded_for_dataloader_loops_only(timed_trace):
    steps = timed_trace[timed_trace.event == "optimizer_step"]
    with_data, without = steps[steps.optimizer == 0], steps[steps.optimizer == 1]
    assert len(with_data) == 8 and len(without) == 3
    # Each batch is three items of at least 1 ms each.
    assert (with_data.data_wait_ns >= 3_000_000).all()
    later = with_data.iloc[1:]
    assert (later.data_wait_ns < later.iter_ns).all()
    assert without.data_wait_ns.isna().all()


def test_cuda_timing_without_cuda_says_so_once_and_records(tmp_path, capfd):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _train(model, opt, 4, tmp_path / "t", cuda_timing=True, sample_updates=2)
    err = capfd.readouterr().err
    assert err.count("nothing to time") == 1, err
    assert "CUDA is not available" in err
    df = _steps(tmp_path / "t")
    assert list(df.step) == [1, 2, 3, 4]
    assert df.cuda_ns.isna().all()
    assert df.update_norm.notna().sum() == 2


# ------------------------------------------------------------------------------ scripts
def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_gpu_check_says_cuda_not_available_and_exits_0(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: run scripts/gpu_check.py by hand")
    assert _load_script("gpu_check").main([]) == 0
    assert "CUDA not available" in capsys.readouterr().out


def test_gpu_check_dry_run_on_cpu_passes(tmp_path, capsys):
    gpu_check = _load_script("gpu_check")
    assert gpu_check.main(["--device", "cpu", "--steps", "12", "--rounds", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "overhead traced/untraced" in out
    df = lrdebug.load(next(tmp_path.glob("traced-*")))
    assert df[df.event == "optimizer_step_skipped"].shape[0] == 1


def test_bench_sampling_quick_prints_both_ratios(capsys):
    bench = _load_script("bench_sampling")
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "sample_updates=1" in out and "sample_updates=100" in out


def test_device_gradscaler_skips_read_late_are_numbered_like_cpu_skips(tmp_path):
    """A fused optimizer on a GPU reports a skip in a device tensor that the writer reads later
    (never at the step). Simulated on CPU: rows as the step recorded them, found_inf resolved late."""
    from lrdebug.record.device import _Deferred
    from lrdebug.record.recorder import Recorder

    def found_inf(value):
        deferred = _Deferred.__new__(_Deferred)
        deferred.value = float(value)  # already fetched: the writer reads it
        return deferred

    rec = Recorder(out=tmp_path / "unused", live_checks=False, summary=False)
    rec._late_skips[0] = 0
    seq = itertools.count()
    batches = [[0, 1, 0], [1, 0]]  # found_inf per step, drained in two flushes
    live_step, events, steps, sched_steps = 0, [], [], []
    for batch in batches:
        for inf in batch:
            live_step += 1  # live, a device skip still counts as a step
            rec.buf.extend(("optimizer_step", next(seq), 0, 1, 0, live_step, -1, (0.1,), (1,), None, None,
                            (None, None, found_inf(inf))))
            rec.other.append(("scheduler_step", next(seq), 0, 1, 0, 0, live_step, -1, (0.1,), None, "user", None,
                              None, None, None, None, None, None))
        columns, n = rec._drain()
        table = pa.table({k: columns[k] for k in ("seq", "event", "step")}).sort_by("seq").to_pydict()
        events += table["event"][0::2]
        steps += table["step"][0::2]
        sched_steps += table["step"][1::2]
    assert events == ["optimizer_step", "optimizer_step_skipped", "optimizer_step", "optimizer_step_skipped",
                      "optimizer_step"]
    assert steps == [1, 2, 2, 3, 3]  # as on CPU: a skipped step has the number the step would have had
    assert sched_steps == [1, 1, 2, 2, 3]  # applied steps so far
    state = rec._opt_state(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    state.steps = live_step
    meta = rec.metadata()["optimizers"][0]
    assert (meta["steps"], meta["skipped"]) == (3, 2)
