//! Shared helpers of the `opie` integration tests: running the daemon, and
//! blocking calls into the test initiator (`initiator-iscsi`) to log in,
//! discover, and run SCSI commands.
#![allow(dead_code)]

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

// ---- the daemon ----------------------------------------------------------------

/// A running `opie isu serve`, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// A TCP port free on 127.0.0.1 and [::1] right now.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        if TcpListener::bind(("::1", p)).is_ok() {
            return p;
        }
    }
}

pub fn opie() -> Command {
    Command::new(env!("CARGO_BIN_EXE_opie"))
}

/// Writes `config` to `dir/isu.toml` and returns its path.
pub fn write_config(dir: &Path, config: &str) -> PathBuf {
    let p = dir.join("isu.toml");
    std::fs::write(&p, config).unwrap();
    p
}

/// Runs `opie ARGS` expecting it to exit by itself within `secs` (a refused
/// config, or `check`); returns its exit code and stderr. A process still
/// running then (a `serve` that should have refused but serves) is killed
/// and reported as code None.
pub fn run_to_exit(args: &[&std::ffi::OsStr], secs: u64) -> (Option<i32>, String) {
    let mut cmd = opie();
    cmd.args(args);
    run_cmd_to_exit(cmd, secs)
}

/// [`run_to_exit`] for a prepared command.
pub fn run_cmd_to_exit(mut cmd: Command, secs: u64) -> (Option<i32>, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(secs);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (code, err)
}

/// Runs `opie isu check`, then `opie isu serve`, of `config` with data dir
/// `data` on a free port, and asserts that both refuse it with exit status
/// 1 (what serve refuses at startup, check finds) and every one of `want`
/// in their message.
pub fn both_refuse<S: AsRef<str>>(config: &Path, data: &Path, want: &[S]) {
    let listen = format!("127.0.0.1:{}", free_port());
    for sub in ["check", "serve"] {
        let mut cmd = opie();
        cmd.args(["isu", sub, "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", &listen]);
        let (code, err) = run_cmd_to_exit(cmd, 10);
        assert_eq!(
            code,
            Some(1),
            "{sub}: exit {code:?} (None: it served), stderr: {err}"
        );
        for w in want {
            let w = w.as_ref();
            assert!(err.contains(w), "{sub}: {w:?} missing from: {err}");
        }
    }
}

impl Daemon {
    /// Starts `opie isu serve` with `config` (a file path), data dir and
    /// portals, and waits until every `wait_for` address accepts connections.
    pub fn start(
        config: &Path,
        data_dir: &Path,
        listen: &[String],
        wait_for: &[SocketAddr],
    ) -> Daemon {
        Self::start_with(opie(), config, data_dir, listen, wait_for)
    }

