#!/usr/bin/env bash
# The API benchmark for two commits in one run: builds each (release, same target dir and
# profile; the older one in a git worktree), then runs each one's api-bench against its own
# drover, alternating, ROUNDS times. Figures in BENCHMARKS.md come from it.
#
#   ./benches/api-before-after.sh BEFORE [AFTER]     # AFTER defaults to the working tree
set -euo pipefail
cd "$(dirname "$0")/.."
before=${1:?usage: $0 BEFORE-COMMIT [AFTER-COMMIT]}
after=${2:-}
rounds=${ROUNDS:-2}
target=$(pwd)/target
out=$(mktemp -d)
build() { # dir name
  (cd "$1" && cargo build --release --target-dir "$target" --bin drover --bin api-bench)
  mkdir -p "$out/$2" && cp "$target/release/drover" "$target/release/api-bench" "$out/$2/"
}
git worktree add -f "$out/src-before" "$before" -q
build "$out/src-before" before
if [ -n "$after" ]; then
  git worktree add -f "$out/src-after" "$after" -q
  build "$out/src-after" after
else
  build . after
fi
for round in $(seq "$rounds"); do
  for which in before after; do
    echo "# $which, round $round, $(date -u +%FT%TZ)"
    "$out/$which/api-bench" --drover "$out/$which/drover"
  done
done
git worktree remove --force "$out/src-before"
[ -n "$after" ] && git worktree remove --force "$out/src-after"
