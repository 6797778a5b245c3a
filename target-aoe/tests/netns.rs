//! Integration tests: the AoE server on veth interfaces in a private network
//! namespace, driven by aoe-proto's test client. They need root (network
//! namespaces); without it they print why and skip, except under `CI=true`,
//! where that is a failure.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command as Cmd;
use std::sync::Arc;
use std::time::Duration;

use aoe_proto::ata::{self, AtaStatus};
use aoe_proto::client::{self, Client, Response};
use aoe_proto::frame::{
    AtaArg, Command, ConfigArg, ConfigCommand, Directive, Mac, MaskArg, ReserveArg, AFLAG_EXTENDED,
    AFLAG_WRITE, BROADCAST_SHELF, BROADCAST_SLOT, DIRECTIVE_ADD, DIRECTIVE_DELETE, FLAG_ERROR,
    MASK_EDIT, MASK_ERR_BAD_DIRECTIVE, MASK_READ, RESERVE_FORCE, RESERVE_READ, RESERVE_SET,
};
use aoe_proto::identify::Identify;
use blockdev::file::{FileDevice, FileOptions};
use blockdev::{BlockDevice, DeviceIdentity, FaultyDevice};
use target_aoe::{AoeConfig, AoeDisk, AoeDiskConfig, AoeServer};

const WAIT: Duration = Duration::from_millis(800);
const SILENCE: Duration = Duration::from_millis(300);
const SHELF: u16 = 7;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips a test that cannot run here: prints SKIP, or fails under `CI=true`
/// (CI must run every test, so a skip there is never a pass).
fn skip(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "cannot run under CI=true: {why}"
    );
    eprintln!("SKIP: {why}");
}

