#!/usr/bin/env bash
# HTTP throughput measured by wrk from a second process, against a release agent started with the
# repository's policies/.
# Usage: agent/benches/http/run.sh [seconds] [connections] [script]   (needs wrk: apt-get install wrk)
#   script: evaluate.lua (default; POST /evaluate, audit on) or validate.lua (POST /v1/data/...
#   resource_limits with the seed input; set MESH_AGENT_REGO_CACHE_TTL_SEC=0 to measure uncached).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
seconds="${1:-10}"
connections="${2:-64}"
script="${3:-evaluate.lua}"
export SEED_INPUT="$root/policies/rego/neuralhive/orchestrator/resource_limits.cases/seed_example.input.json"
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
wrk -t1 -c"$connections" -d"${seconds}s" --latency -s "$here/$script" "http://127.0.0.1:$port"
sleep 1
echo "audit head after the run: $(curl -s "http://127.0.0.1:$port/health" | sed 's/.*"audit_head":\([0-9]*\).*/\1/')"
