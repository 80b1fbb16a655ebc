//! The controllers' error: a call to the API failed, and what the controller was doing when it
//! did ("job default/pi: creating a pod"), so the log line from
//! [`error_policy`](crate::requeue::error_policy) says which object and which step without a
//! backtrace.

/// A kube call failed while doing `what`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Kube { what: String, source: kube::Error },
}

/// Turns a kube error into an [`Error`] that says it happened while doing `what`: for
/// `.map_err(failed(format!(...)))`.
pub fn failed(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}
