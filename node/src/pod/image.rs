//! A container's image: from the node's store or pulled from its registry, as the pull policy
//! says, with the pod's imagePullSecrets.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Container;
use runtime::images::StoredImage;

use super::Worker;
use kubeclient::events::Type::Normal;

impl Worker {
    /// The container's image, from the node's store or pulled, as its imagePullPolicy says
    /// (`Always` for `:latest`, `IfNotPresent` otherwise). An image imported into the store
    /// (`drover image import`) is used when `Always` cannot reach a registry: Wasm images are
    /// often local files, and a failed pull should not stop a one-node cluster.
    pub(super) async fn image(
        &self,
        container: &Container,
    ) -> Result<StoredImage, (&'static str, String)> {
        let reference = container.image.clone().unwrap_or_default();
        let policy = container
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into());
        // Another namespace's image in the cluster registry: a copy on this node was pulled
        // for a pod allowed to run it, not necessarily for this one. So it is pulled again,
        // with this pod's own pull secrets, and never taken from the store instead.
        if foreign(&self.ctx.registries, &reference, self.namespace()) {
            if policy == "Never" {
                return Err((
                    "ErrImageNeverPull",
                    format!(
                        "Container image {reference:?} is another namespace's image in the \
                         cluster registry: its pod must pull it (with pull policy IfNotPresent \
                         or Always and an imagePullSecret), not use the node's copy"
                    ),
                ));
            }
            return self.pull(container, &reference, None).await;
        }
        let local = stored(
            &self.ctx.images,
            &self.ctx.registries,
            &reference,
            self.namespace(),
        );
        match (policy.as_str(), local) {
            ("Never", Some(img)) | ("IfNotPresent", Some(img)) => Ok(img),
            ("Never", None) => Err((
                "ErrImageNeverPull",
                format!(
                    "Container image {reference:?} is not present with pull policy of Never; \
                         import it with `drover image import FILE.wasm {reference}`"
                ),
            )),
            (_, local) => self.pull(container, &reference, local).await,
        }
    }

    /// Pulls the image from its registry (with the pod's imagePullSecrets, at most 10 min),
    /// falling back to `local`, the stored image of that name, when the pull fails.
    async fn pull(
        &self,
        container: &Container,
        reference: &str,
        local: Option<StoredImage>,
    ) -> Result<StoredImage, (&'static str, String)> {
        let c = Some(container.name.as_str());
        self.event(
            c,
            Normal,
            "Pulling",
            &format!("Pulling image {reference:?}"),
        );
        let started = Instant::now();
        let mut auth = runtime::registry::auth_from_docker_config(
            &registry_host(reference),
            &self.pull_secrets().await,
        );
        if matches!(auth, runtime::registry::RegistryAuth::Anonymous) {
            if let Some(own) = self
                .ctx
                .registries
                .node_credential(reference, self.namespace())
            {
                auth = own;
            }
        }
        let (events, pod, name) = (
            self.ctx.events.clone(),
            self.pod.clone(),
            container.name.clone(),
        );
        let progress = move |step: String| {
            events.pod(&pod, Some(&name), Normal, "Pulling", &step);
        };
        let pulled = tokio::time::timeout(
            Duration::from_secs(600),
            self.ctx
                .registries
                .pull(reference, &self.ctx.images, &auth, &progress),
        )
        .await
        .unwrap_or_else(|_| {
            Err(runtime::registry::PullError::Registry(format!(
                "pulling {reference:?} timed out"
            )))
        });
        match (pulled, local) {
            (Ok(img), _) => {
                let took = humantime::format_duration(Duration::from_millis(
                    started.elapsed().as_millis() as u64,
                ));
                self.event(
                    c,
                    Normal,
                    "Pulled",
                    &format!("Successfully pulled image {reference:?} in {took}"),
                );
                Ok(img)
            }
            (Err(e), Some(img)) => {
                tracing::info!("using the stored {reference}: {e}");
                Ok(img)
            }
            (Err(e), None) => Err(("ErrImagePull", e.to_string())),
        }
    }
    fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// The `.dockerconfigjson` of the pod's imagePullSecrets that exist (a missing one is
    /// skipped, as the kubelet does: the pull may still work anonymously).
    async fn pull_secrets(&self) -> Vec<Vec<u8>> {
        let names: Vec<String> = self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .map(|r| r.name.clone())
            .collect();
        let mut configs = Vec::new();
        for name in names {
            match self.sources.secrets.get_opt(&name).await {
                Ok(Some(secret)) => {
                    let data = secret.data.unwrap_or_default();
                    if let Some(config) = data
                        .get(".dockerconfigjson")
                        .or_else(|| data.get(".dockercfg"))
                    {
                        configs.push(config.0.clone());
                    }
                }
                Ok(None) => {
                    tracing::warn!(pod = %self.log_name(), "imagePullSecret {name} not found")
                }
                Err(e) => {
                    tracing::warn!(pod = %self.log_name(), "cannot read imagePullSecret {name}: {e}")
                }
            }
        }
        configs
    }
}

/// Whether `reference` is in the cluster registry under a namespace other than `namespace`.
pub(crate) fn foreign(
    registries: &runtime::registry::Registries,
    reference: &str,
    namespace: &str,
) -> bool {
    registries
        .cluster_namespace(reference)
        .is_some_and(|ns| ns != namespace)
}

/// The stored image `reference` names, if a pod of `namespace` may use the node's copy: not
/// when the reference is another namespace's cluster image, and not when it names a digest
/// the node holds only as other namespaces' cluster images (`anything@sha256:…` would
/// otherwise run a private image pulled for someone else).
pub(crate) fn stored(
    images: &runtime::images::ImageStore,
    registries: &runtime::registry::Registries,
    reference: &str,
    namespace: &str,
) -> Option<StoredImage> {
    if foreign(registries, reference, namespace) {
        return None;
    }
    let image = images.resolve(reference)?;
    // Without a digest the store found the image by this very name: nothing is borrowed
    // (and the reference table is not read a second time on every container start).
    if !reference.contains('@') {
        return Some(image);
    }
    let names = images.names_of(&image.digest);
    let by_name = names.contains(&image.reference);
    let lent = !names.is_empty() && names.iter().all(|n| foreign(registries, n, namespace));
    (by_name || !lent).then_some(image)
}

/// The registry an image reference names, as Docker reads it: the first path component when it
/// looks like a host (has a dot or a port, or is localhost), Docker Hub otherwise.
fn registry_host(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}
