"""Rules on hand-written event streams: the traps that must stay silent, and the edges of each rule.

These feed ``Checker`` directly with the events the recorder produces (see the gallery tests for the
same rules driven by real training scripts).
"""

from __future__ import annotations

import itertools
import math

import pytest

from lrdebug.rules import Checker
from lrdebug.rules.state import MANY_STEPS
from lrdebug.tracefile.schema import Event

OPT, SCHED = "torch.optim.sgd", "torch.optim.lr_scheduler"


class Stream:
    """Builds and feeds events the way the recorder does, with seq numbers and call sites."""

    def __init__(self, **kwargs) -> None:
        self.c = Checker(**kwargs)
        self.seq = itertools.count()
        self.steps: dict[int, int] = {}
        self.new: list = []

    def optimizer(self, index=0, cls="SGD", groups=1):
        self.c.register_optimizer(index, {"index": index, "class": cls, "module": OPT,
                                          "groups": [{"index": g, "name": None} for g in range(groups)]})
        self.steps.setdefault(index, 0)
        return self

    def scheduler(self, index, cls, opt=0, module=SCHED, children=None, init=True, lrs=(0.1,), value=None,
                  **params):
        info = {"index": index, "class": cls, "module": module, "optimizer": opt,
                "params": {"last_epoch": 0, **params}}
        if children:
            info["children"] = list(children)
        self.c.register_scheduler(index, info)
        if init:
            if cls != "ReduceLROnPlateau" and not children:
                self.feed("scheduler_step", optimizer=opt, scheduler=index, step=self.steps.get(opt, 0), lrs=lrs,
                          origin="init", line=5 + index)
            self.feed("scheduler_init", optimizer=opt, scheduler=index, lrs=lrs, value=value, line=5 + index)
        return self

    def feed(self, event, line=None, **kw):
        ev = Event(event, next(self.seq), file="train.py" if line else None, line=line, **kw)
        self.new += list(self.c.feed(ev))
        return self

    def step(self, opt=0, lrs=(0.1,), grads=None, line=30):
        self.steps[opt] += 1
        grads = grads if grads is not None else (1,) * len(lrs)
        return self.feed("optimizer_step", optimizer=opt, step=self.steps[opt], lrs=lrs, grads=grads, line=line)

    def skip(self, opt=0, lrs=(0.1,), line=30):
        return self.feed("optimizer_step_skipped", optimizer=opt, step=self.steps[opt] + 1, lrs=lrs, line=line)

    def sstep(self, sched=0, opt=0, lrs=(0.1,), origin="user", parent=None, value=None, line=40):
        return self.feed("scheduler_step", optimizer=opt, scheduler=sched, step=self.steps.get(opt, 0), lrs=lrs,
                         origin=origin, parent=parent, value=value, line=line)

    def zero(self, opt=0, origin="optimizer", line=20, in_place=False):
        return self.feed("zero_grad", optimizer=opt if origin == "optimizer" else None, origin=origin, line=line,
                         value=1.0 if in_place else None)

    def epoch(self, loader=0):
        return self.feed("epoch_start", loader=loader, line=15)

    def iteration(self, sched=0, opt=0, lrs=(0.1,)):
        return self.zero(opt).step(opt, lrs).sstep(sched, opt, lrs)

    def codes(self, finish=True):
        found = self.c.finish() if finish else self.c.findings
        return sorted(f.code for f in found)

    def loud(self):
        return sorted(f.code for f in self.c.finish() if f.severity != "info")


def test_a_textbook_loop_is_clean():
    s = Stream().optimizer().scheduler(0, "StepLR", step_size=2, gamma=0.1)
    for _ in range(3):
        s.epoch()
        for _ in range(8):
            s.zero().step()
        s.sstep()
    assert s.codes() == []


def test_gradscaler_skip_then_scheduler_step_is_info_not_before_optimizer():
    s = Stream().optimizer().scheduler(0, "LambdaLR")
    s.zero().skip().sstep()
    for _ in range(12):
        s.iteration()
    found = s.c.finish()
    assert [f.code for f in found] == ["step-skipped"]
    assert found[0].severity == "info" and "1 of 13 steps were skipped" in found[0].message


def test_sequential_and_chained_children_are_one_scheduler():
    s = Stream().optimizer()
    s.scheduler(0, "LinearLR", total_iters=2).scheduler(1, "CosineAnnealingLR", T_max=20)
    s.scheduler(2, "SequentialLR", children=[0, 1])
    for i in range(20):
        s.zero().step().sstep(0 if i < 2 else 1, origin="child", parent=2).sstep(2)
    assert s.codes() == []


