#!/usr/bin/env bash
# Installs what the tests need and runs them. The README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch 2.13.0 first: pip takes its CPU build from local disk instead of a multi-GB CUDA build.
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test]'
# promtool and prometheus for tests/prometheus: Debian's `prometheus` package ships both
# (docs/sources.md#promtool). Where apt is unavailable those tests skip with the reason.
if ! command -v promtool >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus) >/dev/null 2>&1 \
        || echo "scripts/test.sh: could not install Debian's prometheus (promtool); its tests will skip" >&2
fi
# Headless Chromium for tests/exporters/test_report_browser.py (the report page as a browser builds
# it, and its screenshot). Where apt is unavailable those tests skip with the reason.
if ! command -v chromium >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
        || echo "scripts/test.sh: could not install Debian's chromium; the report's browser tests will skip" >&2
fi
set +e
python3 -m pytest "$@"
status=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure of the suite, not a pass.
if [ "$status" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
[ "$status" -eq 0 ] || exit "$status"
# Second pass: the runtime tests again, with attention() being the compiled hit path
# (fa4doctor/runtime/native), so every runtime behaviour is also proven through it.
native_cache=$(mktemp -d)
trap 'rm -rf "$native_cache"' EXIT
if XDG_CACHE_HOME=$native_cache python3 -m fa4doctor native build; then
    FA4DOCTOR_NATIVE_SUITE=$native_cache python3 -m pytest -q -p no:cacheprovider tests/runtime
else
    echo "scripts/test.sh: no compiler for the compiled hit path; its second pass is skipped" >&2
fi
