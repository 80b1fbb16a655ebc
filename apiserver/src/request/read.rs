//! Reads: get, list and watch. A list is served by the watch cache (or by the store for later
//! pages and exact past revisions, at the revision pinned in its continue token), rendered
//! from the stored bytes when it can be; a watch starts with the current objects when no
//! resourceVersion is given, then follows the cache's events through label and field
//! selectors. Tables for `kubectl get` are made here too.

use std::time::Duration;

use api::convert;
use api::object::{self, status};
use api::registry::Resource;
use api::selector::{FieldSelector, LabelSelector};
use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use raft_store::{EventKind, KeySpan, KeyValue, RangeRequest, StoreError};
use serde_json::{json, Value};

use super::{is_true, Call, View};
use crate::cache::Feed;
use crate::respond::{bad_request, json_response, not_found, store_failure};
use crate::stored::{age, from_kv};

/// How long a list waits for the watch cache to reach the store's current revision before it
/// reads the store instead.
const CACHE_WAIT: Duration = Duration::from_secs(3);

impl Call<'_> {
    pub(super) async fn get(&self, name: &str) -> Response {
        if let Err(r) = self.check_subresource() {
            return r;
        }
        match self.read(name).await {
            Ok(Some(kv)) => self.respond(StatusCode::OK, self.view(self.load(&kv))),
            Ok(None) => not_found(self.resource(), name),
            Err(e) => store_failure(e),
        }
    }

    /// The label and field selectors asked for; Err: a 400 for one that does not parse.
    pub(super) fn selectors(&self) -> Result<(LabelSelector, FieldSelector), Response> {
        let labels =
            LabelSelector::parse(self.query.get("labelSelector").map_or("", String::as_str))
                .map_err(|e| bad_request(&e.to_string()))?;
        let fields =
            FieldSelector::parse(self.query.get("fieldSelector").map_or("", String::as_str))
                .map_err(|e| bad_request(&e.to_string()))?;
        if let Some(field) = fields.unsupported(self.resource().rule_key()) {
            return Err(bad_request(&format!("field label not supported: {field}")));
        }
        Ok((labels, fields))
    }

    pub(super) async fn list(&self) -> Response {
        let (labels, fields) = match self.selectors() {
            Ok(s) => s,
            Err(r) => return r,
        };
        let limit = self
            .query
            .get("limit")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|l| *l > 0);
        let resp = match self.list_range().await {
            Ok(r) => r,
            Err(e) => return store_failure(e),
        };
        let r = self.resource();
        // The common case — a plain list in the storage version — is rendered from the stored
        // bytes, parsing only each object's top level and metadata (a 5,000-pod list spent most
        // of its time parsing and re-serialising whole objects).
        let plain = self.view == View::Object
            && self.query.get("fieldSelector").is_none_or(|f| f.is_empty());
        if plain && api::registry::served_as_stored(r) {
            if let Some(body) = render_list(r, &resp, &labels, limit, &self.pager()) {
                return (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response();
            }
        }
        let mut items = Vec::new();
        let mut next = None;
        for kv in &resp.kvs {
            let obj = self.load(kv);
            if !labels.matches(&object::labels(&obj)) || !fields.matches(&obj) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                let last = items
                    .last()
                    .map(|(k, _): &(String, Value)| k.clone())
                    .unwrap_or_default();
                next = Some(self.pager().token(resp.revision, &last));
                break;
            }
            items.push((String::from_utf8_lossy(&kv.key).into_owned(), obj));
        }
        let objects: Vec<Value> = items.into_iter().map(|(_, o)| o).collect();
        let mut meta = json!({"resourceVersion": resp.revision.to_string()});
        if let Some(token) = next {
            meta["continue"] = json!(token);
        }
        match self.view {
            View::Table => {
                return json_response(StatusCode::OK, &self.to_table(&objects, Some(meta)))
            }
            View::Metadata => {
                let items: Vec<Value> = objects.iter().map(View::metadata_only).collect();
                return json_response(
                    StatusCode::OK,
                    &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items}),
                );
            }
            View::Object => {}
        }
        json_response(
            StatusCode::OK,
            &json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(), "metadata": meta, "items": objects}),
        )
    }

    /// The objects a list returns, before selectors. A first page is served by the watch
    /// cache (at least as new as the resourceVersion asked for, or as the store's current
    /// revision when none is given); later pages and exact past revisions by the store, at the
    /// revision pinned in the continue token.
    async fn list_range(&self) -> Result<raft_store::RangeResponse, StoreError> {
        let prefix = self.prefix();
        if let Some(token) = self.query.get("continue").filter(|c| !c.is_empty()) {
            let Some((revision, after)) = self.pager().open(token) else {
                return Err(StoreError::invalid(
                    "continue: Invalid value: the continue token is not one this server issued \
                     for this list (same resource, namespace and selectors)",
                ));
            };
            // The token names the last key relative to the collection listed, so whatever a
            // client puts in it, the page starts inside this collection's prefix.
            let span = KeySpan::prefix(prefix.clone()).after(format!("{prefix}{after}").as_bytes());
            return self.range(RangeRequest::new(span).at(revision)).await;
        }
        let rv = self.query.get("resourceVersion").filter(|v| !v.is_empty());
        let rv_number = rv.and_then(|v| v.parse::<u64>().ok());
        if rv.is_some() && rv_number.is_none() {
            return Err(StoreError::invalid(
                "resourceVersion: Invalid value: it must be a number",
            ));
        }
        let exact = self
            .query
            .get("resourceVersionMatch")
            .is_some_and(|m| m == "Exact");
        if exact {
            let span = KeySpan::prefix(prefix);
            return self
                .range(RangeRequest::new(span).at(rv_number.unwrap_or(0)))
                .await;
        }
        let at_least = match rv_number {
            Some(n) => n,
            None => self.current_revision().await?,
        };
        if self.st.cache.wait_for(at_least, CACHE_WAIT).await {
            return Ok(self.st.cache.range(&prefix, None));
        }
        self.range(RangeRequest::new(KeySpan::prefix(prefix))).await
    }

    /// The store's current revision, by a linearizable read: everything acknowledged before
    /// this call is at or below it.
    async fn current_revision(&self) -> Result<u64, StoreError> {
        let probe = RangeRequest::new(KeySpan::key(crate::cache::CACHED_PREFIX)).count_only();
        Ok(self.range(probe).await?.revision)
    }

    pub(super) async fn watch(&self) -> Response {
        let (labels, fields) = match self.selectors() {
            Ok(s) => s,
            Err(r) => return r,
        };
        let rv = self
            .query
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let bookmarks = is_true(self.query.get("allowWatchBookmarks"));
        let timeout = self
            .query
            .get("timeoutSeconds")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let prefix = self.prefix();
        // Without a resourceVersion a watch starts with the current objects as ADDED events;
        // so does a streaming list (`sendInitialEvents=true`, client-go's WatchList, on by
        // default from 1.35), whose initial events end with a bookmark saying so.
        let send_initial = self
            .query
            .get("sendInitialEvents")
            .map(|v| is_true(Some(v)));
        let streaming_list = send_initial == Some(true);
        let mut initial = Vec::new();
        let r = self.resource();
        let view = self.view;
        let load = move |kv: &KeyValue| convert::from_storage(r, from_kv(kv));
        let from = if streaming_list || (rv == 0 && send_initial.is_none()) {
            match self.list_range().await {
                Ok(resp) => {
                    initial = resp
                        .kvs
                        .iter()
                        .map(load)
                        .map(|o| json!({"type": "ADDED", "object": o}))
                        .collect();
                    resp.revision + 1
                }
                Err(e) => return store_failure(e),
            }
        } else {
            rv + 1
        };
        let mut initial: Vec<Value> = initial
            .into_iter()
            .filter(|e| {
                labels.matches(&object::labels(&e["object"])) && fields.matches(&e["object"])
            })
            .map(|mut e| {
                e["object"] = view.shape(e["object"].take());
                e
            })
            .collect();
        if streaming_list {
            initial.push(json!({"type": "BOOKMARK", "object": {
                "kind": r.kind, "apiVersion": r.api_version(),
                "metadata": {"resourceVersion": (from - 1).to_string(),
                             "annotations": {"k8s.io/initial-events-end": "true"}}}}));
        }
        let watcher = Feed::Cache(self.st.cache.watch(prefix, from));
        let store = self.st.store.clone();
        let (kind, api_version) = (r.kind, r.api_version());
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let stream = futures_util::stream::unfold(
            (initial.into_iter(), watcher, false),
            move |(mut initial, mut watcher, done)| {
                let (labels, fields, api_version, store) = (
                    labels.clone(),
                    fields.clone(),
                    api_version.clone(),
                    store.clone(),
                );
                async move {
                    if done {
                        return None;
                    }
                    if let Some(ev) = initial.next() {
                        return Some((
                            Ok::<_, std::io::Error>(line(&ev)),
                            (initial, watcher, false),
                        ));
                    }
                    loop {
                        let next = match deadline {
                            Some(d) => match tokio::time::timeout_at(d, watcher.next(&store)).await
                            {
                                Ok(n) => n,
                                Err(_) => return None,
                            },
                            None => watcher.next(&store).await,
                        };
                        match next? {
                            Ok(batch) => {
                                let mut out = Vec::new();
                                for ev in &batch.events {
                                    let matches = |o: &Value| {
                                        labels.matches(&object::labels(o)) && fields.matches(o)
                                    };
                                    let prev = ev.prev_kv.as_ref().map(load);
                                    let before = prev.as_ref().map(matches);
                                    let (after, obj) = match ev.kind {
                                        EventKind::Put => {
                                            let o = load(&ev.kv);
                                            (Some(matches(&o)), o)
                                        }
                                        EventKind::Delete => {
                                            let Some(mut o) = prev else { continue };
                                            object::metadata_mut(&mut o).insert(
                                                "resourceVersion".into(),
                                                json!(ev.kv.mod_revision.to_string()),
                                            );
                                            (None, o)
                                        }
                                    };
                                    if let Some(kind_str) = watch_event_type(before, after) {
                                        out.extend_from_slice(&line(
                                            &json!({"type": kind_str, "object": view.shape(obj)}),
                                        ));
                                    }
                                }
                                if out.is_empty() && batch.events.is_empty() && bookmarks {
                                    let bm = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": batch.revision.to_string()}}});
                                    out.extend_from_slice(&line(&bm));
                                }
                                if !out.is_empty() {
                                    return Some((Ok(Bytes::from(out)), (initial, watcher, false)));
                                }
                            }
                            Err(e) => {
                                let (code, reason) = match e {
                                    StoreError::Compacted { .. } => (410, "Expired"),
                                    _ => (500, "InternalError"),
                                };
                                let ev = json!({"type": "ERROR", "object": status(code, reason, &e.to_string(), None)});
                                return Some((Ok(line(&ev)), (initial, watcher, true)));
                            }
                        }
                    }
                }
            },
        );
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            Body::from_stream(stream),
        )
            .into_response()
    }

    /// A `meta.k8s.io/v1` Table for `kubectl get`, with the usual columns of the kind.
    pub(super) fn to_table(&self, objects: &[Value], list_meta: Option<Value>) -> Value {
        let kind_columns = api::columns::columns(self.resource().rule_key());
        let column = |name: &str, priority: u8, format: &str| json!({"name": name, "type": "string", "format": format, "description": name, "priority": priority});
        let mut columns = vec![column("Name", 0, "name")];
        columns.extend(kind_columns.iter().map(|c| column(c.name, c.priority, "")));
        columns.push(column("Age", 0, ""));
        let rows: Vec<Value> = objects
            .iter()
            .map(|o| {
                let mut cells = vec![json!(object::name(o).unwrap_or(""))];
                cells.extend(kind_columns.iter().map(|c| json!((c.cell)(o))));
                cells.push(json!(age(o["metadata"]["creationTimestamp"].as_str())));
                json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
            })
            .collect();
        json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": list_meta.unwrap_or_else(|| json!({})),
            "columnDefinitions": columns,
            "rows": rows,
        })
    }
}

