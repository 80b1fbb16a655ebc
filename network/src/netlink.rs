//! Drover's Services table programmed over netlink, without the `nft` program: a list of
//! [`Op`]s becomes ONE nftables transaction (`NFNL_MSG_BATCH_BEGIN` … `BATCH_END` in a single
//! `sendmsg`), which the kernel applies whole or not at all.
//!
//! Every message is encoded the way nft 1.0.6 encodes the same command (`nft --debug=mnl`),
//! down to the registers, the attribute order and the sets' user data, so that `nft list
//! table ip drover` shows the same ruleset whichever way it was written.
//!
//! Replies: the kernel processes a batch inside the `sendmsg` call, so by the time it returns
//! every reply is queued on the socket: one error per rejected message (and, as a message
//! rejected early often makes later ones fail too, possibly many), and the acknowledgement
//! asked for on the last message, which says that the batch was processed. A failure to
//! commit (such as a loop between chains) is reported against the batch's first message.
//!
//! Length: one encoder per op kind of one message format, and byte-for-byte tests against what
//! nft sends (a quarter of the file).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::nft::{
    Action, AddrField, BaseChain, ChainType, Element, ElementKey, Hook, Key, Match, Op, Rule,
    SetDecl, TABLE,
};

// linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;

// linux/netfilter/nfnetlink.h, linux/netfilter.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_IPV4: u8 = 2;

// linux/netfilter/nf_tables.h: messages
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

// Attributes of tables, chains, rules, sets, elements and data.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFT_SET_MAP: u32 = 0x8;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NF_ACCEPT: u32 = 1;

// Registers: 0 is the verdict; 1 and 2 are 16-byte registers, 9 and 10 the second and third
// 4-byte parts of register 1 (NFT_REG32_01, _02), where nft puts the 2nd and 3rd field of a
// concatenation.
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;
const REG32_01: u32 = 9;
const REG32_02: u32 = 10;

// nft's datatypes (nftables src/datatype.h); a concatenation is (a << 6 | b) << 6 | c.
const TYPE_IPADDR: u32 = 7;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;

/// The set user data nft 1.0.6 writes for `type … ;` sets (key byte order, and the key's
/// typeof information) and verdict maps (the same, with data byte order and interval flag):
/// `nft list` reads it back to print the set's type.
const SET_USERDATA: &[u8] = &[
    0x00, 0x04, 0, 0, 0, 0, // NFTNL_UDATA_SET_KEYBYTEORDER = 0
    0x03, 0x08, 0x00, 0x04, 0x0d, 0, 0, 0, 0x01, 0x00, // NFTNL_UDATA_SET_KEY_TYPEOF
];
const MAP_USERDATA: &[u8] = &[
    0x00, 0x04, 0, 0, 0, 0, // NFTNL_UDATA_SET_KEYBYTEORDER = 0
    0x01, 0x04, 0, 0, 0, 0, // NFTNL_UDATA_SET_DATABYTEORDER = 0
    0x03, 0x08, 0x00, 0x04, 0x0d, 0, 0, 0, 0x01, 0x00, // NFTNL_UDATA_SET_KEY_TYPEOF
    0x06, 0x04, 0, 0, 0, 0, // NFTNL_UDATA_SET_DATA_INTERVAL = 0
];

/// An element list attribute is at most 64 KiB; a message holds elements up to this size.
const ELEMENTS_PER_MESSAGE_BYTES: usize = 48 * 1024;

/// Replies are small (an acknowledgement, or errors quoting the rejected messages), but a
/// batch that fails early can have most of its messages rejected.
const RECV_BUFFER: usize = 8 << 20;

/// Ops encoded as one nftables netlink batch, ready to send.
pub struct Batch {
    buf: Vec<u8>,
    /// For each message by sequence number (from 0, the batch's begin): the op it encodes.
    origin: Vec<Option<u32>>,
    /// The sequence number of the last message, the one acknowledged.
    last: u32,
    /// The table the ops are in ([`Op::Table`] switches it).
    table: String,
}

/// A netlink message being written: its header's offset.
struct Msg(usize);
/// A nested attribute being written: its header's offset.
struct Nest(usize);

