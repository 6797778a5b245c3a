//! Negotiation between our initiator and our target, each driven by the key
//! table: for arbitrary values on both sides the two agree on what RFC 7143
//! §6.2 and §13 give (an oracle written here, key by key, from the RFC's
//! text), and a table of hand-checked cases pins each rule.

mod common;

use common::*;
use iscsi_proto::digest::Digest;
use iscsi_proto::login::{Auth, LoginConfig};
use iscsi_proto::negotiate::{Limits, Params};
use iscsi_proto::text::TextList;
use proptest::prelude::*;

/// Both sides' parameters after a login of an initiator with `init` (and
/// `overrides`) to a target with `tgt`; the target's answer to each key.
fn negotiate(
    init: &Limits,
    overrides: &[(&str, String)],
    tgt: &Limits,
    discovery: bool,
    auth: Auth,
) -> (Params, Params, TextList) {
    let mut cfg = LoginConfig::new(INITIATOR, (!discovery).then_some(TARGET));
    cfg.auth = auth;
    cfg.limits = init.clone();
    cfg.overrides = TextList(
        overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    );
    let (l, est, _) = login(cfg, tgt.clone(), &Ctx { creds: None });
    let l = l.expect("the login succeeds");
    let est = est.expect("the target is in Full Feature Phase");
    (l.params, est.params, l.target_keys)
}

// ---- the oracle ----------------------------------------------------------------------

/// What RFC 7143 gives for one session, seen from the initiator and from
/// the target.
fn oracle(
    init: &Limits,
    overrides: &[(&str, String)],
    tgt: &Limits,
    discovery: bool,
) -> (Params, Params) {
    let p = initiators_view(init, overrides, tgt, discovery);
    // The target sees the same with the segment lengths crossed: it may
    // send what the initiator declared, unless the declaration was out of
    // range and refused (then the default).
    let mut t = p.clone();
    t.recv_data_segment_length = tgt.max_recv_data_segment_length;
    t.send_data_segment_length = p.recv_data_segment_length;
    let declared = overrides
        .iter()
        .find(|(k, _)| *k == "MaxRecvDataSegmentLength")
        .map(|(_, v)| v.as_str());
    if declared.is_some_and(|v| parse(v, 512, 16_777_215).is_none()) {
        t.send_data_segment_length = 8192;
    }
    (p, t)
}

/// A number in `[lo, hi]`, decimal or `0x` hexadecimal (§5.1).
fn parse(v: &str, lo: u32, hi: u32) -> Option<u32> {
    let n: u64 = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok()?,
        None => v.parse().ok()?,
    };
    (u64::from(lo)..=u64::from(hi))
        .contains(&n)
        .then_some(n as u32)
}