/// One stored object with its resourceVersion filled in, parsing only its top level and its
/// metadata; and its labels. `None` if the stored bytes are not an object with metadata.
fn render_stored(kv: &KeyValue) -> Option<(Vec<u8>, std::collections::BTreeMap<String, String>)> {
    use serde_json::value::RawValue;
    type Raw<'a> = std::collections::BTreeMap<String, &'a RawValue>;
    let top: Raw = serde_json::from_slice(&kv.value).ok()?;
    let mut out = Vec::with_capacity(kv.value.len() + 40);
    let mut labels = None;
    out.push(b'{');
    for (i, (key, raw)) in top.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key).ok()?;
        out.push(b':');
        if key == "metadata" {
            // Only the labels are parsed: the rest (managedFields above all, which every
            // updated object carries) is copied as it is stored.
            let mut meta: Raw = serde_json::from_str(raw.get()).ok()?;
            labels = Some(match meta.get("labels") {
                Some(l) => serde_json::from_str(l.get()).unwrap_or_default(),
                None => Default::default(),
            });
            let revision = serde_json::to_string(&kv.mod_revision.to_string()).ok()?;
            let revision = RawValue::from_string(revision).ok()?;
            meta.insert("resourceVersion".into(), &revision);
            serde_json::to_writer(&mut out, &meta).ok()?;
        } else {
            out.extend_from_slice(raw.get().as_bytes());
        }
    }
    out.push(b'}');
    Some((out, labels?))
}

