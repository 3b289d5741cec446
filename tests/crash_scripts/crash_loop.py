"""A small training loop that dies at a chosen moment, for tests/test_crash.py.

Environment:
  LOG      file to which the loop appends "<step> <time_ns>" after each optimizer step (every step
           when SLEEP > 0, else every 50th) and "death <time_ns>" just before it dies
  STEPS    optimizer steps to run (or SECONDS: run this long)
  SLEEP    seconds to sleep after each step (0: a fast loop)
  DEATH    how the loop ends after its steps: sigkill | exit | abort | segv | raise | normal
           (raise: with TERM_AFTER=S, SIGTERM arrives S seconds after the exception)
  HOOK     test instrumentation inside lrdebug's writer (see below)
  TRACE    "lrdebug run": the loop is run by `lrdebug run` (no trace() here); else trace(out=argv[1])
  FLUSH_SECONDS, MERGE_PARTS, MERGE_MERGED: writer settings for the run

``crash_loop.py --zygote BASE SPECS`` imports torch once and forks one child per scenario in the
JSON file SPECS (name -> [argv, environment]; argv ["lrdebug", "run", ...] runs the CLI in the child):
tests start many short-lived processes without paying for importing torch in each.
"""

import os
import signal
import sys
import time

import torch

import lrdebug.tracefile.writer as W

def main():
    global log, steps, seconds, sleep, every, opt, model, sched, x, hook
    env = os.environ
    hook = env.get("HOOK", "")
    if env.get("MERGE_PARTS"):
        W.MERGE_PARTS = int(env["MERGE_PARTS"])
    if env.get("MERGE_MERGED"):
        W.MERGE_MERGED = int(env["MERGE_MERGED"])

    if hook in ("term_in_close", "int_in_close"):
        # The signal arrives in the middle of the save, after the tail part, before the status.
        sig = signal.SIGTERM if hook == "term_in_close" else signal.SIGINT
        _status = W.PartWriter._write_status

        def _write_status(self, **fields):
            if fields.get("state") == "closed":
                os.kill(os.getpid(), sig)
            return _status(self, **fields)

        W.PartWriter._write_status = _write_status

    if hook in ("term_in_merge", "term_in_final_merge"):
        # SIGTERM at the start of a merge: of the writer thread's first one, or of the final one at close.
        _merge = W.PartWriter._merge
        _sent = []

        def _merge_hooked(self, files):
            final = self._stop
            if len(files) >= 2 and not _sent and final == (hook == "term_in_final_merge"):
                _sent.append(1)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)  # the merge is still running when the handler acts
            return _merge(self, files)

        W.PartWriter._merge = _merge_hooked

    if hook.startswith("kill_after_merge_"):
        # SIGKILL once the N-th merged file is in place, before the files it replaces are deleted.
        target = int(hook.rsplit("_", 1)[1])

        class _Os:
            count = 0

            def __getattr__(self, name):
                return getattr(os, name)

            def replace(self, src, dst):
                os.replace(src, dst)
                if os.path.basename(str(dst)).count("-") == 2:
                    _Os.count += 1
                    if _Os.count == target:
                        os.kill(os.getpid(), signal.SIGKILL)

        W.os = _Os()

    log = open(env["LOG"], "a", buffering=1)
    steps = int(env.get("STEPS", "0"))
    seconds = float(env.get("SECONDS", "0"))
    sleep = float(env.get("SLEEP", "0"))
    every = 1 if sleep > 0 else 50

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    x = torch.randn(8, 4)


    def train():
        step = 0
        end = time.monotonic() + seconds
        while (step < steps) if steps else (time.monotonic() < end):
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
            sched.step()
            step += 1
            if step % every == 0:
                log.write(f"{step} {time.time_ns()}\n")
            if sleep:
                time.sleep(sleep)
        log.write(f"{step} {time.time_ns()}\n")
        die()


    def die():
        death = env.get("DEATH", "normal")
        log.write(f"death {time.time_ns()}\n")
        log.flush()
        if death == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif death == "exit":
            os._exit(7)
        elif death == "abort":
            os.abort()
        elif death == "segv":
            import ctypes

            ctypes.string_at(0)
        elif death == "raise":
            if env.get("TERM_AFTER"):  # torchrun tearing the job down while the trace is being saved
                import threading

                threading.Timer(float(env["TERM_AFTER"]), os.kill, (os.getpid(), signal.SIGTERM)).start()
            raise RuntimeError("peer died")


    if env.get("TRACE") == "lrdebug run":
        train()
    else:
        import lrdebug

        with lrdebug.trace(out=sys.argv[1], summary=False, flush_seconds=float(env.get("FLUSH_SECONDS", "1"))):
            train()


def zygote(base: str, specs: str) -> None:
    """Import torch once, then fork one child per scenario (JSON: name -> [argv, env]); write each
    child's exit (its status, or minus the signal that killed it) to <base>/results.json."""
    import json
    import traceback

    scenarios = json.loads(open(specs).read())
    W._warm_up()  # once here, not in every child
    children = {}
    for name, (argv, extra) in scenarios.items():
        pid = os.fork()
        if pid:
            children[pid] = name
            continue
        code = 1
        try:
            fd = os.open(os.path.join(base, f"{name}.out"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.update(extra)
            sys.argv = list(argv)
            if argv[0] == "lrdebug":
                from lrdebug.cli import main as cli

                code = cli(argv[1:])
            else:
                main()
                code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - what Python would print
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    results = {}
    while children:
        pid, status = os.wait()
        name = children.pop(pid, None)
        if name is not None:
            results[name] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    with open(os.path.join(base, "results.json"), "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"]:
        zygote(sys.argv[2], sys.argv[3])
    else:
        main()