fn ip(args: &[&str]) {
    let st = Cmd::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// A network namespace with bridges and veth ports, removed on drop. The
/// creating thread is moved into it (sockets it opens live there).
struct Lab {
    ns: String,
    mtu: u32,
}

impl Lab {
    fn new(tag: &str, mtu: u32) -> Option<Lab> {
        if !is_root() {
            skip("AoE netns tests need root (network namespaces and raw sockets)");
            return None;
        }
        let ns = format!("aoet-{tag}-{}", std::process::id());
        let _ = Cmd::new("ip").args(["netns", "del", &ns]).status();
        ip(&["netns", "add", &ns]);
        let lab = Lab { ns, mtu };
        let f = File::open(format!("/run/netns/{}", lab.ns)).expect("open netns");
        // SAFETY: f is an open netns descriptor; setns only changes this thread's namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        ip(&["link", "set", "lo", "up"]);
        Some(lab)
    }

    fn bridge(&self, br: &str) {
        ip(&["link", "add", br, "type", "bridge"]);
        ip(&["link", "set", br, "mtu", &self.mtu.to_string(), "up"]);
    }

    /// A veth port `name` whose peer is attached to `br`.
    fn port(&self, name: &str, br: &str) {
        let peer = format!("{name}p");
        ip(&[
            "link",
            "add",
            name,
            "mtu",
            &self.mtu.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "mtu",
            &self.mtu.to_string(),
        ]);
        ip(&["link", "set", &peer, "master", br, "up"]);
        ip(&["link", "set", name, "up"]);
        // Keep IPv6 chatter off the segment.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Cmd::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn disk(dir: &Path, name: &str, mib: u64, slot: u8) -> AoeDisk {
    let path = dir.join(name);
    let dev = FileDevice::open(
        &path,
        &FileOptions {
            create_size: Some(mib << 20),
            ..FileOptions::default()
        },
        DeviceIdentity::from_name(name),
    )
    .expect("backing file");
    AoeDisk {
        config: AoeDiskConfig {
            slot,
            mac_mask: None,
            config_string: None,
        },
        device: Arc::new(dev),
        state_path: dir.join(format!("{name}.config")),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn cfg(ifaces: &[&str]) -> AoeConfig {
    AoeConfig {
        interfaces: ifaces.iter().map(|s| s.to_string()).collect(),
        shelf: SHELF,
        buffer_count: Some(16),
        mac_mask: vec![],
        write_back: false,
    }
}

fn ata_req(cmd: u8, lba: u64, count: u8, ext: bool, write: bool) -> Vec<u8> {
    let mut a = AtaArg {
        aflags: if ext { AFLAG_EXTENDED } else { 0 } | if write { AFLAG_WRITE } else { 0 },
        sector_count: count,
        cmd_status: cmd,
        ..AtaArg::default()
    };
    a.set_lba(lba);
    client::ata_arg(&a)
}

fn ata_resp(r: &Response) -> (AtaArg, Vec<u8>) {
    let f = r.frame();
    assert_eq!(
        f.header.flags & FLAG_ERROR,
        0,
        "unexpected AoE error {}",
        f.header.error
    );
    let (a, data) = AtaArg::decode(f.payload).unwrap();
    (a, data.to_vec())
}

fn aoe_error(r: &Option<Response>) -> u8 {
    let f = r.as_ref().expect("a reply").frame();
    assert_ne!(f.header.flags & FLAG_ERROR, 0, "expected an error reply");
    f.header.error
}

struct Peer {
    c: Client,
    target: Mac,
    slot: u8,
}

impl Peer {
    fn ata(&mut self, arg: &[u8], data: &[u8]) -> Option<Response> {
        self.c
            .call(self.target, SHELF, self.slot, Command::Ata, arg, data, WAIT)
            .unwrap()
    }
    fn read(&mut self, lba: u64, n: u8) -> (AtaArg, Vec<u8>) {
        let r = self
            .ata(&ata_req(ata::CMD_READ_EXT, lba, n, true, false), &[])
            .expect("read reply");
        ata_resp(&r)
    }
    fn write(&mut self, lba: u64, data: &[u8]) -> AtaArg {
        let n = (data.len() / 512) as u8;
        let r = self
            .ata(&ata_req(ata::CMD_WRITE_EXT, lba, n, true, true), data)
            .expect("write reply");
        ata_resp(&r).0
    }
    fn cfg(&mut self, ccmd: ConfigCommand, s: &[u8]) -> Option<Response> {
        self.c
            .call(
                self.target,
                SHELF,
                self.slot,
                Command::QueryConfig,
                &client::config_arg(ccmd, s),
                &[],
                WAIT,
            )
            .unwrap()
    }
    fn mask(&mut self, m: &MaskArg) -> Option<Response> {
        self.c
            .call(
                self.target,
                SHELF,
                self.slot,
                Command::MacMask,
                &client::mask_arg(m),
                &[],
                WAIT,
            )
            .unwrap()
    }
    fn reserve(&mut self, rcmd: u8, macs: Vec<Mac>) -> Option<Response> {
        self.c
            .call(
                self.target,
                SHELF,
                self.slot,
                Command::ReserveRelease,
                &client::reserve_arg(&ReserveArg { rcmd, macs }),
                &[],
                WAIT,
            )
            .unwrap()
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn discover(c: &mut Client) -> Vec<(Mac, u8, ConfigArg)> {
    let tag = c.tag();
    let f = client::request(
        Mac::BROADCAST,
        c.mac(),
        BROADCAST_SHELF,
        BROADCAST_SLOT,
        Command::QueryConfig,
        tag,
        &client::config_arg(ConfigCommand::Read, b""),
        &[],
    );
    c.send_raw(&f).unwrap();
    let mut got: Vec<_> = c
        .collect(tag, WAIT)
        .unwrap()
        .iter()
        .map(|r| {
            let f = r.frame();
            (f.src, f.header.slot, ConfigArg::decode(f.payload).unwrap())
        })
        .collect();
    got.sort_by_key(|g| g.1);
    got
}

/// A lab at MTU 1500: one bridge with the target's port `tgt` and a client
/// port `c1`. `None` without root.
fn simple_lab(tag: &str) -> Option<Lab> {
    let lab = Lab::new(tag, 1500)?;
    lab.bridge("br0");
    lab.port("tgt", "br0");
    lab.port("c1", "br0");
    Some(lab)
}

/// Serves `disks` on `tgt`.
fn serve(rt: &tokio::runtime::Runtime, disks: Vec<AoeDisk>) -> AoeServer {
    rt.block_on(async { AoeServer::start(&cfg(&["tgt"]), disks) })
        .unwrap()
}

/// A client on `c1` for slot `slot` of the target it discovers there.
fn peer_on_c1(slot: u8) -> Peer {
    let mut c = Client::open("c1").unwrap();
    let target = discover(&mut c)[0].0;
    Peer { c, target, slot }
}

#[test]
fn commands_config_mask_and_reservations() {
    let Some(lab) = Lab::new("cmd", 1500) else {
        return;
    };
    lab.bridge("br0");
    for p in ["tgt", "c1", "c2"] {
        lab.port(p, "br0");
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let disks = vec![disk(dir.path(), "d1", 8, 1), disk(dir.path(), "d2", 4, 2)];
    let server = rt
        .block_on(async { AoeServer::start(&cfg(&["tgt"]), disks) })
        .unwrap();

    // Broadcast discovery: both disks answer with honest limits.
    let mut c1 = Client::open("c1").unwrap();
    let found = discover(&mut c1);
    assert_eq!(found.len(), 2, "{found:?}");
    let target = found[0].0;
    for (i, (mac, slot, arg)) in found.iter().enumerate() {
        assert_eq!(*mac, target);
        assert_eq!(*slot, i as u8 + 1);
        assert_eq!(arg.buffer_count, 16);
        assert_eq!(arg.max_sectors, 2, "(1500 - 22) / 512");
        assert_eq!(arg.aoe_version, 1);
    }
    let mut p1 = Peer {
        c: c1,
        target,
        slot: 1,
    };
    let mut p2 = Peer {
        c: Client::open("c2").unwrap(),
        target,
        slot: 1,
    };

    // IDENTIFY: capacity, LBA48, serial from the identity.
    let (a, page) = ata_resp(
        &p1.ata(&ata_req(ata::CMD_IDENTIFY, 0, 1, false, false), &[])
            .unwrap(),
    );
    assert_eq!(a.cmd_status, ata::STATUS_DRDY);
    assert_eq!(page.len(), 512);
    let id = Identify::parse(&page).unwrap();
    let sectors = (8u64 << 20) / 512;
    assert_eq!(id.sectors, sectors);
    assert!(id.lba48);
    assert_eq!(id.serial, DeviceIdentity::from_name("d1").serial);

    // READ/WRITE in every form, and the data lands in the file.
    let data = pattern(1, 1024);
    assert_eq!(p1.write(100, &data).cmd_status, ata::STATUS_DRDY);
    assert_eq!(p1.read(100, 2).1, data);
    let on_disk = std::fs::read(dir.path().join("d1")).unwrap();
    assert_eq!(&on_disk[100 * 512..102 * 512], &data[..]);
    for (wcmd, rcmd, ext) in [
        (ata::CMD_WRITE, ata::CMD_READ, false),
        (ata::CMD_WRITE_DMA, ata::CMD_READ_DMA, false),
        (ata::CMD_WRITE_DMA_EXT, ata::CMD_READ_DMA_EXT, true),
    ] {
        let d = pattern(wcmd, 512);
        let r = p1
            .ata(&ata_req(wcmd, 200 + u64::from(wcmd), 1, ext, true), &d)
            .unwrap();
        assert_eq!(ata_resp(&r).0.cmd_status, ata::STATUS_DRDY);
        let r = p1
            .ata(&ata_req(rcmd, 200 + u64::from(wcmd), 1, ext, false), &[])
            .unwrap();
        assert_eq!(ata_resp(&r).1, d, "command {rcmd:#x}");
    }
    // Out of range: ATA error IDNF; unsupported: ABRT; flush and power mode succeed.
    let (a, _) = ata_resp(
        &p1.ata(
            &ata_req(ata::CMD_READ_EXT, sectors - 1, 2, true, false),
            &[],
        )
        .unwrap(),
    );
    assert_eq!(
        (a.cmd_status, a.err_feature),
        (AtaStatus::ID_NOT_FOUND.status, ata::ERR_IDNF)
    );
    let (a, _) = ata_resp(
        &p1.ata(
            &ata_req(ata::CMD_WRITE_EXT, sectors, 1, true, true),
            &[0; 512],
        )
        .unwrap(),
    );
    assert_eq!(a.err_feature, ata::ERR_IDNF);
    let (a, _) = ata_resp(&p1.ata(&ata_req(0xB0, 0, 1, false, false), &[]).unwrap());
    assert_eq!(
        (a.cmd_status, a.err_feature),
        (ata::STATUS_DRDY | ata::STATUS_ERR, ata::ERR_ABRT)
    );
    let (a, _) = ata_resp(
        &p1.ata(&ata_req(ata::CMD_FLUSH_EXT, 0, 0, true, false), &[])
            .unwrap(),
    );
    assert_eq!(a.cmd_status, ata::STATUS_DRDY);
    let (a, _) = ata_resp(
        &p1.ata(&ata_req(ata::CMD_CHECK_POWER, 0, 0, false, false), &[])
            .unwrap(),
    );
    assert_eq!((a.cmd_status, a.sector_count), (ata::STATUS_DRDY, 0xFF));
    // More sectors than a frame holds, short write data: AoE bad argument.
    assert_eq!(
        aoe_error(&p1.ata(&ata_req(ata::CMD_READ_EXT, 0, 3, true, false), &[])),
        2
    );
    assert_eq!(
        aoe_error(&p1.ata(&ata_req(ata::CMD_WRITE_EXT, 0, 2, true, true), &[0; 600])),
        2
    );
    // Unknown command and unsupported version.
    assert_eq!(
        aoe_error(
            &p1.c
                .call(target, SHELF, 1, Command::Other(9), &[], &[], WAIT)
                .unwrap()
        ),
        1
    );
    let tag = p1.c.tag();
    let mut f = client::request(
        target,
        p1.c.mac(),
        SHELF,
        1,
        Command::QueryConfig,
        tag,
        &client::config_arg(ConfigCommand::Read, b""),
        &[],
    );
    f[14] = 0x20;
    p1.c.send_raw(&f).unwrap();
    assert_eq!(aoe_error(&p1.c.wait_for(tag, WAIT).unwrap()), 5);

    // Query Config: all five sub-commands; the string is persisted.
    let cs = |r: &Option<Response>| {
        ConfigArg::decode(r.as_ref().expect("config reply").frame().payload)
            .unwrap()
            .config
    };
    assert_eq!(cs(&p1.cfg(ConfigCommand::Read, b"")), b"");
    assert_eq!(
        cs(&p1.cfg(ConfigCommand::SetIfEmpty, b"host=alpha")),
        b"host=alpha"
    );
    assert_eq!(
        aoe_error(&p1.cfg(ConfigCommand::SetIfEmpty, b"host=beta")),
        4
    );
    assert_eq!(
        cs(&p1.cfg(ConfigCommand::TestExact, b"host=alpha")),
        b"host=alpha"
    );
    assert!(
        p1.cfg(ConfigCommand::TestExact, b"host=alp").is_none(),
        "no reply on mismatch"
    );
    assert_eq!(
        cs(&p1.cfg(ConfigCommand::TestPrefix, b"host=")),
        b"host=alpha"
    );
    assert!(p1.cfg(ConfigCommand::TestPrefix, b"host=b").is_none());
    assert_eq!(
        cs(&p1.cfg(ConfigCommand::ForceSet, b"host=gamma")),
        b"host=gamma"
    );
    assert_eq!(
        std::fs::read(dir.path().join("d1.config")).unwrap(),
        b"host=gamma"
    );
    assert_eq!(aoe_error(&p1.cfg(ConfigCommand::Other(7), b"")), 2);

    // MAC mask list: read, add c1 (c2 is then ignored on every command), bad directive, delete.
    let list = |r: &Option<Response>| {
        MaskArg::decode(r.as_ref().expect("mask reply").frame().payload).unwrap()
    };
    assert!(list(&p1.mask(&MaskArg {
        mcmd: MASK_READ,
        merror: 0,
        directives: vec![]
    }))
    .directives
    .is_empty());
    let me = p1.c.mac();
    let r = list(&p1.mask(&MaskArg {
        mcmd: MASK_EDIT,
        merror: 0,
        directives: vec![Directive {
            dcmd: DIRECTIVE_ADD,
            mac: me,
        }],
    }));
    assert_eq!(
        (r.merror, r.directives.len(), r.directives[0].mac),
        (0, 1, me)
    );
    assert!(
        p2.cfg(ConfigCommand::Read, b"").is_none(),
        "masked MAC must get no reply"
    );
    assert!(p2
        .ata(&ata_req(ata::CMD_IDENTIFY, 0, 1, false, false), &[])
        .is_none());
    assert_eq!(discover(&mut p2.c).len(), 1, "only slot 2 answers c2");
    assert_eq!(p1.read(100, 2).1, data);
    let r = list(&p1.mask(&MaskArg {
        mcmd: MASK_EDIT,
        merror: 0,
        directives: vec![Directive { dcmd: 9, mac: me }],
    }));
    assert_eq!(r.merror, MASK_ERR_BAD_DIRECTIVE);
    let r = list(&p1.mask(&MaskArg {
        mcmd: MASK_EDIT,
        merror: 0,
        directives: vec![Directive {
            dcmd: DIRECTIVE_DELETE,
            mac: me,
        }],
    }));
    assert!(r.directives.is_empty());
    assert!(p2.cfg(ConfigCommand::Read, b"").is_some());

    // Reservations: c1 reserves; c2 gets error 6 except for IDENTIFY; force set moves it.
    let res = |r: &Option<Response>| {
        ReserveArg::decode(r.as_ref().expect("reserve reply").frame().payload)
            .unwrap()
            .macs
    };
    assert!(res(&p2.reserve(RESERVE_READ, vec![])).is_empty());
    assert_eq!(res(&p1.reserve(RESERVE_SET, vec![me])), vec![me]);
    assert_eq!(
        aoe_error(&p2.ata(&ata_req(ata::CMD_READ_EXT, 0, 1, true, false), &[])),
        6
    );
    assert_eq!(
        aoe_error(&p2.ata(&ata_req(ata::CMD_WRITE_EXT, 0, 1, true, true), &[0; 512])),
        6
    );
    assert!(
        ata_resp(
            &p2.ata(&ata_req(ata::CMD_IDENTIFY, 0, 1, false, false), &[])
                .unwrap()
        )
        .1
        .len()
            == 512
    );
    assert_eq!(aoe_error(&p2.reserve(RESERVE_SET, vec![p2.c.mac()])), 6);
    assert_eq!(aoe_error(&p2.cfg(ConfigCommand::ForceSet, b"stolen")), 6);
    assert_eq!(res(&p2.reserve(RESERVE_READ, vec![])), vec![me]);
    assert_eq!(p1.read(100, 2).1, data);
    let c2mac = p2.c.mac();
    assert_eq!(res(&p2.reserve(RESERVE_FORCE, vec![c2mac])), vec![c2mac]);
    assert_eq!(
        aoe_error(&p1.ata(&ata_req(ata::CMD_READ_EXT, 0, 1, true, false), &[])),
        6
    );
    assert!(res(&p2.reserve(RESERVE_SET, vec![])).is_empty());
    assert_eq!(p1.read(100, 2).1, data);
    // Before the restart: c1 reserves, and the mask list admits c1 and c2.
    assert_eq!(res(&p1.reserve(RESERVE_SET, vec![me])), vec![me]);
    let admit = |p: &mut Peer, macs: &[Mac]| {
        let directives = macs
            .iter()
            .map(|&mac| Directive {
                dcmd: DIRECTIVE_ADD,
                mac,
            })
            .collect();
        list(&p.mask(&MaskArg {
            mcmd: MASK_EDIT,
            merror: 0,
            directives,
        }))
    };
    assert_eq!(admit(&mut p1, &[me, c2mac]).directives.len(), 2);

    rt.block_on(server.shutdown()).unwrap();
    // The config string, the reservation and the mask list survive a restart.
    let disks = vec![disk(dir.path(), "d1", 8, 1)];
    let server = rt
        .block_on(async { AoeServer::start(&cfg(&["tgt"]), disks) })
        .unwrap();
    assert_eq!(cs(&p1.cfg(ConfigCommand::Read, b"")), b"host=gamma");
    assert_eq!(res(&p2.reserve(RESERVE_READ, vec![])), vec![me]);
    assert_eq!(
        aoe_error(&p2.ata(&ata_req(ata::CMD_READ_EXT, 0, 1, true, false), &[])),
        6
    );
    let mut masked = admit(&mut p1, &[])
        .directives
        .iter()
        .map(|d| d.mac)
        .collect::<Vec<_>>();
    masked.sort();
    let mut want = vec![me, c2mac];
    want.sort();
    assert_eq!(masked, want);
    rt.block_on(server.shutdown()).unwrap();
    drop(lab);
}

#[test]
fn malformed_frames_get_errors_or_are_dropped() {
    let Some(lab) = simple_lab("bad") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = serve(&rt, vec![disk(dir.path(), "d1", 1, 1)]);
    let Peer { mut c, target, .. } = peer_on_c1(1);
    // Truncated arguments of each command: bad argument.
    for cmd in [
        Command::Ata,
        Command::QueryConfig,
        Command::MacMask,
        Command::ReserveRelease,
    ] {
        let tag = c.tag();
        let mut f = client::request(target, c.mac(), SHELF, 1, cmd, tag, &[], &[]);
        f.truncate(24 + 1);
        c.send_raw(&f).unwrap();
        assert_eq!(aoe_error(&c.wait_for(tag, WAIT).unwrap()), 2, "{cmd:?}");
    }
    // Mask and reserve lists longer than the frame: bad argument.
    let tag = c.tag();
    let f = client::request(
        target,
        c.mac(),
        SHELF,
        1,
        Command::ReserveRelease,
        tag,
        &[RESERVE_SET, 50, 1, 2, 3],
        &[],
    );
    c.send_raw(&f).unwrap();
    assert_eq!(aoe_error(&c.wait_for(tag, WAIT).unwrap()), 2);
    // Header cut short: dropped, no reply.
    let tag = c.tag();
    let f = client::request(target, c.mac(), SHELF, 1, Command::Ata, tag, &[], &[]);
    c.send_raw(&f[..18]).unwrap();
    assert!(c.wait_for(tag, SILENCE).unwrap().is_none());
    // A storm of random frames addressed to the target, then it still works.
    let mut seed = 0x1234_5678u32;
    for i in 0..3000 {
        let len = 15 + (i % 200);
        let mut f = client::request(
            target,
            c.mac(),
            SHELF,
            1,
            Command::from((i % 5) as u8),
            0x4000_0000 + i as u32,
            &[],
            &[],
        );
        f.truncate(24);
        while f.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            f.push(seed as u8);
        }
        if i % 7 == 0 {
            f[14] = (seed as u8) | 0x10;
        }
        c.send_raw(&f).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = c
        .call(
            target,
            SHELF,
            1,
            Command::Ata,
            &ata_req(ata::CMD_IDENTIFY, 0, 1, false, false),
            &[],
            Duration::from_secs(3),
        )
        .unwrap();
    assert_eq!(ata_resp(&r.expect("target still answers")).1.len(), 512);
    rt.block_on(server.shutdown()).unwrap();
    drop(lab);
}

#[test]
fn jumbo_frames_multi_interface_and_write_ordering() {
    let Some(lab) = Lab::new("jumbo", 9000) else {
        return;
    };
    lab.bridge("bra");
    lab.bridge("brb");
    lab.port("tgta", "bra");
    lab.port("tgtb", "brb");
    lab.port("ca", "bra");
    lab.port("cb", "brb");
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = rt
        .block_on(async {
            AoeServer::start(&cfg(&["tgta", "tgtb"]), vec![disk(dir.path(), "d1", 16, 3)])
        })
        .unwrap();
    let mut ca = Client::open("ca").unwrap();
    let mut cb = Client::open("cb").unwrap();
    let fa = discover(&mut ca);
    let fb = discover(&mut cb);
    assert_eq!((fa.len(), fb.len()), (1, 1));
    assert_eq!(fa[0].2.max_sectors, 17, "(9000 - 22) / 512");
    assert_ne!(fa[0].0, fb[0].0, "each path answers from its own interface");
    let mut pa = Peer {
        c: ca,
        target: fa[0].0,
        slot: 3,
    };
    let mut pb = Peer {
        c: cb,
        target: fb[0].0,
        slot: 3,
    };
    // A 17-sector jumbo write on one path reads back on the other.
    let data = pattern(9, 17 * 512);
    assert_eq!(pa.write(1000, &data).cmd_status, ata::STATUS_DRDY);
    let r = pb
        .ata(&ata_req(ata::CMD_READ_EXT, 1000, 17, true, false), &[])
        .unwrap();
    assert_eq!(r.frame().src, fb[0].0);
    assert_eq!(ata_resp(&r).1, data);
    assert_eq!(
        aoe_error(&pa.ata(&ata_req(ata::CMD_READ_EXT, 0, 18, true, false), &[])),
        2
    );

    // Overlapping writes sent back to back (as retransmits with new tags are)
    // are all answered and applied in arrival order: the last one wins.
    let mut tags = vec![];
    for k in 0..40u8 {
        let tag = pa.c.tag();
        let f = client::request(
            pa.target,
            pa.c.mac(),
            SHELF,
            3,
            Command::Ata,
            tag,
            &ata_req(ata::CMD_WRITE_EXT, 2000 + u64::from(k % 4), 8, true, true),
            &pattern(k, 8 * 512),
        );
        pa.c.send_raw(&f).unwrap();
        tags.push(tag);
    }
    let mut answered = std::collections::HashSet::new();
    for r in pa.c.responses(Duration::from_secs(2)).unwrap() {
        let t = r.frame().header.tag;
        if tags.contains(&t) {
            assert_eq!(ata_resp(&r).0.cmd_status, ata::STATUS_DRDY);
            answered.insert(t);
        }
    }
    assert_eq!(answered.len(), tags.len(), "every write answered");
    // Expected image: apply the 40 writes in order.
    let mut image = vec![0u8; 11 * 512];
    for k in 0..40u8 {
        let off = usize::from(k % 4) * 512;
        image[off..off + 8 * 512].copy_from_slice(&pattern(k, 8 * 512));
    }
    assert_eq!(pb.read(2000, 11).1, image);

    // Reads sent back to back (contiguous runs, which the server merges into
    // one device call, broken by a read elsewhere and by a write) each get
    // their own sectors back under their own tag.
    let base = 4000u64;
    // (`pattern` repeats every 256 bytes, so each frame gets its own seed.)
    let image: Vec<u8> = (0..32u8).flat_map(|k| pattern(100 + k, 17 * 512)).collect();
    for (k, chunk) in image.chunks(17 * 512).enumerate() {
        assert_eq!(
            pa.write(base + 17 * k as u64, chunk).cmd_status,
            ata::STATUS_DRDY
        );
    }
    let at2000 = pb.read(2000, 11).1;
    let chunk = |lba: u64| image[(lba - base) as usize * 512..][..17 * 512].to_vec();
    let reqs: Vec<Req> = (0..32u64)
        .map(|k| match k {
            9 => (2000, 11, None),
            20 => (base + 17 * 20, 17, Some(chunk(base + 17 * 20))),
            _ => (base + 17 * k, 17, None),
        })
        .collect();
    for round in 0..8 {
        let replies = burst(&mut pa.c, pa.target, 3, &reqs);
        for ((lba, _, data), (a, got)) in reqs.iter().zip(&replies) {
            assert_eq!(a.cmd_status, ata::STATUS_DRDY, "round {round}, lba {lba}");
            let want = match lba {
                2000 => at2000.clone(),
                _ if data.is_some() => continue,
                _ => chunk(*lba),
            };
            assert!(*got == want, "round {round}, lba {lba}: wrong data");
        }
    }
    rt.block_on(server.shutdown()).unwrap();
    drop(lab);
}

/// A lab at MTU 1500 with a target port `tgt` and a client port `c1` on one
/// bridge, and an 8 MiB disk in slot 1 on a fault-injecting device over a
/// file in `dir`. `None` without root.
fn faulty_lab(tag: &str, dir: &Path) -> Option<(Lab, Arc<FaultyDevice>, AoeDisk)> {
    let lab = simple_lab(tag)?;
    let base = disk(dir, "d1", 8, 1);
    let faulty = Arc::new(FaultyDevice::new(base.device.clone(), 7));
    let d = AoeDisk {
        device: faulty.clone(),
        ..base
    };
    Some((lab, faulty, d))
}

#[test]
fn acknowledged_writes_survive_power_loss() {
    let dir = tempfile::tempdir().unwrap();
    let Some((lab, faulty, d)) = faulty_lab("crash", dir.path()) else {
        return;
    };
    let rt = runtime();
    // A device with a volatile write cache: what was written but not flushed
    // (or FUA) when it "loses power" is lost or torn, block by block.
    faulty.enable_volatile_cache();
    let server = rt
        .block_on(async { AoeServer::start(&cfg(&["tgt"]), vec![d]) })
        .unwrap();
    let mut c = Client::open("c1").unwrap();
    let target = discover(&mut c)[0].0;
    // A window of 16 writes sent back to back, as the driver does; the
    // acknowledgements of a receive batch share a flush.
    let reqs: Vec<Req> = (0..16u64)
        .map(|i| (i * 2, 2, Some(pattern(i as u8 + 1, 1024))))
        .collect();
    for (a, _) in burst(&mut c, target, 1, &reqs) {
        assert_eq!(a.cmd_status, ata::STATUS_DRDY, "every write acknowledged");
    }
    // Power loss now: nothing acknowledged may be lost.
    rt.block_on(faulty.crash()).unwrap();
    let back = rt.block_on(faulty.read(0, 32)).unwrap();
    for i in 0..16usize {
        assert_eq!(
            &back[i * 1024..(i + 1) * 1024],
            &pattern(i as u8 + 1, 1024)[..],
            "acknowledged write {i} lost in the crash"
        );
    }
    rt.block_on(server.shutdown()).unwrap();
    drop(lab);
}

/// One ATA request of a [`burst`]: LBA, sectors, and the data of a write
/// (`None`: a read).
type Req = (u64, u8, Option<Vec<u8>>);

/// Sends `reqs` to e`SHELF`.`slot` in one `sendmmsg` (as the driver sends
/// its window), so the server's receive batches hold several of them, and
/// returns each one's reply (ATA argument and data), in request order. A
/// write's reply data is only padding.
fn burst(c: &mut Client, target: Mac, slot: u8, reqs: &[Req]) -> Vec<(AtaArg, Vec<u8>)> {
    let mut tags = Vec::new();
    let mut out = Vec::new();
    for (lba, n, data) in reqs {
        let tag = c.tag();
        let cmd = match data {
            Some(_) => ata::CMD_WRITE_EXT,
            None => ata::CMD_READ_EXT,
        };
        out.push(client::request(
            target,
            c.mac(),
            SHELF,
            slot,
            Command::Ata,
            tag,
            &ata_req(cmd, *lba, *n, true, data.is_some()),
            data.as_deref().unwrap_or(&[]),
        ));
        tags.push(tag);
    }
    c.socket()
        .send_batch(out.iter().map(|f| [&f[..], &[][..]]))
        .unwrap();
    let replies = c.responses(Duration::from_millis(500)).unwrap();
    tags.iter()
        .map(|t| {
            let r = replies
                .iter()
                .find(|r| r.frame().header.tag == *t)
                .unwrap_or_else(|| panic!("request {t:#x} unanswered"));
            ata_resp(r)
        })
        .collect()
}

#[test]
fn a_bad_sector_fails_only_the_frames_that_touch_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some((lab, faulty, d)) = faulty_lab("badsec", dir.path()) else {
        return;
    };
    let rt = runtime();
    faulty.fail_reads(101..102);
    faulty.fail_writes(231..232);
    let server = rt
        .block_on(async { AoeServer::start(&cfg(&["tgt"]), vec![d]) })
        .unwrap();
    let mut c = Client::open("c1").unwrap();
    let target = discover(&mut c)[0].0;
    // Contiguous 2-sector frames around each bad sector, sent in bursts:
    // the server merges what arrives together into one device call, and a
    // failed merged call must not fail the neighbours of the bad sector.
    let reads: Vec<Req> = (0..32).map(|k| (64 + 2 * k, 2, None)).collect();
    let writes: Vec<Req> = (0..32)
        .map(|k| (200 + 2 * k, 2, Some(pattern(k as u8, 1024))))
        .collect();
    // Written first, so the reads find the page cache and are served on the
    // receive thread (the inline path) as well as by the disk's worker.
    let fill: Vec<Req> = (0..32)
        .map(|k| (64 + 2 * k, 2, Some(pattern(k as u8, 1024))))
        .collect();
    assert!(burst(&mut c, target, 1, &fill)
        .iter()
        .all(|(a, _)| a.cmd_status & ata::STATUS_ERR == 0));
    for round in 0..6 {
        for (reqs, bad) in [(&reads, 101u64), (&writes, 231)] {
            let replies = burst(&mut c, target, 1, reqs);
            for ((lba, _, data), (a, _)) in reqs.iter().zip(&replies) {
                let failed = a.cmd_status & ata::STATUS_ERR != 0;
                assert_eq!(
                    failed,
                    (*lba..lba + 2).contains(&bad),
                    "round {round}: {} at lba {lba}: status {:#x}",
                    if data.is_some() { "write" } else { "read" },
                    a.cmd_status
                );
            }
        }
    }
    rt.block_on(server.shutdown()).unwrap();
    drop(lab);
}

/// A small ext4 file system on a loop device, for state files: `freeze`
/// makes every write to it hang (`fsfreeze`, as on a hung storage path),
/// `thaw` lets them go on, and `read_only` makes them fail. Thawed and
/// unmounted on drop.
struct StateFs {
    _dir: tempfile::TempDir,
    mnt: std::path::PathBuf,
}

impl StateFs {
    fn new() -> StateFs {
        let dir = tempfile::tempdir().unwrap();
        let (img, mnt) = (dir.path().join("fs.img"), dir.path().join("mnt"));
        std::fs::create_dir(&mnt).unwrap();
        File::create(&img).unwrap().set_len(16 << 20).unwrap();
        run(Cmd::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
        run(Cmd::new("mount").args(["-o", "loop"]).arg(&img).arg(&mnt));
        StateFs { _dir: dir, mnt }
    }

    fn path(&self) -> &Path {
        &self.mnt
    }

    fn freeze(&self) {
        run(Cmd::new("fsfreeze").arg("-f").arg(&self.mnt));
    }

    fn thaw(&self) {
        run(Cmd::new("fsfreeze").arg("-u").arg(&self.mnt));
    }

    fn read_only(&self, ro: bool) {
        let opt = if ro { "remount,ro" } else { "remount,rw" };
        run(Cmd::new("mount").args(["-o", opt]).arg(&self.mnt));
    }
}

impl Drop for StateFs {
    fn drop(&mut self) {
        let _ = Cmd::new("fsfreeze").arg("-u").arg(&self.mnt).output();
        let _ = Cmd::new("umount").arg(&self.mnt).output();
    }
}

fn run(c: &mut Cmd) {
    let out = c.output().expect("run a command");
    assert!(out.status.success(), "{c:?}: {out:?}");
}

/// Sends a Query Config force-set without waiting; returns its tag.
fn send_force_set(p: &mut Peer, s: &[u8]) -> u32 {
    let tag = p.c.tag();
    let f = client::request(
        p.target,
        p.c.mac(),
        SHELF,
        p.slot,
        Command::QueryConfig,
        tag,
        &client::config_arg(ConfigCommand::ForceSet, s),
        &[],
    );
    p.c.send_raw(&f).unwrap();
    tag
}

fn mask_edit(dcmd: u8, mac: Mac) -> MaskArg {
    MaskArg {
        mcmd: MASK_EDIT,
        merror: 0,
        directives: vec![Directive { dcmd, mac }],
    }
}

#[test]
fn reads_and_writes_never_wait_for_a_blocked_state_write() {
    let Some(lab) = simple_lab("blocked") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fs = StateFs::new();
    let state_file = fs.path().join("d1.config");
    let rt = runtime();
    let mut d1 = disk(dir.path(), "d1", 8, 1);
    d1.state_path = state_file.clone();
    let server = serve(&rt, vec![d1]);
    let mut p = peer_on_c1(1);
    let data = pattern(3, 1024);
    assert_eq!(p.write(100, &data).cmd_status, ata::STATUS_DRDY);
    // The state's file system hangs: the next state write blocks in it.
    fs.freeze();
    let mut set_tags = vec![send_force_set(&mut p, b"stalled")];
    std::thread::sleep(Duration::from_millis(200));
    // Reads and writes are answered meanwhile, with the right data.
    for i in 0..20u64 {
        let d = pattern(i as u8, 1024);
        assert_eq!(p.write(200 + 2 * i, &d).cmd_status, ata::STATUS_DRDY);
        assert_eq!(
            p.read(200 + 2 * i, 2).1,
            d,
            "read {i} while a state write hangs"
        );
        assert_eq!(p.read(100, 2).1, data);
    }
    // More force-sets wait for the write (their replies mean "persisted").
    for i in 0..5 {
        set_tags.push(send_force_set(&mut p, format!("stalled-{i}").as_bytes()));
    }
    assert!(
        p.c.responses(SILENCE)
            .unwrap()
            .iter()
            .all(|r| !set_tags.contains(&r.frame().header.tag)),
        "a force-set was answered before its write"
    );
    // The config in effect is the last one set.
    let cs = |r: &Option<Response>| {
        ConfigArg::decode(r.as_ref().expect("config reply").frame().payload)
            .unwrap()
            .config
    };
    assert_eq!(cs(&p.cfg(ConfigCommand::Read, b"")), b"stalled-4");
    assert_eq!(p.read(100, 2).1, data);

    // The file system comes back: every waiting force-set is answered with
    // the state written for it: the first with its own (its write was the
    // one that hung), the others with the last one set, which the next write
    // covers.
    fs.thaw();
    let mut answered = std::collections::HashSet::new();
    for r in p.c.responses(Duration::from_secs(2)).unwrap() {
        let f = r.frame();
        if set_tags.contains(&f.header.tag) {
            assert_eq!(f.header.flags & FLAG_ERROR, 0, "a written change failed");
            let want: &[u8] = if f.header.tag == set_tags[0] {
                b"stalled"
            } else {
                b"stalled-4"
            };
            assert_eq!(ConfigArg::decode(f.payload).unwrap().config, want);
            answered.insert(f.header.tag);
        }
    }
    assert_eq!(
        answered.len(),
        set_tags.len(),
        "every waiting force-set answered"
    );
    assert_eq!(std::fs::read(&state_file).unwrap(), b"stalled-4");

    // A write that fails: the change is answered "device unavailable" and
    // undone; reads go on.
    fs.read_only(true);
    let r = p.cfg(ConfigCommand::ForceSet, b"lost").expect("a reply");
    assert_ne!(
        r.frame().header.flags & FLAG_ERROR,
        0,
        "a failed write answered OK"
    );
    assert_eq!(r.frame().header.error, 3);
    assert_eq!(cs(&p.cfg(ConfigCommand::Read, b"")), b"stalled-4");
    assert_eq!(p.read(100, 2).1, data);
    // Writes work again.
    fs.read_only(false);
    assert_eq!(cs(&p.cfg(ConfigCommand::ForceSet, b"after")), b"after");
    assert_eq!(std::fs::read(&state_file).unwrap(), b"after");
    rt.block_on(server.shutdown()).unwrap();
    drop(lab);
}

/// Counts renames onto files in a directory (each completed state write is
/// one), by inotify. (The kernel merges an event into an identical one still
/// queued, so renames onto one name in a row would count once: the watch also
/// takes each rename's IN_MOVED_FROM, which comes between.)
struct Renames {
    fd: std::os::fd::OwnedFd,
}

impl Renames {
    fn watch(dir: &Path) -> Renames {
        use std::os::fd::FromRawFd;
        // SAFETY: plain inotify calls; the descriptor is checked and owned.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1");
        // SAFETY: fd is a fresh descriptor nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid descriptor and NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                c.as_ptr(),
                libc::IN_MOVED_FROM | libc::IN_MOVED_TO,
            )
        };
        assert!(wd >= 0, "inotify_add_watch");
        Renames { fd }
    }

    /// Renames onto each file name since the last call.
    fn take(&self) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: reads into a buffer we own, of its length.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            };
            if n <= 0 {
                return counts;
            }
            let mut off = 0usize;
            while off + 16 <= n as usize {
                // struct inotify_event: wd, mask, cookie, len, name[len].
                let field = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
                let (mask, len) = (field(off + 4), field(off + 12) as usize);
                let name = &buf[off + 16..off + 16 + len];
                let name = String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap());
                if mask & libc::IN_MOVED_TO != 0 {
                    *counts.entry(name.into_owned()).or_insert(0) += 1;
                }
                off += 16 + len;
            }
        }
    }
}

#[test]
fn a_flood_of_state_changes_costs_few_writes_and_the_last_state_survives() {
    let Some(lab) = simple_lab("flood") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = serve(&rt, vec![disk(dir.path(), "d1", 8, 1)]);
    let mut p = peer_on_c1(1);
    let (me, target) = (p.c.mac(), p.target);
    // Admit ourselves, so toggling another address never masks us out.
    assert!(p.mask(&mask_edit(DIRECTIVE_ADD, me)).is_some());
    let renames = Renames::watch(dir.path());
    // 2000 force-sets and 2000 mask toggles, sent in bursts as fast as the
    // socket takes them.
    const N: usize = 2000;
    let other = Mac([2, 0, 0, 0, 0x5a, 0x5a]);
    let mut tags = std::collections::HashSet::new();
    let frames: Vec<Vec<u8>> = (0..2 * N)
        .map(|i| {
            let tag = p.c.tag();
            tags.insert(tag);
            let (cmd, arg) = if i < N {
                let s = format!("flood-{i:05}-{}", ".".repeat(500));
                (
                    Command::QueryConfig,
                    client::config_arg(ConfigCommand::ForceSet, s.as_bytes()),
                )
            } else {
                let dcmd = if i % 2 == 0 {
                    DIRECTIVE_ADD
                } else {
                    DIRECTIVE_DELETE
                };
                (Command::MacMask, client::mask_arg(&mask_edit(dcmd, other)))
            };
            client::request(target, me, SHELF, 1, cmd, tag, &arg, &[])
        })
        .collect();
    for chunk in frames.chunks(64) {
        p.c.socket()
            .send_batch(chunk.iter().map(|f| [&f[..], &[][..]]))
            .unwrap();
    }
    // The last changes, answered once persisted.
    let cs = |r: &Option<Response>| {
        ConfigArg::decode(r.as_ref().expect("config reply").frame().payload)
            .unwrap()
            .config
    };
    let last = |p: &mut Peer| loop {
        if let Some(r) = p.cfg(ConfigCommand::ForceSet, b"the last one") {
            assert_eq!(r.frame().header.flags & FLAG_ERROR, 0);
            break cs(&Some(r));
        }
    };
    assert_eq!(last(&mut p), b"the last one");
    let r = loop {
        if let Some(r) = p.mask(&mask_edit(DIRECTIVE_DELETE, other)) {
            break r;
        }
    };
    let listed: Vec<Mac> = MaskArg::decode(r.frame().payload)
        .unwrap()
        .directives
        .iter()
        .map(|d| d.mac)
        .collect();
    assert_eq!(listed, vec![me]);
    // Every flood reply that came is a success.
    for r in p.c.responses(SILENCE).unwrap() {
        let f = r.frame();
        if tags.contains(&f.header.tag) {
            assert_eq!(f.header.flags & FLAG_ERROR, 0, "error {}", f.header.error);
        }
    }
    // Far fewer writes than changes: they were coalesced.
    let writes = renames.take();
    let (config_writes, access_writes) = (
        writes.get("d1.config").copied().unwrap_or(0),
        writes.get("d1.config.access").copied().unwrap_or(0),
    );
    assert!(
        (1..=N / 20).contains(&config_writes) && (1..=N / 20).contains(&access_writes),
        "{config_writes} config and {access_writes} access list writes for {N} changes each"
    );
    assert_eq!(
        std::fs::read(dir.path().join("d1.config")).unwrap(),
        b"the last one"
    );
    rt.block_on(server.shutdown()).unwrap();
    // After a restart: the last state.
    let server = serve(&rt, vec![disk(dir.path(), "d1", 8, 1)]);
    assert_eq!(cs(&p.cfg(ConfigCommand::Read, b"")), b"the last one");
    let r = p
        .mask(&MaskArg {
            mcmd: MASK_READ,
            merror: 0,
            directives: vec![],
        })
        .expect("mask read");
    let listed: Vec<Mac> = MaskArg::decode(r.frame().payload)
        .unwrap()
        .directives
        .iter()
        .map(|d| d.mac)
        .collect();
    assert_eq!(listed, vec![me]);
    rt.block_on(server.shutdown()).unwrap();
    drop(lab);
}
