//! Randomised inputs for what the API server parses before it knows who is asking: request
//! paths and protobuf bodies. Every input gets an answer (Ok or an error), never a panic. CI
//! runs a fixed number of cases per property (`PROPTEST_CASES` raises it).

use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(2_000),
        ..ProptestConfig::default()
    }
}

/// Paths built from the pieces real ones are made of, and some that are not.
fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("api".to_string()),
        Just("apis".to_string()),
        Just("v1".to_string()),
        Just("namespaces".to_string()),
        Just("default".to_string()),
        Just("pods".to_string()),
        Just("apps".to_string()),
        Just("deployments".to_string()),
        Just("status".to_string()),
        Just("scale".to_string()),
        Just("..".to_string()),
        Just("".to_string()),
        "[a-z0-9.%-]{1,8}",
        "\\PC{0,4}",
    ];
    proptest::collection::vec(segment, 0..9).prop_map(|s| format!("/{}", s.join("/")))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_path_parses_or_is_refused(p in path()) {
        let _ = apiserver::path::parse(&p);
    }

    #[test]
    fn protobuf_bodies_decode_or_are_refused(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = apiserver::protobuf::decode_body(&body);
        // With the magic, the decoder gets past its first check.
        let mut magic = b"k8s\0".to_vec();
        magic.extend_from_slice(&body);
        let _ = apiserver::protobuf::decode_body(&magic);
    }

    #[test]
    fn protobuf_envelopes_with_any_payload_decode_or_are_refused(
        kind in prop_oneof![Just("Pod"), Just("ConfigMap"), Just("Deployment"), Just("Secret"), Just("Nope")],
        api_version in prop_oneof![Just("v1"), Just("apps/v1"), Just("x/y")],
        raw in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        // runtime.Unknown: field 1 TypeMeta {1: apiVersion, 2: kind}, field 2 raw bytes.
        let mut type_meta = Vec::new();
        for (field, text) in [(1u8, api_version.as_bytes()), (2u8, kind.as_bytes())] {
            type_meta.push(field << 3 | 2);
            type_meta.push(text.len() as u8);
            type_meta.extend_from_slice(text);
        }
        let mut body = b"k8s\0".to_vec();
        body.push(1 << 3 | 2);
        body.push(type_meta.len() as u8);
        body.extend_from_slice(&type_meta);
        body.push(2 << 3 | 2);
        encode_varint(raw.len() as u64, &mut body);
        body.extend_from_slice(&raw);
        let _ = apiserver::protobuf::decode_body(&body);
    }
}

fn encode_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}
