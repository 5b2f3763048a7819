#!/usr/bin/env bash
# Time from a clean clone to the first stored detections, the way a new user gets there:
# `scripts/run` (set-up, one release build of every binary, the embedded default), then the
# sample scenario's first frame with a detection. Everything scripts/setup installs (the broker
# among it) should already be there: this measures vap's own build and start.
# Usage: benches/first_detections.sh [PORT]
set -euo pipefail
port="${1:-18080}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'kill -INT "$run" 2>/dev/null || true; wait "$run" 2>/dev/null || true; rm -rf "$work"' EXIT
git clone -q "$repo" "$work/vap"
cd "$work/vap"
start=$(date +%s)
scripts/run --port "$port" > "$work/run.log" 2>&1 &
run=$!
until grep -q 'sample:  scenario' "$work/run.log" 2>/dev/null; do
    kill -0 "$run" 2>/dev/null || { cat "$work/run.log"; exit 1; }
    sleep 1
done
built=$(grep -m1 -o 'Finished `release` profile.*in [0-9.]*m\? \?[0-9.]*s' "$work/run.log" || true)
id=$(grep -m1 -o 'scenario [0-9a-f-]\{36\}' "$work/run.log" | cut -d' ' -f2)
until curl -sf "http://127.0.0.1:$port/api/v1/prediction/$id" | grep -q '"class"'; do
    sleep 1
done
end=$(date +%s)
echo "first detections $((end - start)) s after scripts/run started ($built)"