def test_switching_from_one_scheduler_to_another_is_not_multiple_schedulers():
    s = Stream().optimizer().scheduler(0, "LinearLR", total_iters=5).scheduler(1, "StepLR", step_size=3, gamma=0.5)
    for i in range(20):
        s.iteration(sched=0 if i < 5 else 1)
    assert s.codes() == []


def test_schedulers_taking_turns_are_one_finding_per_pair():
    s = Stream().optimizer().scheduler(0, "LambdaLR").scheduler(1, "StepLR", step_size=1, gamma=0.5)
    for _ in range(3):
        for _ in range(4):
            s.iteration(sched=0)
        s.sstep(1, line=50)
    found = s.c.finish()
    assert [(f.code, f.line, f.step, f.count) for f in found] == [("multiple-schedulers", 40, 5, 4)]


def test_fast_forwarding_a_scheduler_after_an_optimizer_resume_is_silent():
    s = Stream().optimizer().scheduler(0, "StepLR", step_size=2, gamma=0.5)
    s.feed("optimizer_load_state", optimizer=0, step=0, lrs=(0.05,), value=40.0, line=8)
    for _ in range(5):  # for _ in range(start_epoch): scheduler.step()
        s.sstep()
    for _ in range(12):
        s.iteration()
    assert s.codes() == []


def test_resume_without_scheduler_state_is_flagged_once_at_its_first_step():
    s = Stream().optimizer().scheduler(0, "LambdaLR")
    s.feed("optimizer_load_state", optimizer=0, step=0, lrs=(0.1,), value=40.0, line=8)
    for _ in range(5):
        s.iteration()
    found = s.c.finish()
    assert [(f.code, f.step, f.line, f.count) for f in found] == [("scheduler-state-not-restored", 1, 40, 1)]
    assert "40 steps" in found[0].message


def test_resume_with_scheduler_state_is_clean():
    s = Stream().optimizer().scheduler(0, "LambdaLR")
    s.feed("optimizer_load_state", optimizer=0, step=0, lrs=(0.1,), value=40.0, line=8)
    s.feed("scheduler_load_state", optimizer=0, scheduler=0, value=40.0, line=9)
    for _ in range(5):
        s.iteration()
    assert s.codes() == []


def test_a_fresh_optimizer_is_not_a_resume():
    s = Stream().optimizer().scheduler(0, "LambdaLR")
    s.feed("optimizer_load_state", optimizer=0, step=0, lrs=(0.1,), value=None, line=8)
    for _ in range(5):
        s.iteration()
    assert s.codes() == []


def test_plateau_stepped_before_training_is_not_before_optimizer():
    s = Stream().optimizer().scheduler(0, "ReduceLROnPlateau")
    s.sstep(value=1.0)  # validate first, then train
    for _ in range(3):
        s.epoch()
        for _ in range(5):
            s.zero().step()
        s.sstep(value=1.0)
    assert s.codes() == []


def test_a_scheduler_that_stepped_before_the_trace_is_not_before_optimizer():
    s = Stream().optimizer().scheduler(0, "StepLR", init=False, step_size=1, gamma=0.5)
    s.c.register_scheduler(0, {"index": 0, "class": "StepLR", "module": SCHED, "optimizer": 0,
                               "params": {"last_epoch": 7, "step_size": 1, "gamma": 0.5}})
    s.sstep()
    s.iteration()
    assert s.codes() == []


def test_epoch_sized_rule_says_nothing_without_epoch_boundaries():
    s = Stream().optimizer().scheduler(0, "StepLR", step_size=2, gamma=0.1)
    for _ in range(30):
        s.iteration()
    assert s.codes() == []


@pytest.mark.parametrize("cls, params, flagged", [
    ("StepLR", {"step_size": 3, "gamma": 0.1}, True),  # 100x down after 6 steps of a 20-batch epoch
    ("StepLR", {"step_size": 30, "gamma": 0.5}, False),  # 7 decays take 210 steps: sized in steps
    ("MultiStepLR", {"milestones": [5, 10], "gamma": 0.1}, True),
    ("MultiStepLR", {"milestones": [50, 80], "gamma": 0.1}, False),
    ("ExponentialLR", {"gamma": 0.7}, True),
    ("ExponentialLR", {"gamma": 0.999}, False),
    ("CosineAnnealingLR", {"T_max": 10}, True),
    ("CosineAnnealingLR", {"T_max": 60}, False),
    ("LambdaLR", {}, False),
])
def test_epoch_sized_schedules_stepped_per_batch(cls, params, flagged):
    s = Stream().optimizer().scheduler(0, cls, **params)
    for _ in range(3):
        s.epoch()
        for _ in range(20):
            s.iteration()
    found = [f for f in s.c.finish() if f.severity != "info"]
    if flagged:
        assert [f.code for f in found] == ["epoch-scheduler-stepped-per-batch"]
    else:
        assert found == []


