#!/usr/bin/env bash
# HTTP throughput of POST /evaluate with the audit ring on, measured by wrk from a second process.
# Usage: agent/benches/http/run.sh [seconds] [connections]   (needs wrk: apt-get install wrk)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
seconds="${1:-10}"
connections="${2:-64}"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }

cargo build --release -p mesh-agent --manifest-path "$root/Cargo.toml" >&2
target="${CARGO_TARGET_DIR:-$root/target}"
data="$(mktemp -d)"
port=18904
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$data"' EXIT

RUST_LOG=warn "$target/release/mesh-agent" run --node-id bench --data-dir "$data" \
  --http-listen "127.0.0.1:$port" --policies "$root/policies" &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done

# One wrk thread: the agent gets the other core.
wrk -t1 -c"$connections" -d"${seconds}s" --latency -s "$here/evaluate.lua" "http://127.0.0.1:$port"
sleep 1
echo "audit head after the run: $(curl -s "http://127.0.0.1:$port/health" | sed 's/.*"audit_head":\([0-9]*\).*/\1/')"
