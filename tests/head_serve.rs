//! `opie head serve` against three real `opie isu serve` processes (sparse
//! files, two loopback portals each): the head assembles a RAID5 array over
//! one disk of each, exports it on two head portals, and we write verified
//! data through our initiator (every block stamped with its address, a
//! generation and a CRC32C), then stop, kill and restart things and read it
//! all back.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{BlockDevice, SharedDevice, WriteFlags};
use common::{free_port, opie, Daemon};
use initiator_iscsi::{IscsiDevice, LoginConfig, PipelineConfig, PipelinedSession};

#[path = "../initiator-iscsi/tests/common/mod.rs"]
mod stamping;

const EXPORT: &str = "iqn.2026-01.org.opie.test:head:v0";
const BS: usize = 512;
/// Runs of blocks written and checked, each `RUN` blocks, `STRIDE` apart.
const RUNS: u64 = 48;
const RUN: u64 = 32;
const STRIDE: u64 = 997;

struct Rig {
    dir: tempfile::TempDir,
    isus: Vec<Option<Daemon>>,
    isu_ports: Vec<u16>,
    head_ports: [u16; 2],
}

/// The identity of ISU 2's disk, which the head finds it by.
const ISU2_DISK: &str = "0badc0de0000000000000000000000b2";
/// ISU 0's disk requires CHAP; this file holds the credential, for the ISU
/// and the head alike.
const ISU0_SECRETS: &str = "[[target.\"iqn.2026-01.org.opie.test:isu0:d0\".chap]]\nuser = \"head\"\nsecret = \"head-secret-16by\"\n";

fn isu_config(n: usize) -> String {
    let mut s = format!(
        "[isu]\nbase_iqn = \"iqn.2026-01.org.opie.test:isu{n}\"\nnop_interval = \"1s\"\nnop_timeout = \"2s\"\n\n[[disk]]\nname = \"d0\"\nsize = \"24M\"\n"
    );
    match n {
        0 => s += "auth = \"chap\"\n\n[auth]\nsecrets = \"isu0-secrets.toml\"\n",
        2 => s += &format!("identity = \"{ISU2_DISK}\"\n"),
        _ => {}
    }
    s
}

fn head_config(isu_ports: &[u16], head_ports: [u16; 2]) -> String {
    let mut s = format!(
        "[head]\ninitiator = \"iqn.2026-01.org.opie.test:head\"\nlisten = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n\n",
        head_ports[0], head_ports[1]
    );
    for (i, p) in isu_ports.iter().enumerate() {
        s += &format!(
            "[[isu]]\nname = \"isu{i}\"\nportals = [\"127.0.0.1:{p}\", \"[::1]:{p}\"]\nsession_horizon = \"4s\"\n"
        );
        if i == 0 {
            s += "secrets = \"isu0-secrets.toml\"\n";
        }
        s += "\n";
    }
    s += "[[array]]\nname = \"a0\"\nchunk = \"32K\"\nmember_timeout = \"3s\"\nallow_degraded_start = true\nmembers = [\n";
    for i in 0..2 {
        s += &format!(
            "  {{ isu = \"isu{i}\", target = \"iqn.2026-01.org.opie.test:isu{i}:d0\" }},\n"
        );
    }
    s += &format!("  {{ identity = \"{ISU2_DISK}\" }},\n");
    s += "]\n\n[[volume]]\nname = \"v0\"\narray = \"a0\"\n\n";
    s += &format!("[[export]]\nvolume = \"v0\"\niqn = \"{EXPORT}\"\n");
    s
}

impl Rig {
    fn start() -> Rig {
        Rig::start_without(&[])
    }

