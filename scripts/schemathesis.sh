#!/usr/bin/env bash
# Property-based API testing of xend with schemathesis (from PyPI) against its own
# OpenAPI document. Starts its own xenstored and xend on a free port; every response
# must be documented and no request may produce a 5xx. Not part of CI (it needs
# minutes); run it by hand: ./scripts/schemathesis.sh [max-examples]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --workspace
VENV=target/schemathesis-venv
[ -x "$VENV/bin/st" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q schemathesis; }
DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/release/xenstored --socket "$DIR/xs/socket" 2>/dev/null & XS=$!
sleep 0.3
./target/release/xend foreground --port "$PORT" --state-dir "$DIR/state" --log-dir "$DIR/log" --xenstored-socket "$DIR/xs/socket" 2>/dev/null & XEND=$!
trap 'kill $XEND $XS 2>/dev/null; pkill -f "xen-vmm run --name.*--control $DIR" 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
"$VENV/bin/st" run "http://127.0.0.1:$PORT/openapi.json" --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance --max-examples "${1:-50}" --request-timeout 20
