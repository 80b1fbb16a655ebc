//! A linearizability checker in the style of Wing & Gong, with Lowe's memoisation as in
//! Porcupine: search for an order of the operations that respects real time (an operation that
//! returned before another was called comes first) and that a sequential model accepts.
//!
//! Hand-written because no maintained Rust crate checks recorded histories of a real system:
//! stateright's tester works on its own actor model, not on an external log.
//!
//! An operation whose outcome is unknown (the client lost contact mid-request) has no return
//! time: it may take effect at any moment after its call, or never, and its output is not
//! checked. Histories are checked per key (a key-value store is linearizable iff every key is),
//! which keeps each search small.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash;
    type Input;
    type Output;
    fn init(&self) -> Self::State;
    /// The state after `input`, if the model can produce `output` (or any output when `None`)
    /// from `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// One operation as a client saw it. Times are from one monotonic clock.
#[derive(Clone, Debug)]
pub struct Operation<I, O> {
    pub call: u64,
    /// `None`: the outcome is unknown.
    pub ret: Option<u64>,
    pub input: I,
    pub output: Option<O>,
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// Whether the history is linearizable with respect to `model`.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> bool {
    let n = history.len();
    if n == 0 {
        return true;
    }
    // Events ordered by time; at equal times calls go first (overlap is the generous reading).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in history.iter().enumerate() {
        order.push((op.call, true, i));
        order.push((op.ret.unwrap_or(u64::MAX), false, i));
    }
    order.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    // A doubly linked list with a sentinel head at index 0.
    let mut events = vec![Event {
        op: usize::MAX,
        is_call: false,
        prev: 0,
        next: 1,
    }];
    let mut call_at = vec![0; n];
    let mut ret_at = vec![0; n];
    for (pos, &(_, is_call, op)) in order.iter().enumerate() {
        let idx = pos + 1;
        events.push(Event {
            op,
            is_call,
            prev: idx - 1,
            next: idx + 1,
        });
        if is_call {
            call_at[op] = idx;
        } else {
            ret_at[op] = idx;
        }
    }
    let end = events.len();
    let unlink = |events: &mut Vec<Event>, i: usize| {
        let (p, nx) = (events[i].prev, events[i].next);
        events[p].next = nx;
        if nx < end {
            events[nx].prev = p;
        }
    };
    let relink = |events: &mut Vec<Event>, i: usize| {
        let (p, nx) = (events[i].prev, events[i].next);
        events[p].next = i;
        if nx < end {
            events[nx].prev = i;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut cursor = events[0].next;
    while events[0].next != end {
        let ev = events.get(cursor).copied();
        if let Some(ev) = ev.filter(|e| e.is_call) {
            let op = &history[ev.op];
            if let Some(next_state) = model.step(&state, &op.input, op.output.as_ref()) {
                let mut key = linearized.clone();
                key[ev.op / 64] |= 1 << (ev.op % 64);
                if seen.insert((key.clone(), next_state.clone())) {
                    stack.push((ev.op, std::mem::replace(&mut state, next_state)));
                    linearized = key;
                    unlink(&mut events, call_at[ev.op]);
                    unlink(&mut events, ret_at[ev.op]);
                    cursor = events[0].next;
                    continue;
                }
            }
            cursor = ev.next;
        } else {
            // A return whose call is not linearized yet (or nothing left to try): this branch
            // is dead; undo the last choice and try the next candidate after it.
            let Some((op, old)) = stack.pop() else {
                return false;
            };
            state = old;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut events, ret_at[op]);
            relink(&mut events, call_at[op]);
            cursor = events[call_at[op]].next;
        }
    }
    true
}

/// A register per key: the model of a key-value store's single-key operations.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvInput {
    Put(String),
    Get,
    /// Put `new` if the current value is `expect` (`None`: if absent).
    Cas {
        expect: Option<String>,
        new: String,
    },
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    Done,
    Value(Option<String>),
    Swapped(bool),
}

pub struct Register;

impl Model for Register {
    type State = Option<String>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Option<String> {
        None
    }

