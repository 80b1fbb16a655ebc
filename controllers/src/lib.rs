//! Reconcile loops (deployment, replicaset, daemonset, job, cronjob, hpa, endpoints, gc,
//! node lifecycle) that run on the elected leader and talk to the cluster only through the API.
//!
//! Filled by the controllers issue.
