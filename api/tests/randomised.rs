//! Randomised inputs for the parsers and mergers that take what clients send: label and field
//! selectors, quantities, merge and strategic merge patches. Each property holds for every
//! input proptest makes (and shrinks to a small failing one if not). CI runs a fixed number of
//! cases per property (`PROPTEST_CASES` raises it for a long run).

use std::collections::BTreeMap;

use api::patch::strategic_merge;
use api::selector::{FieldSelector, LabelSelector};
use proptest::prelude::*;
use serde_json::{json, Value};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(2_000),
        ..ProptestConfig::default()
    }
}

/// Text made of a selector's own characters, so that most inputs get deep into the parser.
fn selector_text() -> impl Strategy<Value = String> {
    proptest::string::string_regex(
        r"[a-z0-9./_=!,() -]{0,40}|(in|notin|!|=|==|!=|,|\(|\)| |[a-z]{1,3}){0,12}",
    )
    .expect("a valid regex")
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map("[a-c]{1,2}", "[a-c]{0,2}", 0..4)
}

/// Any JSON value, a few levels deep, with keys that collide often and the directive keys of
/// strategic merge patches among them.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-c$]{0,3}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    "[a-c]{1,2}".boxed(),
                    Just("$patch".to_string()).boxed(),
                    Just("$retainKeys".to_string()).boxed(),
                    Just("$deleteFromPrimitiveList/a".to_string()).boxed(),
                    Just("$setElementOrder/a".to_string()).boxed(),
                    Just("name".to_string()).boxed(),
                    Just("containers".to_string()).boxed(),
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn label_selectors_parse_or_refuse_and_never_panic(text in selector_text(), l in labels()) {
        if let Ok(selector) = LabelSelector::parse(&text) {
            // A selector that parsed can be asked about any labels.
            let _ = selector.matches(&l);
        }
    }

    #[test]
    fn simple_label_selectors_mean_what_they_say(key in "[a-c]{1,2}", value in "[a-c]{1,2}", l in labels()) {
        let eq = LabelSelector::parse(&format!("{key}={value}")).unwrap();
        prop_assert_eq!(eq.matches(&l), l.get(&key) == Some(&value));
        let ne = LabelSelector::parse(&format!("{key}!={value}")).unwrap();
        prop_assert_eq!(ne.matches(&l), l.get(&key) != Some(&value));
        let exists = LabelSelector::parse(&key).unwrap();
        prop_assert_eq!(exists.matches(&l), l.contains_key(&key));
        let absent = LabelSelector::parse(&format!("!{key}")).unwrap();
        prop_assert_eq!(absent.matches(&l), !l.contains_key(&key));
    }

    #[test]
    fn field_selectors_parse_or_refuse_and_never_panic(text in selector_text(), obj in json_value()) {
        if let Ok(selector) = FieldSelector::parse(&text) {
            let _ = selector.matches(&obj);
        }
    }

    #[test]
    fn quantities_parse_or_refuse_and_never_panic(q in "[0-9.eE+-]{0,12}(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m|n|u)?|\\PC{0,12}") {
        let _ = api::quantity::bytes(&q);
        let _ = api::quantity::millicores(&q);
    }

    #[test]
    fn whole_quantities_are_what_they_say(n in 0u64..1_000_000, suffix in 0usize..4) {
        let (s, factor) = [("", 1), ("Ki", 1024), ("Mi", 1024 * 1024), ("k", 1000)][suffix];
        prop_assert_eq!(api::quantity::bytes(&format!("{n}{s}")), Some(n * factor));
        prop_assert_eq!(api::quantity::millicores(&format!("{n}m")), Some(n));
    }

    #[test]
    fn strategic_merge_patches_never_panic(mut target in json_value(), patch in json_value()) {
        strategic_merge(&mut target, &patch);
    }

    #[test]
    fn strategic_merge_patches_are_idempotent(target in json_value(), patch in json_value()) {
        // What kubectl apply relies on: sending the same patch again changes nothing more.
        let mut once = target;
        strategic_merge(&mut once, &patch);
        let mut twice = once.clone();
        strategic_merge(&mut twice, &patch);
        prop_assert_eq!(once, twice);
    }
}