impl Batch {
    /// Encodes `ops` as one transaction.
    pub fn encode(ops: &[Op]) -> Batch {
        let mut b = Batch {
            buf: Vec::with_capacity(ops.len() * 200 + 1024),
            origin: Vec::with_capacity(ops.len() + 16),
            last: 0,
            table: TABLE.to_string(),
        };
        let m = b.message(
            NFNL_MSG_BATCH_BEGIN,
            0,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            None,
        );
        b.end(m);
        let mut last_msg = None;
        let mut set_ids = 0u32;
        let mut i = 0;
        while i < ops.len() {
            let at = Some(i as u32);
            match &ops[i] {
                Op::Table(name) => b.table = name.clone(),
                Op::ResetTable => {
                    // `add table` then `delete table`: the delete is valid whether or not
                    // the table existed; then the new, empty one.
                    for ty in [NFT_MSG_NEWTABLE, NFT_MSG_DELTABLE, NFT_MSG_NEWTABLE] {
                        let flags = if ty == NFT_MSG_NEWTABLE {
                            NLM_F_CREATE
                        } else {
                            0
                        };
                        let m = b.nft(ty, flags, at);
                        let table = b.table.clone();
                        b.str(NFTA_TABLE_NAME, &table);
                        if ty == NFT_MSG_NEWTABLE {
                            b.u32(NFTA_TABLE_FLAGS, 0);
                        }
                        last_msg = Some(b.end(m));
                    }
                }
                Op::AddSet(set) => {
                    set_ids += 1;
                    last_msg = Some(b.set(set, set_ids, at));
                }
                Op::AddChain { name, base } => {
                    let m = b.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, at);
                    let table = b.table.clone();
                    b.str(NFTA_CHAIN_TABLE, &table);
                    b.str(NFTA_CHAIN_NAME, name);
                    if let Some(base) = base {
                        b.base_chain(base);
                    }
                    last_msg = Some(b.end(m));
                }
                Op::DeleteChain(name) => {
                    let m = b.nft(NFT_MSG_DELCHAIN, 0, at);
                    let table = b.table.clone();
                    b.str(NFTA_CHAIN_TABLE, &table);
                    b.str(NFTA_CHAIN_NAME, name);
                    last_msg = Some(b.end(m));
                }
                Op::FlushChain(chain) => {
                    // A rule deletion without a handle deletes every rule of the chain.
                    let m = b.nft(NFT_MSG_DELRULE, 0, at);
                    let table = b.table.clone();
                    b.str(NFTA_RULE_TABLE, &table);
                    b.str(NFTA_RULE_CHAIN, chain);
                    last_msg = Some(b.end(m));
                }
                Op::AddRule { chain, rule } => {
                    let m = b.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, at);
                    let table = b.table.clone();
                    b.str(NFTA_RULE_TABLE, &table);
                    b.str(NFTA_RULE_CHAIN, chain);
                    let exprs = b.nest(NFTA_RULE_EXPRESSIONS);
                    b.rule(rule);
                    b.close(exprs);
                    last_msg = Some(b.end(m));
                }
                Op::AddElement(first) | Op::DeleteElement(first) => {
                    // A run of the same change to the same set goes in as few messages as
                    // the attribute size allows.
                    let add = matches!(ops[i], Op::AddElement(_));
                    let mut j = i;
                    while j < ops.len() {
                        match &ops[j] {
                            Op::AddElement(e) if add && e.set == first.set => {}
                            Op::DeleteElement(e) if !add && e.set == first.set => {}
                            _ => break,
                        }
                        j += 1;
                    }
                    let elements = ops[i..j].iter().map(|op| match op {
                        Op::AddElement(e) | Op::DeleteElement(e) => e,
                        _ => unreachable!("a run of elements"),
                    });
                    last_msg = Some(b.elements(first.set, add, elements, i));
                    i = j;
                    continue;
                }
            }
            i += 1;
        }
        // Acknowledged: the sign that the whole batch was processed (errors come anyway).
        if let Some(Msg(at)) = last_msg {
            let flags = u16::from_ne_bytes([b.buf[at + 6], b.buf[at + 7]]) | NLM_F_ACK;
            b.buf[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
        }
        b.last = b.origin.len() as u32 - 1;
        let m = b.message(
            NFNL_MSG_BATCH_END,
            0,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            None,
        );
        b.end(m);
        b
    }

    /// The encoded batch.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Number of netlink messages, the batch's begin and end included.
    pub fn messages(&self) -> usize {
        self.origin.len()
    }

    // ---- netlink framing ----

    fn message(&mut self, ty: u16, flags: u16, family: u8, res_id: u16, op: Option<u32>) -> Msg {
        let at = self.buf.len();
        let seq = self.origin.len() as u32;
        self.origin.push(op);
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `end`
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf
            .extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel
                                                         // struct nfgenmsg
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        Msg(at)
    }

    fn nft(&mut self, msg: u16, flags: u16, op: Option<u32>) -> Msg {
        self.message(NFNL_SUBSYS_NFTABLES << 8 | msg, flags, NFPROTO_IPV4, 0, op)
    }

    fn end(&mut self, m: Msg) -> Msg {
        let len = (self.buf.len() - m.0) as u32;
        self.buf[m.0..m.0 + 4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        let padded = self.buf.len().next_multiple_of(4);
        self.buf.resize(padded, 0);
    }

    /// A number in network byte order, as nf_tables wants its u32 attributes.
    fn u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    fn str(&mut self, ty: u16, s: &str) {
        let len = 4 + s.len() + 1;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn nest(&mut self, ty: u16) -> Nest {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        Nest(at)
    }

    fn close(&mut self, n: Nest) {
        let len = self.buf.len() - n.0;
        debug_assert!(len <= u16::MAX as usize, "nested attribute of {len} bytes");
        self.buf[n.0..n.0 + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    }

    // ---- objects ----

    fn base_chain(&mut self, base: &BaseChain) {
        let type_ = match base.type_ {
            ChainType::Nat => "nat",
            ChainType::Filter => "filter",
        };
        // NF_INET_PRE_ROUTING, LOCAL_IN, FORWARD, LOCAL_OUT, POST_ROUTING
        let hook = match base.hook {
            Hook::Prerouting => 0,
            Hook::Input => 1,
            Hook::Forward => 2,
            Hook::Output => 3,
            Hook::Postrouting => 4,
        };
        self.str(NFTA_CHAIN_TYPE, type_);
        self.u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
        let h = self.nest(NFTA_CHAIN_HOOK);
        self.u32(NFTA_HOOK_HOOKNUM, hook);
        self.u32(NFTA_HOOK_PRIORITY, base.priority as u32);
        self.close(h);
    }

    fn set(&mut self, set: &SetDecl, id: u32, op: Option<u32>) -> Msg {
        let (key_type, key_len) = match set.key {
            Key::DaddrProtoPort => (
                (TYPE_IPADDR << 6 | TYPE_INET_PROTOCOL) << 6 | TYPE_INET_SERVICE,
                12,
            ),
            Key::ProtoPort => (TYPE_INET_PROTOCOL << 6 | TYPE_INET_SERVICE, 8),
        };
        let m = self.nft(NFT_MSG_NEWSET, NLM_F_CREATE, op);
        let table = self.table.clone();
        self.str(NFTA_SET_TABLE, &table);
        self.str(NFTA_SET_NAME, set.name);
        self.u32(
            NFTA_SET_FLAGS,
            if set.verdict_map { NFT_SET_MAP } else { 0 },
        );
        self.u32(NFTA_SET_KEY_TYPE, key_type);
        self.u32(NFTA_SET_KEY_LEN, key_len);
        if set.verdict_map {
            self.u32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
            self.u32(NFTA_SET_DATA_LEN, 0);
        }
        self.u32(NFTA_SET_ID, id);
        let userdata = if set.verdict_map {
            MAP_USERDATA
        } else {
            SET_USERDATA
        };
        self.attr(NFTA_SET_USERDATA, userdata);
        self.end(m)
    }

    fn elements<'a>(
        &mut self,
        set: &str,
        add: bool,
        elements: impl Iterator<Item = &'a Element>,
        first_op: usize,
    ) -> Msg {
        let (ty, flags) = if add {
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE)
        } else {
            (NFT_MSG_DELSETELEM, 0)
        };
        // The message being filled, and its element list.
        let mut open: Option<(Msg, Nest)> = None;
        let mut last = None;
        for (k, e) in elements.enumerate() {
            if let Some((m, list)) =
                open.take_if(|(_, list)| self.buf.len() - list.0 >= ELEMENTS_PER_MESSAGE_BYTES)
            {
                self.close(list);
                last = Some(self.end(m));
            }
            if open.is_none() {
                // Errors name the first op of the message.
                let m = self.nft(ty, flags, Some((first_op + k) as u32));
                let table = self.table.clone();
                self.str(NFTA_SET_ELEM_LIST_TABLE, &table);
                self.str(NFTA_SET_ELEM_LIST_SET, set);
                open = Some((m, self.nest(NFTA_SET_ELEM_LIST_ELEMENTS)));
            }
            self.element(e, add);
        }
        if let Some((m, list)) = open {
            self.close(list);
            last = Some(self.end(m));
        }
        last.expect("at least one element")
    }

    fn element(&mut self, e: &Element, add: bool) {
        let el = self.nest(NFTA_LIST_ELEM);
        let key = self.nest(NFTA_SET_ELEM_KEY);
        let mut k = [0u8; 12];
        let len = match e.key {
            // Each field of a concatenation takes a multiple of 4 bytes.
            ElementKey::AddrProtoPort(ip, proto, port) => {
                k[..4].copy_from_slice(&ip.octets());
                k[4] = proto.number();
                k[8..10].copy_from_slice(&port.to_be_bytes());
                12
            }
            ElementKey::ProtoPort(proto, port) => {
                k[0] = proto.number();
                k[4..6].copy_from_slice(&port.to_be_bytes());
                8
            }
        };
        self.attr(NFTA_DATA_VALUE, &k[..len]);
        self.close(key);
        if let (true, Some(chain)) = (add, &e.goto) {
            let data = self.nest(NFTA_SET_ELEM_DATA);
            self.verdict(NFT_GOTO, chain);
            self.close(data);
        }
        self.close(el);
    }

    /// `NFTA_DATA_VERDICT { code, chain }`, inside a data attribute.
    fn verdict(&mut self, code: i32, chain: &str) {
        let v = self.nest(NFTA_DATA_VERDICT);
        self.u32(NFTA_VERDICT_CODE, code as u32);
        self.str(NFTA_VERDICT_CHAIN, chain);
        self.close(v);
    }

    // ---- expressions ----

    /// One expression: `NFTA_LIST_ELEM { name, data { attributes… } }`.
    fn expr(&mut self, name: &str, attrs: impl FnOnce(&mut Batch)) {
        let el = self.nest(NFTA_LIST_ELEM);
        self.str(NFTA_EXPR_NAME, name);
        let data = self.nest(NFTA_EXPR_DATA);
        attrs(self);
        self.close(data);
        self.close(el);
    }

    /// `payload load LEN @ BASE + OFFSET => reg DREG` (base 1: network, 2: transport).
    fn payload(&mut self, dreg: u32, base: u32, offset: u32, len: u32) {
        self.expr("payload", |b| {
            b.u32(1, dreg); // NFTA_PAYLOAD_DREG
            b.u32(2, base); // NFTA_PAYLOAD_BASE
            b.u32(3, offset); // NFTA_PAYLOAD_OFFSET
            b.u32(4, len); // NFTA_PAYLOAD_LEN
        });
    }

    /// `meta load KEY => reg DREG` (NFT_META_MARK 3, NFT_META_L4PROTO 16).
    fn meta_load(&mut self, key: u32, dreg: u32) {
        self.expr("meta", |b| {
            b.u32(2, key); // NFTA_META_KEY
            b.u32(1, dreg); // NFTA_META_DREG
        });
    }

    /// `cmp eq|neq reg SREG DATA`.
    fn cmp(&mut self, sreg: u32, negated: bool, data: &[u8]) {
        self.expr("cmp", |b| {
            b.u32(1, sreg); // NFTA_CMP_SREG
            b.u32(2, u32::from(negated)); // NFTA_CMP_OP: NFT_CMP_EQ, NFT_CMP_NEQ
            let d = b.nest(3); // NFTA_CMP_DATA
            b.attr(NFTA_DATA_VALUE, data);
            b.close(d);
        });
    }

    /// `bitwise reg = (reg & MASK) ^ XOR`; with_op: nft sends NFTA_BITWISE_OP for some.
    fn bitwise(&mut self, reg: u32, mask: &[u8], xor: &[u8], with_op: bool) {
        self.expr("bitwise", |b| {
            b.u32(1, reg); // NFTA_BITWISE_SREG
            b.u32(2, reg); // NFTA_BITWISE_DREG
            if with_op {
                b.u32(6, 0); // NFTA_BITWISE_OP: NFT_BITWISE_BOOL
            }
            b.u32(3, mask.len() as u32); // NFTA_BITWISE_LEN
            let m = b.nest(4); // NFTA_BITWISE_MASK
            b.attr(NFTA_DATA_VALUE, mask);
            b.close(m);
            let x = b.nest(5); // NFTA_BITWISE_XOR
            b.attr(NFTA_DATA_VALUE, xor);
            b.close(x);
        });
    }

    fn immediate_value(&mut self, dreg: u32, data: &[u8]) {
        self.expr("immediate", |b| {
            b.u32(1, dreg); // NFTA_IMMEDIATE_DREG
            let d = b.nest(2); // NFTA_IMMEDIATE_DATA
            b.attr(NFTA_DATA_VALUE, data);
            b.close(d);
        });
    }

    fn immediate_verdict(&mut self, code: i32, chain: &str) {
        self.expr("immediate", |b| {
            b.u32(1, REG_VERDICT);
            let d = b.nest(2);
            b.verdict(code, chain);
            b.close(d);
        });
    }

    /// `lookup reg 1 set NAME [dreg 0]`: a set match, or a verdict map with `verdict`.
    fn lookup(&mut self, set: &str, verdict: bool) {
        self.expr("lookup", |b| {
            b.u32(2, REG_1); // NFTA_LOOKUP_SREG
            if verdict {
                b.u32(3, REG_VERDICT); // NFTA_LOOKUP_DREG
            }
            b.str(1, set); // NFTA_LOOKUP_SET
        });
    }

    /// Loads a set key into register 1 (and its 4-byte parts), as nft lays concatenations.
    fn key(&mut self, key: Key) {
        match key {
            Key::DaddrProtoPort => {
                self.payload(REG_1, 1, 16, 4); // ip daddr
                self.meta_load(16, REG32_01); // meta l4proto
                self.payload(REG32_02, 2, 2, 2); // th dport
            }
            Key::ProtoPort => {
                self.meta_load(16, REG_1);
                self.payload(REG32_01, 2, 2, 2);
            }
        }
    }

    fn fib_daddr_type(&mut self) {
        self.expr("fib", |b| {
            b.u32(3, 2); // NFTA_FIB_FLAGS: NFTA_FIB_F_DADDR
            b.u32(2, 3); // NFTA_FIB_RESULT: NFT_FIB_RESULT_ADDRTYPE
            b.u32(1, REG_1); // NFTA_FIB_DREG
        });
    }

    fn matcher(&mut self, m: &Match) {
        match m {
            Match::L4Proto(p) => {
                self.meta_load(16, REG_1);
                self.cmp(REG_1, false, &[p.number()]);
            }
            Match::Dport(port) => {
                self.payload(REG_1, 2, 2, 2);
                self.cmp(REG_1, false, &port.to_be_bytes());
            }
            Match::Addr {
                field,
                net,
                negated,
            } => {
                let offset = match field {
                    AddrField::Saddr => 12,
                    AddrField::Daddr => 16,
                };
                let prefix = net.prefix_len();
                let addr = net.network().octets();
                if prefix % 8 == 0 && prefix > 0 {
                    // Whole bytes: nft loads only the prefix's.
                    let n = usize::from(prefix / 8);
                    self.payload(REG_1, 1, offset, n as u32);
                    self.cmp(REG_1, *negated, &addr[..n]);
                } else {
                    self.payload(REG_1, 1, offset, 4);
                    let mask = net.netmask().octets();
                    self.bitwise(REG_1, &mask, &[0; 4], false);
                    self.cmp(REG_1, *negated, &addr);
                }
            }
            Match::FibDaddrLocal(local) => {
                self.fib_daddr_type();
                // RTN_LOCAL, in host byte order
                self.cmp(REG_1, !local, &2u32.to_ne_bytes());
            }
            Match::CtStateNew => {
                self.expr("ct", |b| {
                    b.u32(2, 0); // NFTA_CT_KEY: NFT_CT_STATE
                    b.u32(1, REG_1); // NFTA_CT_DREG
                });
                // NF_CT_STATE_BIT(IP_CT_NEW)
                self.bitwise(REG_1, &8u32.to_ne_bytes(), &[0; 4], false);
                self.cmp(REG_1, true, &[0; 4]);
            }
            Match::MarkHas(mark) => {
                self.meta_load(3, REG_1);
                self.bitwise(REG_1, &mark.to_ne_bytes(), &[0; 4], true);
                self.cmp(REG_1, false, &mark.to_ne_bytes());
            }
            Match::NumgenRandom(modulus) => {
                self.expr("numgen", |b| {
                    b.u32(1, REG_1); // NFTA_NG_DREG
                    b.u32(2, *modulus); // NFTA_NG_MODULUS
                    b.u32(3, 1); // NFTA_NG_TYPE: NFT_NG_RANDOM
                    b.u32(4, 0); // NFTA_NG_OFFSET
                });
                self.cmp(REG_1, false, &0u32.to_ne_bytes());
            }
            Match::InSet(key, set) => {
                self.key(*key);
                self.lookup(set, false);
            }
        }
    }

    fn rule(&mut self, rule: &Rule) {
        for m in &rule.matches {
            self.matcher(m);
        }
        match &rule.action {
            Action::Jump(chain) => self.immediate_verdict(NFT_JUMP, chain),
            Action::Goto(chain) => self.immediate_verdict(NFT_GOTO, chain),
            Action::Vmap(key, map) => {
                self.key(*key);
                self.lookup(map, true);
            }
            Action::Dnat(ip, port) => self.dnat(*ip, *port),
            Action::Masquerade => self.expr("masq", |_| {}),
            Action::Reject => self.expr("reject", |b| {
                b.u32(1, 0); // NFTA_REJECT_TYPE: NFT_REJECT_ICMP_UNREACH
                b.attr(2, &[3]); // NFTA_REJECT_ICMP_CODE: port unreachable
            }),
            Action::SetMarkBits(mark) => {
                self.meta_load(3, REG_1);
                self.bitwise(REG_1, &(!mark).to_ne_bytes(), &mark.to_ne_bytes(), true);
                self.expr("meta", |b| {
                    b.u32(2, 3); // NFTA_META_KEY: NFT_META_MARK
                    b.u32(3, REG_1); // NFTA_META_SREG
                });
            }
        }
    }

    fn dnat(&mut self, ip: Ipv4Addr, port: Option<u16>) {
        self.immediate_value(REG_1, &ip.octets());
        if let Some(port) = port {
            self.immediate_value(REG_2, &port.to_be_bytes());
        }
        self.expr("nat", |b| {
            b.u32(1, 1); // NFTA_NAT_TYPE: NFT_NAT_DNAT
            b.u32(2, u32::from(NFPROTO_IPV4)); // NFTA_NAT_FAMILY
            b.u32(3, REG_1); // NFTA_NAT_REG_ADDR_MIN
            if port.is_some() {
                b.u32(5, REG_2); // NFTA_NAT_REG_PROTO_MIN
                b.u32(7, 2); // NFTA_NAT_FLAGS: NF_NAT_RANGE_PROTO_SPECIFIED
            }
        });
    }
}

