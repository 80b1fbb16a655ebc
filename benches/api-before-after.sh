#!/usr/bin/env bash
# The API benchmark for two commits in one run: builds each in a git worktree of its own with
# a target dir of its own (release, same profile), then runs each one's api-bench against its
# own drover, alternating, ROUNDS times. Figures in BENCHMARKS.md come from it.
#
# Each commit builds in a target dir of its own, and every .rs and Cargo.toml of its worktree
# is touched first: cargo keys a workspace member's fingerprint without its path and checks
# its sources by paths relative to the workspace, so a build in another checkout whose files
# are older than a fingerprint would be taken as "fresh" and hand back another checkout's
# binary (the script compared a commit with itself this way until 2026-12-07). Touched
# sources are always newer, so the workspace's own crates always rebuild; the target dir
# starts as a copy of the previous commit's, so third-party crates (keyed by version and
# flags) are not built again. Identical binaries stop the run.
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
  if [ "$i" -gt 0 ]; then
    rm -rf "$dir" && cp -a "$target/bench-${labels[$((i - 1))]}" "$dir"
  fi
  git worktree add -f "$out/src-$label" "${commits[$i]}" -q
  find "$out/src-$label" \( -name '*.rs' -o -name Cargo.toml -o -name '*.json' \) -exec touch {} +
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
