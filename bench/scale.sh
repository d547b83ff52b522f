#!/usr/bin/env bash
# What the mirror's operations cost as it grows (issue #25). For each size, a synthetic mirror
# in the store's own layout (examples/synth_mirror.rs: N originals, two variants each, small
# blobs, markers, layout.json, usage.json) on the filesystem, then:
#
#   ready      start of `imgmirror serve` (cache.disk_bytes set) to /readyz 200, page cache cold
#              when /proc/sys/vm/drop_caches can be written (root), else warm
#   idle cpu   utime+stime of that service over its first 60 s after ready (one maintenance
#              minute: usage folded, budget checked, readiness probe; no gc: usage.json is fresh)
#   VmHWM      its peak resident memory at the end of that minute
#   purge      `imgmirror purge URL` wall time, median of 5 purges: cold (caches dropped before
#              each, when possible), warm (after one `find` over the mirror)
#   export     `imgmirror export --variants` files per second
#
# then a mirror of about 20k objects on moto (3,334 originals), counted from moto's request log:
# S3 requests of one `imgmirror purge`, and of an idle replica over 60 s.
#
#   bench/scale.sh [ORIGINALS ...]      default: 10000 100000 333334 (30k, 300k and 1M records)
#   SCALE_WORK=/big/disk bench/scale.sh  where the mirrors go (default: a temporary folder)
#   SCALE_S3=0 bench/scale.sh            skip the moto part
#   SCALE_EXPORT_MAX=N                   export only mirrors of at most N originals (default 100000:
#                                        an export fsyncs every file, minutes at a million)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin imgmirror --example synth_mirror >&2
BIN=$PWD/target/release/imgmirror
SYNTH=$PWD/target/release/examples/synth_mirror
WORK=${SCALE_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/scale.XXXXXX")}
mkdir -p "$WORK"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cold() { sync; if echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then echo cold; else echo warm; fi; }
now_ms() { date +%s%3N; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ready_wait() { # PORT -> ms until /readyz answers 200
  local t0=$1 p=$2
  until curl -sf -o /dev/null "http://127.0.0.1:$p/readyz"; do sleep 0.01; done
  echo $(($(now_ms) - t0))
}
TICK=$(getconf CLK_TCK)

printf '%-9s %-8s %-10s %-14s %-9s %-22s %-14s\n' originals records "ready ms" "idle cpu s/min" "VmHWM MB" "purge s (cold/warm)" "export files/s"
SIZES=("$@")
((${#SIZES[@]})) || SIZES=(10000 100000 333334)
for n in "${SIZES[@]}"; do
  dir=$WORK/m$n
  rm -rf "$dir"
  "$SYNTH" fs "$dir/mirror" "$n" 2>"$WORK/synth.log" || { cat "$WORK/synth.log" >&2; exit 1; }
  p=$(port)
  cat >"$dir/imgmirror.toml" <<EOF
[server]
listen = "127.0.0.1:$p"
[cache]
dir = "$dir/mirror"
disk_bytes = 107374182400
EOF
  cache=$(cold)
  t0=$(now_ms)
  "$BIN" serve --config "$dir/imgmirror.toml" >/dev/null 2>"$dir/serve.log" &
  pid=$!
  PIDS+=("$pid")
  ready=$(ready_wait "$t0" "$p")
  c0=$(cpu_ticks "$pid")
  sleep 60
  c1=$(cpu_ticks "$pid")
  hwm=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  idle=$(awk -v t="$((c1 - c0))" -v hz="$TICK" 'BEGIN {printf "%.2f", t / hz}')
  purge_ms() { # image index -> milliseconds of one `imgmirror purge`
    local t=$(now_ms)
    "$BIN" purge --config "$dir/imgmirror.toml" "http://img.test/$1.jpg" >/dev/null 2>&1
    echo $(($(now_ms) - t))
  }
  median_s() { sort -n | awk '{a[NR] = $1} END {printf "%.3f", a[int((NR + 1) / 2)] / 1000}'; }
  # Cold: caches dropped before each of 5 purges; warm: the mirror's folders read once (find),
  # then 5 purges. Medians.
  cache_p=$(cold)
  purge_cold=$(for k in 1 2 3 4 5; do cold >/dev/null; purge_ms $((n / 2 + k)); done | median_s)
  find "$dir/mirror" >/dev/null
  purge_warm=$(for k in 1 2 3 4 5; do purge_ms $((n / 3 + k)); done | median_s)
  rate=-
  if ((n <= ${SCALE_EXPORT_MAX:-100000})); then
    t=$(now_ms)
    "$BIN" export --config "$dir/imgmirror.toml" --variants "$dir/export" >/dev/null 2>&1 || true
    files=$(find "$dir/export" -type f | wc -l)
    rate=$(awk -v f="$files" -v ms="$(($(now_ms) - t))" 'BEGIN {printf "%.0f", f * 1000 / ms}')
  fi
  printf '%-9s %-8s %-10s %-14s %-9s %-22s %-14s\n' "$n" "$((3 * n))" "$ready ($cache)" "$idle" "$hwm" \
    "$purge_cold/$purge_warm ($cache_p)" "$rate"
  rm -rf "$dir"
done

[[ ${SCALE_S3:-1} == 0 ]] && exit 0
command -v moto_server >/dev/null || { echo "moto_server missing: pip install 'moto[server]'" >&2; exit 1; }
mp=$(port)
moto_server -H 127.0.0.1 -p "$mp" 2>"$WORK/moto.log" >/dev/null &
PIDS+=($!)
until curl -sf -o /dev/null "http://127.0.0.1:$mp/"; do sleep 0.1; done
curl -sf -X PUT "http://127.0.0.1:$mp/scale" >/dev/null
"$SYNTH" s3 "http://127.0.0.1:$mp" scale 3334 2>/dev/null
requests() { grep -cE '"(GET|PUT|POST|DELETE|HEAD) ' "$WORK/moto.log" || true; }
sp=$(port)
cat >"$WORK/s3.toml" <<EOF
[server]
listen = "127.0.0.1:$sp"
[cache]
dir = "$WORK/s3-local"
store = "s3"
[s3]
bucket = "scale"
endpoint = "http://127.0.0.1:$mp"
allow_http = true
EOF
r0=$(requests)
"$BIN" purge --config "$WORK/s3.toml" "http://img.test/1667.jpg" >/dev/null 2>&1
r1=$(requests)
"$BIN" serve --config "$WORK/s3.toml" >/dev/null 2>"$WORK/s3-serve.log" &
spid=$!
PIDS+=("$spid")
ready_wait "$(now_ms)" "$sp" >/dev/null
sleep 5 # the first minute's reads (usage.json, events.seen) are a start's, not an idle minute's
r2=$(requests)
sleep 60
r3=$(requests)
objects=$(python3 - "$mp" <<'EOF'
import sys, urllib.request, re
port = sys.argv[1]
n, token = 0, None
while True:
    url = f"http://127.0.0.1:{port}/scale?list-type=2" + (f"&continuation-token={token}" if token else "")
    body = urllib.request.urlopen(url).read().decode()
    n += body.count("<Key>")
    m = re.search(r"<NextContinuationToken>([^<]+)</NextContinuationToken>", body)
    if not m:
        break
    token = urllib.parse.quote(m.group(1))
print(n)
EOF
)
echo
echo "S3 (moto, $objects objects): $((r1 - r0)) requests for one purge (the whole command); $((r3 - r2)) requests by an idle replica in 60 s"
