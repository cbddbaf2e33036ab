#!/usr/bin/env bash
# Everything the tests need, then the whole suite: Debian packages and the test bed
# (tests/testbed/up.sh), the package with its test extras (install.sh), pytest, and the bed
# torn down on exit. Needs root (namespaces, daemons). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "tests/run-all.sh: run as root (the test bed needs it)" >&2; exit 1; }

bash install.sh test
keep=${KEEP_TESTBED:-0}
[ "$keep" = 1 ] || trap 'bash tests/testbed/down.sh --quiet || true' EXIT
bash tests/testbed/up.sh
.venv/bin/python -m pytest tests -p no:cacheprovider "$@"
