#!/usr/bin/env bash
# The compiled hit path under AddressSanitizer and UndefinedBehaviorSanitizer: builds
# fa4doctor/runtime/native/hit.cpp with both into a temporary cache, then runs every runtime test
# through it (gcc's libasan and libubsan preloaded into Python). Any report fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
XDG_CACHE_HOME=$cache python3 - <<'PY'
import os, subprocess
from fa4doctor.runtime import native

environ = {"XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]}
path = native.artifact_path(environ, native._imported_torch_dir())
path.parent.mkdir(parents=True, exist_ok=True)
command = [c for c in native.compile_command(path, environ) if c not in ("-O2", "-w")]
subprocess.run(command + ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                          "-fno-sanitize-recover=undefined"], check=True)
print(f"built {path} with -fsanitize=address,undefined")
PY
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
FA4DOCTOR_NATIVE_SUITE=$cache python3 -m pytest -q -p no:cacheprovider tests/runtime "$@"
