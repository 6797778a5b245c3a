//! What `opie up` prints once the appliance answers: what runs, how to
//! attach an initiator to it, and how to watch it. Every command is a line
//! of its own, as it can be pasted.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::Path;

use super::layout::ISUS;
use super::ready::Capacity;

/// One export as the clients see it.
#[derive(Debug, Clone)]
pub struct Export {
    /// Its target name.
    pub iqn: String,
    /// LUN 0's capacity (None when the probe could not log in: CHAP or an
    /// initiator list).
    pub capacity: Option<Capacity>,
}

/// `addr` as iSCSI tools write a portal (IPv6 in brackets).
fn portal(addr: SocketAddr) -> String {
    addr.to_string()
}

/// The text printed when the appliance is ready. `data_dir` as the user
/// gave it; `portals` where the head is reached; `status` the `opie
/// status` command when the head serves its control socket.
pub fn instructions(
    data_dir: &Path,
    portals: &[SocketAddr],
    exports: &[Export],
    status: Option<String>,
) -> String {
    let mut s = String::new();
    let p = portal(portals[0]);
    let _ = writeln!(
        s,
        "opie up: ready: {ISUS} ISUs, a RAID5 array across them, served by the head on {}",
        portals
            .iter()
            .map(|a| portal(*a))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for e in exports {
        match e.capacity {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "  export {} LUN 0: {} ({} blocks of {} bytes)",
                    e.iqn,
                    bytesize::ByteSize::b(c.bytes()).display().iec(),
                    c.blocks,
                    c.block_size
                );
            }
            None => {
                let _ = writeln!(s, "  export {} LUN 0", e.iqn);
            }
        }
    }
    let _ = writeln!(s, "\nAttach with open-iscsi (as root):");
    let _ = writeln!(s, "  iscsiadm -m discovery -t sendtargets -p {p}");
    for e in exports {
        let _ = writeln!(s, "  iscsiadm -m node -T {} -p {p} --login", e.iqn);
    }
    let _ = writeln!(
        s,
        "  (then lsblk shows the new disk; detach: the same with --logout)"
    );
    let _ = writeln!(s, "\nList it with libiscsi (libiscsi-bin):");
    let _ = writeln!(s, "  iscsi-ls -s iscsi://{p}");
    let _ = writeln!(
        s,
        "\nBoot or attach it in qemu (libiscsi driver, qemu-block-extra):"
    );
    for e in exports {
        let _ = writeln!(
            s,
            "  qemu-system-x86_64 -drive file=iscsi://{p}/{}/0,format=raw,if=virtio ...",
            e.iqn
        );
    }
    let _ = writeln!(s, "\nWatch it:");
    if let Some(st) = status {
        let _ = writeln!(s, "  {st}");
    }
    let d = data_dir.display();
    let _ = writeln!(
        s,
        "  tail -f {d}/head/head.log      # arrays degraded/healthy, sessions"
    );
    let _ = writeln!(s, "  tail -f {d}/isu*/isu.log       # the ISUs");
    let _ = writeln!(
        s,
        "\nCtrl-C stops everything: the head first (drained, flushed), then the ISUs."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_on_its_own_line() {
        let t = instructions(
            Path::new("opie-data"),
            &["127.0.0.1:3260".parse().unwrap()],
            &[Export {
                iqn: "iqn.2026-01.org.opie.up:v0".into(),
                capacity: Some(Capacity {
                    blocks: 4096,
                    block_size: 512,
                }),
            }],
            None,
        );
        let lines: Vec<&str> = t.lines().map(str::trim).collect();
        for want in [
            "iscsiadm -m discovery -t sendtargets -p 127.0.0.1:3260",
            "iscsiadm -m node -T iqn.2026-01.org.opie.up:v0 -p 127.0.0.1:3260 --login",
            "iscsi-ls -s iscsi://127.0.0.1:3260",
            "qemu-system-x86_64 -drive file=iscsi://127.0.0.1:3260/iqn.2026-01.org.opie.up:v0/0,format=raw,if=virtio ...",
        ] {
            assert!(lines.contains(&want), "{want:?} not a line of:\n{t}");
        }
        assert!(t.contains("2.0 MiB (4096 blocks of 512 bytes)"), "{t}");
    }
}
