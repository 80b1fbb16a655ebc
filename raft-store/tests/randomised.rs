//! Randomised inputs for the peer protocol's decoder: whatever bytes arrive as a request body
//! (from a member, or from a client with a member certificate), decoding gives a value or an
//! error, never a panic or an allocation the bytes did not pay for; a decoded txn is then
//! validated against the limits without panicking. CI runs a fixed number of cases
//! (`PROPTEST_CASES` raises it).

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use proptest::prelude::*;
use raft_store::raft::{NodeId, TypeConfig};
use raft_store::{Consistency, KeySpan, Limits, RangeRequest, Revision, Txn};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(2_000),
        ..ProptestConfig::default()
    }
}

/// Bytes that are often almost right: a real encoding with some bytes changed, or noise.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let real = bincode::serialize(&Txn::put("/k", "v")).unwrap();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..128),
        (proptest::collection::vec((0usize..64, any::<u8>()), 1..6)).prop_map(move |edits| {
            let mut b = real.clone();
            for (at, byte) in edits {
                let i = at % b.len();
                b[i] = byte;
            }
            b
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn store_requests_decode_or_are_refused(bytes in body()) {
        if let Ok(txn) = bincode::deserialize::<Txn>(&bytes) {
            let _ = txn.validate(&Limits::default());
        }
        let _ = bincode::deserialize::<(RangeRequest, Consistency)>(&bytes);
        let _ = bincode::deserialize::<(KeySpan, Revision)>(&bytes);
        let _ = bincode::deserialize::<Revision>(&bytes);
        let _ = bincode::deserialize::<(NodeId, String)>(&bytes);
    }

    #[test]
    fn raft_messages_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = bincode::deserialize::<VoteRequest<NodeId>>(&bytes);
        let _ = bincode::deserialize::<AppendEntriesRequest<TypeConfig>>(&bytes);
    }
}
