//! How a member with a new data dir becomes part of a cluster: it founds one, joins one through
//! a member (`--join`), or forms one with the members started beside it (`--initial-cluster`,
//! as etcd's). What to do is decided from the flags alone ([`plan`]); [`execute`] does the
//! network part, waiting up to `--join-timeout` for members that are still starting.
//!
//! Members started together share a secret from `drover token generate`. The first in the list
//! founds the cluster with that secret as its join secret, and the others join it as they would
//! with `--join`, proving the secret; the founder's CA is trusted once it proves the secret too
//! (`apiserver::join::discover_ca`). So every member runs the same command line and no member
//! has to be up before the others start. Unlike etcd's, formation waits for the first listed
//! member; once formed, the cluster needs only a quorum, as any other.

use std::net::SocketAddr;
use std::time::Duration;

use apiserver::join::{JoinError, JoinGrant};
use apiserver::pki::{ClusterSecrets, JoinToken};

/// What a new member does, from its flags.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// A new cluster of its own; its join secret is the shared one when given.
    Found { join_secret: Option<String> },
    /// Members started together, this one first in the list: it founds the cluster, unless a
    /// listed member already serves it (this member's data dir was lost and made again), in
    /// which case it joins that one.
    FoundFirst {
        join_secret: String,
        others: Vec<String>,
    },
    /// Joins through any of these API addresses, tried in turn.
    Join { through: Vec<String> },
}

/// Decides how a member with a new data dir starts. `me` are the API addresses this member is
/// known by (its --listen address and its advertised address with that port); `token` is the
/// join token or shared secret, if one was given.
pub fn plan(
    join: Option<&str>,
    initial_cluster: &[String],
    me: &[SocketAddr],
    token: Option<&JoinToken>,
) -> Result<Plan, String> {
    if let Some(join) = join {
        if token.is_none() {
            return Err(NEEDS_TOKEN.into());
        }
        return Ok(Plan::Join {
            through: vec![join.to_string()],
        });
    }
    if initial_cluster.is_empty() {
        return match token {
            None => Ok(Plan::Found { join_secret: None }),
            Some(JoinToken {
                ca_hash: None,
                secret,
            }) => Ok(Plan::Found {
                join_secret: Some(secret.clone()),
            }),
            Some(JoinToken {
                ca_hash: Some(_), ..
            }) => Err(
                "this token belongs to an existing cluster (it names its CA): pass --join with \
                 a member's address to join it, or make a new cluster's secret with `drover \
                 token generate`"
                    .into(),
            ),
        };
    }
    let Some(token) = token else {
        return Err(
            "--initial-cluster needs the secret every listed member starts with: run `drover \
             token generate` once, give its output to each member in a file only it can read, \
             and pass --token-file FILE"
                .into(),
        );
    };
    let is_me = |entry: &str| {
        entry
            .parse::<SocketAddr>()
            .is_ok_and(|addr| me.contains(&addr))
    };
    let mine: Vec<usize> = (0..initial_cluster.len())
        .filter(|&i| is_me(&initial_cluster[i]))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = initial_cluster.iter().find(|e| !seen.insert(e.as_str())) {
        return Err(format!("--initial-cluster names {dup} twice"));
    }
    let me_list = || {
        me.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let position = match mine.as_slice() {
        [i] => *i,
        [] => {
            return Err(format!(
                "--initial-cluster does not name this member: add its API address ({}), the \
                 same on every member",
                me_list()
            ))
        }
        _ => {
            return Err(format!(
                "--initial-cluster names this member ({}) more than once",
                me_list()
            ))
        }
    };
    let others: Vec<String> = initial_cluster
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != position)
        .map(|(_, e)| e.clone())
        .collect();
    match (&token.ca_hash, position) {
        // A token of a cluster that exists already: there is nothing to found.
        (Some(_), _) => Ok(Plan::Join { through: others }),
        (None, 0) => Ok(Plan::FoundFirst {
            join_secret: token.secret.clone(),
            others,
        }),
        // The founder first, then the rest (any of them can take the join once formed).
        (None, _) => Ok(Plan::Join { through: others }),
    }
}

const NEEDS_TOKEN: &str = "--join needs the cluster's join token: run `drover token server` \
    on a member, save what it prints to a file readable only by you, and pass --token-file FILE";

/// What a new member brings to its start: the secrets of the cluster it founds, or the grant of
/// the one it joined.
pub enum Outcome {
    Found(Box<ClusterSecrets>),
    Joined(Box<JoinGrant>),
}