/// Why a batch was not applied. The kernel applies a batch whole or not at all, so after any
/// of these, nothing changed.
#[derive(Debug)]
pub enum SendError {
    /// The socket failed (`what` was being done).
    Io { what: &'static str, err: io::Error },
    /// The kernel rejected messages: each with the op it encoded (None: the batch itself, as
    /// when the commit fails) and the errno.
    Rejected {
        errors: Vec<(Option<usize>, i32)>,
        /// Some replies did not fit in the socket's buffer.
        lost: bool,
    },
    /// No acknowledgement and no error came back.
    NoReply,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Io { what, err } => write!(f, "nftables netlink socket: {what}: {err}"),
            SendError::Rejected { errors, lost } => {
                match errors.first() {
                    Some((op, errno)) => {
                        let err = io::Error::from_raw_os_error(*errno);
                        match op {
                            Some(i) => write!(f, "nftables rejected op #{i}: {err}")?,
                            None => write!(f, "nftables rejected the batch: {err}")?,
                        }
                    }
                    None => write!(f, "nftables rejected the batch")?,
                }
                if errors.len() > 1 {
                    write!(f, " (and {} more errors)", errors.len() - 1)?;
                }
                if *lost {
                    write!(f, " (more errors were lost)")?;
                }
                Ok(())
            }
            SendError::NoReply => write!(f, "nftables: no reply to the batch"),
        }
    }
}

