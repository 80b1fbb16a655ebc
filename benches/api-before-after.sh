#!/usr/bin/env bash
# The API benchmark for two commits in one run: builds each (release, same profile; the older
# one in a git worktree with a target dir of its own), then runs each one's api-bench against
# its own drover, alternating, ROUNDS times. Figures in BENCHMARKS.md come from it.
#
# The target dirs must differ: cargo names a workspace member's fingerprint without its path,
# so with one target dir the second build finds the first one's fingerprints "fresh" and hands
# back the first commit's binaries (the script compared a commit with itself until 2026-12-07).
#
#   ./benches/api-before-after.sh BEFORE [AFTER]     # AFTER defaults to the working tree
set -euo pipefail
cd "$(dirname "$0")/.."
before=${1:?usage: $0 BEFORE-COMMIT [AFTER-COMMIT]}
after=${2:-}
rounds=${ROUNDS:-2}
target=$(pwd)/target
out=$(mktemp -d)
build() { # dir name target-dir
  (cd "$1" && cargo build --release --target-dir "$3" --bin drover --bin api-bench)
  mkdir -p "$out/$2" && cp "$3/release/drover" "$3/release/api-bench" "$out/$2/"
}
git worktree add -f "$out/src-before" "$before" -q
build "$out/src-before" before "$target/bench-before"
if [ -n "$after" ]; then
  git worktree add -f "$out/src-after" "$after" -q
  build "$out/src-after" after "$target"
else
  build . after "$target"
fi
if cmp -s "$out/before/drover" "$out/after/drover"; then
  echo "the two commits built the same drover binary: nothing to compare" >&2
  exit 1
fi
for round in $(seq "$rounds"); do
  for which in before after; do
    echo "# $which, round $round, $(date -u +%FT%TZ)"
    "$out/$which/api-bench" --drover "$out/$which/drover"
  done
done
git worktree remove --force "$out/src-before"
[ -n "$after" ] && git worktree remove --force "$out/src-after"
