"""Trains a little, then starts Python children every way a training program does; prints JSON.

Children that train (each with its own LR, 4 steps): a ``subprocess`` re-running this script (as
Lightning's DDP launcher does), multiprocessing ``spawn``, ``forkserver`` and ``fork``. Children that do not train: a plain
``python -c`` that never imports torch, the same without LRDEBUG_CHILD in its environment, and a
Python that has no lrdebug (the base interpreter of the virtual environment).
"""

import json
import multiprocessing as mp
import os
import subprocess
import sys

import torch


def train(lr, steps):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 4)).sum().backward()
        opt.step()
        sched.step()


# What a child that does not train sees: which of these modules got imported, its sys.path, and
# whether the user's own sitecustomize ran.
PROBE = ("import json, os, sys; print(json.dumps([sorted(m for m in ('torch', 'lrdebug', '_lrdebug_child_hook') "
         "if m in sys.modules), sys.path, os.environ.get('USER_SITE_RAN')]))")


def run(cmd, env=None):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return {"stdout": proc.stdout, "stderr": proc.stderr}


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        train(float(sys.argv[2]), 4)
        print(os.getpid())
        sys.exit(0)
    train(0.1, 3)
    report = {"hook_path": os.environ.get("PYTHONPATH", "").split(os.pathsep)[0], "children": {}}
    children = report["children"]
    # All at once: they mostly wait on importing torch.
    child = subprocess.Popen([sys.executable, __file__, "child", "0.2"], stdout=subprocess.PIPE, text=True)
    procs = {}
    for method, lr in (("spawn", 0.3), ("forkserver", 0.4), ("fork", 0.5)):
        procs[method] = mp.get_context(method).Process(target=train, args=(lr, 4)), lr
        procs[method][0].start()
    children["subprocess"] = {"pid": int(child.communicate()[0].split()[-1]), "lr": 0.2, "exitcode": child.returncode}
    for method, (p, lr) in procs.items():
        p.join()
        children[method] = {"pid": p.pid, "lr": lr, "exitcode": p.exitcode}
    report["unhooked"] = run([sys.executable, "-c", PROBE], env={k: v for k, v in os.environ.items()
                                                                if k != "LRDEBUG_CHILD"})
    report["plain"] = run([sys.executable, "-c", PROBE])
    base = os.path.join(sys.base_prefix, "bin", "python3")
    report["no_lrdebug"] = run([base, "-c", PROBE]) if os.path.exists(base) else None
    print("REPORT " + json.dumps(report), flush=True)
