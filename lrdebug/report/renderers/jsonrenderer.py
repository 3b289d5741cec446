"""The report as JSON: ``Report.to_dict()``, the documented contract (schema_version, trace, ranks,
optimizers, schedulers, findings, timing)."""

from __future__ import annotations

import json


def render(report) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"
