"""The compiled hot path (lrdebug/record/_hot.c), built where a C compiler is found.

Everything else is in pyproject.toml. A failed build is not an error: lrdebug then runs its
pure-Python implementation of the same callbacks (``lrdebug --version`` says which one runs).
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that falls back to the pure-Python hot path, saying so in one line."""

    def run(self):
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - no compiler, no headers: install without the extension
            print(f"lrdebug: the compiled hot path was not built ({e}); the pure-Python one will be used",
                  file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            print(f"lrdebug: the compiled hot path was not built ({e}); the pure-Python one will be used",
                  file=sys.stderr)


setup(
    ext_modules=[Extension("lrdebug.record._hot", ["lrdebug/record/_hot.c"], optional=True)],
    cmdclass={"build_ext": OptionalBuildExt},
)
