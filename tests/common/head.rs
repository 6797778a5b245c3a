//! A head over real ISUs for the `opie head` tests: `opie isu serve`
//! processes (sparse files, two loopback portals each), `opie head serve`
//! assembling a RAID5 array over one disk of three of them and exporting it
//! on two head portals, and verified data written through our initiator
//! (every block stamped with its address, a generation and a CRC32C).
//! Declared by the tests that use it, beside `mod common`:
//! `#[path = "common/head.rs"] mod head;`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{SharedDevice, WriteFlags};
use initiator_iscsi::{IscsiDevice, LoginConfig, PipelineConfig, PipelinedSession};

use crate::common::{free_port, opie, Daemon};

#[path = "../../initiator-iscsi/tests/common/mod.rs"]
pub mod stamping;

/// The head's export.
pub const EXPORT: &str = "iqn.2026-01.org.opie.test:head:v0";
/// Block size of the ISUs' disks and of the export.
pub const BS: usize = 512;
/// Runs of blocks written and checked, each `RUN` blocks, `STRIDE` apart.
pub const RUNS: u64 = 48;
/// Blocks per run.
pub const RUN: u64 = 32;
/// Blocks from one run's start to the next's.
pub const STRIDE: u64 = 997;

/// The identity of ISU 2's disk, which the head finds it by.
pub const ISU2_DISK: &str = "0badc0de0000000000000000000000b2";
/// ISU 0's disk requires CHAP; this file holds the credential, for the ISU
/// and the head alike.
const ISU0_SECRETS: &str = "[[target.\"iqn.2026-01.org.opie.test:isu0:d0\".chap]]\nuser = \"head\"\nsecret = \"head-secret-16by\"\n";

/// What a rig runs: ISUs 0-2 are the array's members; more ISUs are
/// started for `spares` (configured as the array's hot spares), for
/// `idle` ones (in `head.toml` as ISUs, not in the array's seed) and for
/// `unconfigured` ones (started, not in `head.toml`: to add at run time).
#[derive(Debug, Clone, Default)]
pub struct RigSpec {
    /// ISUs (from 3 on) configured as hot spares of the array.
    pub spares: Vec<usize>,
    /// ISUs (from 3 on) started but not in the head's config.
    pub unconfigured: Vec<usize>,
    /// ISUs (from 3 on) in the head's config, not in the array's seed.
    pub idle: Vec<usize>,
    /// `allow_degraded_start = false`: the head waits for every member.
    pub strict_start: bool,
    /// The array's `spare_timeout`, when not the default.
    pub spare_timeout: Option<&'static str>,
    /// ISUs not started at first ([`Rig::start_isu`] starts them).
    pub without: Vec<usize>,
    /// The size of every ISU's disk, when not 24M.
    pub disk_size: Option<&'static str>,
}

/// ISUs and the head's config in a temporary directory.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub isus: Vec<Option<Daemon>>,
    pub isu_ports: Vec<u16>,
    pub head_ports: [u16; 2],
    pub disk_size: &'static str,
}

fn isu_config(n: usize, size: &str) -> String {
    let mut s = format!(
        "[isu]\nbase_iqn = \"iqn.2026-01.org.opie.test:isu{n}\"\nnop_interval = \"1s\"\nnop_timeout = \"2s\"\n\n[[disk]]\nname = \"d0\"\nsize = \"{size}\"\n"
    );
    match n {
        0 => s += "auth = \"chap\"\n\n[auth]\nsecrets = \"isu0-secrets.toml\"\n",
        2 => s += &format!("identity = \"{ISU2_DISK}\"\n"),
        _ => {}
    }
    s
}

