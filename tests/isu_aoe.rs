//! `opie isu serve` with an `[aoe]` table: the disks with a `[disk.aoe]`
//! table answer AoE on the named interface (a veth in a private network
//! namespace), the others do not, AoE and iSCSI serve the same bytes, and
//! frames from group addresses or for other stations get no answer.
//! Needs root (network namespace, raw sockets); skips without it, except
//! under `CI=true`, where that is a failure.

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

use aoe_proto::ata;
use aoe_proto::client::{self, Client};
use aoe_proto::frame::{
    AtaArg, Command as AoeCommand, ConfigArg, ConfigCommand, Mac, AFLAG_EXTENDED, AFLAG_WRITE,
    BROADCAST_SHELF, BROADCAST_SLOT, FLAG_ERROR,
};
use common::*;

const WAIT: Duration = Duration::from_millis(1500);
const BASE: &str = "iqn.2026-01.org.opie.test:aoe";

fn ata(
    c: &mut Client,
    dst: Mac,
    slot: u8,
    cmd: u8,
    lba: u64,
    n: u8,
    data: &[u8],
) -> (AtaArg, Vec<u8>) {
    let mut a = AtaArg {
        aflags: AFLAG_EXTENDED | if data.is_empty() { 0 } else { AFLAG_WRITE },
        sector_count: n,
        cmd_status: cmd,
        ..AtaArg::default()
    };
    a.set_lba(lba);
    let r = c
        .call(
            dst,
            3,
            slot,
            AoeCommand::Ata,
            &client::ata_arg(&a),
            data,
            WAIT,
        )
        .unwrap()
        .expect("no AoE reply");
    let f = r.frame();
    assert_eq!(
        f.header.flags & FLAG_ERROR,
        0,
        "AoE error {}",
        f.header.error
    );
    let (arg, d) = AtaArg::decode(f.payload).unwrap();
    (arg, d.to_vec())
}

#[test]
fn aoe_and_iscsi_serve_the_same_disk() {
    if !root_or_skip("aoe_and_iscsi_serve_the_same_disk") {
        return;
    }
    let ns = PrivateNet::enter("aoe");

    let t = tempfile::tempdir().unwrap();
    let cfg = write_config(
        t.path(),
        &format!(
            "[isu]\nbase_iqn = \"{BASE}\"\n[aoe]\ninterfaces = [\"isu0\"]\nshelf = 3\n\
             [[disk]]\nname = \"a\"\nsize = \"8M\"\n[disk.aoe]\nslot = 1\n\
             [[disk]]\nname = \"b\"\nsize = \"8M\"\n"
        ),
    );
    let data = t.path().join("data");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_opie")]);
    let mut d = Daemon::start_with(cmd, &cfg, &data, &[addr.to_string()], &[addr]);

    // Discovery: exactly disk a answers, at e3.1.
    let mut c = Client::open("ini0").unwrap();
    let tag = c.tag();
    let q = client::request(
        Mac::BROADCAST,
        c.mac(),
        BROADCAST_SHELF,
        BROADCAST_SLOT,
        AoeCommand::QueryConfig,
        tag,
        &client::config_arg(ConfigCommand::Read, b""),
        &[],
    );
    c.send_raw(&q).unwrap();
    let found: Vec<(Mac, u16, u8)> = c
        .collect(tag, WAIT)
        .unwrap()
        .iter()
        .map(|r| {
            let f = r.frame();
            ConfigArg::decode(f.payload).unwrap();
            (f.src, f.header.shelf, f.header.slot)
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}\n{}", d.log_text());
    let (target, shelf, slot) = found[0];
    assert_eq!((shelf, slot), (3, 1));

    // A read from a group source (the reply would go to the whole group) or
    // to another station's or a multicast address gets no answer; the same
    // read from us to the target's MAC does.
    let group = Mac([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]);
    let other = Mac([0x02, 0, 0, 0, 0, 0x99]);
    let mut read = AtaArg {
        aflags: AFLAG_EXTENDED,
        sector_count: 1,
        cmd_status: ata::CMD_READ_EXT,
        ..AtaArg::default()
    };
    read.set_lba(0);
    let me = c.mac();
    for (dst, src) in [
        (target, Mac::BROADCAST),
        (target, group),
        (target, Mac([0x33, 0x33, 0, 0, 0, 1])),
        (other, me),
        (group, me),
    ] {
        let tag = c.tag();
        let f = client::request(
            dst,
            src,
            3,
            1,
            AoeCommand::Ata,
            tag,
            &client::ata_arg(&read),
            &[],
        );
        c.send_raw(&f).unwrap();
        let got = c.collect(tag, Duration::from_millis(300)).unwrap();
        assert!(
            got.is_empty(),
            "a read from {src} to {dst} was answered (to {})",
            got[0].frame().dst
        );
    }
    ata(&mut c, target, 1, ata::CMD_READ_EXT, 0, 1, &[]);

    // Write over AoE, read it back over AoE, over iSCSI and from the file.
    let buf = pattern(11, 2 * 512); // two sectors fit a 1500-byte frame
    let (st, _) = ata(&mut c, target, 1, ata::CMD_WRITE_EXT, 40, 2, &buf);
    assert_eq!(st.cmd_status, ata::STATUS_DRDY);
    assert_eq!(ata(&mut c, target, 1, ata::CMD_READ_EXT, 40, 2, &[]).1, buf);
    let mut s = Session::login(
        addr,
        "iqn.2026-01.org.opie.test:i",
        Some(&format!("{BASE}:a")),
    )
    .unwrap();
    let _ = s.scsi(0, &[0, 0, 0, 0, 0, 0], &[], 0);
    assert!(
        read16(&mut s, 0, 40, 2, 512) == buf,
        "iSCSI reads other bytes than AoE wrote"
    );
    s.logout().unwrap();
    let mut on_disk = vec![0u8; buf.len()];
    File::open(data.join("a.img"))
        .unwrap()
        .read_exact_at(&mut on_disk, 40 * 512)
        .unwrap();
    assert!(on_disk == buf);

    d.signal(libc::SIGTERM);
    assert_eq!(
        d.wait_exit(20).and_then(|s| s.code()),
        Some(0),
        "{}",
        d.log_text()
    );
}