    /// Three ISUs but those in `without`, which [`Rig::start_isu`] starts.
    fn start_without(without: &[usize]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("isu0-secrets.toml");
        std::fs::write(&secrets, ISU0_SECRETS).unwrap();
        std::fs::set_permissions(
            &secrets,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut head_ports = [free_port(), free_port()];
        while head_ports[1] == head_ports[0] {
            head_ports[1] = free_port();
        }
        std::fs::write(
            dir.path().join("head.toml"),
            head_config(&ports, head_ports),
        )
        .unwrap();
        let mut rig = Rig {
            dir,
            isus: vec![None, None, None],
            isu_ports: ports,
            head_ports,
        };
        for n in 0..3 {
            if !without.contains(&n) {
                rig.start_isu(n);
            }
        }
        rig
    }

    /// Starts ISU `n` (two loopback portals) and waits until it listens.
    fn start_isu(&mut self, n: usize) {
        let port = self.isu_ports[n];
        let cfg = self.dir.path().join(format!("isu{n}.toml"));
        std::fs::write(&cfg, isu_config(n)).unwrap();
        let listen = [format!("127.0.0.1:{port},1"), format!("[::1]:{port},2")];
        let wait: Vec<SocketAddr> = vec![
            format!("127.0.0.1:{port}").parse().unwrap(),
            format!("[::1]:{port}").parse().unwrap(),
        ];
        self.isus[n] = Some(Daemon::start(
            &cfg,
            &self.dir.path().join(format!("isu{n}-data")),
            &listen,
            &wait,
        ));
    }

    fn head_log(&self) -> PathBuf {
        self.dir.path().join("head.log")
    }

    /// Starts `opie head serve` and waits until both its portals listen.
    fn head(&self) -> Daemon {
        let mut d = self.spawn_head();
        self.wait_listening(&mut d);
        d
    }

    /// Starts `opie head serve`.
    fn spawn_head(&self) -> Daemon {
        let log = self.head_log();
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let data_dir = self.dir.path().join("head-data");
        let child = opie()
            .args(["head", "serve", "--config"])
            .arg(self.dir.path().join("head.toml"))
            .arg("--data-dir")
            .arg(&data_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        Daemon {
            child,
            data_dir,
            log,
        }
    }

    /// Waits until both head portals listen.
    fn wait_listening(&self, d: &mut Daemon) {
        let end = Instant::now() + Duration::from_secs(120);
        for p in self.head_ports {
            let a: SocketAddr = format!("127.0.0.1:{p}").parse().unwrap();
            while std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_err() {
                if let Ok(Some(st)) = d.child.try_wait() {
                    panic!("opie head exited ({st}):\n{}", d.log_text());
                }
                assert!(
                    Instant::now() < end,
                    "head never listened:\n{}",
                    d.log_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn portal(&self, i: usize) -> SocketAddr {
        format!("127.0.0.1:{}", self.head_ports[i]).parse().unwrap()
    }
}

/// The head's export through portal `i`, as our initiator opens a disk.
async fn open(rig: &Rig, i: usize) -> IscsiDevice {
    let mut login = LoginConfig::new("iqn.2026-01.org.opie.test:client", Some(EXPORT));
    login.isid = [0x80, 0, 0, 0, 7, i as u8];
    let s = PipelinedSession::connect(rig.portal(i), login, PipelineConfig::default())
        .await
        .expect("log in to the head");
    IscsiDevice::open(s, 0).await.expect("open the head's LU")
}

fn run_lba(run: u64) -> u64 {
    run * STRIDE
}

fn stamps(lba: u64, generation: u64) -> blockdev::Bytes {
    stamping::stamps(lba, RUN, generation, BS).into()
}

/// Writes every run with `generation`, FUA when `fua`.
async fn write_all(dev: &SharedDevice, generation: u64, fua: bool) {
    let flags = if fua {
        WriteFlags::FUA
    } else {
        WriteFlags::NONE
    };
    for r in 0..RUNS {
        let lba = run_lba(r);
        dev.write(lba, stamps(lba, generation), flags)
            .await
            .unwrap_or_else(|e| panic!("write of run {r}: {e}"));
    }
}

/// Reads every run back and checks it is of `generations[run]`.
async fn verify_all(dev: &SharedDevice, generations: &[u64]) {
    for r in 0..RUNS {
        let lba = run_lba(r);
        let data = dev.read(lba, RUN as u32).await.expect("read");
        stamping::verify(&data, lba, generations[r as usize], BS)
            .unwrap_or_else(|e| panic!("run {r}: {e}"));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn log_has(path: &Path, what: &str) -> bool {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(what)
}

#[test]
fn sigterm_closes_clean_and_a_restart_reassembles_the_same_data() {
    let rig = Rig::start();
    let rt = runtime();
    let mut head = rig.head();
    // ISU 2's disk was found by its identity (SendTargets, REPORT LUNS,
    // VPD), ISU 0's reached with CHAP.
    let log = std::fs::read_to_string(rig.head_log()).unwrap();
    assert!(
        log.contains(&format!(
            "disk found identity={ISU2_DISK} member=isu2:iqn.2026-01.org.opie.test:isu2:d0/0"
        )),
        "{log}"
    );
    let identity = rt.block_on(async {
        let dev: SharedDevice = Arc::new(open(&rig, 0).await);
        write_all(&dev, 1, false).await;
        verify_all(&dev, &[1; RUNS as usize]).await;
        // The same LU, the same identity, through the other head portal.
        let other = open(&rig, 1).await;
        assert_eq!(other.identity(), dev.identity());
        dev.identity().clone()
    });
    head.signal(libc::SIGTERM);
    let st = head
        .wait_exit(60)
        .expect("the head did not stop on SIGTERM");
    assert!(st.success(), "exit {st}:\n{}", head.log_text());
    assert!(log_has(&rig.head_log(), "array flushed and closed clean"));
    assert!(log_has(&rig.head_log(), "logged out of its members"));
    // Every session the head had with an ISU ended in a logout.
    for isu in rig.isus.iter().flatten() {
        let end = Instant::now() + Duration::from_secs(10);
        let log = loop {
            let log = isu.log_text();
            let logins = log.matches("logged in").count();
            if log.matches("session ended").count() >= logins || Instant::now() > end {
                break log;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let ended: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("session ended"))
            .collect();
        assert!(!ended.is_empty());
        assert!(
            ended.iter().all(|l| l.contains("reason=Logout")),
            "a session ended without a logout: {ended:#?}"
        );
    }
    drop(head);
    let _head = rig.head();
    let log = std::fs::read_to_string(rig.head_log()).unwrap();
    assert!(
        log.contains("array assembled from its members' superblocks"),
        "{log}"
    );
    assert!(
        log.contains("resynced_rows=0"),
        "a clean stop needs no resync:\n{log}"
    );
    rt.block_on(async {
        let dev: SharedDevice = Arc::new(open(&rig, 1).await);
        assert_eq!(
            dev.identity(),
            &identity,
            "the identity survives the restart"
        );
        verify_all(&dev, &[1; RUNS as usize]).await;
    });
}

#[test]
fn an_isu_killed_during_writes_costs_no_write_and_the_array_turns_degraded() {
    let mut rig = Rig::start();
    let rt = runtime();
    let _head = rig.head();
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, false));
    // Writes go on while an ISU dies under them, and for longer than the
    // member timeout (3 s) after: whole passes over every run.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let passes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (dev, stop, passes) = (dev.clone(), stop.clone(), passes.clone());
        rt.spawn(async move {
            let mut g = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // FUA: through the array's stripe cache to the members.
                write_all(&dev, g + 1, true).await;
                g += 1;
                passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            g
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let mut isu = rig.isus[1].take().unwrap();
    isu.signal(libc::SIGKILL);
    isu.wait_exit(10).expect("SIGKILL ends the ISU");
    // Two whole passes after the one the kill hit, and the array degraded.
    let at_kill = passes.load(std::sync::atomic::Ordering::Relaxed);
    let end = Instant::now() + Duration::from_secs(90);
    while passes.load(std::sync::atomic::Ordering::Relaxed) < at_kill + 3
        || !log_has(&rig.head_log(), "array degraded")
    {
        assert!(
            Instant::now() < end && !writer.is_finished(),
            "writes stalled or failed, or the head never reported the array degraded:\n{}",
            std::fs::read_to_string(rig.head_log()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = rt.block_on(writer).expect("no write failed");
    rt.block_on(verify_all(&dev, &[last; RUNS as usize]));
}

#[test]
fn a_head_killed_during_fua_writes_loses_none_after_its_restart() {
    let rig = Rig::start();
    let rt = runtime();
    let mut head = rig.head();
    let acked: Arc<std::sync::Mutex<Vec<u64>>> =
        Arc::new(std::sync::Mutex::new(vec![1; RUNS as usize]));
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, true));
    let writer = {
        let (dev, acked) = (dev.clone(), acked.clone());
        rt.spawn(async move {
            for g in 2.. {
                for r in 0..RUNS {
                    let lba = run_lba(r);
                    if dev
                        .write(lba, stamps(lba, g), WriteFlags::FUA)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    acked.lock().unwrap()[r as usize] = g;
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    head.signal(libc::SIGKILL);
    head.wait_exit(10).expect("SIGKILL ends the head");
    rt.block_on(writer).unwrap();
    drop(dev);
    drop(head);
    let generations = acked.lock().unwrap().clone();
    assert!(
        generations.iter().any(|&g| g > 1),
        "no write went through before the kill"
    );
    let _head = rig.head();
    let log = std::fs::read_to_string(rig.head_log()).unwrap();
    assert!(
        log.contains("array assembled from its members' superblocks"),
        "{log}"
    );
    rt.block_on(async {
        let dev: SharedDevice = Arc::new(open(&rig, 0).await);
        // A write in flight at the kill may have landed, in part or
        // whole, or not: each block reads back as its run's last
        // acknowledged generation or the next.
        for r in 0..RUNS {
            let lba = run_lba(r);
            let data = dev.read(lba, RUN as u32).await.expect("read");
            let g = generations[r as usize];
            for (i, b) in data.chunks(BS).enumerate() {
                let at = lba + i as u64;
                let ok =
                    stamping::verify(b, at, g, BS).or_else(|_| stamping::verify(b, at, g + 1, BS));
                ok.unwrap_or_else(|e| panic!("run {r} (acknowledged generation {g}): {e}"));
            }
        }
    });
}

#[test]
fn the_head_waits_for_a_missing_member_naming_it_then_assembles_whole() {
    let mut rig = Rig::start_without(&[2]);
    let mut head = rig.spawn_head();
    let end = Instant::now() + Duration::from_secs(60);
    while !log_has(&rig.head_log(), "waiting for members") {
        assert!(
            Instant::now() < end,
            "no wait reported:\n{}",
            head.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = head.log_text();
    assert!(
        log.contains(&format!("identity {ISU2_DISK}: no path")),
        "the missing member is named:\n{log}"
    );
    assert!(!log.contains("creating the array"), "{log}");
    rig.start_isu(2);
    rig.wait_listening(&mut head);
    let log = head.log_text();
    assert!(log.contains("creating the array"), "{log}");
    assert!(log.contains("array healthy"), "{log}");
    assert!(!log.contains("starting degraded"), "{log}");
}

#[test]
fn an_existing_array_starts_degraded_without_one_member_and_serves_its_data() {
    let mut rig = Rig::start();
    let rt = runtime();
    let mut head = rig.head();
    rt.block_on(async {
        let dev: SharedDevice = Arc::new(open(&rig, 0).await);
        write_all(&dev, 1, false).await;
    });
    head.signal(libc::SIGTERM);
    assert!(head.wait_exit(60).expect("stopped").success());
    drop(head);
    let mut isu = rig.isus[0].take().unwrap();
    isu.signal(libc::SIGKILL);
    isu.wait_exit(10).expect("SIGKILL ends the ISU");
    // allow_degraded_start: the head waits its grace for the missing
    // member, then assembles without it.
    let _head = rig.head();
    let log = std::fs::read_to_string(rig.head_log()).unwrap();
    assert!(log.contains("starting degraded"), "{log}");
    assert!(log.contains("array degraded"), "{log}");
    rt.block_on(async {
        let dev: SharedDevice = Arc::new(open(&rig, 1).await);
        verify_all(&dev, &[1; RUNS as usize]).await;
    });
}