impl std::error::Error for SendError {}

impl SendError {
    /// The error, naming the op that failed as an nft command.
    pub fn explain(self, ops: &[Op]) -> anyhow::Error {
        if let SendError::Rejected { errors, lost } = &self {
            if let Some((Some(i), errno)) = errors.first() {
                if *i < ops.len() {
                    let err = io::Error::from_raw_os_error(*errno);
                    let mut msg = format!(
                        "nftables rejected the transaction, nothing applied: `{}`: {err}",
                        crate::nft::render_one(ops, *i)
                            .trim_end()
                            .replace('\n', "; ")
                    );
                    if errors.len() > 1 {
                        msg += &format!(" (and {} more errors)", errors.len() - 1);
                    }
                    if *lost {
                        msg += " (more errors were lost)";
                    }
                    return anyhow::anyhow!(msg);
                }
            }
        }
        anyhow::Error::new(self)
    }
}

/// A netlink socket to nftables, in the network namespace of the thread that opened it.
pub struct Socket(OwnedFd);

impl Socket {
    pub fn open() -> io::Result<Socket> {
        use rustix::net::{netlink, sockopt, AddressFamily, SocketFlags, SocketType};
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(netlink::NETFILTER),
        )?;
        rustix::net::bind(&fd, &netlink::SocketAddrNetlink::new(0, 0))?;
        if sockopt::set_socket_recv_buffer_size_force(&fd, RECV_BUFFER).is_err() {
            sockopt::set_socket_recv_buffer_size(&fd, RECV_BUFFER)?;
        }
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(Duration::from_secs(30)))?;
        Ok(Socket(fd))
    }

    /// Sends the batch (one `sendmsg`), and reads the kernel's answer: Ok once the kernel
    /// has committed the whole transaction.
    pub fn send(&self, batch: &Batch) -> Result<(), SendError> {
        if batch.last == 0 {
            return Ok(()); // no op: nothing to send
        }
        use rustix::io::Errno;
        use rustix::net::{sockopt, RecvFlags, SendFlags};
        let io = |what| {
            move |e: Errno| SendError::Io {
                what,
                err: e.into(),
            }
        };
        // A netlink message goes whole into the socket's send buffer (the kernel doubles the
        // value set; it wants room for its own overhead besides).
        let want = batch.buf.len() / 2 + 64 * 1024;
        if sockopt::socket_send_buffer_size(&self.0).map_err(io("send buffer size"))? < 2 * want {
            sockopt::set_socket_send_buffer_size_force(&self.0, want)
                .or_else(|_| sockopt::set_socket_send_buffer_size(&self.0, want))
                .map_err(io("raising the send buffer"))?;
        }
        let sent =
            rustix::net::send(&self.0, &batch.buf, SendFlags::empty()).map_err(io("sending"))?;
        if sent != batch.buf.len() {
            return Err(SendError::Io {
                what: "sending",
                err: io::Error::other(format!("sent {sent} of {} bytes", batch.buf.len())),
            });
        }
        let mut buf = vec![0u8; 256 * 1024];
        let mut errors = Vec::new();
        let mut lost = false;
        let mut acked = false;
        loop {
            // Everything is queued by now; wait only if nothing came at all.
            let flags = if acked || !errors.is_empty() || lost {
                RecvFlags::DONTWAIT
            } else {
                RecvFlags::empty()
            };
            let n = match rustix::net::recv(&self.0, &mut buf[..], flags) {
                Ok((n, _)) => n,
                Err(Errno::AGAIN) if flags == RecvFlags::DONTWAIT => break,
                Err(Errno::AGAIN) => return Err(SendError::NoReply),
                Err(Errno::NOBUFS) => {
                    lost = true;
                    continue;
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(io("receiving")(e)),
            };
            for (ty, seq, errno) in replies(&buf[..n]) {
                if ty != NLMSG_ERROR {
                    continue;
                }
                if errno == 0 {
                    acked |= seq == batch.last;
                } else {
                    let op = batch
                        .origin
                        .get(seq as usize)
                        .copied()
                        .flatten()
                        .map(|i| i as usize);
                    errors.push((op, errno));
                }
            }
        }
        if !errors.is_empty() || lost {
            return Err(SendError::Rejected { errors, lost });
        }
        Ok(())
    }
}

