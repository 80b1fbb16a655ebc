//! Reconcile loops that turn declared state into running state. They run on the Raft leader
//! only ([`run_while_leader`]) and talk to the cluster only through the API, like any client.
//!
//! Machinery is kube-rs's runtime: one [`kubeclient::informer::Informer`] per kind (list +
//! watch into a cache shared by every controller) and `Controller` (a work queue per kind with rate-limited
//! retries, reconciles triggered by the object and by the objects it owns, fed by the
//! informers). Each controller's decision is a pure `plan` function
//! over the cache, tested alone; its `reconcile` writes the plan through the API.
//!
//! - [`replicaset`]: N pods of a template, adoption, least-useful-first deletion.
//! - [`deployment`]: ReplicaSets per template, RollingUpdate and Recreate, revisions.
//! - [`daemonset`]: one pod per eligible node, rolling updates.
//! - [`statefulset`]: stable names, ordered start and stop, rolling updates with partitions.
//! - [`endpoints`]: Endpoints and EndpointSlices of Services from their ready pods.
//! - [`servicelb`]: LoadBalancer Services' ingress: the nodes' addresses (as k3s).
//! - [`job`]: pods run to completion (parallelism, completions, backoffLimit, deadlines, TTL).
//! - [`cronjob`]: Jobs on a cron schedule in a time zone, with concurrency policies.
//! - [`hpa`]: HorizontalPodAutoscalers from metrics.k8s.io (CPU, requests per second).
//! - [`nodeipam`]: a pod range (spec.podCIDR) for every node, cut from the cluster CIDR.
//! - [`nodelifecycle`]: nodes Unknown and tainted when their agents go silent; eviction.
//! - [`gc`]: the garbage collector over ownerReferences; default ServiceAccounts.
//! - [`namespace`]: a deleted namespace emptied (finalizers waited for), then removed.
//! - [`rootca`]: the `kube-root-ca.crt` ConfigMap of every namespace.
//! - [`knative`]: Knative Serving's Services, Configurations, Revisions and Routes, and the
//!   autoscaler that scales revisions (to zero too) from the node routers' measurements.
//!
//! Shared by the controllers: [`kinds`] (what the API serves, from discovery), [`expectations`] (their own writes the cache does not show yet)
//! and [`error`] (a kube call that failed, and while doing what); what they ask of a pod, their
//! label selectors and where a pod may run are rules of `api` (`api::pods`, `api::selector`,
//! `api::placement`), shared with the scheduler. [`requeue`] holds the one rule for when a
//! controller looks at an object again, after a success or after an error (the one
//! `error_policy`).
//!
//! A controller's state beyond the caches (its expectations, what it has recorded or handed
//! out) lives in its `Context`, made by [`run`], so it lasts exactly as long as the caches
//! it is relative to.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod error;
pub mod expectations;
pub mod gc;
pub mod hpa;
pub mod job;
pub mod kinds;
pub mod knative;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod replicaset;
pub mod requeue;
pub mod rootca;
pub mod servicelb;
pub mod statefulset;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::Controller;
use kube::Api;

use kubeclient::informer::Informer;

/// Runs every controller until the returned future is dropped.
/// What the controllers can be tuned with (`drover server` flags).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub nodes: nodelifecycle::Settings,
    pub hpa: hpa::Settings,
    pub ipam: nodeipam::Settings,
    /// Addresses for LoadBalancer Services (None: the nodes' addresses, as k3s).
    pub lb_pool: Option<servicelb::Pool>,
    pub functions: FunctionSettings,
}

/// Knative Serving's cluster settings (Knative's `config-domain` and `config-autoscaler`).
#[derive(Clone, Debug)]
pub struct FunctionSettings {
    /// Routes' URLs are `http://{name}.{namespace}.{domain}`.
    pub domain: String,
    /// How long a revision keeps its last instance after its last request.
    pub scale_to_zero_grace: Duration,
}

impl Default for FunctionSettings {
    fn default() -> Self {
        FunctionSettings {
            domain: "example.com".into(),
            scale_to_zero_grace: Duration::from_secs(30),
        }
    }
}

