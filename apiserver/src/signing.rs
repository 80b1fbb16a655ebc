//! The keys the cluster signs its tokens with, and the signer.
//!
//! Tokens are `drover.<kid>.<claims>.<HMAC-SHA256 of "<kid>.<claims>">`, base64url, where
//! `kid` names the key of the cluster's [`KeySet`] that signed them. The newest key signs; a
//! key retired by a rotation still verifies until its `verify_until` (the rotation's grace
//! period), then is dropped, and every token it signed is dead. Rotating with no grace revokes
//! every signed token at once.
//!
//! A cluster that never rotated has one key, `0`, derived from the cluster's admin token (as
//! every token was signed before keys had ids): every member derives it without a store write,
//! and the tokens issued by older Drover versions (`drover.<claims>.<tag>`, no kid) stay valid
//! until the first rotation retires it.
//!
//! Hand-written rather than JWT: no client ever parses these tokens, and an HMAC over a few
//! JSON fields needs no more than `ring`, already here for TLS.

use std::sync::{RwLock, Weak};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use raft_store::{Compare, Consistency, KeySpan, RangeRequest, StoreError, StoreNode, Txn};
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::encryption::SecretBox;

/// Where the key set lives in the store (sealed, as everything under `/drover/pki/`).
pub const STORE_KEY: &str = "/drover/pki/token-keys";

const TOKEN_PREFIX: &str = "drover.";

/// The id of the key derived from the admin token, the only key before the first rotation.
const DERIVED_KID: &str = "0";

/// One signing key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SigningKey {
    pub kid: String,
    /// The HMAC key, hex.
    secret: String,
    /// When it was made, seconds since the Unix epoch.
    pub created: u64,
    /// Set when a rotation retired it: it verifies until then, and signs no more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_until: Option<u64>,
}

impl SigningKey {
    fn hmac(&self) -> Option<hmac::Key> {
        let bytes = hex_bytes(&self.secret)?;
        Some(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
    }
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cluster's signing keys: the newest signs, the retired verify until their time is up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySet {
    pub keys: Vec<SigningKey>,
}

impl KeySet {
    /// The key set of a cluster that never rotated: key `0`, derived from its admin token.
    pub fn derived(admin_token: &str) -> KeySet {
        let derived = ring::digest::digest(
            &ring::digest::SHA256,
            format!("drover token signing v1:{admin_token}").as_bytes(),
        );
        KeySet {
            keys: vec![SigningKey {
                kid: DERIVED_KID.into(),
                secret: hex(derived.as_ref()),
                created: 0,
                verify_until: None,
            }],
        }
    }

    /// The key new tokens are signed with: the newest that is not retired.
    pub fn current(&self) -> Option<&SigningKey> {
        self.keys.iter().rev().find(|k| k.verify_until.is_none())
    }

    /// The key `kid`, if it may still verify at `now`.
    pub fn verifying(&self, kid: &str, now: u64) -> Option<&SigningKey> {
        self.keys
            .iter()
            .find(|k| k.kid == kid && k.verify_until.is_none_or(|until| now < until))
    }