fn initiators_view(
    init: &Limits,
    overrides: &[(&str, String)],
    tgt: &Limits,
    discovery: bool,
) -> Params {
    // §13: the defaults, which hold for every key not agreed.
    let mut p = Params {
        header_digest: Digest::None,
        data_digest: Digest::None,
        max_connections: 1,
        initial_r2t: true,
        immediate_data: true,
        max_burst_length: 262_144,
        first_burst_length: 65_536,
        default_time2wait: 2,
        default_time2retain: 20,
        max_outstanding_r2t: 1,
        data_pdu_in_order: true,
        data_sequence_in_order: true,
        error_recovery_level: 0,
        send_data_segment_length: 8192,
        recv_data_segment_length: init.max_recv_data_segment_length,
    };
    // The value the initiator offers for `key`: an override, or its own.
    let offer = |key: &str, own: String| -> String {
        overrides
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(own, |(_, v)| v.clone())
    };
    let num = parse;
    let boolean = |v: &str| match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    };
    let yn = |b: bool| if b { "Yes" } else { "No" }.to_string();
    // List selection: the first offered value the target supports; none
    // (or a malformed offer) is a Reject, and the default stays.
    let pick = |key: &str, own: &[Digest], theirs: &[Digest]| -> Digest {
        let name = |d: &Digest| match d {
            Digest::None => "None",
            Digest::Crc32c => "CRC32C",
        };
        let mine = own.iter().map(name).collect::<Vec<_>>().join(",");
        let offered = offer(key, if mine.is_empty() { "None".into() } else { mine });
        offered
            .split(',')
            .find_map(|v| theirs.iter().find(|d| name(d) == v))
            .copied()
            .unwrap_or(Digest::None)
    };
    p.header_digest = pick("HeaderDigest", &init.header_digests, &tgt.header_digests);
    p.data_digest = pick("DataDigest", &init.data_digests, &tgt.data_digests);
    // MaxRecvDataSegmentLength is declared, each side about itself: what
    // the initiator may send is the target's; a declaration out of range
    // is refused, and the default holds for the one who got it.
    p.send_data_segment_length = tgt.max_recv_data_segment_length;
    let declared = offer(
        "MaxRecvDataSegmentLength",
        init.max_recv_data_segment_length.to_string(),
    );
    if num(&declared, 512, 16_777_215).is_none() {
        p.send_data_segment_length = 8192;
    }
    if let Some(n) = num(&declared, 512, 16_777_215) {
        p.recv_data_segment_length = n;
    }
    p.error_recovery_level = num(
        &offer("ErrorRecoveryLevel", init.error_recovery_level.to_string()),
        0,
        2,
    )
    .map_or(0, |o| o.min(tgt.error_recovery_level));
    if discovery {
        // Every other key is for normal sessions only: Irrelevant.
        return p;
    }
    let min = |key: &str, own: u32, theirs: u32, lo: u32, hi: u32, default: u32| {
        num(&offer(key, own.to_string()), lo, hi).map_or(default, |o| o.min(theirs))
    };
    p.max_connections = min(
        "MaxConnections",
        init.max_connections,
        tgt.max_connections,
        1,
        65535,
        1,
    );
    p.max_burst_length = min(
        "MaxBurstLength",
        init.max_burst_length,
        tgt.max_burst_length,
        512,
        16_777_215,
        262_144,
    );
    p.first_burst_length = min(
        "FirstBurstLength",
        init.first_burst_length,
        tgt.first_burst_length,
        512,
        16_777_215,
        65_536,
    );
    p.default_time2retain = min(
        "DefaultTime2Retain",
        init.default_time2retain,
        tgt.default_time2retain,
        0,
        3600,
        20,
    );
    p.max_outstanding_r2t = min(
        "MaxOutstandingR2T",
        init.max_outstanding_r2t,
        tgt.max_outstanding_r2t,
        1,
        65535,
        1,
    );
    p.default_time2wait = num(
        &offer("DefaultTime2Wait", init.default_time2wait.to_string()),
        0,
        3600,
    )
    .map_or(2, |o| o.max(tgt.default_time2wait));
    let or = |key: &str, own: bool, theirs: bool, default: bool| {
        boolean(&offer(key, yn(own))).map_or(default, |o| o || theirs)
    };
    p.initial_r2t = or("InitialR2T", init.initial_r2t, tgt.initial_r2t, true);
    p.data_pdu_in_order = or(
        "DataPDUInOrder",
        init.data_pdu_in_order,
        tgt.data_pdu_in_order,
        true,
    );
    p.data_sequence_in_order = or(
        "DataSequenceInOrder",
        init.data_sequence_in_order,
        tgt.data_sequence_in_order,
        true,
    );
    p.immediate_data = boolean(&offer("ImmediateData", yn(init.immediate_data)))
        .is_none_or(|o| o && tgt.immediate_data);
    // §13.14: FirstBurstLength never exceeds MaxBurstLength.
    p.first_burst_length = p.first_burst_length.min(p.max_burst_length);
    p
}

// ---- arbitrary values --------------------------------------------------------------

fn digests() -> impl Strategy<Value = Vec<Digest>> {
    prop_oneof![
        Just(vec![]),
        Just(vec![Digest::None]),
        Just(vec![Digest::Crc32c]),
        Just(vec![Digest::Crc32c, Digest::None]),
        Just(vec![Digest::None, Digest::Crc32c]),
    ]
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        (
            512u32..=16_777_215,
            512u32..=16_777_215,
            512u32..=16_777_215,
        ),
        (1u32..=65535, 1u32..=4, 0u32..=2),
        (0u32..=3600, 0u32..=3600),
        any::<[bool; 4]>(),
        (digests(), digests()),
    )
        .prop_map(
            |((mrdsl, mbl, fbl), (r2t, conns, erl), (t2w, t2r), b, (hd, dd))| Limits {
                max_recv_data_segment_length: mrdsl,
                max_burst_length: mbl,
                first_burst_length: fbl,
                max_outstanding_r2t: r2t,
                initial_r2t: b[0],
                immediate_data: b[1],
                header_digests: hd,
                data_digests: dd,
                default_time2wait: t2w,
                default_time2retain: t2r,
                max_connections: conns,
                error_recovery_level: erl,
                data_pdu_in_order: b[2],
                data_sequence_in_order: b[3],
            },
        )
}

