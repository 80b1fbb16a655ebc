//! The nftables vocabulary Drover writes: tables, sets and verdict maps, base and regular
//! chains, rules built of a few kinds of match and action, and map elements — as [`Op`]s, the
//! steps of one atomic transaction. Pure data and its nft-script rendering ([`render`]);
//! [`crate::netlink`] encodes the same ops for the kernel, and [`crate::services`] and
//! [`crate::policy`] decide which ops to send. Only what Drover uses is here, each form written
//! as nft 1.0.6 writes it.

use std::net::Ipv4Addr;

/// Drover's main table (masquerading, the cluster DNS address, the loopback guard); ops are
/// in it until an [`Op::Table`] names another.
pub const TABLE: &str = "drover";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// A Kubernetes protocol name (TCP when absent or unknown).
    pub fn parse(s: Option<&str>) -> Protocol {
        match s {
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            _ => Protocol::Tcp,
        }
    }
    /// The name nft uses.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

/// What a set or map is keyed by, as its rules build the key from a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// `ip daddr . meta l4proto . th dport` (type `ipv4_addr . inet_proto . inet_service`).
    DaddrProtoPort,
    /// `meta l4proto . th dport` (type `inet_proto . inet_service`).
    ProtoPort,
}

impl Key {
    fn expr(self) -> &'static str {
        match self {
            Key::DaddrProtoPort => "ip daddr . meta l4proto . th dport",
            Key::ProtoPort => "meta l4proto . th dport",
        }
    }
    fn nft_type(self) -> &'static str {
        match self {
            Key::DaddrProtoPort => "ipv4_addr . inet_proto . inet_service",
            Key::ProtoPort => "inet_proto . inet_service",
        }
    }
}

/// A named set, or a verdict map (`… : verdict`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetDecl {
    pub name: &'static str,
    pub key: Key,
    pub verdict_map: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    Nat,
    Filter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

/// What makes a chain a base chain: its type, hook and priority (the policy is `accept`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub type_: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrField {
    Saddr,
    Daddr,
}

/// One condition of a rule (all of a rule's must hold).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// `meta l4proto tcp`
    L4Proto(Protocol),
    /// `th dport 53`
    Dport(u16),
    /// `ip saddr 10.42.0.0/16`, or `ip daddr != …` when negated.
    Addr {
        field: AddrField,
        net: ipnet::Ipv4Net,
        negated: bool,
    },
    /// `fib daddr type local` (`true`) or `fib daddr type != local` (`false`).
    FibDaddrLocal(bool),
    /// `ct state new`
    CtStateNew,
    /// `meta mark & M == M`
    MarkHas(u32),
    /// `numgen random mod N == 0`: true for one packet in N.
    NumgenRandom(u32),
    /// `<key> @set`
    InSet(Key, &'static str),
}

/// What a rule does when its conditions hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Jump(String),
    Goto(String),
    /// `<key> vmap @map`
    Vmap(Key, &'static str),
    /// `dnat to address[:port]`
    Dnat(Ipv4Addr, Option<u16>),
    Masquerade,
    /// `reject` (ICMP port unreachable)
    Reject,
    /// `meta mark set meta mark | M`
    SetMarkBits(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub action: Action,
}

impl Rule {
    pub fn new(matches: Vec<Match>, action: Action) -> Rule {
        Rule { matches, action }
    }
}

/// The key of a set or map element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementKey {
    /// `10.96.0.10 . tcp . 80`, in `service-ips` and `no-endpoint-services`.
    AddrProtoPort(Ipv4Addr, Protocol, u16),
    /// `tcp . 30080`, in `service-nodeports` and `no-endpoint-nodeports`.
    ProtoPort(Protocol, u16),
}

/// An element of one of the table's sets, and for a map the chain it goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub set: &'static str,
    pub key: ElementKey,
    /// `: goto <chain>` (maps only; left out when deleting).
    pub goto: Option<String>,
}

/// One step of a change to Drover's table, free of I/O: [`render`] writes it as nft text,
/// [`crate::netlink`] encodes it for the kernel. A list of them is applied as one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// The ops that follow are in this table (until the next `Table`); the first ones are in
    /// [`TABLE`].
    Table(String),
    /// Drops the table if it exists and creates it empty (`add table`, `delete table`,
    /// `add table`).
    ResetTable,
    AddSet(SetDecl),
    AddChain {
        name: String,
        base: Option<BaseChain>,
    },
    /// Deletes a chain and its rules (nothing may point to it any more).
    DeleteChain(String),
    /// Deletes every rule of a chain, keeping the chain (and what points to it).
    FlushChain(String),
    /// Appends a rule to a chain.
    AddRule {
        chain: String,
        rule: Rule,
    },
    AddElement(Element),
    DeleteElement(Element),
}

pub(crate) fn chain(name: impl Into<String>) -> Op {
    Op::AddChain {
        name: name.into(),
        base: None,
    }
}

pub(crate) fn base_chain(name: &str, type_: ChainType, hook: Hook, priority: i32) -> Op {
    Op::AddChain {
        name: name.to_string(),
        base: Some(BaseChain {
            type_,
            hook,
            priority,
        }),
    }
}

pub(crate) fn rule(chain: impl Into<String>, matches: Vec<Match>, action: Action) -> Op {
    Op::AddRule {
        chain: chain.into(),
        rule: Rule::new(matches, action),
    }
}