fn head_config(isu_ports: &[u16], head_ports: [u16; 2], spec: &RigSpec) -> String {
    let mut s = format!(
        "[head]\ninitiator = \"iqn.2026-01.org.opie.test:head\"\nlisten = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n\n",
        head_ports[0], head_ports[1]
    );
    for (i, p) in isu_ports.iter().enumerate() {
        if spec.unconfigured.contains(&i) {
            continue;
        }
        s += &format!(
            "[[isu]]\nname = \"isu{i}\"\nportals = [\"127.0.0.1:{p}\", \"[::1]:{p}\"]\nsession_horizon = \"4s\"\n"
        );
        if i == 0 {
            s += "secrets = \"isu0-secrets.toml\"\n";
        }
        s += "\n";
    }
    s += &format!(
        "[[array]]\nname = \"a0\"\nchunk = \"32K\"\nmember_timeout = \"3s\"\nallow_degraded_start = {}\n",
        !spec.strict_start
    );
    if let Some(t) = spec.spare_timeout {
        s += &format!("spare_timeout = \"{t}\"\n");
    }
    s += "members = [\n";
    for i in 0..2 {
        s += &format!(
            "  {{ isu = \"isu{i}\", target = \"iqn.2026-01.org.opie.test:isu{i}:d0\" }},\n"
        );
    }
    s += &format!("  {{ identity = \"{ISU2_DISK}\" }},\n]\n");
    if !spec.spares.is_empty() {
        s += "spares = [\n";
        for i in &spec.spares {
            s += &format!(
                "  {{ isu = \"isu{i}\", target = \"iqn.2026-01.org.opie.test:isu{i}:d0\" }},\n"
            );
        }
        s += "]\n";
    }
    s += "\n[[volume]]\nname = \"v0\"\narray = \"a0\"\n\n";
    s += &format!("[[export]]\nvolume = \"v0\"\niqn = \"{EXPORT}\"\n");
    s
}

impl Rig {
    /// Three ISUs and the head's config.
    pub fn start() -> Rig {
        Rig::start_spec(RigSpec::default())
    }

    /// Three ISUs but those in `without`, which [`Rig::start_isu`] starts.
    pub fn start_without(without: &[usize]) -> Rig {
        Rig::start_spec(RigSpec {
            without: without.to_vec(),
            ..RigSpec::default()
        })
    }

    /// The ISUs of `spec` and the head's config.
    pub fn start_spec(spec: RigSpec) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("isu0-secrets.toml");
        std::fs::write(&secrets, ISU0_SECRETS).unwrap();
        std::fs::set_permissions(
            &secrets,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let n = 3 + spec.spares.len() + spec.unconfigured.len() + spec.idle.len();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut head_ports = [free_port(), free_port()];
        while head_ports[1] == head_ports[0] {
            head_ports[1] = free_port();
        }
        std::fs::write(
            dir.path().join("head.toml"),
            head_config(&ports, head_ports, &spec),
        )
        .unwrap();
        let mut rig = Rig {
            dir,
            isus: (0..n).map(|_| None).collect(),
            isu_ports: ports,
            head_ports,
            disk_size: spec.disk_size.unwrap_or("24M"),
        };
        for i in 0..n {
            if !spec.without.contains(&i) {
                rig.start_isu(i);
            }
        }
        rig
    }

