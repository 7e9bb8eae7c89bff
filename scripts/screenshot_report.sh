#!/usr/bin/env bash
# Screenshot a docshift report.html in headless Chromium, to check that its charts render.
#
#   scripts/screenshot_report.sh RUN_FOLDER_OR_REPORT_HTML [OUT.png] [WIDTH[xHEIGHT]]
#
# WIDTH is the window's width in CSS pixels (default 1400; check 800 too); HEIGHT (default 3000) is
# how much of the page the PNG holds.
# Installs Debian's `chromium` package when no Chromium is on PATH (needs root and apt). Chromium
# runs with networking features off and a throwaway profile; the report itself fetches nothing.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 RUN_FOLDER_OR_REPORT_HTML [OUT.png] [WIDTH[xHEIGHT]]" >&2
    exit 2
fi
target=$1
[[ -d $target ]] && target=$target/report.html
if [[ ! -f $target ]]; then
    echo "error: $target does not exist" >&2
    echo "  hint: build it with: docshift report RUN_ID" >&2
    exit 2
fi
out=${2:-$(dirname "$target")/report.png}
size=${3:-1400}
if [[ ! $size =~ ^[0-9]+(x[0-9]+)?$ ]]; then
    echo "error: window size '$size' is not WIDTH or WIDTHxHEIGHT (e.g. 800 or 800x3000)" >&2
    echo "  hint: give a width in pixels, e.g. $0 $1 out.png 800" >&2
    exit 2
fi
[[ $size == *x* ]] || size=${size}x3000

browser=""
for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then browser=$(command -v "$name"); break; fi
done
if [[ -z $browser ]]; then
    echo "installing Debian's chromium package (apt-get install -y chromium)..." >&2
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: chromium is missing and installing it needs root" >&2
        echo "  hint: sudo apt-get install -y chromium, then run this again" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null \
        || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y \
             --no-install-recommends chromium >/dev/null; }
    browser=$(command -v chromium)
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
absolute=$(cd "$(dirname "$target")" && pwd)/$(basename "$target")
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --user-data-dir="$profile" --screenshot="$out" --window-size="${size/x/,}" \
    "file://$absolute" >/dev/null 2>&1
if [[ ! -s $out ]]; then
    echo "error: chromium did not write $out" >&2
    exit 1
fi
echo "$out"
