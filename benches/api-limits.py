#!/usr/bin/env python3
# Run: python3 benches/api-limits.py target/release/drover [CONCURRENT]  (figures in BENCHMARKS.md)
"""Memory ceiling of the API server under the request cap and a JSON-patch bomb.

Starts one `drover server` (release build), then:
  1. idle RSS;
  2. N concurrent writes, each sending its headers (Content-Length 3 MB) and 64 KiB of body,
     then stalling: at most 200 are admitted, the rest get 429 at once; RSS while they stall;
  3. a 1 KB JSON patch of 40 `copy` operations (each doubles the document): refused with 422
     once 3 MiB are copied; peak RSS (VmHWM) after it.
Prints one JSON line.
"""
import asyncio, json, os, ssl, subprocess, sys, tempfile, time, urllib.request

drover = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
tmp = tempfile.mkdtemp()
addr = ("127.0.0.93", 7443)
proc = subprocess.Popen([drover, "server", "--data-dir", tmp + "/d", "--listen", f"{addr[0]}:{addr[1]}"],
                        stdout=subprocess.DEVNULL, stderr=open(tmp + "/log", "w"))
kube = tmp + "/d/admin.kubeconfig"
for _ in range(300):
    if os.path.exists(kube):
        break
    time.sleep(0.1)
token = open(tmp + "/d/pki/admin.token").read().strip()
ctx = ssl.create_default_context(cafile=tmp + "/d/pki/ca.crt")

def status(field):
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith(field):
            return int(line.split()[1]) // 1024  # MiB
def call(method, path, body=None, ctype="application/json"):
    req = urllib.request.Request(f"https://{addr[0]}:{addr[1]}{path}", method=method,
                                 data=None if body is None else body.encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, context=ctx) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code

for _ in range(100):
    if call("GET", "/api/v1/namespaces/default") == 200:
        break
    time.sleep(0.1)
out = {"idle_rss_mib": status("VmRSS")}

async def stall(results):
    try:
        r, w = await asyncio.open_connection(addr[0], addr[1], ssl=ctx)
        w.write((f"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: 3000000\r\n\r\n").encode() + b" " * 65536)
        await w.drain()
        try:
            line = await asyncio.wait_for(r.readline(), 5)
            results.append(line.split()[1].decode() if line else "closed")
        except asyncio.TimeoutError:
            results.append("stalled")
        return w
    except Exception as e:
        results.append(type(e).__name__)

async def main():
    results = []
    writers = await asyncio.gather(*[stall(results) for _ in range(n)])
    out["stalled_rss_mib"] = status("VmRSS")
    out["answers"] = {k: results.count(k) for k in set(results)}
    for w in writers:
        if w:
            w.close()
asyncio.run(main())
time.sleep(1)
call("POST", "/api/v1/namespaces/default/configmaps", json.dumps({"metadata": {"name": "bomb"}, "data": {"k": "x" * 512}}))
patch = json.dumps([{"op": "copy", "from": "/data", "path": f"/metadata/annotations"}] +
                   [{"op": "copy", "from": "/metadata", "path": f"/data/c{i}"} for i in range(40)])
t0 = time.time()
out["patch_bytes"] = len(patch)
out["patch_answer"] = call("PATCH", "/api/v1/namespaces/default/configmaps/bomb", patch, "application/json-patch+json")
out["patch_secs"] = round(time.time() - t0, 3)
out["peak_rss_mib"] = status("VmHWM")
out["after_rss_mib"] = status("VmRSS")
out["concurrent"] = n
print(json.dumps(out))
proc.terminate()
proc.wait()
