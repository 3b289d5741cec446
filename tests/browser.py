"""Headless Chromium from the system packages (Selenium + chromium-driver), network off, for the HTML tests.

``open_browser()`` returns a WebDriver, or raises ``BrowserUnavailable`` saying why (the tests skip).
Nothing here downloads a browser: Selenium Manager is bypassed by naming the system driver.
"""

from __future__ import annotations

import os
import shutil
import tempfile

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVERS = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--window-size=1366,900", "--hide-scrollbars",
         # the network off: every host resolves nowhere, no proxy reachable
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://0.0.0.0:9", "--proxy-bypass-list=<-loopback>"]


class BrowserUnavailable(Exception):
    pass


def open_browser(dark: bool = False):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise BrowserUnavailable("selenium is not installed (pip install 'lrdebug[dev]')") from None
    binary = next((p for p in CHROMIUM if os.path.exists(p)), None)
    driver = next((p for p in DRIVERS if os.path.exists(p)), None) or shutil.which("chromedriver")
    if binary is None or driver is None:
        raise BrowserUnavailable("no system Chromium/chromedriver (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='lrdebug-chromium-')}")
    if dark:
        opts.add_argument("--force-dark-mode")
        opts.add_argument("--blink-settings=preferredColorScheme=0")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        drv = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    except Exception as exc:  # noqa: BLE001 - any failure to start: the tests skip, saying why
        raise BrowserUnavailable(f"headless Chromium did not start: {type(exc).__name__}: {str(exc)[:200]}") from None
    # and the network off for the page itself (DevTools): no request can leave the machine
    try:
        drv.execute_cdp_cmd("Network.enable", {})
        drv.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
    except Exception:  # noqa: BLE001 - the resolver rules above still keep it off
        pass
    return drv


# What the page says about itself once loaded: charts, their drawn points, the findings, the resources fetched.
PAGE_STATE_JS = """
const charts = Array.from(document.querySelectorAll('.chart')).map(function (div) {
  const gd = div.querySelector('.js-plotly-plot');
  let drawn = 0, traces = 0;
  if (gd && gd._fullData) {
    gd._fullData.forEach(function (t) {  // decoded arrays (gd.data keeps the page's base64 form)
      if (t.visible === true && t.yaxis !== 'y2') { drawn += (t.x || []).length; traces += 1; }
    });
  }
  return {id: div.getAttribute('data-chart'), expected: parseInt(div.getAttribute('data-points'), 10),
          drawn: drawn, traces: traces, rendered: !!(gd && gd.querySelector('.main-svg')),
          height: div.getBoundingClientRect().height};
});
return {ready: document.body.getAttribute('data-ready') === '1', charts: charts,
        findings: document.querySelectorAll('#findings li.finding').length,
        findingsBlock: !!document.getElementById('findings'),
        resources: performance.getEntriesByType('resource').map(function (e) { return e.name; }),
        dark: window.matchMedia('(prefers-color-scheme: dark)').matches,
        bg: getComputedStyle(document.body).backgroundColor};
"""