/// A `<Kind>List` of the stored objects in `resp` that match `labels`, written from the stored
/// bytes. `None` when an object cannot take the fast path (the caller then parses fully).
fn render_list(
    r: &Resource,
    resp: &raft_store::RangeResponse,
    labels: &LabelSelector,
    limit: Option<usize>,
    pager: &Pager<'_>,
) -> Option<Vec<u8>> {
    let mut items: Vec<u8> =
        Vec::with_capacity(resp.kvs.iter().map(|kv| kv.value.len() + 48).sum());
    let (mut count, mut next) = (0usize, None);
    let mut last_key = String::new();
    for kv in &resp.kvs {
        let (bytes, object_labels) = render_stored(kv)?;
        if !labels.matches(&object_labels) {
            continue;
        }
        if limit.is_some_and(|l| count >= l) {
            next = Some(pager.token(resp.revision, &last_key));
            break;
        }
        if count > 0 {
            items.push(b',');
        }
        items.extend_from_slice(&bytes);
        last_key = String::from_utf8_lossy(&kv.key).into_owned();
        count += 1;
    }
    let mut meta = json!({"resourceVersion": resp.revision.to_string()});
    if let Some(token) = next {
        meta["continue"] = json!(token);
    }
    let mut out = Vec::with_capacity(items.len() + 200);
    out.extend_from_slice(b"{\"apiVersion\":");
    serde_json::to_writer(&mut out, &r.api_version()).ok()?;
    out.extend_from_slice(b",\"items\":[");
    out.extend_from_slice(&items);
    out.extend_from_slice(b"],\"kind\":");
    serde_json::to_writer(&mut out, &format!("{}List", r.kind)).ok()?;
    out.extend_from_slice(b",\"metadata\":");
    serde_json::to_writer(&mut out, &meta).ok()?;
    out.push(b'}');
    Some(out)
}

