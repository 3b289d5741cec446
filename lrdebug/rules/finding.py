"""A finding: one misuse found in the event stream (code, severity, message, where, how often)."""

from __future__ import annotations

import dataclasses
from typing import Any

SEVERITIES = ("error", "warning", "info")
SEVERITY_RANK = {"error": 3, "warning": 2, "info": 1, "never": 99}


@dataclasses.dataclass
class Finding:
    """A misuse found in the event stream, with the first place and step it happened."""

    code: str
    severity: str
    message: str
    optimizer: int | None = None
    scheduler: int | None = None
    group: int | None = None
    step: int | None = None
    file: str | None = None
    line: int | None = None
    count: int = 1
    framework: str | None = None  # the framework frame that made the call at file:line (Lightning, HF, ...)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

