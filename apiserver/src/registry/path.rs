//! The registry's request paths and names, parsed without I/O.
//!
//! A repository is `NAMESPACE/NAME` (the name may have more `/`-separated parts): the first
//! part is the Kubernetes namespace whose RBAC governs it. Names follow the OCI Distribution
//! grammar (lower-case components joined by `.`, `_`, `__` or dashes); the namespace must also
//! be a DNS label, as Kubernetes' namespaces are.

use super::RegistryError;

/// What a `/v2/...` path asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the version check.
    Base,
    /// `/v2/token`: credentials exchanged for a bearer token.
    Token,
    /// `/v2/<name>/blobs/<digest>`.
    Blob(Repository, Digest),
    /// `/v2/<name>/blobs/uploads/`.
    Uploads(Repository),
    /// `/v2/<name>/blobs/uploads/<id>`.
    Upload(Repository, String),
    /// `/v2/<name>/manifests/<reference>`.
    Manifest(Repository, Reference),
    /// `/v2/<name>/tags/list`.
    Tags(Repository),
    /// `/v2/<name>/referrers/<digest>`.
    Referrers(Repository, Digest),
}

/// `NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Repository {
    pub namespace: String,
    /// The rest of the name, after the namespace: what RBAC sees as the object's name.
    pub name: String,
}

impl std::fmt::Display for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Repository {
    pub fn parse(full: &str) -> Result<Repository, RegistryError> {
        let invalid = |why: &str| {
            RegistryError::NameInvalid(format!("invalid repository name {full:?}: {why}"))
        };
        if full.len() > 255 {
            return Err(invalid("longer than 255 characters"));
        }
        let Some((namespace, name)) = full.split_once('/') else {
            return Err(invalid(
                "it must be NAMESPACE/NAME, the namespace whose permissions govern it first",
            ));
        };
        if let Some(why) = api::object::invalid_label(namespace) {
            return Err(invalid(&format!(
                "its first part must be a namespace's name: {why}"
            )));
        }
        if let Some(bad) = name.split('/').find(|c| !is_component(c)) {
            return Err(invalid(&format!(
                "part {bad:?} must be lower-case letters and digits, joined by '.', '_', '__' or dashes"
            )));
        }
        Ok(Repository {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }
}

/// One path component of a repository name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: one '.', one or two '_', or any number of '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A content digest. Only sha256 is taken: every client pushes it, and one algorithm keeps a
/// blob's file name its identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, RegistryError> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| {
            RegistryError::DigestInvalid(format!("digest {s:?}: only sha256 digests are supported"))
        })?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(RegistryError::DigestInvalid(format!(
                "digest {s:?}: sha256 takes 64 lower-case hex digits"
            )));
        }
        Ok(Digest(s.to_string()))
    }

    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hash(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    }

    pub fn from_hash(hash: &[u8]) -> Digest {
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        Digest(format!("sha256:{hex}"))
    }

    /// The hex part: a blob's file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A manifest's reference: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, RegistryError> {
        if s.contains(':') {
            return Digest::parse(s).map(Reference::Digest);
        }
        if is_tag(s) {
            Ok(Reference::Tag(s.to_string()))
        } else {
            Err(RegistryError::TagInvalid(format!(
                "invalid tag {s:?}: up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
            )))
        }
    }
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

