#!/usr/bin/env bash
# Idle memory of `drover up` (issue 17: at most 64 MB before the first pod): the release
# binary on a fresh data directory, measured once the node is Ready and 15 s have passed, five
# times; prints each run's resident set (anonymous and file-backed) and the five largest
# mappings of the last run, and the medians. Needs root (drover up).
#
#   sudo ./benches/idle-memory.sh [path/to/drover]      # default: a release build of HEAD
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
drover=${1:-}
if [ -z "$drover" ]; then
  cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p cli
  drover=$repo/target/release/drover
fi
runs=${RUNS:-5}
work=$(mktemp -d)
cleanup() {
  pkill -f "data-dir $work/" 2>/dev/null || true
  sleep 1
  grep "$work" /proc/mounts | awk '{print $2}' | xargs -r umount 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
echo "# $(date -u +%FT%TZ) $(git -C "$repo" rev-parse --short HEAD) on $(nproc) cores, $(uname -r), THP $(cat /sys/kernel/mm/transparent_hugepage/enabled)"
: > "$work/rss"
for i in $(seq "$runs"); do
  dir=$work/run$i
  mkdir -p "$dir"
  "$drover" up --data-dir "$dir/data" --listen 127.0.76.1:6443 --node-address 127.0.76.1 \
    --node-port 10250 --pod-ip-range 127.176.0.0 --name idle > "$dir/up.log" 2>&1 &
  pid=$!
  for _ in $(seq 150); do [ -e "$dir/data/admin.kubeconfig" ] && break; sleep 0.2; done
  KUBECONFIG=$dir/data/admin.kubeconfig kubectl wait --for=condition=Ready node/idle --timeout=60s > /dev/null
  sleep 15
  rss=$(awk '/^VmRSS/{print $2}' /proc/$pid/status)
  anon=$(awk '/^RssAnon/{print $2}' /proc/$pid/status)
  file=$(awk '/^RssFile/{print $2}' /proc/$pid/status)
  echo "run $i: VmRSS ${rss} kB (anonymous ${anon} kB, file-backed ${file} kB), $(ls /proc/$pid/task | wc -l) threads"
  echo "$rss $anon $file" >> "$work/rss"
  if [ "$i" = "$runs" ]; then
    echo "largest mappings of run $i (kB resident, kB mapped, what):"
    python3 - "$pid" <<'PY'
import re, sys
rows, cur = [], None
for line in open(f"/proc/{sys.argv[1]}/smaps"):
    if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
        p = line.split()
        a, b = (int(x, 16) for x in p[0].split("-"))
        cur = {"size": (b - a) // 1024, "what": p[5] if len(p) > 5 else "[anonymous]", "perm": p[1]}
        rows.append(cur)
    elif line.startswith("Rss:"):
        cur["rss"] = int(line.split()[1])
for r in sorted(rows, key=lambda r: -r.get("rss", 0))[:5]:
    print(f"  {r['rss']:>8} {r['size']:>10} {r['perm']} {r['what']}")
PY
  fi
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  grep "$dir" /proc/mounts | awk '{print $2}' | xargs -r umount 2>/dev/null || true
done
sort -n "$work/rss" | awk -v n="$runs" '{r[NR]=$1; a[NR]=$2; f[NR]=$3} END {m=int((n+1)/2); printf "median VmRSS %.1f MiB (anonymous %.1f MiB, file-backed %.1f MiB)\n", r[m]/1024, a[m]/1024, f[m]/1024}'