pub async fn run(client: kube::Client, settings: Settings) {
    // Dropped (and the informers' tasks aborted) when this future is.
    let mut tasks = tokio::task::JoinSet::new();
    let pods = Informer::<Pod>::start(Api::all(client.clone()), &mut tasks);
    let replicasets = Informer::<ReplicaSet>::start(Api::all(client.clone()), &mut tasks);
    let deployments = Informer::<Deployment>::start(Api::all(client.clone()), &mut tasks);
    let nodes = Informer::<Node>::start(Api::all(client.clone()), &mut tasks);
    // Subscribed before the first list is in, so that nodes that exist already are heard of
    // (reconciles wait for the list: a range is never chosen from a partial picture).
    let ipam = Controller::for_stream(nodes.subscribe(), nodes.store())
        .run(
            nodeipam::reconcile,
            requeue::error_policy("nodeipam"),
            Arc::new(nodeipam::Context {
                client: client.clone(),
                nodes: nodes.store(),
                settings: settings.ipam,
                given: Default::default(),
            }),
        )
        .for_each(|_| async {});
    let leases = Informer::<Lease>::start(
        Api::namespaced(client.clone(), "kube-node-lease"),
        &mut tasks,
    );
    let jobs = Informer::<Job>::start(Api::all(client.clone()), &mut tasks);
    let cronjobs = Informer::<CronJob>::start(Api::all(client.clone()), &mut tasks);

    let rs = Controller::for_stream(replicasets.subscribe(), replicasets.store())
        .owns_stream(pods.subscribe())
        .run(
            replicaset::reconcile,
            requeue::error_policy("replicaset"),
            Arc::new(replicaset::Context {
                client: client.clone(),
                pods: pods.store(),
                expectations: Default::default(),
                events: kubeclient::events::Recorder::component(
                    client.clone(),
                    "replicaset-controller",
                ),
            }),
        )
        .for_each(|_| async {});
    let deploy = Controller::for_stream(deployments.subscribe(), deployments.store())
        .owns_stream(replicasets.subscribe())
        .run(
            deployment::reconcile,
            requeue::error_policy("deployment"),
            Arc::new(deployment::Context {
                client: client.clone(),
                replicasets: replicasets.store(),
                events: kubeclient::events::Recorder::component(
                    client.clone(),
                    "deployment-controller",
                ),
            }),
        )
        .for_each(|_| async {});
    let job = Controller::for_stream(jobs.subscribe(), jobs.store())
        .owns_stream(pods.subscribe())
        .run(
            job::reconcile,
            requeue::error_policy("job"),
            Arc::new(job::Context {
                client: client.clone(),
                pods: pods.store(),
                expectations: Default::default(),
            }),
        )
        .for_each(|_| async {});
    let cronjob = Controller::for_stream(cronjobs.subscribe(), cronjobs.store())
        .owns_stream(jobs.subscribe())
        .run(
            cronjob::reconcile,
            requeue::error_policy("cronjob"),
            Arc::new(cronjob::Context {
                client: client.clone(),
                jobs: jobs.store(),
            }),
        )
        .for_each(|_| async {});
    let lifecycle = nodelifecycle::run(Arc::new(nodelifecycle::Context {
        client: client.clone(),
        nodes: nodes.store(),
        leases: leases.store(),
        pods: pods.store(),
        events: kubeclient::events::Recorder::component(client.clone(), "node-controller"),
        settings: settings.nodes,
        observed: Default::default(),
        orphaned: Default::default(),
    }));
    let hpas = Informer::<HorizontalPodAutoscaler>::start(Api::all(client.clone()), &mut tasks);
    let autoscaler = hpa::run(Arc::new(hpa::Context {
        client: client.clone(),
        hpas: hpas.store(),
        pods: pods.store(),
        events: kubeclient::events::Recorder::component(
            client.clone(),
            "horizontal-pod-autoscaler",
        ),
        settings: settings.hpa,
    }));
    nodes.ready().await;
    leases.ready().await;
    let daemonsets = Informer::<DaemonSet>::start(Api::all(client.clone()), &mut tasks);
    let daemons = Controller::for_stream(daemonsets.subscribe(), daemonsets.store())
        .owns_stream(pods.subscribe())
        // A node that comes, goes or changes may need a daemon pod or lose one.
        .reconcile_all_on(nodes.subscribe().map(|_| ()))
        .run(
            daemonset::reconcile,
            requeue::error_policy("daemonset"),
            Arc::new(daemonset::Context {
                client: client.clone(),
                pods: pods.store(),
                nodes: nodes.store(),
                expectations: Default::default(),
                revisions: Default::default(),
            }),
        )
        .for_each(|_| async {});
    let statefulsets = Informer::<StatefulSet>::start(Api::all(client.clone()), &mut tasks);
    let stateful = Controller::for_stream(statefulsets.subscribe(), statefulsets.store())
        .owns_stream(pods.subscribe())
        .run(
            statefulset::reconcile,
            requeue::error_policy("statefulset"),
            Arc::new(statefulset::Context {
                client: client.clone(),
                pods: pods.store(),
                revisions: Default::default(),
            }),
        )
        .for_each(|_| async {});
    let services = Informer::<Service>::start(Api::all(client.clone()), &mut tasks);
    let endpoints_inf = Informer::<Endpoints>::start(Api::all(client.clone()), &mut tasks);
    let slices = Informer::<EndpointSlice>::start(Api::all(client.clone()), &mut tasks);
    let endpoints_ctx = Arc::new(endpoints::Context {
        client: client.clone(),
        pods: pods.store(),
        endpoints: endpoints_inf.store(),
        slices: slices.store(),
        slice_writes: Default::default(),
    });
    let (service_store, slice_store) = (services.store(), slices.store());
    let endpoint_controller = Controller::for_stream(services.subscribe(), services.store())
        .owns_stream(slices.subscribe())
        .watches_stream(pods.subscribe(), move |p: Pod| {
            endpoints::services_for_pod(&service_store.state(), &slice_store.state(), &p)
        })
        .watches_stream(endpoints_inf.subscribe(), |e: Endpoints| {
            endpoints::service_of_endpoints(&e)
        })
        .run(
            endpoints::reconcile,
            requeue::error_policy("endpoints"),
            endpoints_ctx.clone(),
        )
        .for_each(|_| async {});
    let load_balancers = Controller::for_stream(services.subscribe(), services.store())
        .reconcile_all_on(nodes.subscribe().map(|_| ()))
        .run(
            servicelb::reconcile,
            requeue::error_policy("servicelb"),
            Arc::new(servicelb::Context {
                client: client.clone(),
                nodes: nodes.store(),
                services: services.store(),
                pool: settings.lb_pool,
                given: Default::default(),
            }),
        )
        .for_each(|_| async {});
    let functions = run_knative(
        client.clone(),
        &settings.functions,
        Shared {
            pods: &pods,
            deployments: &deployments,
            services: &services,
            nodes: &nodes,
        },
        &mut tasks,
    );
    let service_store = services.store();
    let endpoint_cleanup = async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            if let Err(e) = endpoints::cleanup_orphans(&endpoints_ctx, &service_store).await {
                tracing::warn!("endpoints: {e}");
            }
        }
    };
    pods.ready().await;
    replicasets.ready().await;
    deployments.ready().await;
    jobs.ready().await;
    cronjobs.ready().await;
    hpas.ready().await;
    daemonsets.ready().await;
    statefulsets.ready().await;
    services.ready().await;
    endpoints_inf.ready().await;
    slices.ready().await;
    tokio::join!(
        rs,
        deploy,
        job,
        cronjob,
        lifecycle,
        ipam,
        autoscaler,
        daemons,
        stateful,
        endpoint_controller,
        load_balancers,
        endpoint_cleanup,
        gc::run(client.clone()),
        namespace::run(client.clone()),
        functions,
    );
    drop(tasks);
}

