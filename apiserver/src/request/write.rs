//! Writes: create, update (replace), patch and server-side apply. Every object a client sends
//! is admitted first (decoded, shape-checked, named, defaulted, checked by `api::semantic`, and
//! checked against what its kind forbids its writer); every write reaches the store through
//! `Call::commit`, with the reservations the kind's strategy asks for in the same transaction.

use api::convert;
use api::object::{self, status};
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use raft_store::{Compare, CompareOp, KeySpan, KeyValue, Op, RangeRequest, StoreError, Txn};
use serde_json::{json, Value};

use super::delete::{has_finalizers, release_ops};
use super::{is_true, Call};
use crate::respond::{
    bad_request, conflict, failure, forbidden, invalid, invalid_causes, json_response, not_found,
    store_failure,
};
use crate::stored::{now_rfc3339, stamp_new, to_bytes};

impl Call<'_> {
    /// Checks and completes an object a client sent for `name` (None: a create that may use
    /// generateName). Returns the object and its name.
    fn admit(&self, body: &Bytes, name_given: Option<&str>) -> Result<(Value, String), Response> {
        let r = self.resource();
        let mut obj: Value = serde_json::from_slice(body).map_err(|e| {
            bad_request(&format!(
                "the body of the request was in an unknown format: {e}"
            ))
        })?;
        if !obj.is_object() {
            return Err(bad_request("the body must be a JSON object"));
        }
        let api_version = r.api_version();
        match obj.get("kind").and_then(Value::as_str) {
            Some(kind) if kind != r.kind => {
                return Err(bad_request(&format!(
                    "the kind {kind:?} does not match the resource {} (kind {})",
                    r.name, r.kind
                )))
            }
            _ => obj["kind"] = json!(r.kind),
        }
        match obj.get("apiVersion").and_then(Value::as_str) {
            Some(v) if v != api_version => {
                return Err(bad_request(&format!(
                    "apiVersion {v:?} is not served for {}; use {api_version}",
                    r.name
                )))
            }
            _ => obj["apiVersion"] = json!(api_version),
        }
        let body_name = object::name(&obj).map(str::to_string);
        let name = match (name_given, body_name) {
            (Some(url), Some(b)) if url != b => {
                return Err(bad_request(&format!(
                    "the name of the object ({b}) does not match the name on the URL ({url})"
                )))
            }
            (Some(url), _) => url.to_string(),
            (None, Some(b)) => b,
            (None, None) => match object::metadata(&obj)
                .and_then(|m| m.get("generateName"))
                .and_then(Value::as_str)
            {
                Some(prefix) => {
                    let suffix: String = (0..5)
                        .map(|_| {
                            "bcdfghjklmnpqrstvwxz2456789".as_bytes()
                                [rand::random::<u8>() as usize % 27]
                                as char
                        })
                        .collect();
                    format!("{prefix}{suffix}")
                }
                None => {
                    return Err(invalid(
                        r,
                        "",
                        "metadata.name",
                        "name or generateName is required",
                    ))
                }
            },
        };
        // The object must fit its type; unknown fields are errors under strict field
        // validation (kubectl's default), warnings under Warn (the server's default), and
        // dropped silently under Ignore.
        let validation = self.query.get("fieldValidation").map(String::as_str);
        let strict = match validation {
            Some("Strict") => true,
            None | Some("Warn" | "Ignore") => false,
            Some(other) => {
                return Err(bad_request(&format!(
                "fieldValidation: invalid value {other:?}: must be one of Ignore, Warn or Strict"
            )))
            }
        };
        match api::validate::check(r.group, r.version, r.kind, &mut obj, strict) {
            Ok(unknown) => {
                if validation != Some("Ignore") {
                    self.warnings
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
                }
            }
            Err(api::validate::ShapeError::Invalid { field, message }) => {
                return Err(invalid(r, &name, &field, &message))
            }
            Err(api::validate::ShapeError::UnknownField(field)) => {
                return Err(bad_request(&format!(
                    "strict decoding error: unknown field \"{field}\""
                )))
            }
        }
        if let Some(why) = self.strategy().name_problem(&name) {
            return Err(invalid(
                r,
                &name,
                "metadata.name",
                &format!("\"{name}\": {why}"),
            ));
        }
        let body_ns = object::namespace(&obj).map(str::to_string);
        let meta = object::metadata_mut(&mut obj);
        meta.insert("name".into(), json!(name));
        if r.namespaced {
            let ns = self.o.namespace.clone().unwrap_or_else(|| "default".into());
            if body_ns.as_ref().is_some_and(|b| *b != ns) {
                return Err(bad_request(&format!(
                    "the namespace of the provided object ({}) does not match the namespace sent on the request ({ns})",
                    body_ns.unwrap_or_default()
                )));
            }
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        // Defaults, then the rules beyond the shape (after defaulting, as Kubernetes does).
        api::defaults::apply(r.rule_key(), &mut obj);
        let causes = api::semantic::check(r.rule_key(), &obj);
        if !causes.is_empty() {
            return Err(invalid_causes(r, &name, &causes));
        }
        // What the kind forbids its writer beyond RBAC's verbs (a node writes only its own
        // Node; RBAC's escalation rule for roles and bindings).
        if let Some(why) = self
            .strategy()
            .forbids(&self.st.auth, self.user, &obj, &name)
        {
            return Err(forbidden(&why));
        }
        self.pod_security(&obj, name_given.is_none())?;
        Ok((obj, name))
    }

    /// Pod Security admission for a write of `obj` through the object's own path (status and
    /// scale writes change nothing it judges): a pod past its namespace's enforce level is
    /// refused; what breaks a warn level (a workload's template, any level) is a warning.
    fn pod_security(&self, obj: &Value, create: bool) -> Result<(), Response> {
        if self.o.subresource.is_some() {
            return Ok(());
        }
        let r = self.resource();
        if r.name == "namespaces" {
            let causes = crate::podsecurity::namespace_label_problems(obj);
            if !causes.is_empty() {
                let name = object::name(obj).unwrap_or_default();
                return Err(invalid_causes(r, name, &causes));
            }
            return Ok(());
        }
        let Some(ns) = self.o.namespace.as_deref() else {
            return Ok(());
        };
        let namespaces = api::registry::find("", "v1", "namespaces").expect("registered");
        let namespace = self
            .st
            .cache
            .get(&namespaces.key(None, ns))
            .map(|kv| crate::stored::from_kv(&kv));
        let labels = namespace
            .as_ref()
            .and_then(|n| n["metadata"]["labels"].as_object());
        let settings = self.st.pod_security();
        match crate::podsecurity::review(settings, ns, labels, r.name, obj, create) {
            crate::podsecurity::Verdict::Deny(message) => Err(forbidden(&message)),
            crate::podsecurity::Verdict::Admit(warnings) => {
                self.warnings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(warnings);
                Ok(())
            }
        }
    }

    /// The ServiceAccount a new pod names (`default` when it names none), if it exists: from
    /// the cache, or from the store when the cache has not seen it yet (one just created).
    async fn service_account(&self, pod: &Value) -> Result<Option<Value>, StoreError> {
        let name = crate::strategy::service_account_name(pod);
        let accounts = api::registry::find("", "v1", "serviceaccounts").expect("registered");
        let key = accounts.key(self.o.namespace.as_deref(), name);
        if let Some(kv) = self.st.cache.get(&key) {
            return Ok(Some(crate::stored::from_kv(&kv)));
        }
        let resp = self.range(RangeRequest::new(KeySpan::key(key))).await?;
        Ok(resp.kvs.first().map(crate::stored::from_kv))
    }

    /// Whether the namespace addressed exists and takes new objects (Active where none is
    /// addressed).
    async fn namespace_state(&self) -> Result<NamespaceState, StoreError> {
        let Some(ns) = &self.o.namespace else {
            return Ok(NamespaceState::Active);
        };
        let nsr = api::registry::find("", "v1", "namespaces").expect("registered");
        let resp = self
            .range(RangeRequest::new(KeySpan::key(nsr.key(None, ns))))
            .await?;
        Ok(match resp.kvs.first().map(crate::stored::from_kv) {
            None => NamespaceState::Missing,
            Some(obj) if obj["metadata"].get("deletionTimestamp").is_some() => {
                NamespaceState::Terminating
            }
            Some(_) => NamespaceState::Active,
        })
    }

    /// A new object: admitted, stamped, prepared by its kind, and stored with what it
    /// reserves if its key is free.
    pub(super) async fn create(&self, body: &Bytes) -> Response {
        let (mut obj, name) = match self.admit(body, None) {
            Ok(x) => x,
            Err(r) => return r,
        };
        // A create changes the object from nothing.
        if let Some(why) = self
            .strategy()
            .forbids_change(self.user, &Value::Null, &obj)
        {
            return forbidden(&why);
        }
        if self.resource().namespaced {
            let ns = self.o.namespace.clone().unwrap_or_default();
            match self.namespace_state().await {
                Ok(NamespaceState::Active) => {}
                Ok(NamespaceState::Missing) => {
                    return not_found(
                        api::registry::find("", "v1", "namespaces").expect("registered"),
                        &ns,
                    );
                }
                // As kube-apiserver's NamespaceLifecycle: what is being emptied takes nothing
                // new (but what its kind's strategy lets in: events of the deletion itself).
                Ok(NamespaceState::Terminating)
                    if !self.strategy().created_while_namespace_terminates() =>
                {
                    return forbidden(&format!(
                        "unable to create new content in namespace {ns} because it is being terminated"
                    ));
                }
                Ok(NamespaceState::Terminating) => {}
                Err(e) => return store_failure(e),
            }
        }
        stamp_new(&mut obj);
        self.strategy().prepare_create(&mut obj);
        let r = self.resource();
        // A create records no managedFields entry (kube-apiserver records one with every field
        // set): on every pod a controller makes, it more than doubled the bytes of a 5,000-pod
        // list (p50 68 → 155 ms, BENCHMARKS). Ownership starts with the first update or apply.
        if (r.group, r.name) == ("", "pods") {
            let account = match self.service_account(&obj).await {
                Ok(a) => a,
                Err(e) => return store_failure(e),
            };
            crate::strategy::admit_service_account(&mut obj, |_| account);
        }
        let key = self.key(&name);
        let holder = format!("{}/{name}", self.o.namespace.as_deref().unwrap_or(""));
        // Reservations (a Service's IP and ports) are picked at random; a clash with another
        // create fails the transaction's comparison and the next attempt picks again.
        for _attempt in 0..16 {
            let mut candidate = obj.clone();
            let reservations = match self.strategy().allocate(&mut candidate) {
                Ok(v) => v,
                Err((field, msg)) => return invalid(r, &name, &field, &msg),
            };
            let mut txn = Txn::put(
                key.as_bytes(),
                to_bytes(&convert::to_storage(r, candidate.clone())),
            )
            .when(Compare::exists(key.as_bytes(), false))
            .or_else(Op::get(key.as_bytes()));
            for res in &reservations {
                txn = txn
                    .when(Compare::exists(res.key.as_bytes(), false))
                    .and_then(Op::put(res.key.as_bytes(), holder.as_bytes()));
            }
            let resp = match self.commit(txn).await {
                Ok(resp) => resp,
                Err(e) => return store_failure(e),
            };
            if resp.succeeded {
                let version = self.written_version(&resp, None);
                let meta = object::metadata_mut(&mut candidate);
                if self.dry_run {
                    meta.remove("resourceVersion");
                } else {
                    meta.insert("resourceVersion".into(), version);
                }
                return self.respond(StatusCode::CREATED, candidate);
            }
            if resp
                .range(0)
                .is_some_and(|existing| !existing.kvs.is_empty())
            {
                let msg = format!("{} \"{name}\" already exists", r.name);
                let details = json!({"name": name, "group": r.group, "kind": r.name});
                return json_response(
                    StatusCode::CONFLICT,
                    &status(409, "AlreadyExists", &msg, Some(details)),
                );
            }
            // A reservation clashed. If the client chose it, that is the client's error.
            for res in reservations.iter().filter(|res| res.chosen_by_client) {
                let taken = self
                    .range(RangeRequest::new(KeySpan::key(res.key.as_bytes())))
                    .await;
                if taken.is_ok_and(|t| !t.kvs.is_empty()) {
                    let (field, value) = res.what.split_once(": ").unwrap_or((&res.what, ""));
                    return invalid(
                        r,
                        &name,
                        field,
                        &format!(
                            "{value}: provided {} is already allocated",
                            if field.contains("IP") { "IP" } else { "port" }
                        ),
                    );
                }
            }
        }
        failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "could not allocate a free ClusterIP or NodePort; the ranges may be full",
        )
    }

    /// Writes `obj` over the stored `current` if it has not changed since (`current`'s revision).
    /// `apply`: whether this write is a server-side apply (which recorded its own fields) or
    /// a plain update (recorded here, [`api::apply::record_update`]).
    async fn replace(
        &self,
        name: &str,
        current: &KeyValue,
        mut obj: Value,
        apply: bool,
    ) -> Result<Value, Response> {
        let old = self.load(current);
        if !apply {
            api::apply::record_update(
                &old,
                &mut obj,
                &self.manager,
                self.o.subresource.as_deref(),
                &self.resource().api_version(),
                &now_rfc3339(),
            );
        }
        if let Some((field, msg)) = self.strategy().update_problem(&old, &obj) {
            return Err(invalid(self.resource(), name, &field, &msg));
        }
        if let Some(why) = self.strategy().forbids_change(self.user, &old, &obj) {
            return Err(forbidden(&why));
        }
        let change = match self.strategy().reallocate(&old, &mut obj) {
            Ok(c) => c,
            Err((field, msg)) => return Err(invalid(self.resource(), name, &field, &msg)),
        };
        // What the server owns is kept: identity, creation time; generation moves with spec.
        let meta = object::metadata_mut(&mut obj);
        for field in ["uid", "creationTimestamp"] {
            match old["metadata"].get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let spec_changed = old.get("spec") != obj.get("spec");
        object::metadata_mut(&mut obj).insert(
            "generation".into(),
            json!(if spec_changed {
                generation + 1
            } else {
                generation
            }),
        );
        // A deletion in progress cannot be undone by an update; once the last finalizer is
        // gone, the update completes the deletion instead.
        for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
            if let Some(v) = old["metadata"].get(field) {
                object::metadata_mut(&mut obj).insert(field.into(), v.clone());
            }
        }
        let key = self.key(name);
        let finished = old["metadata"].get("deletionTimestamp").is_some()
            && !has_finalizers(&obj)
            && !self.strategy().graceful(&obj);
        let stored = to_bytes(&convert::to_storage(self.resource(), obj.clone()));
        // An update that changes nothing is not written, as kube-apiserver skips it (it too
        // compares the encoded bytes): the resourceVersion stays, watchers hear nothing, and an
        // apply of the same manifest leaves the object as it was. Stored objects are encoded
        // the one way `to_bytes` does, so equal objects are equal bytes; anything else is
        // written, as before.
        if !finished
            && change.acquire.is_empty()
            && change.release.is_empty()
            && current.value == stored
        {
            object::metadata_mut(&mut obj).insert(
                "resourceVersion".into(),
                json!(current.mod_revision.to_string()),
            );
            return Ok(obj);
        }
        let mut txn = Txn::put(key.as_bytes(), stored);
        if finished {
            txn = Txn::delete(key.as_bytes());
            txn.success.extend(release_ops(self.resource(), &obj));
        }
        let mut txn = txn.when(Compare::mod_revision(
            key.as_bytes(),
            CompareOp::Equal,
            current.mod_revision,
        ));
        if !finished {
            let holder = format!("{}/{name}", self.o.namespace.as_deref().unwrap_or(""));
            for res in &change.acquire {
                txn = txn
                    .when(Compare::exists(res.key.as_bytes(), false))
                    .and_then(Op::put(res.key.as_bytes(), holder.as_bytes()));
            }
            for k in &change.release {
                txn = txn.and_then(Op::delete(k.as_bytes()));
            }
        }
        match self.commit(txn).await {
            Ok(resp) if resp.succeeded => {
                let version = self.written_version(&resp, Some(current.mod_revision));
                object::metadata_mut(&mut obj).insert("resourceVersion".into(), version);
                Ok(obj)
            }
            Ok(_) if !change.acquire.is_empty() => {
                // The object moved (a conflict), or a node port is taken.
                if self
                    .read(name)
                    .await
                    .ok()
                    .flatten()
                    .map(|kv| kv.mod_revision)
                    != Some(current.mod_revision)
                {
                    return Err(conflict(self.resource(), name));
                }
                let taken = change
                    .acquire
                    .iter()
                    .find(|r| r.chosen_by_client)
                    .map(|r| r.what.clone())
                    .unwrap_or_else(|| "spec.ports: a node port".into());
                let (field, value) = taken.split_once(": ").unwrap_or((&taken, ""));
                // A port picked at random that clashed is retried by the caller as a conflict.
                if !change.acquire.iter().any(|r| r.chosen_by_client) {
                    return Err(conflict(self.resource(), name));
                }
                Err(invalid(
                    self.resource(),
                    name,
                    field,
                    &format!("{value}: provided port is already allocated"),
                ))
            }
            Ok(_) => Err(conflict(self.resource(), name)),
            Err(e) => Err(store_failure(e)),
        }
    }

    /// PUT: the object (or its status or scale) replaced, a compare-and-swap when the body
    /// carries a resourceVersion.
    pub(super) async fn update(&self, name: &str, body: &Bytes) -> Response {
        if let Err(r) = self.check_subresource() {
            return r;
        }
        let current = match self.read(name).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return not_found(self.resource(), name),
            Err(e) => return store_failure(e),
        };
        let incoming: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return bad_request(&format!(
                    "the body of the request was in an unknown format: {e}"
                ))
            }
        };
        // A resourceVersion in the body must be the current one: optimistic concurrency.
        if let Some(rv) = object::metadata(&incoming)
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
        {
            if rv.parse::<u64>().ok() != Some(current.mod_revision) {
                return conflict(self.resource(), name);
            }
        }
        self.write_view(name, &current, incoming, false)
            .await
            .unwrap_or_else(|r| r)
    }

    /// Writes `incoming` — the object, or its status or scale view — over `current` (`apply`:
    /// as a server-side apply, see [`Call::replace`]).
    async fn write_view(
        &self,
        name: &str,
        current: &KeyValue,
        incoming: Value,
        apply: bool,
    ) -> Result<Response, Response> {
        let stored = self.load(current);
        let merged = self.unview(&stored, incoming)?;
        let bytes = Bytes::from(serde_json::to_vec(&merged).expect("serialises"));
        let (obj, _) = self.admit(&bytes, Some(name))?;
        let obj = self.replace(name, current, obj, apply).await?;
        Ok(self.respond(StatusCode::OK, self.view(obj)))
    }

    /// PATCH: a JSON, merge or strategic merge patch over the latest version (retried when
    /// that moves), or a server-side apply.
    pub(super) async fn patch(&self, name: &str, content_type: &str, body: &Bytes) -> Response {
        if let Err(r) = self.check_subresource() {
            return r;
        }
        if content_type.starts_with("application/apply-patch") {
            return self.server_side_apply(name, body).await;
        }
        let patch: Value = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => return bad_request(&format!("the patch is not valid JSON: {e}")),
        };
        // A patch is applied to the latest version and retried if that moved meanwhile.
        for _ in 0..5 {
            let current = match self.read(name).await {
                Ok(Some(kv)) => kv,
                Ok(None) => return not_found(self.resource(), name),
                Err(e) => return store_failure(e),
            };
            let mut obj = self.view(self.load(&current));
            let applied = match content_type.split(';').next().unwrap_or("").trim() {
                "application/json-patch+json" => {
                    match serde_json::from_value::<json_patch::Patch>(patch.clone()) {
                        Ok(p) => bounded_json_patch(&mut obj, &p),
                        Err(e) => Err(format!("not a JSON patch: {e}")),
                    }
                }
                "application/merge-patch+json" => {
                    json_patch::merge(&mut obj, &patch);
                    Ok(())
                }
                "application/strategic-merge-patch+json" => {
                    api::patch::strategic_merge(&mut obj, &patch);
                    Ok(())
                }
                other => {
                    return failure(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        &format!(
                        "the patch type {other:?} is not supported (server-side apply comes later)"
                    ),
                    )
                }
            };
            // A patch may replace the whole document: what comes out must still be an object.
            let applied = applied.and_then(|()| {
                if obj.is_object() {
                    Ok(())
                } else {
                    Err(format!(
                        "the patched {} is not an object any more",
                        self.resource().kind
                    ))
                }
            });
            if let Err(e) = applied {
                return json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &status(422, "Invalid", &e, None),
                );
            }
            match self.write_view(name, &current, obj, false).await {
                Ok(resp) => return resp,
                Err(r) if r.status() == StatusCode::CONFLICT => continue,
                Err(r) => return r,
            }
        }
        conflict(self.resource(), name)
    }

    /// Server-side apply (`kubectl apply --server-side`): creates the object, or merges the
    /// applied configuration into it with field ownership (see `api::apply`).
    async fn server_side_apply(&self, name: &str, body: &Bytes) -> Response {
        let r = self.resource();
        let Some(manager) = self.query.get("fieldManager").filter(|m| !m.is_empty()) else {
            return bad_request("fieldManager is required for apply requests");
        };
        if self.o.subresource.is_some() {
            return bad_request("apply is served on the object itself, not on a subresource");
        }
        let force = is_true(self.query.get("force"));
        let applied: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return bad_request("the applied configuration must be an object"),
            Err(e) => {
                return bad_request(&format!(
                    "the applied configuration must be JSON (YAML in its JSON form): {e}"
                ))
            }
        };
        if object::name(&applied).is_some_and(|n| n != name) {
            return bad_request(&format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                object::name(&applied).unwrap_or("")
            ));
        }
        let api_version = r.api_version();
        for _ in 0..5 {
            let current = match self.read(name).await {
                Ok(c) => c,
                Err(e) => return store_failure(e),
            };
            let live = current.as_ref().map(|kv| self.load(kv));
            let merged = match api::apply::apply(
                live.as_ref(),
                &applied,
                manager,
                force,
                &api_version,
                &now_rfc3339(),
            ) {
                Ok(m) => m,
                Err(api::apply::Conflicts(conflicts)) => {
                    let causes: Vec<Value> = conflicts
                        .iter()
                        .map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": f}))
                        .collect();
                    let list: Vec<String> = conflicts
                        .iter()
                        .map(|(m, f)| format!("- {m}: {f}"))
                        .collect();
                    let message = format!(
                        "Apply failed with {} conflict{}: {}",
                        conflicts.len(),
                        if conflicts.len() == 1 { "" } else { "s" },
                        list.join("\n")
                    );
                    return json_response(
                        StatusCode::CONFLICT,
                        &status(
                            409,
                            "Conflict",
                            &message,
                            Some(json!({"name": name, "kind": r.name, "causes": causes})),
                        ),
                    );
                }
            };
            let Some(current) = current else {
                let bytes = Bytes::from(serde_json::to_vec(&merged).expect("serialises"));
                let created = self.create(&bytes).await;
                if created.status() == StatusCode::CONFLICT {
                    continue; // created meanwhile: apply over it
                }
                return created;
            };
            match self.write_view(name, &current, merged, true).await {
                Ok(resp) => return resp,
                Err(resp) if resp.status() == StatusCode::CONFLICT => continue,
                Err(resp) => return resp,
            }
        }
        conflict(self.resource(), name)
    }
}

