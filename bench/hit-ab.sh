#!/usr/bin/env bash
# Interleaved A/B of imgmirror builds on the cache-hit path: each binary serves on its own
# loopback port (shipped defaults, JSON request log on, to /dev/null), a local origin serves
# tests/fixtures/images, and wrk (-t2 -c32) runs against each in turn, round after round, so
# the machine's drift hits every binary alike. Prints req/s, p99 and the service's CPU time
# per request (utime+stime from /proc over the run, divided by the requests served).
#
#   bench/hit-ab.sh ROUNDS SECONDS BINARY [BINARY ...]     ORIG=1 for the original, not 640 px
#
# A wrapper script works as a BINARY to vary the environment, e.g. RUST_LOG=warn (no request log).
# Routes here are no post's links, so builds get IMGMIRROR_UPSTREAM__FETCH=any; builds older than
# 717c412 refuse that key: run them with HIT_AB_FETCH_ANY= (empty) in a separate invocation, or
# through a wrapper that unsets it (env -u).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=$1 SECS=$2
shift 2
IMAGES=$PWD/tests/fixtures/images
ORIGIN_PORT=18180
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hit-ab.XXXXXX")
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
(cd "$IMAGES" && exec python3 -m http.server "$ORIGIN_PORT" --bind 127.0.0.1 >/dev/null 2>&1) &
PIDS+=($!)
URLS=()
i=0
for bin in "$@"; do
  port=$((18200 + i))
  env IMGMIRROR_SERVER__LISTEN=127.0.0.1:$port IMGMIRROR_UPSTREAM__ALLOW_PRIVATE=true \
    ${HIT_AB_FETCH_ANY-IMGMIRROR_UPSTREAM__FETCH=any} \
    IMGMIRROR_CACHE__DIR="$WORK/cache-$i" "$bin" serve --log-format json >/dev/null 2>&1 &
  PIDS+=($!)
  opts=w640_q85
  [[ -n ${ORIG:-} ]] && opts=orig
  URLS+=("http://127.0.0.1:$port/i/$opts/http/127.0.0.1~3A$ORIGIN_PORT/news-mountain.jpg")
  i=$((i + 1))
done
sleep 1
for u in "${URLS[@]}"; do curl -sf -o /dev/null "$u"; curl -sf -o /dev/null "$u"; done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
for ((r = 1; r <= ROUNDS; r++)); do
  line="round $r"
  for j in "${!URLS[@]}"; do
    pid=${PIDS[$((j + 1))]}
    c0=$(cpu "$pid")
    out=$(wrk -t2 -c32 -d"${SECS}s" --latency "${URLS[$j]}")
    c1=$(cpu "$pid")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    p99=$(awk '/ 99%/ {print $2}' <<<"$out")
    line+=" | $(basename "${@:$((j + 1)):1}") $rps req/s, p99 $p99, $(( (c1 - c0) * 1000000000 / tick / n )) ns CPU/req"
  done
  echo "$line"
done