/// The informers of built-in kinds Knative's controllers read.
struct Shared<'a> {
    pods: &'a Informer<Pod>,
    deployments: &'a Informer<Deployment>,
    services: &'a Informer<Service>,
    nodes: &'a Informer<Node>,
}

/// Knative Serving's four controllers and its autoscaler, as one future.
fn run_knative(
    client: kube::Client,
    settings: &FunctionSettings,
    shared: Shared<'_>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> impl std::future::Future<Output = ()> {
    let Shared {
        pods,
        deployments,
        services: core_services,
        nodes,
    } = shared;
    use api::knative::{Configuration, Revision, Route, Service as KService};
    let services = Informer::<KService>::start(Api::all(client.clone()), tasks);
    let configurations = Informer::<Configuration>::start(Api::all(client.clone()), tasks);
    let revisions = Informer::<Revision>::start(Api::all(client.clone()), tasks);
    let routes = Informer::<Route>::start(Api::all(client.clone()), tasks);
    let ctx = Arc::new(knative::Context {
        client: client.clone(),
        services: core_services.store(),
        nodes: nodes.store(),
        configurations: configurations.store(),
        routes: routes.store(),
        revisions: revisions.store(),
        deployments: deployments.store(),
        pods: pods.store(),
        domain: settings.domain.clone(),
    });
    let service_loop = Controller::for_stream(services.subscribe(), services.store())
        .owns_stream(configurations.subscribe())
        .owns_stream(routes.subscribe())
        .run(
            knative::reconcile_service,
            requeue::error_policy("knative-service"),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let configuration_loop =
        Controller::for_stream(configurations.subscribe(), configurations.store())
            .owns_stream(revisions.subscribe())
            .run(
                knative::reconcile_configuration,
                requeue::error_policy("knative-configuration"),
                ctx.clone(),
            )
            .for_each(|_| async {});
    // Deployments and Services by name, owned or not: one of a revision's names that it does
    // not own holds it back (NotOwned) until it goes.
    let revision_loop = Controller::for_stream(revisions.subscribe(), revisions.store())
        .watches_stream(deployments.subscribe(), |d: Deployment| {
            let revision = d.metadata.name.as_deref()?.strip_suffix("-deployment")?;
            Some(ObjectRef::new(revision).within(d.metadata.namespace.as_deref()?))
        })
        .watches_stream(core_services.subscribe(), |s: Service| {
            Some(
                ObjectRef::new(s.metadata.name.as_deref()?)
                    .within(s.metadata.namespace.as_deref()?),
            )
        })
        .watches_stream(pods.subscribe(), |p: Pod| knative::revision_of_pod(&p))
        .run(
            knative::reconcile_revision,
            requeue::error_policy("knative-revision"),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let (by_config, by_revision) = (routes.store(), routes.store());
    let route_loop = Controller::for_stream(routes.subscribe(), routes.store())
        .watches_stream(configurations.subscribe(), move |c: Configuration| {
            knative::routes_in_namespace(&by_config, c.metadata.namespace)
        })
        .watches_stream(revisions.subscribe(), move |r: Revision| {
            knative::routes_in_namespace(&by_revision, r.metadata.namespace)
        })
        // The routers behind routes' in-cluster Services are the nodes'.
        .reconcile_all_on(nodes.subscribe().map(|_| ()))
        .run(
            knative::reconcile_route,
            requeue::error_policy("knative-route"),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let autoscaler = knative::autoscale::run(Arc::new(knative::autoscale::Context {
        client,
        revisions: revisions.store(),
        routes: routes.store(),
        deployments: deployments.store(),
        pods: pods.store(),
        grace: settings.scale_to_zero_grace,
    }));
    async move {
        services.ready().await;
        configurations.ready().await;
        revisions.ready().await;
        routes.ready().await;
        tokio::join!(
            service_loop,
            configuration_loop,
            revision_loop,
            route_loop,
            autoscaler
        );
    }
}

/// Runs `work` (the controllers, the scheduler) whenever `is_leader` says this member leads,
/// and stops it when it no longer does, so exactly one member reconciles at a time.
pub async fn run_while_leader<F, W, Fut>(client: kube::Client, is_leader: F, work: W)
where
    F: Fn() -> bool + Send + 'static,
    W: Fn(kube::Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut running: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let leader = is_leader();
        if running.as_ref().is_some_and(|t| t.is_finished()) {
            tracing::warn!("control loops: stopped unexpectedly; restarting");
            running = None;
        }
        match (&running, leader) {
            (None, true) => {
                tracing::info!("control loops: this member leads; starting");
                running = Some(tokio::spawn(work(client.clone())));
            }
            (Some(task), false) => {
                tracing::info!("control loops: leadership moved; stopping");
                task.abort();
                running = None;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
