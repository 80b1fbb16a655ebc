"""The Python `kubernetes` client on what it checks strictly: statuses with their required
fields (the client raises when Go's zero values are missing), the dynamic client's discovery,
reviews, and a namespace deleted while the client watches it go.

Run by cli/tests/python_client.rs with KUBECONFIG set; exits non-zero with a message on failure.
"""
import sys

from kubernetes import client, config, dynamic, watch

config.load_kube_config()
api_client = client.ApiClient()
apps = client.AppsV1Api()
core = client.CoreV1Api()
ns = "pyapps"

core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
labels = {"app": "py-daemon"}
ds = client.V1DaemonSet(
    metadata=client.V1ObjectMeta(name="py-daemon"),
    spec=client.V1DaemonSetSpec(
        selector=client.V1LabelSelector(match_labels=labels),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels=labels),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="example/x:1")]),
        ),
    ),
)
# Deserialising a DaemonSet whose status lacks numberReady & co. raises ValueError here.
created = apps.create_namespaced_daemon_set(ns, ds)
assert created.status.number_ready == 0, created.status
read = apps.read_namespaced_daemon_set("py-daemon", ns)
assert read.status.desired_number_scheduled is not None, read.status
listed = apps.list_namespaced_daemon_set(ns)
assert [d.metadata.name for d in listed.items] == ["py-daemon"]

svc = core.create_namespaced_service(ns, client.V1Service(
    metadata=client.V1ObjectMeta(name="py-svc"),
    spec=client.V1ServiceSpec(selector=labels, ports=[client.V1ServicePort(port=80)]),
))
assert svc.spec.cluster_ip, svc.spec

# The dynamic client finds kinds through discovery.
dyn = dynamic.DynamicClient(api_client)
cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
cms.create(namespace=ns, body={"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": {"name": "py-dyn"}, "data": {"a": "b"}})
got = cms.get(namespace=ns, name="py-dyn")
assert got.data.a == "b", got

# Who am I, and may I?
who = client.AuthenticationV1Api().create_self_subject_review(
    client.V1SelfSubjectReview(metadata=client.V1ObjectMeta()))
assert who.status.user_info.username == "admin", who.status
may = client.AuthorizationV1Api().create_self_subject_access_review(
    client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
        resource_attributes=client.V1ResourceAttributes(verb="delete", resource="pods", namespace=ns))))
assert may.status.allowed is True, may.status

# A namespace deleted while being watched: Terminating first, then DELETED once emptied.
rv = core.read_namespace(ns).metadata.resource_version
core.delete_namespace(ns)
w = watch.Watch()
phases = []
for event in w.stream(core.list_namespace, field_selector=f"metadata.name={ns}",
                      resource_version=rv, timeout_seconds=60):
    phases.append((event["type"], event["object"].status.phase))
    if event["type"] == "DELETED":
        w.stop()
if not phases or phases[-1][0] != "DELETED" or ("MODIFIED", "Terminating") not in phases:
    print(f"unexpected namespace events: {phases}", file=sys.stderr)
    sys.exit(1)
print("ok")
