"""PyTorch's own warnings keep pointing at the user's line under lrdebug (its wrapper is not blamed)."""

import sys
import warnings

import torch

import lrdebug


def test_pytorchs_order_warning_names_the_users_line(tmp_path):
    p = torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.zeros(1)
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with lrdebug.trace(out=tmp_path / "t", summary=False, ignore=["scheduler-before-optimizer"]):
            sched.step(); line = sys._getframe().f_lineno  # noqa: E702
            opt.step()
    torch_warnings = [w for w in caught if "before `optimizer.step()`" in str(w.message)]
    assert [(w.filename, w.lineno) for w in torch_warnings] == [(__file__, line)]