/// How long the founder asks each listed member whether it already serves the cluster. Members
/// started together do not: they answer nothing until they have joined.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Carries out `plan`: makes the secrets of a new cluster, or asks members for a grant until
/// one gives it, `timeout` passes, or one refuses for good (a wrong secret, another cluster).
pub async fn execute(
    plan: Plan,
    token: Option<&str>,
    peer: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let found = |secret: Option<String>| -> anyhow::Result<Outcome> {
        let secrets = match secret {
            Some(s) => ClusterSecrets::generate_with_join_secret(s),
            None => ClusterSecrets::generate(),
        }
        .map_err(anyhow::Error::msg)?;
        Ok(Outcome::Found(Box::new(secrets)))
    };
    match plan {
        Plan::Found { join_secret } => found(join_secret),
        Plan::FoundFirst {
            join_secret,
            others,
        } => {
            let secret = join_secret.as_str();
            let probes = others.iter().map(|addr| async move {
                tokio::time::timeout(PROBE_TIMEOUT, apiserver::join::discover_ca(addr, secret))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|_| addr.clone())
            });
            let serving: Vec<String> = futures_util::future::join_all(probes)
                .await
                .into_iter()
                .flatten()
                .collect();
            if serving.is_empty() {
                tracing::info!("founding the cluster the listed members form");
                return found(Some(join_secret));
            }
            eprintln!(
                "drover server: {} already serves this cluster; joining it (this member's data \
                 dir is new)",
                serving[0]
            );
            join(&serving, token.unwrap_or_default(), peer, timeout).await
        }
        Plan::Join { through } => join(&through, token.unwrap_or_default(), peer, timeout).await,
    }
}

/// Asks each of `through` in turn for a grant, for up to `timeout` while they are unreachable or
/// starting; a member that is up and says no ends it.
async fn join(
    through: &[String],
    token: &str,
    peer: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        !through.is_empty(),
        "there is no other member to join through"
    );
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_said = None::<tokio::time::Instant>;
    for addr in through.iter().cycle() {
        match apiserver::join::request_grant(addr, token, peer).await {
            Ok(grant) => return Ok(Outcome::Joined(Box::new(grant))),
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                // Say why, now and then, not on every attempt.
                if last_said.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    eprintln!("drover server: waiting for the cluster: {e}; retrying");
                    last_said = Some(tokio::time::Instant::now());
                }
                if addr == through.last().expect("not empty") {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            Err(e) if e.is_retryable() => {
                anyhow::bail!(
                    "could not join within {} ({e}); start the members it names, or raise \
                     --join-timeout",
                    humantime::format_duration(timeout)
                )
            }
            Err(e) => return Err(refusal(e)),
        }
    }
    unreachable!("cycling a non-empty list never ends")
}

fn refusal(e: JoinError) -> anyhow::Error {
    anyhow::Error::new(e).context("cannot join the cluster")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> JoinToken {
        JoinToken {
            ca_hash: None,
            secret: "ab".repeat(16),
        }
    }

    fn full() -> JoinToken {
        JoinToken {
            ca_hash: Some("cd".repeat(32)),
            secret: "ef".repeat(16),
        }
    }

    fn list(addrs: &[&str]) -> Vec<String> {
        addrs.iter().map(|a| a.to_string()).collect()
    }

    const A: &str = "10.0.0.1:6443";
    const B: &str = "10.0.0.2:6443";
    const C: &str = "10.0.0.3:6443";

    fn me(addr: &str) -> Vec<SocketAddr> {
        vec![addr.parse().unwrap()]
    }

    #[test]
    fn the_first_listed_member_founds_and_the_others_join_it_first() {
        let members = list(&[A, B, C]);
        assert_eq!(
            plan(None, &members, &me(A), Some(&shared())).unwrap(),
            Plan::FoundFirst {
                join_secret: shared().secret,
                others: list(&[B, C])
            }
        );
        assert_eq!(
            plan(None, &members, &me(C), Some(&shared())).unwrap(),
            Plan::Join {
                through: list(&[A, B])
            }
        );
    }

    #[test]
    fn a_member_is_known_by_its_advertised_address_too() {
        let known = vec!["0.0.0.0:6443".parse().unwrap(), B.parse().unwrap()];
        assert_eq!(
            plan(None, &list(&[A, B]), &known, Some(&shared())).unwrap(),
            Plan::Join {
                through: list(&[A])
            }
        );
    }

    #[test]
    fn a_full_token_joins_whatever_the_position() {
        assert_eq!(
            plan(None, &list(&[A, B]), &me(A), Some(&full())).unwrap(),
            Plan::Join {
                through: list(&[B])
            }
        );
        let err = plan(None, &[], &me(A), Some(&full())).unwrap_err();
        assert!(err.contains("--join"), "{err}");
    }

    #[test]
    fn a_list_without_this_member_or_without_a_secret_is_refused_saying_what_to_do() {
        let err = plan(None, &list(&[B, C]), &me(A), Some(&shared())).unwrap_err();
        assert!(
            err.contains("does not name this member") && err.contains(A),
            "{err}"
        );
        let err = plan(None, &list(&[A, B]), &me(A), None).unwrap_err();
        assert!(err.contains("drover token generate"), "{err}");
        let err = plan(None, &list(&[A, B, A]), &me(B), Some(&shared())).unwrap_err();
        assert!(err.contains("twice"), "{err}");
        let err = plan(Some(A), &[], &me(B), None).unwrap_err();
        assert!(err.contains("--token-file"), "{err}");
    }

    #[test]
    fn alone_a_member_founds_with_the_shared_secret_if_given() {
        assert_eq!(
            plan(None, &[], &me(A), None).unwrap(),
            Plan::Found { join_secret: None }
        );
        assert_eq!(
            plan(None, &[], &me(A), Some(&shared())).unwrap(),
            Plan::Found {
                join_secret: Some(shared().secret)
            }
        );
    }
}
