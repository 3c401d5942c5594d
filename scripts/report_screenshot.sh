#!/usr/bin/env bash
# Screenshots a `fa4doctor report --html` page with headless Chromium, offline:
#   scripts/report_screenshot.sh HTML PNG [WIDTH[xHEIGHT]]
# The page loads nothing, and these flags keep Chromium itself off the network (no QUIC, no
# background, component or sync traffic) with a throwaway profile. Chromium's screenshot is its
# window, so without a HEIGHT a first pass measures the page (a copy with one line of script
# that puts its height in the title) and the window is made that tall. Default width: 1400.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 HTML PNG [WIDTH[xHEIGHT]]" >&2
    exit 2
fi
html=$(realpath "$1")
png=$(realpath -m "$2")
width=${3:-1400}
height=
case $width in *x*) height=${width#*x}; width=${width%x*} ;; esac
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [ -z "$browser" ]; then
    echo "$0: no chromium found (apt-get install chromium, or set CHROMIUM)" >&2
    exit 1
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium() {
    "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$profile/user" --hide-scrollbars "$@" 2>/dev/null
}
if [ -z "$height" ]; then
    cp "$html" "$profile/measure.html"
    echo '<script>document.title = "height=" + document.documentElement.scrollHeight</script>' \
        >>"$profile/measure.html"
    height=$(chromium --window-size="$width,1000" --dump-dom "file://$profile/measure.html" \
        | grep -o 'height=[0-9]*' | head -n 1 | cut -d= -f2)
    height=${height:-3000}
fi
chromium --window-size="$width,$height" --screenshot="$png" "file://$html"
[ -s "$png" ] || { echo "$0: chromium wrote no screenshot" >&2; exit 1; }
echo "$png (${width}x$height)"