/// At most this many operations in one JSON patch (kube-apiserver's limit).
const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;
/// At most this much copied by one JSON patch's `copy` operations, as kube-apiserver bounds it
/// (`AccumulatedCopySizeLimit`): each copy can double the document, so twenty of them in a 1 KB
/// patch would otherwise make a gigabyte.
const MAX_JSON_PATCH_COPIED: usize = 3 * 1024 * 1024;

/// Applies a JSON patch (RFC 6902) with those bounds; an error says which was passed.
fn bounded_json_patch(obj: &mut Value, patch: &json_patch::Patch) -> Result<(), String> {
    if patch.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(format!(
            "the JSON patch has {} operations; at most {MAX_JSON_PATCH_OPERATIONS} are allowed",
            patch.0.len()
        ));
    }
    let mut copied = 0usize;
    for op in &patch.0 {
        if let json_patch::PatchOperation::Copy(copy) = op {
            copied += obj
                .pointer(copy.from.as_str())
                .and_then(|v| serde_json::to_vec(v).ok())
                .map_or(0, |bytes| bytes.len());
            if copied > MAX_JSON_PATCH_COPIED {
                return Err(format!(
                    "the JSON patch copies more than {} MiB; it would grow the object past what a request may hold",
                    MAX_JSON_PATCH_COPIED >> 20
                ));
            }
        }
        json_patch::patch(obj, std::slice::from_ref(op)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A namespace as a create in it finds it.
enum NamespaceState {
    Missing,
    Active,
    /// Being deleted: its contents are going, nothing new comes in.
    Terminating,
}
