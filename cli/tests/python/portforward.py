"""The Python client's port-forward (a WebSocket speaking v4.channel.k8s.io, one connection
per port) to the hello Wasm pod: an HTTP request through it gets the function's answer, and a
port nothing listens on is reported on its error channel."""
import os
import time

from kubernetes import client, config
from kubernetes.stream import portforward

config.load_kube_config(os.environ["KUBECONFIG"])
api = client.CoreV1Api()

pf = portforward(api.connect_get_namespaced_pod_portforward, "hello", "default", ports="8080")
sock = pf.socket(8080)
sock.setblocking(True)
sock.sendall(b"GET / HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n")
answer = b""
while True:
    chunk = sock.recv(4096)
    if not chunk:
        break
    answer += chunk
sock.close()
assert answer.startswith(b"HTTP/1.1 200"), answer
assert b"Hello world from hello!" in answer, answer

pf = portforward(api.connect_get_namespaced_pod_portforward, "hello", "default", ports="9")
deadline = time.time() + 20
while pf.error(9) is None and time.time() < deadline:
    time.sleep(0.05)
assert "forwarding port 9" in (pf.error(9) or ""), pf.error(9)
print("ok")
