#!/usr/bin/env bash
# Peak resident set (VmHWM) of `imgmirror serve` under the two loads of issue #23 item 2, with
# the shipped config (upstream.fetch = "any", a loopback origin pinned with upstream.resolve):
#
#   large  two concurrent resizes (640 px) of one 8192x6000 AVIF (49 Mpx; made with rav1e by
#          scripts/peak-memory's example), once with the shipped image.memory_bytes and once
#          with MEMORY_BYTES (default 1.25 GiB, enough for one at a time)
#   stream COUNT (default 2000) distinct mutated JPEG/WebP/AVIF inputs (1 to 8 bytes flipped in
#          the fixtures), resized to 320 px two at a time
#
# Each load runs against a fresh service; prints statuses and VmHWM in MiB.
#   bench/memory.sh [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-2000}
MEMORY_BYTES=${MEMORY_BYTES:-1342177280}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/memory.XXXXXX")
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
cargo build --release --quiet --bin imgmirror --example peak_memory
BIN=$PWD/target/release/imgmirror
mkdir -p "$WORK/origin/m"
# The 49-Mpx AVIF: encoded once (two minutes of rav1e) and kept under target/.
if [ ! -f target/peak-memory/large.avif ]; then
  mkdir -p target/peak-memory
  target/release/examples/peak_memory make 8192 6000 target/peak-memory/large.png
  PEAK_OUT=target/peak-memory/large.avif target/release/examples/peak_memory \
    target/peak-memory/large.png 8192 avif
fi
cp target/peak-memory/large.avif "$WORK/origin/large.avif"
cwebp -quiet -q 80 tests/fixtures/images/news-mountain.jpg -o "$WORK/seed.webp"
python3 - "$WORK" "$COUNT" <<'PY'
import random, sys, os
work, count = sys.argv[1], int(sys.argv[2])
seeds = [open(p, 'rb').read() for p in (
    'tests/fixtures/images/news-mountain.jpg', 'tests/fixtures/images/news-dogs.jpg',
    'tests/fixtures/images/news-mountain.avif', 'tests/fixtures/images/fig-alpha.avif',
    os.path.join(work, 'seed.webp'))]
exts = ['jpg', 'jpg', 'avif', 'avif', 'webp']
rng = random.Random(2026)
for i in range(count):
    k = i % len(seeds)
    b = bytearray(seeds[k])
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(len(b) // 8, len(b) - len(b) // 8)  # not the header, not the end
        b[at] = rng.randrange(256)
    open(os.path.join(work, 'origin', 'm', f'{i}.{exts[k]}'), 'wb').write(b)
PY
ORIGIN_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$WORK/origin" && exec python3 -m http.server "$ORIGIN_PORT" --bind 127.0.0.1 >/dev/null 2>&1) &
PIDS+=($!)
sleep 0.5

# Starts a service on a free port with extra environment; sets SVC_PID and SVC.
start() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  rm -rf "$WORK/mirror"
  env "$@" IMGMIRROR_SERVER__LISTEN=127.0.0.1:$port IMGMIRROR_UPSTREAM__FETCH=any \
    IMGMIRROR_UPSTREAM__RESOLVE="{ \"origin.test\" = \"127.0.0.1:$ORIGIN_PORT\" }" \
    IMGMIRROR_CACHE__DIR="$WORK/mirror" RUST_LOG=warn "$BIN" serve --config config/imgmirror.toml \
    >/dev/null 2>&1 &
  SVC_PID=$!
  PIDS+=($SVC_PID)
  SVC=http://127.0.0.1:$port
  for _ in $(seq 100); do curl -sf "$SVC/healthz" >/dev/null && return; sleep 0.1; done
  echo "service did not start" >&2; exit 1
}
hwm() { awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$SVC_PID/status"; }
stop() { kill "$SVC_PID"; wait "$SVC_PID" 2>/dev/null || true; }

for budget in shipped "$MEMORY_BYTES"; do
  if [ "$budget" = shipped ]; then start; else start IMGMIRROR_IMAGE__MEMORY_BYTES="$budget"; fi
  route=$("$BIN" url --config config/imgmirror.toml --width 640 http://origin.test/large.avif)
  route2=$("$BIN" url --config config/imgmirror.toml --width 641 http://origin.test/large.avif)
  statuses=$( (curl -s -o /dev/null -w '%{http_code}\n' "$SVC$route" &
               curl -s -o /dev/null -w '%{http_code}\n' "$SVC$route2"; wait) | sort | tr '\n' ' ')
  echo "large, image.memory_bytes=$budget: statuses $statuses peak $(hwm)"
  stop
done

start
seq 0 $((COUNT - 1)) | while read -r i; do
  ext=jpg; case $((i % 5)) in 2|3) ext=avif ;; 4) ext=webp ;; esac
  echo "$SVC/i/w320/http/origin.test/m/$i.$ext"
done > "$WORK/urls"
xargs -P2 -n1 curl -s -o /dev/null -w '%{http_code}\n' < "$WORK/urls" | sort | uniq -c | tr '\n' ' '
echo
echo "stream of $COUNT mutated inputs, two at a time: peak $(hwm)"
stop