    /// The set after a rotation at `now`: a new key (`secret`, 32 random bytes, named `kid`)
    /// signs from now on; every older key verifies for `grace_seconds` more at most (a key
    /// retired earlier keeps its own end if that comes sooner); keys whose time is up are
    /// dropped, all of them with no grace.
    pub fn rotated(&self, now: u64, grace_seconds: u64, kid: String, secret: &[u8]) -> KeySet {
        let end = now + grace_seconds;
        let mut keys: Vec<SigningKey> = self
            .keys
            .iter()
            .cloned()
            .map(|mut k| {
                k.verify_until = Some(k.verify_until.map_or(end, |until| until.min(end)));
                k
            })
            .filter(|k| k.verify_until.is_some_and(|until| now < until))
            .collect();
        keys.push(SigningKey {
            kid,
            secret: hex(secret),
            created: now,
            verify_until: None,
        });
        KeySet { keys }
    }
}

/// Signs tokens with the current key of the cluster's key set and verifies them with any key
/// that may still verify. The set is replaced when a rotation changes it ([`TokenSigner::set`]).
pub struct TokenSigner {
    keys: RwLock<KeySet>,
    /// Bumped at every change of the set, for those who re-sign what they hold.
    changes: tokio::sync::watch::Sender<u64>,
}

impl TokenSigner {
    pub fn new(keys: KeySet) -> TokenSigner {
        TokenSigner {
            keys: RwLock::new(keys),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn keys(&self) -> KeySet {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the key set (a rotation, here or on another member); a set equal to the one
    /// held changes nothing.
    pub fn set(&self, keys: KeySet) {
        let mut held = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if *held != keys {
            *held = keys;
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Wakes at every change of the key set.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// `claims` signed with the current key.
    pub fn issue<C: Serialize>(&self, claims: &C) -> String {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = keys
            .current()
            .expect("a key set always has a current key: a rotation adds one");
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
        let signed = format!("{}.{body}", key.kid);
        let hmac = key.hmac().expect("keys are made as hex");
        let tag = hmac::sign(&hmac, signed.as_bytes());
        format!(
            "{TOKEN_PREFIX}{signed}.{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The claims of a token signed by a key that may still verify at `now`, if its signature
    /// holds (the claims' own expiry is the caller's to check).
    pub fn verify<C: serde::de::DeserializeOwned>(&self, token: &str, now: u64) -> Option<C> {
        let rest = token.strip_prefix(TOKEN_PREFIX)?;
        let (signed, tag) = rest.rsplit_once('.')?;
        // Tokens of older versions have no kid: key 0 signed them, over the claims alone.
        let (kid, body) = signed.split_once('.').unwrap_or((DERIVED_KID, signed));
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let hmac = keys.verifying(kid, now)?.hmac()?;
        hmac::verify(&hmac, signed.as_bytes(), &tag).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()
    }
}

/// The key set as stored, with the revision it was written at; None: never rotated.
pub async fn load(
    store: &StoreNode,
    sealer: &SecretBox,
    consistency: Consistency,
) -> Result<Option<(KeySet, u64)>, StoreError> {
    let read = store
        .range(
            RangeRequest::new(KeySpan::key(STORE_KEY.as_bytes())),
            consistency,
            false,
        )
        .await?;
    let Some(kv) = read.kvs.first() else {
        return Ok(None);
    };
    let plain = sealer
        .open(&kv.key, &kv.value)
        .map_err(StoreError::Internal)?;
    let keys: KeySet = serde_json::from_slice(&plain)
        .map_err(|e| StoreError::Internal(format!("{STORE_KEY}: {e}")))?;
    if keys.current().is_none() {
        return Err(StoreError::Internal(format!(
            "{STORE_KEY} has no signing key"
        )));
    }
    Ok(Some((keys, kv.mod_revision)))
}

/// Writes `keys` if the stored set is still the one read at `read_at` (None: there was none).
/// Ok(false): another rotation came first.
pub async fn save(
    store: &StoreNode,
    sealer: &SecretBox,
    read_at: Option<u64>,
    keys: &KeySet,
) -> Result<bool, StoreError> {
    let key = STORE_KEY.as_bytes();
    let unchanged = match read_at {
        Some(revision) => Compare::mod_revision(key, raft_store::CompareOp::Equal, revision),
        None => Compare::exists(key, false),
    };
    let value = serde_json::to_vec(keys).expect("keys serialise");
    let txn = Txn::put(key, value).when(unchanged);
    Ok(store.txn(sealer.seal_txn(txn), false).await?.succeeded)
}

/// Keeps `signer` on the stored key set while it lives: a rotation made through another member
/// reaches this one within a second (read from this member's own copy of the store).
pub async fn follow(
    store: std::sync::Arc<StoreNode>,
    sealer: std::sync::Arc<SecretBox>,
    signer: Weak<TokenSigner>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(signer) = signer.upgrade() else {
            return;
        };
        match load(&store, &sealer, Consistency::Serializable).await {
            Ok(Some((keys, _))) => signer.set(keys),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the token signing keys"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn a_rotation_signs_with_the_new_key_and_verifies_with_the_old_for_the_grace_period() {
        let signer = TokenSigner::new(KeySet::derived("admin"));
        let before: String = signer.issue(&json!({"sub": "a"}));
        assert!(before.starts_with("drover.0."));
        assert_eq!(
            signer.verify::<Value>(&before, 10),
            Some(json!({"sub": "a"}))
        );

        signer.set(signer.keys().rotated(100, 50, "k1".into(), &[7; 32]));
        let after = signer.issue(&json!({"sub": "b"}));
        assert!(after.starts_with("drover.k1."));
        assert!(
            signer.verify::<Value>(&before, 149).is_some(),
            "in the grace"
        );
        assert!(signer.verify::<Value>(&before, 150).is_none(), "past it");
        assert!(signer.verify::<Value>(&after, 10_000).is_some());

        // The next rotation drops keys past their time, and with no grace retires at once.
        let keys = signer.keys().rotated(200, 0, "k2".into(), &[8; 32]);
        assert_eq!(
            keys.keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
            ["k2"]
        );
        signer.set(keys);
        assert!(signer.verify::<Value>(&after, 200).is_none());
    }

    #[test]
    fn forged_tampered_and_foreign_tokens_are_refused() {
        let signer = TokenSigner::new(KeySet::derived("admin"));
        let token = signer.issue(&json!({"sub": "a"}));
        let other = TokenSigner::new(KeySet::derived("other"));
        assert!(other.verify::<Value>(&token, 0).is_none());
        // Another kid over the same claims and tag.
        let moved = token.replacen("drover.0.", "drover.1.", 1);
        assert!(signer.verify::<Value>(&moved, 0).is_none());
        // Other claims under the same tag.
        let tag = token.rsplit('.').next().unwrap();
        let body = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin"}"#);
        assert!(signer
            .verify::<Value>(&format!("drover.0.{body}.{tag}"), 0)
            .is_none());
        for junk in [
            "drover.",
            "drover.garbage",
            "drover...",
            "x.y.z",
            "drover.0.%%.%%",
        ] {
            assert!(signer.verify::<Value>(junk, 0).is_none(), "{junk}");
        }
    }

    #[test]
    fn tokens_of_older_versions_verify_with_the_derived_key_until_it_is_retired() {
        let keys = KeySet::derived("admin");
        let hmac = keys.keys[0].hmac().unwrap();
        let body = URL_SAFE_NO_PAD.encode(br#"{"sub":"old"}"#);
        let tag = URL_SAFE_NO_PAD.encode(hmac::sign(&hmac, body.as_bytes()).as_ref());
        let old = format!("drover.{body}.{tag}");
        let signer = TokenSigner::new(keys);
        assert_eq!(signer.verify::<Value>(&old, 0), Some(json!({"sub": "old"})));
        signer.set(signer.keys().rotated(10, 0, "k1".into(), &[1; 32]));
        assert!(signer.verify::<Value>(&old, 10).is_none());
    }
}
