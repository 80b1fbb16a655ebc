"""The Python `kubernetes` client against a real drover server: create, list, watch, delete pods.

Run by cli/tests/python_client.rs with KUBECONFIG set; exits non-zero with a message on failure.
"""
import sys
import threading

from kubernetes import client, config, watch

config.load_kube_config()
v1 = client.CoreV1Api()
ns = "default"

pod = client.V1Pod(
    metadata=client.V1ObjectMeta(name="py-pod", labels={"app": "py"}),
    spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="example/hello:1")]),
)
created = v1.create_namespaced_pod(ns, pod)
assert created.metadata.name == "py-pod", created.metadata
assert created.metadata.uid, "the server must set a uid"
rv = created.metadata.resource_version

listed = v1.list_namespaced_pod(ns, label_selector="app=py")
names = [p.metadata.name for p in listed.items]
assert names == ["py-pod"], names

# A watch from the create's resourceVersion sees the label change made after it started.
seen = []
def watcher():
    w = watch.Watch()
    for event in w.stream(v1.list_namespaced_pod, ns, resource_version=rv, timeout_seconds=10):
        seen.append((event["type"], event["object"].metadata.name, dict(event["object"].metadata.labels or {})))
        if event["type"] == "DELETED":
            w.stop()

t = threading.Thread(target=watcher)
t.start()
import time
time.sleep(1)
v1.patch_namespaced_pod("py-pod", ns, {"metadata": {"labels": {"stage": "two"}}})
v1.delete_namespaced_pod("py-pod", ns)
t.join(timeout=15)

# The scheduler may also write the pod (its PodScheduled condition: there is no node here);
# what matters is that the label change and the deletion arrive, in order, and nothing else.
types = [s[0] for s in seen]
relabelled = [i for i, s in enumerate(seen) if s[0] == "MODIFIED" and s[2].get("stage") == "two"]
if not relabelled or types[-1] != "DELETED" or set(types) != {"MODIFIED", "DELETED"} or types.count("DELETED") != 1:
    print(f"unexpected watch events: {seen}", file=sys.stderr)
    sys.exit(1)

try:
    v1.read_namespaced_pod("py-pod", ns)
    print("the pod is still there after delete", file=sys.stderr)
    sys.exit(1)
except client.exceptions.ApiException as e:
    assert e.status == 404, e.status
print("ok")