def test_past_horizon_is_flagged_only_when_a_step_uses_the_lr_beyond_the_end():
    s = Stream().optimizer().scheduler(0, "CosineAnnealingLR", T_max=10)
    for _ in range(11):  # uses positions 0..10; the last scheduler step (to 11) is never used
        s.iteration()
    assert s.codes() == []
    s2 = Stream().optimizer().scheduler(0, "CosineAnnealingLR", T_max=10)
    for _ in range(15):
        s2.iteration()
    found = s2.c.finish()
    assert [(f.code, f.step, f.count) for f in found] == [("scheduler-past-horizon", 12, 4)]
    assert "up to 4 steps past" in found[0].message


def test_onecycle_with_exact_total_steps_is_clean():
    s = Stream().optimizer().scheduler(0, "OneCycleLR", total_steps=16)
    for _ in range(2):
        s.epoch()
        for _ in range(8):
            s.iteration()
    assert s.codes() == []


def test_restarting_the_position_clears_past_horizon():
    s = Stream().optimizer().scheduler(0, "PolynomialLR", total_iters=3)
    for _ in range(4):
        s.iteration()
    s.feed("scheduler_load_state", optimizer=0, scheduler=0, value=0.0, line=9)
    s.iteration()
    assert s.codes() == ["schedule-not-completed"]  # no past-horizon; the run ends at position 1 of 3


def test_explicit_epoch_argument_sets_the_position():
    s = Stream().optimizer().scheduler(0, "CosineAnnealingLR", T_max=4)
    for i in range(20):
        s.zero().step().sstep(value=float(i % 4))
    assert s.codes() == []


def test_manual_lr_writes_are_info_without_a_scheduler_and_a_warning_with_one():
    s = Stream().optimizer()
    for i in range(5):
        s.zero().step(lrs=(0.1 * (i + 1),))
    assert s.codes() == ["lr-changed-outside-scheduler"]
    s2 = Stream().optimizer().scheduler(0, "StepLR", step_size=10, gamma=0.1)
    s2.iteration().zero().step(lrs=(0.5,))
    found = s2.c.finish()
    assert [(f.code, f.severity, f.step) for f in found] == [("lr-conflict", "warning", 2)]
    assert "0.5" in found[0].message and "0.1" in found[0].message


def test_an_lr_the_scheduler_just_set_is_no_conflict():
    s = Stream().optimizer().scheduler(0, "LambdaLR", lrs=(0.01,))
    for i in range(10):
        s.zero().step(lrs=(0.01 * (i + 1),)).sstep(lrs=(0.01 * (i + 2),))
    assert s.codes() == []


def test_lrs_not_read_yet_are_not_evidence():
    deferred = object()  # a device LR the recorder resolves later, off the training thread
    s = Stream().optimizer().scheduler(0, "LambdaLR", lrs=(deferred,))
    for _ in range(12):
        s.zero().step(lrs=(object(),)).sstep(lrs=(object(),))
    assert s.loud() == []


def test_hf_warmup_starting_at_zero_is_not_negative():
    s = Stream().optimizer().scheduler(0, "LambdaLR", lrs=(0.0,))
    s.zero().step(lrs=(0.0,)).sstep(lrs=(1e-5,)).zero().step(lrs=(1e-5,))
    assert s.codes() == []


@pytest.mark.parametrize("bad", [-1e-3, math.nan, math.inf])
def test_negative_or_nonfinite_lr_is_an_error_per_group(bad):
    s = Stream().optimizer(groups=2)
    s.zero().step(lrs=(0.1, bad))
    found = s.c.finish()
    assert [(f.code, f.severity, f.group, f.step) for f in found] == [("lr-nonfinite-or-negative", "error", 1, 1)]


def test_gradients_kept_without_any_zero_grad():
    s = Stream().optimizer()
    s.zero().step(grads=(1,)).step(grads=(2,))
    assert s.codes() == ["grads-not-cleared"]
    s2 = Stream().optimizer()  # model.zero_grad(set_to_none=False) keeps the tensors: fine
    s2.zero().step(grads=(1,)).zero(origin="module", in_place=True).step(grads=(2,))
    assert s2.codes() == []