/// (type, sequence number of the message answered, errno) of each reply in a datagram.
fn replies(mut buf: &[u8]) -> Vec<(u16, u32, i32)> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        if ty == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 + NLMSG_HDRLEN {
            // struct nlmsgerr: int error; struct nlmsghdr msg (the one answered)
            let body = &buf[NLMSG_HDRLEN..];
            let err = i32::from_ne_bytes(body[0..4].try_into().expect("4 bytes"));
            let seq = u32::from_ne_bytes(body[12..16].try_into().expect("4 bytes"));
            out.push((ty, seq, -err));
        } else if ty == NLMSG_DONE {
            out.push((ty, 0, 0));
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

/// Encodes and applies `ops` as one transaction, blocking, in the calling thread's network
/// namespace.
pub fn apply(ops: &[Op]) -> anyhow::Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    let batch = Batch::encode(ops);
    Socket::open()?.send(&batch).map_err(|e| e.explain(ops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::{self, NodeNet, Protocol, ServicePort};
    use std::collections::BTreeMap;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The messages of a batch: (type, flags, payload after the nfgenmsg header, as hex).
    fn messages(b: &Batch) -> Vec<(u16, u16, String)> {
        let mut out = Vec::new();
        let mut buf = b.bytes();
        while !buf.is_empty() {
            let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes([buf[4], buf[5]]);
            let flags = u16::from_ne_bytes([buf[6], buf[7]]);
            let seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap());
            assert_eq!(
                seq as usize,
                out.len(),
                "sequence numbers count the messages"
            );
            out.push((ty, flags, hex(&buf[20..len])));
            buf = &buf[len.next_multiple_of(4)..];
        }
        out
    }

    fn web() -> ServicePort {
        ServicePort {
            key: "default/web/tcp/80".into(),
            ips: vec![Ipv4Addr::new(10, 96, 0, 20)],
            external_ips: vec![],
            protocol: Protocol::Tcp,
            port: 80,
            node_ports: vec![30080],
            endpoints: vec![
                (Ipv4Addr::new(10, 42, 0, 5), 8080),
                (Ipv4Addr::new(10, 42, 1, 6), 8080),
            ],
        }
    }

    // Expected payloads: what `nft --debug=mnl -f` (nft 1.0.6) sends for the same commands.

    /// What nft 1.0.6 sends (`nft --debug=mnl -f`, attributes after the nfgenmsg header) for
    /// the same commands, by the start of the command.
    const NFT_SENDS: &[(&str, &str)] = &[
        (
            "add chain ip drover nat-prerouting ",
            concat!(
                "0b00010064726f7665720000130003006e61742d707265726f7574696e670000080007006e61740008000500",
                "0000000114000480080001000000000008000200ffffff9c",
            ),
        ),
        (
            "add map ip drover service-ips ",
            concat!(
                "0b00010064726f766572000010000200736572766963652d697073000800030000000008080004000000730d",
                "080005000000000c08000600ffffff00080007000000000008000a000000000120000d000004000000000104",
                "00000000030800040d0000000100060400000000",
            ),
        ),
        (
            "add set ip drover no-endpoint-services ",
            concat!(
                "0b00010064726f7665720000190002006e6f2d656e64706f696e742d73657276696365730000000008000300",
                "00000000080004000000730d080005000000000c08000a000000000314000d00000400000000030800040d00",
                "00000100",
            ),
        ),
        (
            "add rule ip drover mark-for-masquerade ",
            concat!(
                "0b00010064726f7665720000180002006d61726b2d666f722d6d617371756572616465009800048024000180",
                "090001006d6574610000000014000280080002000000000308000100000000014c0001800c00010062697477",
                "697365003c00028008000100000000010800020000000001080006000000000008000300000000040c000480",
                "08000100ffbfffff0c000580080001000040000024000180090001006d657461000000001400028008000200",
                "000000030800030000000001",
            ),
        ),
        (
            "add rule ip drover nat-postrouting meta mark",
            concat!(
                "0b00010064726f7665720000140002006e61742d706f7374726f7574696e6700b40004802400018009000100",
                "6d6574610000000014000280080002000000000308000100000000014c0001800c0001006269747769736500",
                "3c00028008000100000000010800020000000001080006000000000008000300000000040c00048008000100",
                "004000000c00058008000100000000002c00018008000100636d700020000280080001000000000108000200",
                "000000000c000380080001000040000014000180090001006d6173710000000004000280",
            ),
        ),
        (
            "add rule ip drover nat-postrouting ip saddr",
            concat!(
                "0b00010064726f7665720000140002006e61742d706f7374726f7574696e67002c010480340001800c000100",
                "7061796c6f6164002400028008000100000000010800020000000001080003000000000c0800040000000002",
                "2c00018008000100636d700020000280080001000000000108000200000000000c000380060001000a2a0000",
                "340001800c0001007061796c6f61640024000280080001000000000108000200000000010800030000000010",
                "08000400000000022c00018008000100636d700020000280080001000000000108000200000000010c000380",
                "060001000a2a00002800018008000100666962001c0002800800030000000002080002000000000308000100",
                "000000012c00018008000100636d700020000280080001000000000108000200000000010c00038008000100",
                "0200000014000180090001006d6173710000000004000280",
            ),
        ),
        (
            // The loopback guard (nft 1.0.6: `add rule ip drover filter-input ct state new ip
            // daddr 127.0.0.0/8 ip saddr != 127.0.0.0/8 reject`).
            "add rule ip drover filter-input ct state new ip daddr",
            concat!(
                "0b00010064726f76657200001100020066696c7465722d696e70757400000000780104802000018007000100",
                "637400001400028008000200000000000800010000000001440001800c000100626974776973650034000280",
                "0800010000000001080002000000000108000300000000040c00048008000100080000000c00058008000100",
                "000000002c00018008000100636d700020000280080001000000000108000200000000010c00038008000100",
                "00000000340001800c0001007061796c6f616400240002800800010000000001080002000000000108000300",
                "0000001008000400000000012c00018008000100636d70002000028008000100000000010800020000000000",
                "0c000380050001007f000000340001800c0001007061796c6f61640024000280080001000000000108000200",
                "00000001080003000000000c08000400000000012c00018008000100636d7000200002800800010000000001",
                "08000200000000010c000380050001007f000000240001800b00010072656a65637400001400028008000100",
                "000000000500020003000000",
            ),
        ),
        (
            "add rule ip drover filter-input ct state new jump",
            concat!(
                "0b00010064726f76657200001100020066696c7465722d696e70757400000000d80004802000018007000100",
                "637400001400028008000200000000000800010000000001440001800c000100626974776973650034000280",
                "0800010000000001080002000000000108000300000000040c00048008000100080000000c00058008000100",
                "000000002c00018008000100636d700020000280080001000000000108000200000000010c00038008000100",
                "00000000440001800e000100696d6d6564696174650000003000028008000100000000002400028020000280",
                "08000100fffffffd14000200736572766963652d72656a6563747300",
            ),
        ),
        (
            "add rule ip drover cluster-dns meta l4proto udp",
            concat!(
                "0b00010064726f766572000010000200636c75737465722d646e73000801048024000180090001006d657461",
                "0000000014000280080002000000001008000100000000012c00018008000100636d70002000028008000100",
                "0000000108000200000000000c0003800500010011000000340001800c0001007061796c6f61640024000280",
                "08000100000000010800020000000002080003000000000208000400000000022c00018008000100636d7000",
                "20000280080001000000000108000200000000000c00038006000100003500002c0001800e000100696d6d65",
                "64696174650000001800028008000100000000010c000280080001000a00000528000180080001006e617400",
                "1c000280080001000000000108000200000000020800030000000001",
            ),
        ),
        (
            "add rule ip drover svc/default/web/tcp/80 meta l4proto tcp numgen",
            concat!(
                "0b00010064726f76657200001b0002007376632f64656661756c742f7765622f7463702f3830000044010480",
                "24000180090001006d6574610000000014000280080002000000001008000100000000012c00018008000100",
                "636d700020000280080001000000000108000200000000000c0003800500010006000000340001800b000100",
                "6e756d67656e0000240002800800010000000001080002000000000208000300000000010800040000000000",
                "2c00018008000100636d700020000280080001000000000108000200000000000c0003800800010000000000",
                "2c0001800e000100696d6d6564696174650000001800028008000100000000010c000280080001000a2a0005",
                "2c0001800e000100696d6d6564696174650000001800028008000100000000020c000280060001001f900000",
                "38000180080001006e6174002c00028008000100000000010800020000000002080003000000000108000500",
                "000000020800070000000002",
            ),
        ),
        (
            "add rule ip drover ext/default/web/tcp/80 goto",
            concat!(
                "0b00010064726f76657200001b0002006578742f64656661756c742f7765622f7463702f3830000050000480",
                "4c0001800e000100696d6d6564696174650000003800028008000100000000002c0002802800028008000100",
                "fffffffc1b0002007376632f64656661756c742f7765622f7463702f38300000",
            ),
        ),
    ];

    /// Every rule, chain and set shape Drover uses, in table `drover` (where nft's reference
    /// bytes were taken), including two shapes of earlier layouts kept as encoding cases.
    fn reference_ops() -> Vec<Op> {
        use services::{Action, Match, Rule};
        let node = NodeNet {
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
            dns: Some((Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(10, 0, 0, 5))),
        };
        let rule = |chain: &str, matches, action| Op::AddRule {
            chain: chain.into(),
            rule: Rule::new(matches, action),
        };
        let mut ops = vec![Op::Table(services::TABLE.into())];
        ops.extend(services::base_ruleset(&node));
        ops.extend(services::shard_ruleset());
        ops.push(rule(
            "mark-for-masquerade",
            vec![],
            Action::SetMarkBits(services::MASQUERADE_MARK),
        ));
        ops.push(rule(
            "cluster-dns",
            vec![Match::L4Proto(Protocol::Udp), Match::Dport(53)],
            Action::Dnat(Ipv4Addr::new(10, 0, 0, 5), None),
        ));
        ops.push(rule(
            "svc/default/web/tcp/80",
            vec![Match::L4Proto(Protocol::Tcp), Match::NumgenRandom(2)],
            Action::Dnat(Ipv4Addr::new(10, 42, 0, 5), Some(8080)),
        ));
        ops.push(rule(
            "ext/default/web/tcp/80",
            vec![],
            Action::Goto("svc/default/web/tcp/80".into()),
        ));
        ops
    }

    #[test]
    fn messages_are_byte_for_byte_those_nft_sends() {
        let ops = reference_ops();
        let b = Batch::encode(&ops);
        let msgs = messages(&b);
        for (command, want) in NFT_SENDS {
            let seq = (0..msgs.len())
                .find(|&seq| {
                    b.origin[seq].is_some_and(|i| ops[i as usize].to_string().starts_with(command))
                })
                .unwrap_or_else(|| panic!("no `{command}`"));
            assert_eq!(msgs[seq].2, *want, "{command}");
        }
    }

    #[test]
    fn ops_go_to_the_table_named_before_them() {
        let ports = BTreeMap::from([(web().key.clone(), web())]);
        let ops = services::changes(&BTreeMap::new(), &ports);
        let shard = services::shard_table(services::shard_of(&web().key));
        assert_eq!(ops[0], Op::Table(shard.clone()));
        let b = Batch::encode(&ops);
        let name = hex(shard.as_bytes());
        assert!(messages(&b)[1..]
            .iter()
            .filter(|m| m.0 != 17)
            .all(|m| m.2.contains(&name)));
    }

    #[test]
    fn one_message_per_op_in_a_batch_the_last_acknowledged() {
        let ports = BTreeMap::from([(web().key.clone(), web())]);
        let b = Batch::encode(&services::changes(&BTreeMap::new(), &ports));
        let msgs = messages(&b);
        // begin; chain; 2 rules; external-nodeports, service-ips and service-nodeports
        // elements; end.
        let types: Vec<u16> = msgs.iter().map(|m| m.0).collect();
        let nft = |msg| NFNL_SUBSYS_NFTABLES << 8 | msg;
        let (chain, rule, elem) = (nft(3), nft(6), nft(12));
        assert_eq!(types, [16, chain, rule, rule, elem, elem, elem, 17]);
        assert_eq!(msgs[2].1, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND);
        assert!(msgs[3].2.contains(&hex(&[10, 42, 1, 6])), "{}", msgs[3].2);
        // The acknowledgement is asked for on the last message only.
        assert_eq!(msgs[6].1, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK);
        assert!(msgs[..6].iter().all(|m| m.1 & NLM_F_ACK == 0));
        // Removing it: elements, then the chain (with its rules).
        let b = Batch::encode(&services::changes(&ports, &BTreeMap::new()));
        let types: Vec<u16> = messages(&b).iter().map(|m| m.0).collect();
        assert_eq!(types, [16, nft(14), nft(14), nft(14), nft(5), 17]);
    }

    #[test]
    fn a_reset_replaces_the_table_and_elements_come_in_few_messages() {
        let node = NodeNet {
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
            dns: Some((Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(10, 0, 0, 5))),
        };
        let mut ports = BTreeMap::new();
        for i in 0..3000u32 {
            let mut sp = web();
            sp.key = format!("default/web-{i}/tcp/80");
            sp.ips = vec![Ipv4Addr::from(0x0a60_1000 + i)];
            sp.node_ports = vec![];
            ports.insert(sp.key.clone(), sp);
        }
        let ops = services::full(&node, &ports);
        let b = Batch::encode(&ops);
        let msgs = messages(&b);
        let types: Vec<u16> = msgs.iter().map(|m| m.0 & 0xff).collect();
        assert_eq!(types[..4], [16, 0, 2, 0]);
        // 3000 elements of service-ips in a few messages per shard, each under 64 KiB.
        let elements = msgs.iter().filter(|m| m.0 & 0xff == 12).count();
        assert!((8..=20).contains(&elements), "{elements} element messages");
        // A message per other op (none for a table switch, 3 for a reset), and begin and end.
        let other: usize = ops
            .iter()
            .map(|op| match op {
                Op::AddElement(_) | Op::Table(_) => 0,
                Op::ResetTable => 3,
                _ => 1,
            })
            .sum();
        assert_eq!(msgs.len(), other + 2 + elements);
        // Errors map back to the op: every element message to the first element it holds.
        let first_elem = ops
            .iter()
            .position(|op| matches!(op, Op::AddElement(_)))
            .unwrap();
        let seq = msgs.iter().position(|m| m.0 & 0xff == 12).unwrap();
        assert_eq!(b.origin[seq], Some(first_elem as u32));
    }
}
