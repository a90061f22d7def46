#!/usr/bin/env bash
# Build the documentation site as CI does (warnings are errors) and open it: tools/docs.sh [--no-open]
# Needs the docs extra: pip install -e ".[docs]"
set -euo pipefail
cd "$(dirname "$0")/.."
sphinx-build -W --keep-going -n -q -b html docs docs/_build/html
page="docs/_build/html/index.html"
echo "built $page"
if [ "${1:-}" != "--no-open" ]; then
  python -m webbrowser -t "file://$PWD/$page" >/dev/null 2>&1 || true
fi
