"""``python -m lrdebug``: the same as the ``lrdebug`` console script."""

import sys

from .cli import main

sys.exit(main())