def test_another_optimizers_zero_grad_does_not_clear_this_one():
    # A GAN: the discriminator's optimizer is zeroed (dropping its gradients) every step, the generator's
    # never: the generator keeps stepping with its very gradient tensors of the previous step.
    s = Stream().optimizer(0).optimizer(1)
    for _ in range(3):
        s.zero(opt=1).step(opt=1, grads=(1,)).step(opt=0, grads=(2,))
    assert [(f.code, f.optimizer) for f in s.c.finish()] == [("grads-not-cleared", 0)]


def test_gradient_accumulation_is_clean():
    s = Stream().optimizer().scheduler(0, "OneCycleLR", total_steps=13)  # 12 steps after the constructor's
    for _ in range(12):
        s.zero().step(grads=(1,)).sstep()  # four backward()s into fresh .grad between the steps
    assert s.codes() == []


def test_a_frozen_group_is_no_step_without_gradients():
    s = Stream().optimizer(groups=2)
    s.zero().step(lrs=(0.1, 0.01), grads=(1, 0))
    assert s.codes(finish=False) == []
    s.zero().step(lrs=(0.1, 0.01), grads=(0, 0))
    assert s.codes() == ["step-without-gradients"]


def test_get_lr_of_a_handwritten_class_is_not_flagged():
    s = Stream().optimizer().scheduler(0, "MyWarmup", module="train")
    s.feed("get_lr_call", optimizer=0, scheduler=0, line=60)
    assert s.codes() == []
    s2 = Stream().optimizer().scheduler(0, "StepLR", step_size=1)
    s2.feed("get_lr_call", optimizer=0, scheduler=0, line=60).feed("get_lr_call", optimizer=0, scheduler=0, line=60)
    found = s2.c.finish()
    assert [(f.code, f.line, f.count, f.step) for f in found] == [("get-lr-called", 60, 2, None)]


def test_add_param_group_before_the_scheduler_exists_is_clean():
    s = Stream().optimizer()
    s.feed("add_param_group", optimizer=0, step=0, lrs=(0.1, 0.01), value=2.0, line=7)
    s.scheduler(0, "StepLR", lrs=(0.1, 0.01), step_size=1)
    s.zero().step(lrs=(0.1, 0.01)).sstep(lrs=(0.01, 0.001))
    assert s.codes(finish=False) == []
    s.feed("add_param_group", optimizer=0, step=1, lrs=(0.01, 0.001, 0.1), value=3.0, line=70)
    found = s.c.finish()
    assert [(f.code, f.group, f.line, f.scheduler) for f in found] == [
        ("param-group-added-after-scheduler", 2, 70, 0)]


def test_never_stepped_waits_until_an_epoch_has_ended():
    s = Stream().optimizer().scheduler(0, "StepLR", step_size=1)
    s.epoch()
    for _ in range(3 * MANY_STEPS):
        s.zero().step()
    assert s.codes() == []  # a per-epoch scheduler stepped after the first epoch would be fine
    s2 = Stream().optimizer().scheduler(0, "StepLR", step_size=1)
    for _ in range(2):
        s2.epoch()
        for _ in range(MANY_STEPS):
            s2.zero().step()
    found = s2.c.finish()
    assert [(f.code, f.line, f.scheduler) for f in found] == [("scheduler-never-stepped", 5, 0)]


def test_never_stepped_ignores_unused_duplicates_and_children():
    s = Stream().optimizer().scheduler(0, "StepLR", step_size=1).scheduler(1, "StepLR", step_size=1)
    for _ in range(2 * MANY_STEPS):
        s.iteration(sched=1)
    assert s.codes() == []
    s2 = Stream().optimizer().scheduler(0, "LinearLR").scheduler(1, "CosineAnnealingLR", T_max=99)
    s2.scheduler(2, "SequentialLR", children=[0, 1])
    for _ in range(2 * MANY_STEPS):
        s2.zero().step().sstep(0, origin="child", parent=2).sstep(2)
    assert s2.codes() == []


def test_orphaned_scheduler_is_an_error_found_live_or_at_the_end():
    s = Stream().optimizer(0).scheduler(0, "StepLR", step_size=1).optimizer(1)
    for _ in range(MANY_STEPS):
        s.zero(1).step(1)
    s.sstep(0, opt=0)
    assert [(f.code, f.severity) for f in s.new] == [("scheduler-orphaned", "error")]
    s2 = Stream().optimizer(0).scheduler(0, "StepLR", step_size=1).optimizer(1)
    s2.zero(1).step(1).sstep(0, opt=0)  # early on it looks like a scheduler stepped too soon
    for _ in range(MANY_STEPS):
        s2.zero(1).step(1)
    assert s2.codes() == ["scheduler-before-optimizer", "scheduler-orphaned"]