/// A target's values: the digests it supports must include None or the
/// login of an initiator without digests could not agree on any.
fn target_limits() -> impl Strategy<Value = Limits> {
    limits().prop_map(|mut l| {
        if l.header_digests.is_empty() {
            l.header_digests.push(Digest::None);
        }
        if l.data_digests.is_empty() {
            l.data_digests.push(Digest::None);
        }
        l
    })
}

/// Offers a faulty initiator could make instead: values out of range,
/// malformed, in hexadecimal, lists with unknown digests.
fn overrides() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let value = prop_oneof![
        (0u64..=20_000_000).prop_map(|n| n.to_string()),
        (0u64..=70_000).prop_map(|n| format!("0x{n:x}")),
        Just("abc".to_string()),
        Just("Yes".to_string()),
        Just("No".to_string()),
        Just("Maybe".to_string()),
        Just("MD5,CRC32C".to_string()),
        Just("CRC32C".to_string()),
        Just("None".to_string()),
    ];
    let key = prop::sample::select(vec![
        "HeaderDigest",
        "DataDigest",
        "MaxConnections",
        "InitialR2T",
        "ImmediateData",
        "MaxRecvDataSegmentLength",
        "MaxBurstLength",
        "FirstBurstLength",
        "DefaultTime2Wait",
        "DefaultTime2Retain",
        "MaxOutstandingR2T",
        "DataPDUInOrder",
        "DataSequenceInOrder",
        "ErrorRecoveryLevel",
    ]);
    proptest::collection::btree_map(key, value, 0..4).prop_map(|m| m.into_iter().collect())
}

proptest! {
    #[test]
    fn originator_and_responder_agree_with_the_rfc(
        init in limits(),
        faults in overrides(),
        tgt in target_limits(),
        discovery in any::<bool>(),
        skip_security in any::<bool>(),
    ) {
        let auth = if skip_security { Auth::Skip } else { Auth::None };
        let (ours, theirs, _) = negotiate(&init, &faults, &tgt, discovery, auth);
        let (want_ours, want_theirs) = oracle(&init, &faults, &tgt, discovery);
        prop_assert_eq!(&ours, &want_ours, "the initiator's outcome");
        prop_assert_eq!(&theirs, &want_theirs, "the target's outcome");
    }
}

// ---- hand-checked cases --------------------------------------------------------------

/// One parameter of a side's outcome, as text; the segment lengths as
/// `send/recv`.
fn value_of(p: &Params, key: &str) -> String {
    let d = |d: Digest| {
        if d == Digest::Crc32c {
            "CRC32C"
        } else {
            "None"
        }
        .to_string()
    };
    match key {
        "HeaderDigest" => d(p.header_digest),
        "DataDigest" => d(p.data_digest),
        "InitialR2T" => p.initial_r2t.to_string(),
        "ImmediateData" => p.immediate_data.to_string(),
        "MaxBurstLength" => p.max_burst_length.to_string(),
        "FirstBurstLength" => p.first_burst_length.to_string(),
        "DefaultTime2Wait" => p.default_time2wait.to_string(),
        "DefaultTime2Retain" => p.default_time2retain.to_string(),
        "ErrorRecoveryLevel" => p.error_recovery_level.to_string(),
        "MaxRecvDataSegmentLength" => format!(
            "{}/{}",
            p.send_data_segment_length, p.recv_data_segment_length
        ),
        _ => String::new(),
    }
}

type Case = (
    bool,            // discovery session
    &'static str,    // key
    &'static str,    // the initiator offers
    fn(&mut Limits), // the target's own value
    &'static str,    // the target answers
    &'static str,    // the initiator's outcome
    &'static str,    // the target's outcome
);

