//! `drover store ...`: a small debug client for the replicated store. The store is served only
//! to holders of a member certificate, so this client runs on a member's host and presents
//! that member's certificate (from its data dir): it is as powerful as the member.

use anyhow::{bail, Context};
use futures_util::StreamExt;
use raft_store::{
    Consistency, EventKind, KeySpan, KeyValue, RangeRequest, StoreClient, StoreError, Txn,
};

#[derive(clap::Args)]
pub struct StoreArgs {
    /// The data dir of a member on this host, whose certificate this client presents.
    #[arg(long, env = "DROVER_DATA_DIR", default_value_os_t = crate::server::default_data_dir())]
    data_dir: std::path::PathBuf,
    /// Members' peer addresses to talk to, comma-separated (default: that member's).
    #[arg(long, env = "DROVER_ENDPOINTS", value_delimiter = ',')]
    endpoints: Vec<String>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Subcommand)]
enum Verb {
    /// Read a key, or every key under a prefix.
    Get {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Read at this past revision.
        #[arg(long, default_value_t = 0)]
        rev: u64,
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Serve from the member asked, without confirming with the leader.
        #[arg(long)]
        serializable: bool,
        /// Print only how many keys match.
        #[arg(long)]
        count: bool,
    },
    /// Write a key.
    Put { key: String, value: String },
    /// Delete a key, or every key under a prefix.
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
    /// Print changes as they happen (Ctrl-C to stop).
    Watch {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Start from this revision (default: from now).
        #[arg(long, default_value_t = 0)]
        rev: u64,
    },
    /// Forget history before a revision.
    Compact { revision: u64 },
    /// Show the member's view of the cluster.
    Status,
    /// Remove a member by id (see `status`).
    RemoveMember { id: u64 },
}

fn span(key: String, prefix: bool) -> KeySpan {
    if prefix {
        KeySpan::Prefix(key.into_bytes())
    } else {
        KeySpan::Key(key.into_bytes())
    }
}

fn show(kv: &KeyValue) {
    println!(
        "{} = {}  (create={} mod={} version={})",
        String::from_utf8_lossy(&kv.key),
        String::from_utf8_lossy(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version
    );
}

pub async fn run(mut args: StoreArgs) -> anyhow::Result<()> {
    let tls = raft_store::node::member_tls(&args.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(the store serves only members: pass --data-dir of a member on this host)"
        )
    })?;
    if args.endpoints.is_empty() {
        let identity = raft_store::node::read_identity(&args.data_dir)
            .map_err(anyhow::Error::msg)?
            .context("no member.json")?;
        args.endpoints = vec![identity.addr];
    }
    if args.endpoints.is_empty() {
        bail!("no endpoints: pass --endpoints HOST:PORT");
    }
    let endpoints = args.endpoints.join(",");
    let client = StoreClient::with_tls(&args.endpoints, &tls);
    run_verb(args, client).await.map_err(|e| match e.downcast_ref::<StoreError>() {
        Some(StoreError::Unavailable(_)) => e.context(format!(
            "no member answered at {endpoints}: is `drover server` running there? (--endpoints PEER-HOST:PORT,...)"
        )),
        _ => e,
    })
}

async fn run_verb(args: StoreArgs, client: StoreClient) -> anyhow::Result<()> {
    match args.verb {
        Verb::Get {
            key,
            prefix,
            rev,
            limit,
            serializable,
            count,
        } => {
            let mut req = RangeRequest::new(span(key, prefix)).at(rev).limit(limit);
            if count {
                req = req.count_only();
            }
            let consistency = if serializable {
                Consistency::Serializable
            } else {
                Consistency::Linearizable
            };
            let resp = client.range(&req, consistency).await?;
            if count {
                println!("{}", resp.count);
            }
            resp.kvs.iter().for_each(show);
            eprintln!(
                "revision {}{}",
                resp.revision,
                if resp.more { ", more keys follow" } else { "" }
            );
        }
        Verb::Put { key, value } => {
            let resp = client.txn(&Txn::put(key, value)).await?;
            println!("OK revision {}", resp.revision);
        }
        Verb::Del { key, prefix } => {
            let txn = Txn {
                success: vec![raft_store::Op::Delete {
                    span: span(key, prefix),
                }],
                ..Txn::default()
            };
            let resp = client.txn(&txn).await?;
            let deleted = match resp.results.first() {
                Some(raft_store::OpResult::Delete { deleted }) => deleted.len(),
                _ => 0,
            };
            println!("deleted {deleted} revision {}", resp.revision);
        }
        Verb::Watch { key, prefix, rev } => {
            let mut stream = client.watch(span(key, prefix), rev).await?;
            while let Some(item) = stream.next().await {
                let batch = item.context("watch ended")?;
                for ev in batch.events {
                    match ev.kind {
                        EventKind::Put => print!("PUT "),
                        EventKind::Delete => print!("DELETE "),
                    }
                    show(&ev.kv);
                }
            }
        }
        Verb::Compact { revision } => {
            let rev = client.compact(revision).await?;
            println!("compacted to revision {rev}");
        }
        Verb::Status => {
            let status = client.status().await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
        Verb::RemoveMember { id } => {
            client.remove_member(id).await?;
            println!("removed member {id}");
        }
    }
    Ok(())
}