def test_findings_aggregate_per_site_and_report_the_first_step():
    s = Stream().optimizer()
    for _ in range(3):
        s.zero().step(lrs=(-1.0,), line=30)
    s.zero().step(lrs=(-1.0,), line=31)
    found = s.c.finish()
    assert [(f.line, f.step, f.count) for f in found] == [(30, 1, 3), (31, 4, 1)]
    assert [f.line for f in s.new] == [30, 31]  # each reported once, when first seen


def test_ignore_silences_a_code():
    s = Stream(ignore={"lr-nonfinite-or-negative"}).optimizer()
    s.zero().step(lrs=(-1.0,))
    assert s.codes() == [] and s.new == []


def test_finish_is_idempotent_and_nothing_is_fed_after_it():
    s = Stream().optimizer()
    s.zero().step(lrs=(-1.0,))
    first = [f.to_dict() for f in s.c.finish()]
    assert s.c.feed(Event("optimizer_step", 99, optimizer=0, step=2, lrs=(-2.0,), grads=(1,))) == ()
    assert [f.to_dict() for f in s.c.finish()] == first


def test_events_about_unknown_objects_are_harmless():
    c = Checker()
    for ev in [Event("scheduler_step", 0, optimizer=None, scheduler=3, origin="user"),
               Event("optimizer_step", 1, optimizer=None, lrs=(1.0,)),
               Event("no_such_event", 2), Event("get_lr_call", 3, scheduler=None),
               Event("add_param_group", 4, optimizer=5, lrs=())]:
        assert list(c.feed(ev)) == []
    assert c.finish() == []


def test_one_step_per_process_from_one_call_is_accelerates_wrapper(monkeypatch):
    """accelerate's AcceleratedScheduler steps the scheduler num_processes times per optimizer step."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    s = Stream().optimizer().scheduler(0, "LambdaLR")
    for _ in range(6):
        s.zero().step()
        for _ in range(4):
            s.sstep(line=40)
    assert s.codes() == []
    s2 = Stream().optimizer().scheduler(0, "LambdaLR")  # stepped per micro-batch: 3 per step, not 4
    for _ in range(6):
        s2.zero().step()
        for _ in range(3):
            s2.sstep(line=40)
    found = s2.c.finish()
    assert [(f.code, f.step, f.line, f.count) for f in found] == [("scheduler-multiple-steps", 1, 40, 6)]
    assert "stepped 3 times between optimizer steps 1 and 2" in found[0].message
    assert [f.code for f in s2.new] == ["scheduler-multiple-steps"]  # reported when the next step came


def test_schedule_not_completed_only_when_the_run_ended_normally():
    def run():
        s = Stream().optimizer().scheduler(0, "CosineAnnealingLR", T_max=100)
        for _ in range(20):
            s.iteration()
        return s
    found = run().c.finish()
    assert [(f.code, f.severity, f.line) for f in found] == [("schedule-not-completed", "info", 5)]
    assert "position 20 of 100 (20%)" in found[0].message
    assert run().c.finish(completed=False) == []  # a crash or an interrupt stops wherever it stops
    s = Stream().optimizer().scheduler(0, "CosineAnnealingLR", T_max=30)  # 20 of 30: far enough
    for _ in range(20):
        s.iteration()
    assert s.codes() == []


def test_lambda_factor_on_the_scale_of_the_lr():
    base = 1e-3

    def run(factors, cls="LambdaLR"):
        s = Stream().optimizer().scheduler(0, cls, lrs=(base * factors[0],), base_lrs=[base])
        lr = base * factors[0]
        for f in factors[1:]:
            s.zero().step(lrs=(lr,))  # the step uses the LR the scheduler left, then it moves it
            lr = base * f if cls == "LambdaLR" else lr * f
            s.sstep(lrs=(lr,))
        return [f.code for f in s.c.finish()]

    warmup_then_flat = [1e-3 * min(1.0, (i + 1) / 5) for i in range(15)]  # the lambda returns an LR
    assert run(warmup_then_flat) == ["lambda-returns-lr"]
    still_rising = [1e-3 * (i + 1) / 100 for i in range(15)]  # a long LR-scale warmup the run did not finish
    assert run(still_rising) == []
    assert run([0.01 + i * 0.1 for i in range(11)] + [0.5] * 4) == []  # factors reach ~1: a factor schedule
    assert run([1.0] + [base] * 3, cls="MultiplicativeLR") == ["lambda-returns-lr"]
    assert run([1.0] + [0.95] * 12, cls="MultiplicativeLR") == []