    /// Starts ISU `n` (two loopback portals) and waits until it listens.
    pub fn start_isu(&mut self, n: usize) {
        let port = self.isu_ports[n];
        let cfg = self.dir.path().join(format!("isu{n}.toml"));
        std::fs::write(&cfg, isu_config(n, self.disk_size)).unwrap();
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

    /// SIGKILLs ISU `n`.
    pub fn kill_isu(&mut self, n: usize) {
        let mut isu = self.isus[n].take().unwrap();
        isu.signal(libc::SIGKILL);
        isu.wait_exit(10).expect("SIGKILL ends the ISU");
    }

    pub fn head_log(&self) -> PathBuf {
        self.dir.path().join("head.log")
    }

    /// Starts `opie head serve` and waits until both its portals listen.
    pub fn head(&self) -> Daemon {
        let mut d = self.spawn_head();
        self.wait_listening(&mut d);
        d
    }

    /// Starts `opie head serve` with the default data directory: `head-data`
    /// beside `head.toml`.
    pub fn spawn_head(&self) -> Daemon {
        self.spawn_head_env(&[])
    }

    /// [`Rig::spawn_head`] with these environment variables set.
    pub fn spawn_head_env(&self, env: &[(&str, &std::ffi::OsStr)]) -> Daemon {
        let log = self.head_log();
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = opie()
            .args(["head", "serve", "--config"])
            .arg(self.dir.path().join("head.toml"))
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        Daemon {
            child,
            data_dir: self.dir.path().join("head-data"),
            log,
        }
    }

    /// Waits until both head portals listen.
    pub fn wait_listening(&self, d: &mut Daemon) {
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

    pub fn portal(&self, i: usize) -> SocketAddr {
        format!("127.0.0.1:{}", self.head_ports[i]).parse().unwrap()
    }

    /// `opie ARGS` run in the rig's directory (so the CLI's default data
    /// directory is the head's), its stdout and exit code.
    pub fn admin(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_opie"))
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

/// The head's export through portal `i`, as our initiator opens a disk.
pub async fn open(rig: &Rig, i: usize) -> IscsiDevice {
    let mut login = LoginConfig::new("iqn.2026-01.org.opie.test:client", Some(EXPORT));
    login.isid = [0x80, 0, 0, 0, 7, i as u8];
    let s = PipelinedSession::connect(rig.portal(i), login, PipelineConfig::default())
        .await
        .expect("log in to the head");
    IscsiDevice::open(s, 0).await.expect("open the head's LU")
}

pub fn run_lba(run: u64) -> u64 {
    run * STRIDE
}

pub fn stamps(lba: u64, generation: u64) -> blockdev::Bytes {
    stamping::stamps(lba, RUN, generation, BS).into()
}

/// Writes runs `runs` with `generation`, FUA when `fua`.
pub async fn write_runs(
    dev: &SharedDevice,
    runs: std::ops::Range<u64>,
    generation: u64,
    fua: bool,
) {
    let flags = if fua {
        WriteFlags::FUA
    } else {
        WriteFlags::NONE
    };
    for r in runs {
        let lba = run_lba(r);
        dev.write(lba, stamps(lba, generation), flags)
            .await
            .unwrap_or_else(|e| panic!("write of run {r}: {e}"));
    }
}

/// Writes every run with `generation`, FUA when `fua`.
pub async fn write_all(dev: &SharedDevice, generation: u64, fua: bool) {
    write_runs(dev, 0..RUNS, generation, fua).await
}

/// Reads every run back and checks it is of `generations[run]`.
pub async fn verify_all(dev: &SharedDevice, generations: &[u64]) {
    for r in 0..RUNS {
        let lba = run_lba(r);
        let data = dev.read(lba, RUN as u32).await.expect("read");
        stamping::verify(&data, lba, generations[r as usize], BS)
            .unwrap_or_else(|e| panic!("run {r}: {e}"));
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn log_has(path: &Path, what: &str) -> bool {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(what)
}

/// A writer rewriting runs `runs` with FUA, one generation per pass,
/// until stopped; [`Writer::stop`] returns the last generation written.
pub struct Writer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    passes: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<u64>,
}

impl Writer {
    /// Starts it on `rt`, from generation `from + 1`.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        dev: &SharedDevice,
        runs: std::ops::Range<u64>,
        from: u64,
    ) -> Writer {
        use std::sync::atomic::Ordering::Relaxed;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let passes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = {
            let (dev, stop, passes) = (dev.clone(), stop.clone(), passes.clone());
            rt.spawn(async move {
                let mut g = from;
                while !stop.load(Relaxed) {
                    write_runs(&dev, runs.clone(), g + 1, true).await;
                    g += 1;
                    passes.fetch_add(1, Relaxed);
                }
                g
            })
        };
        Writer { stop, passes, task }
    }

    /// Whole passes so far.
    pub fn passes(&self) -> u64 {
        self.passes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether it stopped (a write failed: it panicked).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops it after its pass and returns the last generation written;
    /// panics if a write failed.
    pub fn stop(self, rt: &tokio::runtime::Runtime) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(self.task).expect("no write failed")
    }
}

/// `opie status --json`: its exit code must be 0; the status object.
pub fn status(rig: &Rig) -> serde_json::Value {
    let (code, out) = rig.admin(&["status", "--json"]);
    assert_eq!(code, Some(0), "opie status: {out}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["result"]["type"], "status", "{v}");
    v["result"].clone()
}

pub fn array_state(s: &serde_json::Value) -> String {
    s["arrays"][0]["state"].as_str().unwrap().to_string()
}

pub fn isu_state(s: &serde_json::Value, isu: &str) -> String {
    s["isus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == isu)
        .unwrap_or_else(|| panic!("no {isu} in {s}"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The ISUs of the array's members in sync.
pub fn in_sync(s: &serde_json::Value) -> Vec<String> {
    members_in(s, "in-sync")
}

/// The ISUs of the array's members (and spares) in `state`.
pub fn members_in(s: &serde_json::Value, state: &str) -> Vec<String> {
    s["arrays"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == state)
        .map(|m| m["isu"].as_str().unwrap().to_string())
        .collect()
}

/// Polls status until `done` holds, for at most `secs`; the status then.
pub fn until(
    rig: &Rig,
    secs: u64,
    what: &str,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(rig);
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < end,
            "{what}: not within {secs} s; last status: {s:#}\nhead log:\n{}",
            std::fs::read_to_string(rig.head_log()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A client writing every run with FUA, generation after generation from 2,
/// that records what each run has had acknowledged, until its first failed
/// write (the task then returns the generation it failed in).
pub struct AckedWriter {
    /// The last acknowledged generation per run (1 before any).
    pub acked: Arc<std::sync::Mutex<Vec<u64>>>,
    /// The writing task.
    pub task: tokio::task::JoinHandle<u64>,
}

impl AckedWriter {
    /// Starts writing to `dev` on `rt`.
    pub fn spawn(rt: &tokio::runtime::Runtime, dev: SharedDevice) -> AckedWriter {
        let acked = Arc::new(std::sync::Mutex::new(vec![1u64; RUNS as usize]));
        let task = {
            let acked = acked.clone();
            rt.spawn(async move {
                for g in 2.. {
                    for r in 0..RUNS {
                        let lba = run_lba(r);
                        if dev
                            .write(lba, stamps(lba, g), WriteFlags::FUA)
                            .await
                            .is_err()
                        {
                            return g;
                        }
                        acked.lock().unwrap()[r as usize] = g;
                    }
                }
                unreachable!()
            })
        };
        AckedWriter { acked, task }
    }

    /// What each run has had acknowledged so far.
    pub fn acked(&self) -> Vec<u64> {
        self.acked.lock().unwrap().clone()
    }
}

/// Every run of `dev` reads back as its last acknowledged generation in
/// `acked` or the next (the write in flight at a crash may have landed, in
/// part or whole, or not).
pub async fn verify_acked(dev: &SharedDevice, acked: &[u64]) {
    for r in 0..RUNS {
        let lba = run_lba(r);
        let g = acked[r as usize];
        let data = dev.read(lba, RUN as u32).await.expect("read");
        for (i, b) in data.chunks(BS).enumerate() {
            let at = lba + i as u64;
            stamping::verify(b, at, g, BS)
                .or_else(|_| stamping::verify(b, at, g + 1, BS))
                .unwrap_or_else(|e| panic!("run {r} (acknowledged generation {g}): {e}"));
        }
    }
}