/// What a change is to a watcher with selectors, as kube-apiserver tells it: `before` and
/// `after` say whether the object matched before and after the change (`None`: it did not
/// exist). An object that starts matching is ADDED, one that stops matching is DELETED.
fn watch_event_type(before: Option<bool>, after: Option<bool>) -> Option<&'static str> {
    match (before, after) {
        (None | Some(false), Some(true)) => Some("ADDED"),
        (Some(true), Some(true)) => Some("MODIFIED"),
        (Some(true), Some(false) | None) => Some("DELETED"),
        _ => None,
    }
}

/// One event of a watch stream: its JSON and a newline.
fn line(v: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(v).expect("serialises");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Continue tokens for one list: the revision a paged list is pinned to and the last key it
/// returned, relative to the listed collection's prefix (as kube-apiserver's tokens are),
/// signed with the cluster's continue key over what the list was: the collection and the
/// selectors. A token from another list, or one a client made up, is refused; and whatever a
/// token says, the page starts inside this collection.
pub(super) struct Pager<'a> {
    key: &'a ring::hmac::Key,
    prefix: String,
    /// The collection and selectors, as the signature covers them.
    binding: String,
}

impl Pager<'_> {
    fn tag(&self, body: &str) -> ring::hmac::Tag {
        ring::hmac::sign(self.key, format!("{body}\n{}", self.binding).as_bytes())
    }

    pub(super) fn token(&self, revision: u64, last_key: &str) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let start = last_key.strip_prefix(&self.prefix).unwrap_or(last_key);
        let body = b64.encode(
            serde_json::to_vec(&json!({"rv": revision, "start": start})).expect("serialises"),
        );
        let tag = b64.encode(self.tag(&body).as_ref());
        format!("{body}.{tag}")
    }

    /// The revision and last key (relative to the collection) of a token issued for this very
    /// list; None for anything else.
    pub(super) fn open(&self, token: &str) -> Option<(u64, String)> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (body, tag) = token.split_once('.')?;
        let tag = b64.decode(tag).ok()?;
        ring::hmac::verify(
            self.key,
            format!("{body}\n{}", self.binding).as_bytes(),
            &tag,
        )
        .ok()?;
        let v: Value = serde_json::from_slice(&b64.decode(body).ok()?).ok()?;
        Some((v["rv"].as_u64()?, v["start"].as_str()?.to_string()))
    }
}

