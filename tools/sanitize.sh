#!/usr/bin/env bash
# Build the extension with AddressSanitizer + UBSan and run the test suite on it.
#   bash tools/sanitize.sh [pytest args...]
# CPython itself is not instrumented, so the sanitizer runtimes are preloaded
# and leak detection is off (the interpreter keeps memory until exit by design).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/cyjob-asan.XXXXXX")
trap 'rm -rf "$work"' EXIT
git ls-files -z | xargs -0 -I{} cp --parents {} "$work"
cd "$work"
CYJOB_SANITIZE=1 python setup.py -q build_ext --inplace
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
# A small quarantine: the default (256 MB) would count as growth in the
# bounded-memory streaming test.
# handle_segv=0: tests crash a worker on purpose and expect SIGSEGV, not
# the sanitizer's abort.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:quarantine_size_mb=16:handle_segv=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
PYTHONPATH=src python -m pytest -q -p no:cacheprovider "${@:-tests}"
