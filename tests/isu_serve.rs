//! `opie isu serve` end to end over TCP with a minimal initiator: stable
//! identity on every portal and across restarts, discovery answers in the
//! right form for every portal, SIGTERM drains and exits 0, and nothing
//! acknowledged as durable (FUA, SYNCHRONIZE CACHE) is lost on SIGKILL.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;

use common::*;

const BASE: &str = "iqn.2026-01.org.opie.test:serve";
const INITIATOR: &str = "iqn.2026-01.org.opie.test:initiator";

fn config(extra_disk: &str) -> String {
    format!(
        "[isu]\nbase_iqn = \"{BASE}\"\nlisten = [\"127.0.0.1:1\"]\n\
         [[disk]]\nname = \"d0\"\nsize = \"16M\"\n\
         [[disk]]\nname = \"d4k\"\nsize = \"16M\"\nblock_size = 4096\n{extra_disk}"
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// One designation descriptor: (association, designator type, designator).
type Designator = (u8, u8, Vec<u8>);

/// Designation descriptors of a VPD 0x83 page.
fn designators(p83: &[u8]) -> Vec<Designator> {
    let mut out = Vec::new();
    let mut i = 4;
    while i + 4 <= p83.len() {
        let len = p83[i + 3] as usize;
        let end = (i + 4 + len).min(p83.len());
        out.push((
            (p83[i + 1] >> 4) & 3,
            p83[i + 1] & 0x0f,
            p83[i + 4..end].to_vec(),
        ));
        i += 4 + len;
    }
    out
}

/// The logical-unit part of an identity: VPD 0x80 and the LU designators of 0x83.
fn lu_identity(pages: &(Vec<u8>, Vec<u8>)) -> (Vec<u8>, Vec<Designator>) {
    let lu: Vec<_> = designators(&pages.1)
        .into_iter()
        .filter(|d| d.0 == 0)
        .collect();
    assert!(
        lu.iter().any(|d| d.1 == 3),
        "no NAA designator: {:02x?}",
        pages.1
    );
    (pages.0.clone(), lu)
}

/// The relative target port (designator type 4, target port association).
fn relative_port(pages: &(Vec<u8>, Vec<u8>)) -> Option<u16> {
    designators(&pages.1)
        .into_iter()
        .find(|d| d.0 == 1 && d.1 == 4 && d.2.len() == 4)
        .map(|d| u16::from_be_bytes([d.2[2], d.2[3]]))
}

/// VPD 0x80 serial and the 0x83 designators, as raw pages.
fn identity_pages(a: SocketAddr, target: &str) -> (Vec<u8>, Vec<u8>) {
    let mut s = Session::login(a, INITIATOR, Some(target)).unwrap();
    // The first command of a new nexus may meet a unit attention: retry once.
    let _ = s.scsi(0, &[0, 0, 0, 0, 0, 0], &[], 0);
    let p80 = inquiry_vpd(&mut s, 0, 0x80);
    let p83 = inquiry_vpd(&mut s, 0, 0x83);
    s.logout().unwrap();
    (p80, p83)
}

#[test]
fn identity_is_identical_on_every_portal_and_survives_restart() {
    let t = tempfile::tempdir().unwrap();
    let cfg = write_config(
        t.path(),
        &config("[[disk]]\nname = \"fixed\"\nsize = \"1M\"\nserial = \"OPIE-SERIAL-7\"\n"),
    );
    let data = t.path().join("data");
    let p = free_port();
    let portals = [format!("127.0.0.1:{p}"), format!("[::1]:{p},2")];
    let addrs = [addr(&format!("127.0.0.1:{p}")), addr(&format!("[::1]:{p}"))];
    let target = format!("{BASE}:d0");
    let mut d = Daemon::start(&cfg, &data, &portals, &addrs);
    let v4 = identity_pages(addrs[0], &target);
    let v6 = identity_pages(addrs[1], &target);
    assert_eq!(
        lu_identity(&v4),
        lu_identity(&v6),
        "the LU identity differs between portals"
    );
    assert!(v4.0.len() > 4, "{v4:02x?}");
    // The two portals are two target ports (TPGT 1 and 2).
    assert_eq!((relative_port(&v4), relative_port(&v6)), (Some(1), Some(2)));
    let other = identity_pages(addrs[0], &format!("{BASE}:d4k"));
    assert_ne!(
        lu_identity(&v4),
        lu_identity(&other),
        "two disks share an identity"
    );
    let fixed = identity_pages(addrs[0], &format!("{BASE}:fixed"));
    assert!(
        String::from_utf8_lossy(&fixed.0).contains("OPIE-SERIAL-7"),
        "{:?}",
        fixed.0
    );
    // An initiator reads the whole identity back: the persisted uuid and the
    // configured serial.
    let file = std::fs::read_to_string(data.join("state/fixed/identity")).unwrap();
    let uuid = file.lines().find_map(|l| l.strip_prefix("uuid=")).unwrap();
    let mut want = blockdev::DeviceIdentity::parse_hex(uuid).unwrap();
    want.serial = "OPIE-SERIAL-7".into();
    assert_eq!(
        scsi_disk::identification::identity_from_vpd(&fixed.0, &fixed.1),
        Ok(want)
    );
    d.signal(libc::SIGTERM);
    assert_eq!(
        d.wait_exit(20).map(|s| s.code()),
        Some(Some(0)),
        "{}",
        d.log_text()
    );
    drop(d);

    let d = Daemon::start(&cfg, &data, &portals, &addrs);
    let again = identity_pages(addrs[1], &target);
    assert_eq!(relative_port(&again), Some(2));
    assert_eq!(
        lu_identity(&again),
        lu_identity(&v4),
        "identity changed across a restart"
    );
    drop(d);
}

#[test]
fn discovery_reports_every_portal_in_its_form() {
    let t = tempfile::tempdir().unwrap();
    let cfg = write_config(
        t.path(),
        &config("[[disk]]\nname = \"only1\"\nsize = \"1M\"\nportal_groups = [1]\n"),
    );
    let (p, q) = (free_port(), free_port());
    let portals = [
        format!("127.0.0.1:{p}"),
        format!("[::1]:{p},2"),
        format!("localhost:{q},3"),
    ];
    let addrs = [
        addr(&format!("127.0.0.1:{p}")),
        addr(&format!("[::1]:{p}")),
        addr(&format!("127.0.0.1:{q}")),
    ];
    let _d = Daemon::start(&cfg, &t.path().join("data"), &portals, &addrs);
    for a in addrs {
        let mut s = Session::login(a, INITIATOR, None).unwrap();
        let keys = s.send_targets().unwrap();
        s.logout().unwrap();
        // Group TargetAddress values under their TargetName.
        let mut targets: Vec<(String, Vec<String>)> = Vec::new();
        for (k, v) in keys {
            match k.as_str() {
                "TargetName" => targets.push((v, Vec::new())),
                "TargetAddress" => targets.last_mut().expect("address before name").1.push(v),
                _ => {}
            }
        }
        let find = |n: &str| {
            let mut v = targets
                .iter()
                .find(|t| t.0 == format!("{BASE}:{n}"))
                .unwrap_or_else(|| panic!("{n} missing: {targets:?}"))
                .1
                .clone();
            v.sort();
            v
        };
        let mut all = vec![
            format!("127.0.0.1:{p},1"),
            format!("[::1]:{p},2"),
            format!("localhost:{q},3"),
        ];
        all.sort();
        assert_eq!(find("d0"), all, "asked via {a}");
        assert_eq!(find("d4k"), all, "asked via {a}");
        assert_eq!(
            find("only1"),
            vec![format!("127.0.0.1:{p},1")],
            "asked via {a}"
        );
    }
}

#[test]
fn sigterm_drains_then_exits_zero() {
    let t = tempfile::tempdir().unwrap();
    let cfg = write_config(t.path(), &config(""));
    let data = t.path().join("data");
    let p = free_port();
    let a = addr(&format!("127.0.0.1:{p}"));
    let mut d = Daemon::start(&cfg, &data, &[format!("127.0.0.1:{p}")], &[a]);
    let mut s = Session::login(a, INITIATOR, Some(&format!("{BASE}:d0"))).unwrap();
    let _ = s.scsi(0, &[0, 0, 0, 0, 0, 0], &[], 0);
    let buf = pattern(1, 1 << 20);
    // Signal, then a write already on its way must still complete.
    write16(&mut s, 0, 0, &buf[..4096], 512, false).good("warm-up write");
    d.signal(libc::SIGTERM);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x8a;
    cdb[9] = 8;
    cdb[10..14].copy_from_slice(&((buf.len() / 512) as u32).to_be_bytes());
    // The write races the drain: it completes (then its data must be on disk),
    // or the target ends the connection without acknowledging it (the
    // initiator retries elsewhere). Never an acknowledgement that is then lost.
    let acked = matches!(s.scsi(0, &cdb, &buf, 0), Ok(r) if r.status == 0);
    assert!(
        s.await_target_close(),
        "the target kept the session open after SIGTERM"
    );
    let st = d
        .wait_exit(20)
        .expect("opie did not exit within 20 s of SIGTERM");
    assert_eq!(st.code(), Some(0), "{}", d.log_text());
    let f = std::fs::File::open(data.join("d0.img")).unwrap();
    let mut got = vec![0u8; 4096];
    f.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(got, buf[..4096]);
    if acked {
        let mut got = vec![0u8; buf.len()];
        f.read_exact_at(&mut got, 8 * 512).unwrap();
        assert!(
            got == buf,
            "an acknowledged write is missing after the drain"
        );
    }
    assert!(
        std::net::TcpStream::connect(a).is_err(),
        "still accepting after exit"
    );
}

#[test]
fn sigkill_loses_nothing_acknowledged_durable() {
    let t = tempfile::tempdir().unwrap();
    let cfg = write_config(t.path(), &config(""));
    let data = t.path().join("data");
    let p = free_port();
    let a = addr(&format!("127.0.0.1:{p}"));
    let mut d = Daemon::start(&cfg, &data, &[format!("127.0.0.1:{p}")], &[a]);
    let fua = pattern(2, 256 << 10);
    let synced = pattern(3, 512 << 10);
    let fua4k = pattern(4, 64 << 10);
    {
        let mut s = Session::login(a, INITIATOR, Some(&format!("{BASE}:d0"))).unwrap();
        let _ = s.scsi(0, &[0, 0, 0, 0, 0, 0], &[], 0);
        write16(&mut s, 0, 100, &fua, 512, true).good("WRITE(16) FUA");
        write16(&mut s, 0, 5000, &synced, 512, false).good("WRITE(16)");
        sync_cache10(&mut s, 0).good("SYNCHRONIZE CACHE(10)");
        let mut s4 = Session::login(a, INITIATOR, Some(&format!("{BASE}:d4k"))).unwrap();
        let _ = s4.scsi(0, &[0, 0, 0, 0, 0, 0], &[], 0);
        write16(&mut s4, 0, 7, &fua4k, 4096, true).good("WRITE(16) FUA 4k");
        d.signal(libc::SIGKILL);
        let st = d.wait_exit(10).expect("SIGKILL did not end opie");
        assert_eq!(st.signal(), Some(libc::SIGKILL));
    }
    let check = |file: &str, off: u64, want: &[u8]| {
        let f = std::fs::File::open(data.join(file)).unwrap();
        let mut got = vec![0u8; want.len()];
        f.read_exact_at(&mut got, off).unwrap();
        assert!(got == want, "{file} @ {off}: acknowledged data lost");
    };
    check("d0.img", 100 * 512, &fua);
    check("d0.img", 5000 * 512, &synced);
    check("d4k.img", 7 * 4096, &fua4k);
    drop(d);
    // The data dir lock died with the process: a restart serves the same data.
    let _d = Daemon::start(&cfg, &data, &[format!("127.0.0.1:{p}")], &[a]);
    let mut s = Session::login(a, INITIATOR, Some(&format!("{BASE}:d0"))).unwrap();
    let _ = s.scsi(0, &[0, 0, 0, 0, 0, 0], &[], 0);
    assert!(read16(&mut s, 0, 5000, (synced.len() / 512) as u32, 512) == synced);
    assert!(read16(&mut s, 0, 100, (fua.len() / 512) as u32, 512) == fua);
    s.logout().unwrap();
}

/// A config of one disk named `name` on `path` (plus `extra` keys) in `dir`.
fn one_disk(
    dir: &std::path::Path,
    name: &str,
    path: &std::path::Path,
    extra: &str,
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    write_config(
        dir,
        &format!(
            "[isu]\nbase_iqn = \"{BASE}\"\nlisten = [\"127.0.0.1:1\"]\n\
             [[disk]]\nname = \"{name}\"\npath = \"{}\"\n{extra}",
            path.display()
        ),
    )
}

#[test]
fn a_second_daemon_on_the_same_file_is_refused_naming_both() {
    let t = tempfile::tempdir().unwrap();
    let shared = t.path().join("shared.img");
    let cfg_a = one_disk(&t.path().join("a"), "d0", &shared, "size = \"1M\"\n");
    let data_a = t.path().join("a-data");
    let p = free_port();
    let a = addr(&format!("127.0.0.1:{p}"));
    let mut first = Daemon::start(&cfg_a, &data_a, &[format!("127.0.0.1:{p}")], &[a]);
    let data_a = std::fs::canonicalize(&data_a).unwrap();
    let link = t.path().join("link.img");
    std::os::unix::fs::symlink(&shared, &link).unwrap();
    let data_b = t.path().join("b-data");
    // Another data dir, the file named through a link; read-write or read-only.
    for extra in ["size = \"1M\"\n", "read_only = true\n"] {
        let cfg_b = one_disk(&t.path().join("b"), "mine", &link, extra);
        both_refuse(
            &cfg_b,
            &data_b,
            &[
                "disk \"mine\"".into(),
                format!("pid {}", first.child.id()),
                format!("data dir {}", data_a.display()),
            ],
        );
    }
    // The claim ends with the daemon that held it.
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(20).and_then(|s| s.code()), Some(0));
    let cfg_b = one_disk(&t.path().join("b"), "mine", &link, "size = \"1M\"\n");
    let q = free_port();
    let b = addr(&format!("127.0.0.1:{q}"));
    let _second = Daemon::start(&cfg_b, &data_b, &[format!("127.0.0.1:{q}")], &[b]);
    let mut s = Session::login(b, INITIATOR, Some(&format!("{BASE}:mine"))).unwrap();
    let _ = s.scsi(0, &[0, 0, 0, 0, 0, 0], &[], 0);
    s.logout().unwrap();
}

#[test]
fn a_block_device_is_served_once_whatever_its_name() {
    let t = tempfile::tempdir().unwrap();
    let lo = LoopDevice::attach(&t.path().join("lo.img"), 16 << 20);
    if !can_run(lo.is_some(), "needs root and losetup for a loop device") {
        return;
    }
    let lo = lo.unwrap();
    // Three more names of the device: a symbolic link, and a second device
    // node (another inode with the same device number).
    let link = t.path().join("link");
    std::os::unix::fs::symlink(&lo.path, &link).unwrap();
    let node = t.path().join("node");
    let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata(&lo.path).unwrap());
    let c = std::ffi::CString::new(node.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; mknod only reads it.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, rdev) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());

    // One daemon, two disks on the device.
    for other in [&link, &node] {
        let cfg = t.path().join("two");
        std::fs::create_dir_all(&cfg).unwrap();
        let cfg = write_config(
            &cfg,
            &format!(
                "[isu]\nbase_iqn = \"{BASE}\"\nlisten = [\"127.0.0.1:1\"]\n\
                 [[disk]]\nname = \"a\"\npath = \"{}\"\n[[disk]]\nname = \"b\"\npath = \"{}\"\n",
                lo.path.display(),
                other.display()
            ),
        );
        both_refuse(
            &cfg,
            &t.path().join("two-data"),
            &["disk \"b\"", "disk \"a\"", "same backing store"],
        );
    }

    // Two daemons.
    let cfg_a = one_disk(&t.path().join("a"), "lo", &lo.path, "");
    let data_a = t.path().join("a-data");
    let p = free_port();
    let a = addr(&format!("127.0.0.1:{p}"));
    let first = Daemon::start(&cfg_a, &data_a, &[format!("127.0.0.1:{p}")], &[a]);
    let data_a = std::fs::canonicalize(&data_a).unwrap();
    for other in [&link, &node, &lo.path] {
        let cfg_b = one_disk(&t.path().join("b"), "mine", other, "");
        both_refuse(
            &cfg_b,
            &t.path().join("b-data"),
            &[
                "disk \"mine\"".into(),
                format!("pid {}", first.child.id()),
                format!("data dir {}", data_a.display()),
            ],
        );
    }
    drop(first);
}
