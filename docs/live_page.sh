#!/usr/bin/env bash
# Regenerates docs/live_page.png: the live page of `edgeseg video --serve` in headless chromium.
#   bash docs/live_page.sh [CLIP]      (needs Debian's chromium; `make live-page` runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
clip="${1:-../shared/assets/solidWhiteRight.mp4}"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/edgeseg video "$clip" --realtime --headless --serve "127.0.0.1:$port" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/stats.json" >/dev/null && break; sleep 0.1; done
sleep 3
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,620 \
  --virtual-time-budget=4000 --screenshot=docs/live_page.png "http://127.0.0.1:$port/" 2>/dev/null
echo "wrote docs/live_page.png"
