#!/usr/bin/env bash
# Rewrites 10,000 posts made from the seed post with `imgmirror rewrite`, and with
#   sed -i -E 's#https://cors\.zfour\.workers\.dev/\?##g'
# over the same files, in the same run (hyperfine, fresh copies before every run).
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
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 2; }
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
hyperfine --runs "$RUNS" --warmup 1 --export-markdown "$WORK/result.md" \
  --prepare "rm -rf '$WORK/a' '$WORK/b' && cp -r '$WORK/seed' '$WORK/a' && cp -r '$WORK/seed' '$WORK/b' && sync" \
  -n "imgmirror rewrite" "'$BIN' rewrite --config '$WORK/imgmirror.toml' '$WORK/a'" \
  -n "sed -i -E" "find '$WORK/b' -name '*.md' -exec sed -i -E 's#https://cors\\.zfour\\.workers\\.dev/\\?##g' {} +" \
  -n "imgmirror rewrite --dry-run (scan and rewrite in memory, no writes)" "'$BIN' rewrite --dry-run --config '$WORK/imgmirror.toml' '$WORK/a'"
cat "$WORK/result.md"
# Both really change every post (checked on a fresh copy after the timed runs):
rm -rf "$WORK/a" "$WORK/b" && cp -r "$WORK/seed" "$WORK/a" && cp -r "$WORK/seed" "$WORK/b"
"$BIN" rewrite --config "$WORK/imgmirror.toml" "$WORK/a" 2>&1 | tail -1 >&2
find "$WORK/b" -name '*.md' -exec sed -i -E 's#https://cors\.zfour\.workers\.dev/\?##g' {} +
echo "imgmirror: $(grep -l '/i/orig/http/zkres2.myzaker.com' -r "$WORK/a" | wc -l) posts with routes;" \
  "sed: $(grep -l "headimg: 'http://zkres2" -r "$WORK/b" | wc -l) posts unwrapped" >&2