    fn step(
        &self,
        s: &Option<String>,
        input: &KvInput,
        out: Option<&KvOutput>,
    ) -> Option<Option<String>> {
        match (input, out) {
            (KvInput::Put(v), _) => Some(Some(v.clone())),
            (KvInput::Delete, _) => Some(None),
            (KvInput::Get, None) => Some(s.clone()),
            (KvInput::Get, Some(KvOutput::Value(v))) => (v == s).then(|| s.clone()),
            (KvInput::Cas { expect, new }, out) => {
                let holds = expect == s;
                match out {
                    None => Some(if holds { Some(new.clone()) } else { s.clone() }),
                    Some(KvOutput::Swapped(ok)) if *ok == holds => {
                        Some(if holds { Some(new.clone()) } else { s.clone() })
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// Checks a key-value history key by key; returns the first key whose history is not
/// linearizable.
pub fn check_kv(history: &[(String, Operation<KvInput, KvOutput>)]) -> Result<(), String> {
    let mut per_key: HashMap<&str, Vec<Operation<KvInput, KvOutput>>> = HashMap::new();
    for (key, op) in history {
        per_key.entry(key).or_default().push(op.clone());
    }
    for (key, ops) in per_key {
        if !check(&Register, &ops) {
            return Err(format!(
                "the history of key {key:?} ({} operations) is not linearizable; it is kept in {}",
                ops.len(),
                keep_history(key, &ops)
            ));
        }
    }
    Ok(())
}

/// Writes a failing history where it outlives the test (`DROVER_HISTORY_DIR`, else the temp
/// dir), one operation per line in call order (times in ns; no return: outcome unknown), and
/// says where.
fn keep_history(key: &str, ops: &[Operation<KvInput, KvOutput>]) -> String {
    let dir = std::env::var_os("DROVER_HISTORY_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!(
        "drover-history-{}-{}.txt",
        std::process::id(),
        key.replace('/', "_")
    ));
    let mut sorted: Vec<_> = ops.iter().collect();
    sorted.sort_by_key(|op| op.call);
    let text: String = sorted
        .iter()
        .map(|op| {
            format!(
                "{} {} {:?} {:?}\n",
                op.call,
                op.ret.map_or("-".to_string(), |r| r.to_string()),
                op.input,
                op.output
            )
        })
        .collect();
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("nowhere (cannot write {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: u64, ret: u64, input: KvInput, output: KvOutput) -> Operation<KvInput, KvOutput> {
        Operation {
            call,
            ret: Some(ret),
            input,
            output: Some(output),
        }
    }
    fn put(call: u64, ret: u64, v: &str) -> Operation<KvInput, KvOutput> {
        op(call, ret, KvInput::Put(v.into()), KvOutput::Done)
    }
    fn get(call: u64, ret: u64, v: Option<&str>) -> Operation<KvInput, KvOutput> {
        op(call, ret, KvInput::Get, KvOutput::Value(v.map(Into::into)))
    }

    #[test]
    fn sequential_history_is_linearizable() {
        assert!(check(
            &Register,
            &[
                put(0, 1, "a"),
                get(2, 3, Some("a")),
                put(4, 5, "b"),
                get(6, 7, Some("b"))
            ]
        ));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_rejected() {
        assert!(!check(&Register, &[put(0, 1, "a"), get(2, 3, None)]));
        assert!(!check(
            &Register,
            &[put(0, 1, "a"), put(2, 3, "b"), get(4, 5, Some("a"))]
        ));
    }

    #[test]
    fn overlapping_operations_may_take_either_order() {
        // The read overlaps the write: it may see before or after.
        assert!(check(&Register, &[put(0, 10, "a"), get(1, 2, None)]));
        assert!(check(&Register, &[put(0, 10, "a"), get(1, 2, Some("a"))]));
    }

    #[test]
    fn reads_must_agree_on_one_order() {
        // Two concurrent writes; one reader sees b then a, another sees a then b: impossible.
        let h = [
            put(0, 100, "a"),
            put(0, 100, "b"),
            get(10, 11, Some("b")),
            get(12, 13, Some("a")),
            get(14, 15, Some("b")),
        ];
        assert!(!check(&Register, &h));
    }

    #[test]
    fn an_unknown_outcome_may_apply_late_or_never() {
        let lost = Operation {
            call: 0,
            ret: None,
            input: KvInput::Put("x".into()),
            output: None,
        };
        assert!(check(&Register, &[lost.clone(), get(5, 6, None)]));
        assert!(check(&Register, &[lost.clone(), get(5, 6, Some("x"))]));
        // But once seen, it cannot be unseen.
        assert!(!check(
            &Register,
            &[lost, get(5, 6, Some("x")), get(7, 8, None)]
        ));
    }

    #[test]
    fn compare_and_swap_outcomes_are_checked() {
        let cas = |c, r, e: Option<&str>, n: &str, ok| {
            op(
                c,
                r,
                KvInput::Cas {
                    expect: e.map(Into::into),
                    new: n.into(),
                },
                KvOutput::Swapped(ok),
            )
        };
        assert!(check(
            &Register,
            &[cas(0, 1, None, "a", true), cas(2, 3, None, "b", false)]
        ));
        // Both cannot win a create-if-absent race.
        assert!(!check(
            &Register,
            &[cas(0, 5, None, "a", true), cas(0, 5, None, "b", true)]
        ));
    }

    #[test]
    fn per_key_check_names_the_bad_key() {
        let h = vec![
            ("good".to_string(), put(0, 1, "a")),
            ("bad".to_string(), put(0, 1, "a")),
            ("bad".to_string(), get(2, 3, Some("zzz"))),
        ];
        assert!(check_kv(&h).unwrap_err().contains("\"bad\""));
    }

    #[test]
    fn a_larger_concurrent_history_checks_quickly() {
        // 5 clients, 200 ops, heavy overlap: memoisation keeps this fast.
        let mut h = Vec::new();
        let mut value = None::<String>;
        for i in 0..200u64 {
            let t = i * 10;
            if i % 3 == 0 {
                value = Some(format!("v{i}"));
                h.push(put(t, t + 25, value.as_deref().unwrap()));
            } else {
                h.push(get(t, t + 25, value.as_deref()));
            }
        }
        assert!(check(&Register, &h));
    }
}