#[rustfmt::skip]
const CASES: &[Case] = &[
    // MaxBurstLength: the minimum of both, in range 512..2^24-1.
    (false, "MaxBurstLength", "1048576", |l| l.max_burst_length = 262_144, "262144", "262144", "262144"),
    (false, "MaxBurstLength", "65536", |l| l.max_burst_length = 1_048_576, "65536", "65536", "65536"),
    (false, "MaxBurstLength", "0x4000", |_| {}, "16384", "16384", "16384"),
    (false, "MaxBurstLength", "100", |_| {}, "Reject", "262144", "262144"),
    // FirstBurstLength: the minimum, then at most MaxBurstLength.
    (false, "FirstBurstLength", "16777215", |l| l.max_burst_length = 65_536, "262144", "65536", "65536"),
    // InitialR2T: OR.
    (false, "InitialR2T", "No", |l| l.initial_r2t = false, "No", "false", "false"),
    (false, "InitialR2T", "No", |l| l.initial_r2t = true, "Yes", "true", "true"),
    (false, "InitialR2T", "Yes", |l| l.initial_r2t = false, "Yes", "true", "true"),
    // ImmediateData: AND.
    (false, "ImmediateData", "Yes", |l| l.immediate_data = false, "No", "false", "false"),
    (false, "ImmediateData", "No", |l| l.immediate_data = true, "No", "false", "false"),
    (false, "ImmediateData", "Yes", |l| l.immediate_data = true, "Yes", "true", "true"),
    // Digests: the first of the initiator's list the target supports.
    (false, "HeaderDigest", "CRC32C,None", |_| {}, "CRC32C", "CRC32C", "CRC32C"),
    (false, "HeaderDigest", "None,CRC32C", |_| {}, "None", "None", "None"),
    (false, "DataDigest", "MD5,CRC32C", |_| {}, "CRC32C", "CRC32C", "CRC32C"),
    (false, "DataDigest", "CRC32C", |l| l.data_digests = vec![Digest::None], "Reject", "None", "None"),
    // MaxRecvDataSegmentLength: declared, each side about itself.
    (false, "MaxRecvDataSegmentLength", "65536", |l| l.max_recv_data_segment_length = 262_144, "262144", "262144/65536", "65536/262144"),
    (true, "MaxRecvDataSegmentLength", "4096", |l| l.max_recv_data_segment_length = 8192, "8192", "8192/4096", "4096/8192"),
    (false, "MaxRecvDataSegmentLength", "100", |_| {}, "Reject", "8192/262144", "8192/262144"),
    // ErrorRecoveryLevel: the minimum, in range 0..2.
    (false, "ErrorRecoveryLevel", "2", |l| l.error_recovery_level = 1, "1", "1", "1"),
    (false, "ErrorRecoveryLevel", "3", |_| {}, "Reject", "0", "0"),
    // DefaultTime2Wait: the maximum; DefaultTime2Retain: the minimum.
    (false, "DefaultTime2Wait", "0", |l| l.default_time2wait = 2, "2", "2", "2"),
    (false, "DefaultTime2Retain", "20", |l| l.default_time2retain = 0, "0", "0", "0"),
    // Keys of normal sessions are Irrelevant in a discovery session.
    (true, "MaxBurstLength", "4096", |_| {}, "Irrelevant", "262144", "262144"),
    (true, "InitialR2T", "No", |_| {}, "Irrelevant", "true", "true"),
    // A key nobody knows.
    (false, "X-org.opie.test", "1", |_| {}, "NotUnderstood", "", ""),
];

#[test]
fn hand_checked_cases() {
    for &(discovery, key, offered, target, answered, ours, theirs) in CASES {
        let mut tgt = Limits::default();
        target(&mut tgt);
        let faults = [(key, offered.to_string())];
        let (i, t, keys) = negotiate(&Limits::initiator(), &faults, &tgt, discovery, Auth::Skip);
        let case = format!("{key}={offered} (discovery: {discovery})");
        assert_eq!(keys.get(key), Some(answered), "{case}: the answer");
        assert_eq!(value_of(&i, key), ours, "{case}: the initiator's outcome");
        assert_eq!(value_of(&t, key), theirs, "{case}: the target's outcome");
    }
}
