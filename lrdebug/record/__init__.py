"""Recording, inside the training process: the only part of lrdebug that imports torch.

``api`` (``trace``) starts a ``recorder``; ``patching`` installs the hooks and reversible patches,
which report to the active recorder through ``sink``; ``callsites``, ``device``, ``sampling`` and
``objects`` read what each event needs; ``environment`` knows rank and launcher; ``lifecycle``
closes traces on signals and at exit; ``child`` records the processes ``lrdebug run`` starts.
"""

from .api import trace
from .objects import effective_lr

__all__ = ["trace", "effective_lr"]
