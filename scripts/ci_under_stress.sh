#!/usr/bin/env bash
# Runs CI (`CI=true bash .ci/run`) several times in a row in a fresh clone while
# `stress-ng --cpu 2` loads both cores: the proof that the suite holds on a busy
# machine (issue 13). Stops at the first failing run. Needs Debian's stress-ng and
# the PostgreSQL and Redis that .ci/run expects on loopback.
#
#   scripts/ci_under_stress.sh [RUNS] [CLONE_DIR] [LOG_DIR]    (defaults: 3, /tmp/firebox-stress, /tmp)
set -u
runs="${1:-3}"
clone="${2:-/tmp/firebox-stress}"
logs="${3:-/tmp}"
mkdir -p "$logs"
repo="$(cd "$(dirname "$0")/.." && pwd)"
command -v stress-ng >/dev/null || { echo "stress-ng is missing: apt-get install stress-ng" >&2; exit 2; }
rm -rf "$clone"
git clone -q "$repo" "$clone"
cd "$clone"
summary="$logs/stress-summary.txt"
echo "clone of $(git rev-parse --short HEAD) at $(date -u +%FT%TZ)" >> "$summary"
stress-ng --cpu 2 --timeout 6h > "$logs/stress-ng.log" 2>&1 &
stress=$!
trap 'kill $stress 2>/dev/null' EXIT
status=0
for i in $(seq 1 "$runs"); do
  start=$(date -u +%T)
  CI=true bash .ci/run > "$logs/stress-run$i.log" 2>&1
  status=$?
  result=$(grep -E '^=+ .*(passed|failed).* in ' "$logs/stress-run$i.log" | tail -1)
  echo "run $i exit $status $start-$(date -u +%T) $result" >> "$summary"
  [ "$status" = 0 ] || break
done
exit "$status"
