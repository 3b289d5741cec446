"""The warning and error classes, importable without pyarrow or torch.

Python reads ``-W`` and ``PYTHONWARNINGS`` before ``site`` puts site-packages on ``sys.path``, so a
filter naming ``lrdebug.LRDebugWarning`` is dropped ("Invalid -W option ignored") for an installed
lrdebug; ``reapply_warning_options`` installs such filters again when lrdebug is imported.
"""

from __future__ import annotations

import sys
import warnings


class LRDebugWarning(UserWarning):
    """A finding of severity warning or error, reported at the user's line."""


class LRDebugError(RuntimeError):
    """Raised at the offending call under ``strict=True``, and for misuse of lrdebug itself."""


LRDebugWarning.__module__ = LRDebugError.__module__ = "lrdebug"  # the public name, in tracebacks too

_NAMES = ("lrdebug.LRDebugWarning", "lrdebug.errors.LRDebugWarning")


def reapply_warning_options() -> None:
    """Install the ``-W action:message:lrdebug.LRDebugWarning:...`` filters Python could not."""
    for option in sys.warnoptions:
        parts = [p.strip() for p in option.split(":")]
        if len(parts) < 3 or parts[2] not in _NAMES:
            continue
        parts += [""] * (5 - len(parts))
        action, message, _, module, lineno = parts[:5]
        try:
            warnings.filterwarnings(warnings._getaction(action), message, LRDebugWarning, module,
                                    int(lineno) if lineno else 0)
        except Exception:  # noqa: BLE001 - a malformed option stays ignored, as Python does
            pass
