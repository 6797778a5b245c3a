//! Login text parsing: a full 64 KiB list of the shortest distinct keys (an
//! attacker's worst case, refused at the key cap) and a list at the cap.
//! `cargo bench -p iscsi-proto --bench text`
#![allow(missing_docs)] // criterion's macros generate undocumented items

use criterion::{criterion_group, criterion_main, Criterion};
use iscsi_proto::text::{TextList, MAX_KEYS, MAX_TEXT_LEN};

fn keys(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("k{i}=\0").into_bytes())
        .collect()
}

fn text(c: &mut Criterion) {
    let mut flood = keys(20_000);
    flood.truncate(MAX_TEXT_LEN);
    c.bench_function("parse 64 KiB of distinct keys", |b| {
        b.iter(|| TextList::parse(std::hint::black_box(&flood)))
    });
    let full = keys(MAX_KEYS);
    c.bench_function("parse a list at the key cap", |b| {
        b.iter(|| TextList::parse(std::hint::black_box(&full)))
    });
}

criterion_group!(benches, text);
criterion_main!(benches);