    /// Like [`Daemon::start`] with `cmd` (opie, or a wrapper such as `ip netns exec NS opie`).
    pub fn start_with(
        mut cmd: Command,
        config: &Path,
        data_dir: &Path,
        listen: &[String],
        wait_for: &[SocketAddr],
    ) -> Daemon {
        let log = data_dir.with_extension("log");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        cmd.args(["isu", "serve", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir);
        for l in listen {
            cmd.args(["--listen", l]);
        }
        let child = cmd
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            data_dir: data_dir.to_path_buf(),
            log,
        };
        let end = Instant::now() + Duration::from_secs(20);
        for a in wait_for {
            while TcpStream::connect_timeout(a, Duration::from_millis(200)).is_err() {
                if let Ok(Some(st)) = d.child.try_wait() {
                    panic!(
                        "opie exited ({st}) before listening on {a}:\n{}",
                        d.log_text()
                    );
                }
                assert!(
                    Instant::now() < end,
                    "opie never listened on {a}:\n{}",
                    d.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        d
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// Waits up to `secs` for the process to exit.
    pub fn wait_exit(&mut self, secs: u64) -> Option<ExitStatus> {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A two-thread runtime for a test's initiator side.
pub fn two_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Whether this test can have what it needs (`why` names it): prints SKIP
/// and returns false when not, and fails instead under `CI=true`.
pub fn can_run(ok: bool, why: &str) -> bool {
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and this test cannot run: {why}"
        );
        eprintln!("SKIP: {why}");
    }
    ok
}

/// A loop device over a sparse file, detached on drop.
pub struct LoopDevice {
    pub path: PathBuf,
}

impl LoopDevice {
    /// Attaches a loop device to a new sparse file of `bytes` at `file`;
    /// None when that is not possible here (not root, no losetup).
    pub fn attach(file: &Path, bytes: u64) -> Option<LoopDevice> {
        // SAFETY: geteuid has no memory effects.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        std::fs::File::create(file).ok()?.set_len(bytes).ok()?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Some(LoopDevice { path })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

// ---- a blocking initiator ------------------------------------------------------------

// Each test uses some of these.
#[allow(unused_imports)]
pub use initiator_iscsi::tmf::{self, Function};
#[allow(unused_imports)]
pub use initiator_iscsi::{
    Auth, Error, LoginConfig, LoginError, ScsiResult, Task, TaskManagement, TmfResult,
};

/// The runtime every test session runs on; blocking calls from any thread.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// A login of `initiator` to `target` (`None`: discovery) with an ISID of
/// this test process's.
pub fn login_config(initiator: &str, target: Option<&str>) -> LoginConfig {
    let mut c = LoginConfig::new(initiator, target);
    c.isid = [0x80, 0, 0, 0x4f, 0x50, (std::process::id() & 0xff) as u8];
    c
}

/// A connection to a target, not logged in (yet), for raw steps.
pub struct Conn(pub initiator_iscsi::Connection);

impl Conn {
    /// Connects to `dst` from the local address `src`.
    pub fn connect_from(src: IpAddr, dst: SocketAddr) -> Result<Conn, Error> {
        block(initiator_iscsi::Connection::connect_from(src, dst)).map(Conn)
    }

    /// How long a receive waits.
    pub fn set_timeout(&mut self, d: Duration) {
        self.0.set_timeout(d);
    }

    /// Sends the first Login Request of `cfg`, and nothing more.
    pub fn send_first_login_request(&mut self, cfg: LoginConfig) -> Result<(), Error> {
        let pdu = iscsi_proto::login::InitiatorLogin::new(cfg)?.start();
        block(
            self.0
                .send(&iscsi_proto::pdu::Bhs::LoginRequest(pdu.bhs), &pdu.data),
        )
    }

    /// The status (class, detail) of the next Login Response.
    pub fn login_status(&mut self) -> Result<(u8, u8), Error> {
        let p = block(self.0.recv())?;
        match p.bhs {
            Ok(iscsi_proto::pdu::Bhs::LoginResponse(r)) => Ok((r.status_class, r.status_detail)),
            other => Err(Error::Protocol(format!("{other:?}"))),
        }
    }

    /// Logs in with `cfg`.
    pub fn login(mut self, cfg: LoginConfig) -> Result<Session, Error> {
        let info = block(self.0.login(cfg))?;
        Ok(Session(initiator_iscsi::Session::new(self.0, info)))
    }
}

/// A logged-in session, driven by blocking calls.
pub struct Session(pub initiator_iscsi::Session);

impl Session {
    /// Connects and logs in (no authentication, no digests). `target` None
    /// opens a discovery session.
    pub fn login(
        addr: SocketAddr,
        initiator: &str,
        target: Option<&str>,
    ) -> Result<Session, Error> {
        Session::login_with(addr, login_config(initiator, target))
    }

    /// Connects and logs in with `cfg`.
    pub fn login_with(addr: SocketAddr, cfg: LoginConfig) -> Result<Session, Error> {
        block(initiator_iscsi::Session::connect(addr, cfg)).map(Session)
    }

    /// SendTargets=All on a discovery session: the text response's keys.
    pub fn send_targets(&mut self) -> Result<Vec<(String, String)>, Error> {
        block(self.0.send_targets("All")).map(|t| t.0)
    }

    /// Runs one SCSI command: `data_out` for writes, `expect_in` bytes of data-in.
    pub fn scsi(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        expect_in: u32,
    ) -> Result<ScsiResult, Error> {
        let cmd = initiator_iscsi::Command {
            data_out: data_out.to_vec().into(),
            data_in: expect_in,
            ..initiator_iscsi::Command::new(lun, cdb)
        };
        block(self.0.command(cmd))
    }

    /// Sends a write command and all of its data-out (answering R2Ts), and
    /// returns without waiting for its status.
    pub fn start_write(&mut self, lun: u64, cdb: &[u8], data_out: &[u8]) -> Result<Task, Error> {
        block(async {
            let task = self
                .0
                .start(initiator_iscsi::Command::write(lun, cdb, data_out.to_vec()))
                .await?;
            self.0.send_data(task).await?;
            Ok(task)
        })
    }

    /// Sends a task management request and waits for its response.
    pub fn task_management(&mut self, tmf: TaskManagement) -> Result<TmfResult, Error> {
        block(self.0.task_management(tmf))
    }

    /// Logs out (close the session); waits for the Logout Response.
    pub fn logout(self) -> Result<(), Error> {
        block(self.0.logout())
    }

    /// Waits for the target to end the session: an Async Message asking for
    /// logout (answered) or the connection closing. True if it ended.
    pub fn await_target_close(mut self) -> bool {
        block(self.0.await_target_close())
    }

    /// Drops the connection with a TCP reset, as a crashing initiator or a
    /// broken network would, without logging out.
    pub fn reset(self) {
        self.0.reset();
    }
}

/// Panics unless GOOD; the data-in.
pub trait Good {
    /// The data-in of a GOOD command.
    fn good(self, what: &str) -> Vec<u8>;
}

impl Good for ScsiResult {
    fn good(self, what: &str) -> Vec<u8> {
        assert_eq!(
            self.status, 0,
            "{what}: status {:#x}, sense {:02x?}",
            self.status, self.sense
        );
        self.data
    }
}

// ---- SCSI helpers ------------------------------------------------------------------

pub fn inquiry_vpd(s: &mut Session, lun: u64, page: u8) -> Vec<u8> {
    s.scsi(lun, &[0x12, 0x01, page, 0x01, 0x00, 0], &[], 256)
        .unwrap()
        .good(&format!("INQUIRY VPD {page:#x}"))
}

pub fn write16(
    s: &mut Session,
    lun: u64,
    lba: u64,
    data: &[u8],
    block: usize,
    fua: bool,
) -> ScsiResult {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x8a;
    if fua {
        cdb[1] = 0x08;
    }
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&((data.len() / block) as u32).to_be_bytes());
    s.scsi(lun, &cdb, data, 0).unwrap()
}

pub fn read16(s: &mut Session, lun: u64, lba: u64, blocks: u32, block: usize) -> Vec<u8> {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    s.scsi(lun, &cdb, &[], blocks * block as u32)
        .unwrap()
        .good("READ(16)")
}

pub fn sync_cache10(s: &mut Session, lun: u64) -> ScsiResult {
    s.scsi(lun, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
        .unwrap()
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ---- a private network ---------------------------------------------------------

/// Whether the test may build network namespaces and open raw sockets
/// (root). Without root it prints SKIP and answers false, except under
/// `CI=true`, where that is a failure.
pub fn root_or_skip(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} needs root (network namespace, raw sockets), which CI=true must have"
    );
    eprintln!("SKIP: {what} needs root (network namespace, raw sockets)");
    false
}

/// A network namespace of the test's own, entered by the calling thread,
/// with loopback up and a veth pair `isu0`-`ini0` up in it (the ISU's end
/// and the initiator's); deleted on drop.
pub struct PrivateNet {
    /// The namespace's name (for `ip netns exec`).
    pub name: String,
}

impl PrivateNet {
    /// Builds `opie-PREFIX-PID` and moves this thread into it.
    pub fn enter(prefix: &str) -> PrivateNet {
        use std::os::fd::AsRawFd;
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("run ip");
            assert!(st.success(), "ip {args:?} failed");
        };
        let net = PrivateNet {
            name: format!("opie-{prefix}-{}", std::process::id()),
        };
        let _ = Command::new("ip")
            .args(["netns", "del", &net.name])
            .status();
        ip(&["netns", "add", &net.name]);
        let f = std::fs::File::open(format!("/run/netns/{}", net.name)).unwrap();
        // SAFETY: f is an open netns descriptor; setns changes only this thread's namespace.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        ip(&["link", "set", "lo", "up"]);
        ip(&[
            "link", "add", "isu0", "type", "veth", "peer", "name", "ini0",
        ]);
        ip(&["link", "set", "isu0", "up"]);
        ip(&["link", "set", "ini0", "up"]);
        net
    }
}

impl Drop for PrivateNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
