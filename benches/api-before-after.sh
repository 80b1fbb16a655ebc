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
#   ./benches/api-before-after.sh BEFORE [BEFORE...]     # each against AFTER (default HEAD)
#   AFTER=commit ROUNDS=n ./benches/api-before-after.sh BEFORE
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 BEFORE-COMMIT [BEFORE-COMMIT...]" >&2; exit 2; }
rounds=${ROUNDS:-2}
target=$(pwd)/target
out=$(mktemp -d)
# Labels: before-1 .. before-N, then after.
commits=("$@" "${AFTER:-HEAD}")
labels=()
for i in $(seq "$#"); do labels+=("before-$i"); done
labels+=(after)
for i in "${!commits[@]}"; do
  label=${labels[$i]}
  dir="$target/bench-$label"
  rm -rf "$dir"
  git worktree add -f "$out/src-$label" "${commits[$i]}" -q
  echo "# $label = $(git rev-parse --short "${commits[$i]}")"
  (cd "$out/src-$label" && cargo build --release --target-dir "$dir" --bin drover --bin api-bench)
  mkdir -p "$out/$label" && cp "$dir/release/drover" "$dir/release/api-bench" "$out/$label/"
  git worktree remove --force "$out/src-$label"
done
for label in "${labels[@]}"; do
  if [ "$label" != after ] && cmp -s "$out/$label/drover" "$out/after/drover"; then
    echo "$label and after built the same drover binary: nothing to compare" >&2
    exit 1
  fi
done
for round in $(seq "$rounds"); do
  for label in "${labels[@]}"; do
    echo "# $label, round $round, $(date -u +%FT%TZ)"
    "$out/$label/api-bench" --drover "$out/$label/drover"
  done
done
