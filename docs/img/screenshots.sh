#!/usr/bin/env bash
# Remakes docs/img/notebook.png (the notebook exported headless, shown in headless Chromium) and
# docs/img/profile-plot.png (alexnet-mp profile --plot). Needs the notebook extra and Chromium:
#   pip install -e '.[notebook]'; apt-get install chromium
# marimo's HTML export loads its frontend from a CDN; here it is served from the marimo package
# itself by a web server bound to 127.0.0.1, so nothing is fetched from the internet.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
server=
cleanup() { [ -n "$server" ] && kill "$server"; rm -rf "$work"; }
trap cleanup EXIT

time marimo export html --no-include-code docs/notebook.py -o "$work/notebook.html"
static=$(python -c 'import marimo, pathlib; print(pathlib.Path(marimo.__file__).parent / "_static")')
mkdir "$work/srv"
ln -s "$static" "$work/srv/dist"
sed -E 's#https://cdn.jsdelivr.net/npm/@marimo-team/frontend@[^/]+/dist/#/dist/#g' "$work/notebook.html" \
    > "$work/srv/notebook.html"
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python -m http.server "$port" --bind 127.0.0.1 --directory "$work/srv" >/dev/null 2>&1 &
server=$!
sleep 1
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,${HEIGHT:-5400} \
    --virtual-time-budget=20000 --screenshot="$work/notebook.png" "http://127.0.0.1:$port/notebook.html"
# 128 colours keep the PNG small (docs/img holds no file over 400 KB)
python -c 'import sys; from PIL import Image; Image.open(sys.argv[1]).convert("RGB").quantize(128).save(sys.argv[2], optimize=True)' \
    "$work/notebook.png" docs/img/notebook.png

if [ -z "${NOTEBOOK_ONLY:-}" ]; then  # about 2 minutes on a 2-core CPU
    alexnet-mp profile --compare paper,single,data-parallel,hybrid --batch-size 16 --steps 1 --warmup 0 \
        --device cpu --plot docs/img/profile-plot.png
fi
ls -l docs/img/notebook.png docs/img/profile-plot.png
