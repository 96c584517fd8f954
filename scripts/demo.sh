#!/usr/bin/env bash
# The main job: build everything, start xend (which starts xenstored) with the demo
# domain from the embedded default guest, and show it with xm. xend keeps running in
# the background; stop it with `./target/release/xend stop --state-dir .rxen/state`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --workspace
ROOT="$PWD/.rxen"
OPTS=(--state-dir "$ROOT/state" --log-dir "$ROOT/log" --xenstored-socket "$ROOT/xenstored/socket")
./target/release/xend status "${OPTS[@]}" >/dev/null 2>&1 && ./target/release/xend stop "${OPTS[@]}" || true
./target/release/xend start "${OPTS[@]}" --create docs/examples/demo.cfg
for _ in $(seq 50); do ./target/release/xm list demo >/dev/null 2>&1 && break; sleep 0.1; done
./target/release/xm list
echo
./target/release/xm console demo --no-follow
cat <<TXT

xend is running on http://127.0.0.1:8000 with the demo domain. Try:
  ./target/release/xm list
  ./target/release/xm create docs/examples/demo.cfg name='"web"'
  ./target/release/xm shutdown -w demo
  curl -s http://127.0.0.1:8000/domains
  ./target/release/xend stop --state-dir .rxen/state
Logs: .rxen/log/xend.log*, .rxen/log/xend-debug.log*
TXT