pub(crate) fn element(set: &'static str, key: ElementKey, goto: Option<String>) -> Element {
    Element { set, key, goto }
}

impl std::fmt::Display for ElementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ElementKey::AddrProtoPort(ip, proto, port) => {
                write!(f, "{ip} . {} . {port}", proto.nft())
            }
            ElementKey::ProtoPort(proto, port) => write!(f, "{} . {port}", proto.nft()),
        }
    }
}

impl std::fmt::Display for Match {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Match::L4Proto(p) => write!(f, "meta l4proto {}", p.nft()),
            Match::Dport(port) => write!(f, "th dport {port}"),
            Match::Addr {
                field,
                net,
                negated,
            } => {
                let field = match field {
                    AddrField::Saddr => "saddr",
                    AddrField::Daddr => "daddr",
                };
                let op = if *negated { "!= " } else { "" };
                write!(f, "ip {field} {op}{net}")
            }
            Match::FibDaddrLocal(true) => write!(f, "fib daddr type local"),
            Match::FibDaddrLocal(false) => write!(f, "fib daddr type != local"),
            Match::CtStateNew => write!(f, "ct state new"),
            Match::MarkHas(m) => write!(f, "meta mark & {m:#x} == {m:#x}"),
            Match::NumgenRandom(n) => write!(f, "numgen random mod {n} == 0"),
            Match::InSet(key, set) => write!(f, "{} @{set}", key.expr()),
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Jump(c) => write!(f, "jump {c}"),
            Action::Goto(c) => write!(f, "goto {c}"),
            Action::Vmap(key, map) => write!(f, "{} vmap @{map}", key.expr()),
            Action::Dnat(ip, Some(port)) => write!(f, "dnat to {ip}:{port}"),
            Action::Dnat(ip, None) => write!(f, "dnat to {ip}"),
            Action::Masquerade => write!(f, "masquerade"),
            Action::Reject => write!(f, "reject"),
            Action::SetMarkBits(m) => write!(f, "meta mark set meta mark | {m:#x}"),
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for m in &self.matches {
            write!(f, "{m} ")?;
        }
        write!(f, "{}", self.action)
    }
}

/// One op as nft commands (one line each, with its newline), in Drover's main table.
impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.write_in(f, TABLE)
    }
}

impl Op {
    /// The op as nft commands for table `table`.
    fn write_in(&self, f: &mut impl std::fmt::Write, table: &str) -> std::fmt::Result {
        match self {
            Op::Table(_) => Ok(()),
            Op::ResetTable => writeln!(
                f,
                "add table ip {table}\ndelete table ip {table}\nadd table ip {table}"
            ),
            Op::AddSet(s) => {
                let (kind, data) = if s.verdict_map {
                    ("map", " : verdict")
                } else {
                    ("set", "")
                };
                writeln!(
                    f,
                    "add {kind} ip {table} {} {{ type {}{data}; }}",
                    s.name,
                    s.key.nft_type()
                )
            }
            Op::AddChain { name, base: None } => writeln!(f, "add chain ip {table} {name}"),
            Op::AddChain {
                name,
                base: Some(b),
            } => {
                let type_ = match b.type_ {
                    ChainType::Nat => "nat",
                    ChainType::Filter => "filter",
                };
                let hook = match b.hook {
                    Hook::Prerouting => "prerouting",
                    Hook::Input => "input",
                    Hook::Forward => "forward",
                    Hook::Output => "output",
                    Hook::Postrouting => "postrouting",
                };
                writeln!(
                    f,
                    "add chain ip {table} {name} {{ type {type_} hook {hook} priority {}; policy accept; }}",
                    b.priority
                )
            }
            Op::DeleteChain(name) => writeln!(f, "delete chain ip {table} {name}"),
            Op::FlushChain(name) => writeln!(f, "flush chain ip {table} {name}"),
            Op::AddRule { chain, rule } => writeln!(f, "add rule ip {table} {chain} {rule}"),
            Op::AddElement(e) => match &e.goto {
                Some(c) => writeln!(
                    f,
                    "add element ip {table} {} {{ {} : goto {c} }}",
                    e.set, e.key
                ),
                None => writeln!(f, "add element ip {table} {} {{ {} }}", e.set, e.key),
            },
            Op::DeleteElement(e) => {
                writeln!(f, "delete element ip {table} {} {{ {} }}", e.set, e.key)
            }
        }
    }
}

/// Ops as an nft script (`nft -f`), the same transaction as [`crate::host::apply_ops`] sends.
pub fn render(ops: &[Op]) -> String {
    let mut s = String::new();
    let mut table = TABLE;
    for op in ops {
        if let Op::Table(t) = op {
            table = t;
        }
        let _ = op.write_in(&mut s, table);
    }
    s
}

/// Op `i` of `ops` as nft commands, in the table the ops before it switched to.
pub fn render_one(ops: &[Op], i: usize) -> String {
    let table = ops[..i]
        .iter()
        .rev()
        .find_map(|op| match op {
            Op::Table(t) => Some(t.as_str()),
            _ => None,
        })
        .unwrap_or(TABLE);
    let mut s = String::new();
    let _ = ops[i].write_in(&mut s, table);
    s
}
