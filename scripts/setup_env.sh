#!/usr/bin/env bash
# Create .venv if there is none and install lrdebug (editable) with its dev and plot extras.
# torch is pinned in constraints.txt. Safe to run twice: the install is skipped while
# pyproject.toml, setup.py, constraints.txt and the C hot path are unchanged since the last successful
# one (a changed lrdebug/record/_hot.c is rebuilt by the reinstall).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with ${PYTHON:-python3}" >&2
    "${PYTHON:-python3}" -m venv .venv
fi

stamp=.venv/.lrdebug-install-stamp
want=$(.venv/bin/python -c 'import hashlib, sys
h = hashlib.sha256()
for name in sys.argv[1:]:
    h.update(open(name, "rb").read())
print(h.hexdigest())' pyproject.toml setup.py constraints.txt lrdebug/record/_hot.c)

# Also reinstall when torch is missing or lrdebug resolves to another checkout.
installed() {
    .venv/bin/python -c 'import importlib.util as u, os, sys
lr, torch = u.find_spec("lrdebug"), u.find_spec("torch")
sys.exit(not (lr and torch and lr.origin.startswith(os.getcwd() + os.sep)))' 2>/dev/null
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && installed; then
    exit 0
fi

echo "setup: installing lrdebug[dev,plot] into .venv (torch pinned by constraints.txt)" >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,plot]'
echo "$want" > "$stamp"