/// Parses the path of a request under `/v2`. Names hold slashes, so the kind of request is
/// read from the end.
pub fn parse(path: &str) -> Result<Route, RegistryError> {
    let rest = path
        .strip_prefix("/v2")
        .ok_or_else(|| RegistryError::NotFound(path.to_string()))?;
    if rest.is_empty() || rest == "/" {
        return Ok(Route::Base);
    }
    if rest == "/token" {
        return Ok(Route::Token);
    }
    let rest = rest
        .strip_prefix('/')
        .ok_or_else(|| RegistryError::NotFound(path.to_string()))?;
    let repo = |name: &str| Repository::parse(name);
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::Tags(repo(name)?));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or(rest.strip_suffix("/blobs/uploads"))
    {
        return Ok(Route::Uploads(repo(name)?));
    }
    if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/") {
        if !id.is_empty() && !id.contains('/') {
            return Ok(Route::Upload(repo(name)?, id.to_string()));
        }
    }
    for (marker, kind) in [("/blobs/", 0), ("/manifests/", 1), ("/referrers/", 2)] {
        if let Some((name, last)) = rest.rsplit_once(marker) {
            if last.is_empty() || last.contains('/') {
                continue;
            }
            let repository = repo(name)?;
            return match kind {
                0 => Ok(Route::Blob(repository, Digest::parse(last)?)),
                1 => Ok(Route::Manifest(repository, Reference::parse(last)?)),
                _ => Ok(Route::Referrers(repository, Digest::parse(last)?)),
            };
        }
    }
    Err(RegistryError::NotFound(path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn r(ns: &str, name: &str) -> Repository {
        Repository {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn paths_are_read_from_their_end() {
        assert_eq!(parse("/v2/").unwrap(), Route::Base);
        assert_eq!(parse("/v2").unwrap(), Route::Base);
        assert_eq!(parse("/v2/token").unwrap(), Route::Token);
        assert_eq!(
            parse("/v2/default/hello/tags/list").unwrap(),
            Route::Tags(r("default", "hello"))
        );
        assert_eq!(
            parse("/v2/team-a/apps/web/blobs/uploads/").unwrap(),
            Route::Uploads(r("team-a", "apps/web"))
        );
        assert_eq!(
            parse("/v2/default/hello/blobs/uploads/abc-1").unwrap(),
            Route::Upload(r("default", "hello"), "abc-1".into())
        );
        assert_eq!(
            parse(&format!("/v2/default/hello/blobs/{D}")).unwrap(),
            Route::Blob(r("default", "hello"), Digest::parse(D).unwrap())
        );
        assert_eq!(
            parse("/v2/default/hello/manifests/v1.0").unwrap(),
            Route::Manifest(r("default", "hello"), Reference::Tag("v1.0".into()))
        );
        // A repository may itself be called "manifests" or "blobs".
        assert_eq!(
            parse("/v2/default/blobs/manifests/1").unwrap(),
            Route::Manifest(r("default", "blobs"), Reference::Tag("1".into()))
        );
        assert_eq!(
            parse(&format!("/v2/default/hello/referrers/{D}")).unwrap(),
            Route::Referrers(r("default", "hello"), Digest::parse(D).unwrap())
        );
    }

    #[test]
    fn bad_names_tags_and_digests_are_refused_with_their_reason() {
        let err = |p: &str| parse(p).unwrap_err().to_string();
        assert!(err("/v2/hello/manifests/1").contains("NAMESPACE/NAME"));
        assert!(err("/v2/Default/hello/manifests/1").contains("namespace"));
        assert!(err("/v2/default/Hello/manifests/1").contains("\"Hello\""));
        assert!(err("/v2/default/a..b/manifests/1").contains("\"a..b\""));
        assert!(err("/v2/default/a___b/manifests/1").contains("\"a___b\""));
        assert!(err("/v2/default/hello/manifests/.x").contains("invalid tag"));
        assert!(err("/v2/default/hello/blobs/md5:00").contains("only sha256"));
        assert!(err("/v2/default/hello/blobs/sha256:00").contains("64"));
        assert!(err(&format!(
            "/v2/default/hello/blobs/{}",
            D.to_uppercase().replace("SHA", "sha")
        ))
        .contains("64"));
        assert!(matches!(
            parse("/v2/default/hello/other/x"),
            Err(RegistryError::NotFound(_))
        ));
        // Separators the grammar allows.
        for ok in ["a.b", "a_b", "a__b", "a---b", "a-b.c_d"] {
            assert!(is_component(ok), "{ok}");
        }
    }

    #[test]
    fn a_digest_is_the_sha256_of_the_bytes() {
        assert_eq!(Digest::of(b"foo").as_str(), D);
        assert_eq!(Digest::of(b"foo").hex(), &D[7..]);
    }
}
