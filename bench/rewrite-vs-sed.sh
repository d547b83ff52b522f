#!/usr/bin/env bash
# Rewrites 10,000 posts made from the seed post with `imgmirror rewrite`, and with
#   sed -i -E 's#https://cors\.zfour\.workers\.dev/\?##g'
# over the same files, in the same run (interleaved rounds, fresh copies before every run).
#
#   bench/rewrite-vs-sed.sh [N_POSTS] [RUNS]     (defaults: 10000, 5)
#
# sed only strips the proxy prefix (it does not make routes, unwrap anything, skip code, keep YAML
# valid, or write atomically): it is the floor for "touch every post once", not an equivalent tool.
# A third command, `imgmirror rewrite --dry-run`, does all of imgmirror's work but the writes.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
RUNS=${2:-5}
cargo build --release --quiet
BIN=$PWD/target/release/imgmirror
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rewrite-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SEED=tests/fixtures/posts/zaker-2021-06-08-community.md
# 10,000 posts in 100 folders; each post's image names differ, as in a real blog.
mkdir -p "$WORK/seed"
for ((i = 0; i < N; i++)); do
  d="$WORK/seed/$((i % 100))"
  [[ -d $d ]] || mkdir -p "$d"
  sed "s/60bf2cd9b15ec00d107f7039/$(printf '%024x' "$i")/g" "$SEED" >"$d/post-$i.md"
done
cp config/imgmirror.toml "$WORK/imgmirror.toml"
echo "posts: $N ($(du -sh "$WORK/seed" | cut -f1)), cores: $(nproc)" >&2
# The disk's speed drifts a lot over minutes on shared machines, so the commands are interleaved
# (imgmirror, sed, dry-run, imgmirror, sed, ...) with fresh copies and a sync before each, and
# the medians compared; hyperfine would run all of one command before the next.
run() { # NAME COMMAND...: prints seconds
  rm -rf "$WORK/a" && cp -r "$WORK/seed" "$WORK/a" && sync
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null 2>&1
  t1=$(date +%s%N)
  awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.3f\n", ns / 1e9 }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
: >"$WORK/imgmirror.txt"; : >"$WORK/sed.txt"; : >"$WORK/dry.txt"
for ((r = 0; r <= RUNS; r++)); do   # round 0 is a warm-up, not recorded
  a=$(run "$BIN" rewrite --config "$WORK/imgmirror.toml" "$WORK/a")
  b=$(run find "$WORK/a" -name '*.md' -exec sed -i -E 's#https://cors\.zfour\.workers\.dev/\?##g' {} +)
  c=$(run "$BIN" rewrite --dry-run --config "$WORK/imgmirror.toml" "$WORK/a")
  echo "round $r: imgmirror $a s, sed $b s, imgmirror --dry-run $c s" >&2
  if ((r > 0)); then echo "$a" >>"$WORK/imgmirror.txt"; echo "$b" >>"$WORK/sed.txt"; echo "$c" >>"$WORK/dry.txt"; fi
done
mi=$(median <"$WORK/imgmirror.txt"); ms=$(median <"$WORK/sed.txt"); md=$(median <"$WORK/dry.txt")
echo "| command | median of $RUNS interleaved runs |"
echo "|---|---|"
echo "| imgmirror rewrite | $mi s |"
echo "| sed -i -E (find -exec +) | $ms s |"
echo "| imgmirror rewrite --dry-run | $md s |"
awk -v a="$mi" -v b="$ms" 'BEGIN { printf "imgmirror / sed = %.2f\n", a / b }'
# Both really change every post (checked on a fresh copy after the timed runs):
rm -rf "$WORK/a" "$WORK/b" && cp -r "$WORK/seed" "$WORK/a" && cp -r "$WORK/seed" "$WORK/b"
"$BIN" rewrite --config "$WORK/imgmirror.toml" "$WORK/a" 2>&1 | tail -1 >&2
find "$WORK/b" -name '*.md' -exec sed -i -E 's#https://cors\.zfour\.workers\.dev/\?##g' {} +
echo "imgmirror: $(grep -l '/i/orig/http/zkres2.myzaker.com' -r "$WORK/a" | wc -l) posts with routes;" \
  "sed: $(grep -l "headimg: 'http://zkres2" -r "$WORK/b" | wc -l) posts unwrapped" >&2