impl Call<'_> {
    /// The continue tokens of this list.
    pub(super) fn pager(&self) -> Pager<'_> {
        let selector = |name: &str| self.query.get(name).map_or("", String::as_str).to_string();
        let prefix = self.prefix();
        Pager {
            key: &self.st.continue_key,
            binding: format!(
                "{prefix}\n{}\n{}",
                selector("labelSelector"),
                selector("fieldSelector")
            ),
            prefix,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_with_selectors_see_objects_enter_and_leave() {
        assert_eq!(watch_event_type(None, Some(true)), Some("ADDED"));
        assert_eq!(watch_event_type(Some(false), Some(true)), Some("ADDED"));
        assert_eq!(watch_event_type(Some(true), Some(true)), Some("MODIFIED"));
        assert_eq!(watch_event_type(Some(true), Some(false)), Some("DELETED"));
        assert_eq!(watch_event_type(Some(true), None), Some("DELETED"));
        assert_eq!(watch_event_type(Some(false), Some(false)), None);
        assert_eq!(watch_event_type(Some(false), None), None);
        assert_eq!(watch_event_type(None, Some(false)), None);
    }

    #[test]
    fn continue_tokens_are_bound_to_their_list_and_reject_forgeries() {
        use base64::Engine as _;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"k");
        let pager = |prefix: &str, labels: &str| Pager {
            key: &key,
            prefix: prefix.to_string(),
            binding: format!("{prefix}\n{labels}\n"),
        };
        let pods = pager("/registry/core/pods/", "app=web");
        let t = pods.token(42, "/registry/core/pods/default/web");
        assert_eq!(pods.open(&t), Some((42, "default/web".into())));
        // Another collection, other selectors, an unsigned or re-signed body: refused.
        assert_eq!(pager("/registry/core/secrets/", "app=web").open(&t), None);
        assert_eq!(pager("/registry/core/pods/", "").open(&t), None);
        let forged =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"rv":42,"start":"/"}"#);
        assert_eq!(pods.open(&forged), None);
        let (_, tag) = t.split_once('.').unwrap();
        assert_eq!(pods.open(&format!("{forged}.{tag}")), None);
        assert_eq!(pods.open("%%%"), None);
    }
}
