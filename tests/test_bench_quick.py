"""The benchmark script still runs (its --quick smoke mode); no timing is asserted."""

import re

from conftest import ROOT, run_python


def test_bench_quick_prints_every_figure():
    proc = run_python(str(ROOT / "scripts" / "bench.py"), "--quick", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for figure in ("(a) traced / untraced", "(b) traced / untraced", "(c) traced / untraced",
                   "(a) profiler added time / lrdebug added time", "added per optimizer step, 10 groups",
                   "added per scheduler step", "rows written per second (1 group)"):
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(figure)), None)
        assert line is not None, figure
        assert re.search(r"\d", line[len(figure):]), line
