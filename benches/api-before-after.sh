#!/usr/bin/env bash
# The API benchmark for two commits in one run: builds each in a git worktree of its own with
# a target dir of its own (release, same profile), then runs each one's api-bench against its
# own drover, alternating, ROUNDS times. Figures in BENCHMARKS.md come from it.
#
# Each commit needs its own target dir, also apart from the tree's `target`: cargo keys a
# workspace member's fingerprint without its path and checks its sources by paths relative to
# the workspace, so a build in another checkout finds a fingerprint another checkout left
# "fresh" and hands back that checkout's binary. The script compared a commit with itself
# this way until 2026-12-07. Both target dirs start empty: a full release build each.
#
#   ./benches/api-before-after.sh BEFORE [AFTER]     # AFTER defaults to HEAD
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
rm -rf "$target/bench-before" "$target/bench-after"
git worktree add -f "$out/src-before" "$before" -q
build "$out/src-before" before "$target/bench-before"
git worktree add -f "$out/src-after" "${after:-HEAD}" -q
build "$out/src-after" after "$target/bench-after"
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
git worktree remove --force "$out/src-after"
