"""Measure the HTML report on a big trace: time to write it, file size, and load time in headless Chromium.

    python scripts/make_big_trace.py --rows 4000000 --groups 4 /tmp/big1m4    # 1M steps x 4 groups
    python scripts/bench_html.py /tmp/big1m4 [--runs 3] [--screenshot /tmp/big.png]

Load time: from ``driver.get(file://…)`` until the page's own script has run after every chart was drawn
(``body[data-ready]``), in system Chromium, headless, network off (tests/browser.py). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--runs", type=int, default=3, help="browser loads to time (median reported)")
    ap.add_argument("--out", type=Path, default=None, help="the HTML file (default: a temporary one)")
    ap.add_argument("--screenshot", type=Path, default=None, help="save a screenshot of the loaded page")
    args = ap.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="lrdebug-bench-html-")) / "report.html"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lrdebug", "report", str(args.trace), "--format", "html", "-o", str(out)],
                          capture_output=True, text=True)
    write_s = time.perf_counter() - t0
    if proc.returncode not in (0, 1) or not out.exists():
        raise SystemExit(f"lrdebug report failed ({proc.returncode}): {proc.stderr.strip()}")
    size = out.stat().st_size
    text = out.read_text(encoding="utf-8")
    from lrdebug.report.renderers.html import page_summary

    summary = page_summary(text)
    import plotly.offline

    result = {"trace": str(args.trace), "html": str(out), "bytes": size, "mib": round(size / 2**20, 2),
              "plotly_js_bytes": len(plotly.offline.get_plotlyjs().encode()), "write_s": round(write_s, 2),
              "charts": summary["charts"], "points": sum(summary["charts"].values())}

    sys.path.insert(0, str(ROOT / "tests"))
    from browser import PAGE_STATE_JS, BrowserUnavailable, open_browser

    try:
        driver = open_browser()
    except BrowserUnavailable as exc:
        result["browser"] = f"not measured: {exc}"
        print(json.dumps(result, indent=2))
        return
    loads = []
    try:
        for _ in range(args.runs):
            driver.get("about:blank")
            t = time.perf_counter()
            driver.get(out.as_uri())
            while driver.execute_script("return document.body && document.body.getAttribute('data-ready')") != "1":
                if time.perf_counter() - t > 120:
                    raise SystemExit("the page did not finish loading in 120 s")
                time.sleep(0.02)
            loads.append(time.perf_counter() - t)
        state = driver.execute_script(PAGE_STATE_JS)
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        if args.screenshot:
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1366, min(height + 40, 8000))
            driver.save_screenshot(str(args.screenshot))
            result["screenshot"] = str(args.screenshot)
    finally:
        driver.quit()
    result.update(load_s=[round(x, 2) for x in loads], load_s_median=round(statistics.median(loads), 2),
                  console_errors=len(errors), resources_fetched=len(state["resources"]),
                  charts_drawn_ok=all(c["drawn"] == c["expected"] and c["rendered"] for c in state["charts"]),
                  cpus=os.cpu_count())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
