//! What the network-namespace tests share: a private namespace with veth
//! links, and sectors stamped with their address, a generation and a CRC32C.
//! Needs root; without it a test says why and skips, except under
//! `CI=true`, where that is a failure.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command as Cmd;
use std::sync::atomic::{AtomicU32, Ordering};

pub fn ip(args: &[&str]) {
    let st = Cmd::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// Whether the test may run; false (a skip) only outside CI.
pub fn root_or_skip(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "cannot run under CI=true: {what} needs root"
    );
    eprintln!("SKIP: {what} needs root");
    false
}

/// A namespace of this test, removed on drop; the creating thread (and
/// every thread it starts afterwards) lives in it.
pub struct Netns(pub String);

impl Netns {
    pub fn enter() -> Option<Netns> {
        static N: AtomicU32 = AtomicU32::new(0);
        if !root_or_skip("AoE netns tests") {
            return None;
        }
        let ns = format!(
            "aoe2-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let _ = Cmd::new("ip")
            .args(["netns", "del", &ns])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &ns]);
        let f = File::open(format!("/run/netns/{ns}")).expect("open netns");
        // SAFETY: f is an open netns descriptor; setns changes only this thread's namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        ip(&["link", "set", "lo", "up"]);
        Some(Netns(ns))
    }

    /// Bridge `br` with veth ports `a` and `b` on it, every link at `mtu`.
    pub fn network(&self, br: &str, ports: [&str; 2], mtu: u32) {
        let mtu = mtu.to_string();
        ip(&["link", "add", br, "mtu", &mtu, "type", "bridge"]);
        ip(&["link", "set", br, "up"]);
        for p in ports {
            let peer = format!("{p}p");
            ip(&[
                "link", "add", p, "mtu", &mtu, "type", "veth", "peer", "name", &peer, "mtu", &mtu,
            ]);
            ip(&["link", "set", &peer, "master", br, "up"]);
            ip(&["link", "set", p, "up"]);
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{p}/disable_ipv6"), "1");
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Cmd::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Sector `lba` of generation `gen`: the address, the generation, a fill,
/// and the CRC32C of the rest in the last 4 bytes.
pub fn stamp(lba: u64, gen: u64) -> Vec<u8> {
    let mut s = vec![(lba as u8) ^ (gen as u8); 512];
    s[..8].copy_from_slice(&lba.to_le_bytes());
    s[8..16].copy_from_slice(&gen.to_le_bytes());
    let crc = crc32c::crc32c(&s[..508]);
    s[508..].copy_from_slice(&crc.to_le_bytes());
    s
}

/// `n` stamped sectors from `lba`.
pub fn stamped(lba: u64, n: u64, gen: u64) -> Vec<u8> {
    (lba..lba + n).flat_map(|l| stamp(l, gen)).collect()
}

/// Checks sector `lba` as read: its CRC, its address, and generation `gen`
/// (0: never written, all zeroes).
pub fn check(lba: u64, sector: &[u8], gen: u64) {
    if gen == 0 {
        assert!(sector.iter().all(|b| *b == 0), "sector {lba}: not zero");
        return;
    }
    let crc = u32::from_le_bytes(sector[508..512].try_into().unwrap());
    assert_eq!(crc, crc32c::crc32c(&sector[..508]), "sector {lba}: bad CRC");
    let at = u64::from_le_bytes(sector[..8].try_into().unwrap());
    let g = u64::from_le_bytes(sector[8..16].try_into().unwrap());
    assert_eq!(
        (at, g),
        (lba, gen),
        "sector {lba}: wrong address or generation"
    );
}
