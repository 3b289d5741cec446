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



def merge_stored(statuses: dict[int, dict[str, Any]], with_ranks: bool = False) -> list[dict[str, Any]]:
    """Findings the recorder stored at the end of each rank's run (``{rank: status}``), merged across
    ranks: one per code, objects, group and call site, with the largest count. ``lrdebug report`` and
    the end-of-run summary both count through this, so they never disagree. ``with_ranks`` adds
    ``ranks``: the ranks that stored each finding."""
    merged: dict[tuple, dict[str, Any]] = {}
    for rank in sorted(statuses):
        for d in statuses[rank].get("findings") or []:
            if not isinstance(d, dict) or "code" not in d:
                continue
            try:
                f = Finding.from_dict({"severity": "info", "message": "", **d}).to_dict()
            except TypeError:
                continue
            key = (f["code"], f["optimizer"], f["scheduler"], f["group"], f["file"], f["line"])
            if key in merged:
                merged[key]["count"] = max(merged[key]["count"] or 0, f["count"] or 0)
            else:
                merged[key] = f
                if with_ranks:
                    f["ranks"] = []
            if with_ranks and rank not in merged[key]["ranks"]:
                merged[key]["ranks"].append(rank)
    return list(merged.values())
