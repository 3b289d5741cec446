"""Recording, inside the training process: the only part of lrdebug that imports torch.

``api`` (``trace``) starts a ``recorder``; ``patching`` installs the hooks and reversible patches,
which report to the active recorder through ``sink``; ``hotpath`` picks the compiled or the
pure-Python callbacks for the events of every step; ``callsites``, ``device``, ``sampling`` and
``objects`` read what each event needs; ``environment`` knows rank and launcher; ``lifecycle``
closes traces on signals and at exit; ``child`` records the processes ``lrdebug run`` starts.

``trace`` and ``effective_lr`` load lazily: ``lrdebug --version`` reads ``hotpath`` without torch.
"""

__all__ = ["trace", "effective_lr"]


def __getattr__(name: str):
    if name == "trace":
        from .api import trace

        return trace
    if name == "effective_lr":
        from .objects import effective_lr

        return effective_lr
    raise AttributeError(f"module 'lrdebug.record' has no attribute {name!r}")
