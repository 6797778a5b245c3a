//! Fuzzes the initiator's side of the wire: a hostile or broken target (or
//! anyone on the segment) must not crash a head. The input is a script run
//! against a [`TargetState`] with two paths: requests submitted, replies
//! made from the frames it sent with fuzzer bytes laid over them (status,
//! error, LBA, flags, tag, data length), arbitrary frames, time passing,
//! requests abandoned by their callers;
//! every frame also goes to a [`Discovery`]. Checked: nothing panics, every
//! request finishes once at most, and a read that succeeds returns exactly
//! the bytes asked for.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aoe_proto::frame::{encode_headers, AtaArg, ConfigArg, ConfigCommand, Frame, Mac};
use initiator_aoe::discovery::Discovery;
use initiator_aoe::{Interface, Request, Settings, TargetState, Transmit};
use libfuzzer_sys::fuzz_target;

const SHELF: u16 = 3;
const SLOT: u8 = 4;

fn local(id: usize) -> Interface {
    Interface {
        id,
        mac: Mac([2, 0, 0, 0, 1, id as u8]),
        mtu: if id == 0 { 1500 } else { 9000 },
    }
}

struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// The reply a target would send to `t`, then `patch` laid over it from
/// byte `at` on, and cut or grown to `len` when given.
fn reply(t: &Transmit, at: usize, patch: &[u8], len: Option<usize>) -> Vec<u8> {
    let Ok(f) = Frame::decode(&t.frame) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    encode_headers(&mut out, f.src, f.dst, &f.header.response());
    if let Ok((arg, _)) = AtaArg::decode(f.payload) {
        arg.encode(&mut out);
        out.resize(out.len() + usize::from(arg.sector_count) * 512, 0xa5);
    } else {
        out.extend_from_slice(f.payload);
    }
    for (i, b) in patch.iter().enumerate() {
        if let Some(x) = out.get_mut(at + i) {
            *x = *b;
        }
    }
    if let Some(len) = len {
        out.resize(len, 0);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut s = Script(data);
    let mut now = Instant::now();
    let mut core = TargetState::new(SHELF, SLOT, Settings::default());
    for (i, bc) in [(0usize, 4u16), (1, 64)] {
        core.learn(
            local(i),
            Mac([2, 0, 0, 0, 2, i as u8]),
            &ConfigArg {
                buffer_count: bc,
                firmware: 1,
                max_sectors: 255,
                aoe_version: 1,
                ccmd: ConfigCommand::Read,
                config: Vec::new(),
            },
        );
    }
    let mut discovery = Discovery::default();
    let mut sent: Vec<Transmit> = Vec::new();
    let mut reads: HashMap<u64, usize> = HashMap::new();
    let mut open: HashMap<u64, ()> = HashMap::new();
    while let Some(op) = s.byte() {
        match op % 7 {
            0 | 1 => {
                let lba = u64::from(s.byte().unwrap_or(0)) * 7;
                let n = u32::from(s.byte().unwrap_or(1) % 48);
                let req = if op % 7 == 0 {
                    Request::Read { lba, sectors: n }
                } else {
                    Request::Write {
                        lba,
                        data: vec![op; n as usize * 512].into(),
                    }
                };
                let id = core.submit(now, req);
                open.insert(id, ());
                if op % 7 == 0 {
                    reads.insert(id, n as usize * 512);
                }
            }
            2 => {
                // Answer a frame sent (maybe again), with bytes laid over it.
                if sent.is_empty() {
                    continue;
                }
                let k = usize::from(s.byte().unwrap_or(0)) % sent.len();
                let at = usize::from(s.byte().unwrap_or(0));
                let n = usize::from(s.byte().unwrap_or(0) % 8);
                let patch = s.bytes(n).to_vec();
                let len = match s.byte() {
                    Some(b) if b & 1 == 1 => Some(usize::from(b) * 5),
                    _ => None,
                };
                let r = reply(&sent[k], at, &patch, len);
                if let Ok(f) = Frame::decode(&r) {
                    discovery.take("e0", &f);
                    core.handle_frame(now, local(sent[k].iface), &f);
                }
            }
            3 => {
                // Any frame at all, as this target's or not.
                let n = usize::from(s.byte().unwrap_or(0));
                let mut f = s.bytes(n).to_vec();
                if f.len() >= 20 && op & 0x80 != 0 {
                    f[12..14].copy_from_slice(&[0x88, 0xa2]);
                    f[16..18].copy_from_slice(&SHELF.to_be_bytes());
                    f[18] = SLOT;
                }
                if let Ok(fr) = Frame::decode(&f) {
                    discovery.take("e1", &fr);
                    core.handle_frame(now, local(usize::from(op >> 6 & 1)), &fr);
                }
            }
            4 => {
                let ms = u64::from(s.byte().unwrap_or(0)) * 40;
                now += Duration::from_millis(ms);
                if core.poll_timeout().is_some_and(|t| t <= now) {
                    core.handle_timeout(now);
                }
            }
            5 => {
                let _ = core.is_settled(now);
            }
            _ => {
                // The caller of an open request goes away.
                let k = u64::from(s.byte().unwrap_or(0));
                if let Some(&id) = open.keys().find(|id| **id % 16 == k % 16) {
                    core.cancel(id);
                }
            }
        }
        while let Some(t) = core.poll_transmit(now) {
            if sent.len() >= 256 {
                sent.remove(0);
            }
            sent.push(t);
        }
        while let Some(c) = core.poll_completion() {
            assert!(
                open.remove(&c.id).is_some(),
                "request {} finished twice",
                c.id
            );
            if let (Ok(d), Some(&n)) = (&c.result, reads.get(&c.id)) {
                assert_eq!(d.len(), n, "a read returned the bytes asked for");
            }
        }
    }
    let _ = discovery.found();
});
