//! `opie up` as a user runs it: three ISUs and a head as its children on
//! loopback, free ports. We write verified blocks (each stamped with its
//! address, a generation and a CRC32C) through our initiator to the target
//! it prints, run the attach commands as printed, stop it with SIGINT and
//! check every child is gone and nothing listens, start it again on the
//! same directory and read the blocks back; then a second `opie up` on the
//! directory is refused and a child's death stops the rest; `opie up`
//! killed takes its children along.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use blockdev::{BlockDevice, SharedDevice, WriteFlags};
use common::{can_run, free_port, opie, run_cmd_to_exit, two_thread_runtime};
use initiator_iscsi::{IscsiDevice, LoginConfig, PipelineConfig, PipelinedSession};

#[path = "../initiator-iscsi/tests/common/mod.rs"]
mod stamping;

const EXPORT: &str = "iqn.2026-01.org.opie.up:v0";
const BS: usize = 512;
const RUNS: u64 = 24;
const RUN: u64 = 32;
const STRIDE: u64 = 1999;

/// A running `opie up`, killed on drop; its stdout read line by line.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    out: String,
    err: PathBuf,
}

fn spawn_up(data: &Path, port: u16) -> Up {
    let err = data.with_extension(format!("stderr.{}", rand_suffix()));
    let mut child = opie()
        .args(["up", "--size", "32M", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err).unwrap())
        // Its own process group, as a shell runs a job: the terminal's
        // Ctrl-C goes to the group (`Up::ctrl_c`).
        .process_group(0)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    Up {
        child,
        lines,
        out: String::new(),
        err,
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

impl Up {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Reads stdout until the line that ends the attach instructions.
    fn wait_ready(&mut self) -> String {
        let end = Instant::now() + Duration::from_secs(180);
        let start = self.out.len();
        loop {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => {
                    self.out += &l;
                    self.out.push('\n');
                    if l.starts_with("Ctrl-C stops everything") {
                        return self.out[start..].to_string();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait().unwrap();
                    panic!(
                        "opie up exited ({st}) before ready:\n{}\n{}",
                        self.out,
                        self.stderr()
                    );
                }
            }
            assert!(
                Instant::now() < end,
                "opie up never ready:\n{}\n{}",
                self.out,
                self.stderr()
            );
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// What the terminal's Ctrl-C does: SIGINT to the foreground process
    /// group, the one `opie up` was started in.
    fn ctrl_c(&self) {
        // SAFETY: kill(2) on the process group our child leads.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGINT);
        }
    }

    /// Waits for the exit; then the rest of stdout.
    fn wait_exit(&mut self, secs: u64) -> (std::process::ExitStatus, String) {
        let end = Instant::now() + Duration::from_secs(secs);
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < end,
                "opie up still running after {secs}s:\n{}\n{}",
                self.out,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.out += &l;
            self.out.push('\n');
        }
        (st, self.out.clone())
    }

    /// The pids of its children.
    fn children(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for t in std::fs::read_dir(format!("/proc/{}/task", self.child.id())).unwrap() {
            let c = std::fs::read_to_string(t.unwrap().path().join("children")).unwrap();
            pids.extend(c.split_whitespace().map(|p| p.parse::<u32>().unwrap()));
        }
        pids
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')),
    }
}

/// The ports `opie up` printed for its ISUs (`isuN (pid P) on A:PORT,1 ...`).
fn isu_ports(out: &str) -> Vec<u16> {
    out.lines()
        .filter(|l| l.starts_with("opie up: isu"))
        .flat_map(|l| {
            l.split(" on ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .map(|p| {
                    let a = p.split(',').next().unwrap();
                    a.rsplit(':').next().unwrap().parse::<u16>().unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The timestamp (RFC 3339, UTC: they sort as text) of the last log line
/// holding `what`.
fn log_time<'a>(log: &'a str, what: &str) -> &'a str {
    log.lines()
        .rfind(|l| l.contains(what))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {what:?} in:\n{log}"))
}

/// The pid `opie up` printed for `name`.
fn printed_pid(out: &str, name: &str) -> u32 {
    let l = out
        .lines()
        .find(|l| l.starts_with(&format!("opie up: {name} (pid ")))
        .unwrap_or_else(|| panic!("no pid of {name} in:\n{out}"));
    l.split("(pid ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The printed line that starts with `cmd`, trimmed.
fn printed_command<'a>(out: &'a str, cmd: &str) -> &'a str {
    out.lines()
        .map(str::trim)
        .find(|l| l.starts_with(cmd))
        .unwrap_or_else(|| panic!("no {cmd} line in:\n{out}"))
}

/// Runs `command` with sh when `tool` (of `package`) is installed, and
/// returns its output; it must succeed. A missing tool is a SKIP, and a
/// failure under `CI=true`.
fn run_where_installed(tool: &str, package: &str, command: &str) -> Option<String> {
    let have = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !can_run(have, &format!("{tool} ({package}) is not installed")) {
        return None;
    }
    let out = std::process::Command::new("sh")
        .args(["-c", command])
        .output()
        .unwrap();
    assert!(out.status.success(), "{command}: {out:?}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn open(portal: SocketAddr, iqn: &str) -> IscsiDevice {
    let login = LoginConfig::new("iqn.2026-01.org.opie.test:client", Some(iqn));
    let s = PipelinedSession::connect(portal, login, PipelineConfig::default())
        .await
        .expect("log in to the printed target");
    IscsiDevice::open(s, 0).await.expect("open its LUN 0")
}

fn stamps(lba: u64, generation: u64) -> blockdev::Bytes {
    stamping::stamps(lba, RUN, generation, BS).into()
}

/// Nothing listens on `port` of 127.0.0.1 any more.
fn not_listening(port: u16) -> bool {
    let a: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_err()
}

#[test]
fn up_serves_stops_and_comes_back_with_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("opie-data");
    let port = free_port();
    let mut up = spawn_up(&data, port);
    let text = up.wait_ready();
    assert!(text.contains("new appliance"), "{text}");

    // The printed target is the export, on our port.
    let qemu = printed_command(&text, "qemu-system-x86_64 -drive file=");
    let url = qemu
        .strip_prefix("qemu-system-x86_64 -drive file=")
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    assert_eq!(url, format!("iscsi://127.0.0.1:{port}/{EXPORT}/0"));
    let portal: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let children = up.children();
    assert_eq!(children.len(), 4, "three ISUs and a head: {children:?}");
    let isu_ports = isu_ports(&text);
    assert_eq!(isu_ports.len(), 6, "two portals per ISU:\n{text}");

    // The attach commands, run as printed: iscsi-ls, and the qemu URL
    // through qemu's own libiscsi driver.
    let ls = printed_command(&text, "iscsi-ls ");
    if let Some(out) = run_where_installed("iscsi-ls", "libiscsi-bin", ls) {
        assert!(
            out.contains(&format!("Target:{EXPORT} Portal:127.0.0.1:{port}"))
                && out.contains("Lun:0"),
            "{ls}:\n{out}"
        );
    }
    let info = format!("qemu-img info {url}");
    if let Some(out) = run_where_installed("qemu-img", "qemu-utils", &info) {
        assert!(out.contains("virtual size"), "{info}:\n{out}");
    }

    let rt = two_thread_runtime();
    rt.block_on(async {
        let dev: SharedDevice = std::sync::Arc::new(open(portal, EXPORT).await);
        for r in 0..RUNS {
            let lba = r * STRIDE;
            dev.write(lba, stamps(lba, 1), WriteFlags::FUA)
                .await
                .unwrap_or_else(|e| panic!("write of run {r}: {e}"));
        }
    });

    // An edit of the user's is kept.
    let head_toml = data.join("head/head.toml");
    let mut edited = std::fs::read_to_string(&head_toml).unwrap();
    edited += "# my note\n";
    std::fs::write(&head_toml, &edited).unwrap();

    up.ctrl_c();
    let (st, out) = up.wait_exit(120);
    assert!(st.success(), "{st}:\n{out}\n{}", up.stderr());
    assert!(out.contains("stopped cleanly"), "{out}");
    for pid in &children {
        assert!(gone(*pid), "child {pid} outlived opie up");
    }
    assert!(not_listening(port), "the head's port still listens");
    for p in &isu_ports {
        assert!(not_listening(*p), "ISU port {p} still listens");
    }
    // The head closed its array before any ISU was told to stop (the
    // children are out of the terminal's process group).
    let head_log = std::fs::read_to_string(data.join("head/head.log")).unwrap();
    let closed = log_time(&head_log, "arrays closed clean");
    for n in 0..3 {
        let isu_log = std::fs::read_to_string(data.join(format!("isu{n}/isu.log"))).unwrap();
        let stopping = log_time(&isu_log, "SIGTERM: no new connections");
        assert!(
            closed < stopping,
            "isu{n} was stopped ({stopping}) before the head had closed ({closed})"
        );
        assert!(
            !isu_log.contains("SIGINT"),
            "isu{n} got the Ctrl-C:\n{isu_log}"
        );
    }

    // Again: the same configs, the same array, the data back.
    let mut up = spawn_up(&data, port);
    let text = up.wait_ready();
    assert!(text.contains("again"), "{text}");
    assert_eq!(std::fs::read_to_string(&head_toml).unwrap(), edited);
    rt.block_on(async {
        let dev = open(portal, EXPORT).await;
        for r in 0..RUNS {
            let lba = r * STRIDE;
            let got = dev.read(lba, RUN as u32).await.expect("read");
            stamping::verify(&got, lba, 1, BS).unwrap_or_else(|e| panic!("run {r}: {e}"));
        }
    });
    let head_log = std::fs::read_to_string(data.join("head/head.log")).unwrap();
    assert_eq!(
        head_log.matches("creating the array").count(),
        1,
        "the array was created again:\n{head_log}"
    );

    // A second `opie up` on the same directory is refused, naming the holder.
    let mut second = opie();
    second
        .args(["up", "--port", &free_port().to_string(), "--data-dir"])
        .arg(&data);
    let (code, err) = run_cmd_to_exit(second, 60);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("in use") && err.contains(&up.child.id().to_string()),
        "{err}"
    );

    // A child that dies is reported; the rest is stopped; exit status 1.
    let children = up.children();
    let isu1 = printed_pid(&text, "isu1");
    // SAFETY: kill(2) on a pid opie up printed as its child.
    unsafe {
        libc::kill(isu1 as libc::pid_t, libc::SIGKILL);
    }
    let (st, out) = up.wait_exit(120);
    let err = up.stderr();
    assert_eq!(st.code(), Some(1), "{out}\n{err}");
    assert!(
        err.contains(&format!(
            "isu1 (pid {isu1}) exited unexpectedly (killed by signal 9)"
        )),
        "{err}"
    );
    for pid in &children {
        assert!(gone(*pid), "child {pid} outlived opie up");
    }
    assert!(not_listening(port), "the head's port still listens");
}

#[test]
fn a_port_in_use_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cmd = opie();
    cmd.args(["up", "--port", &port.to_string(), "--data-dir"])
        .arg(dir.path().join("d"));
    let (code, err) = run_cmd_to_exit(cmd, 60);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (the head's portal)"
        )) && err.contains("choose another port with --port"),
        "{err}"
    );
    // Nothing written: another --port on the same directory is a new
    // appliance, not a flag that disagrees with head.toml.
    assert!(!dir.path().join("d/head/head.toml").exists());
    assert!(!dir.path().join("d/isu0/isu.toml").exists());
}

#[test]
fn a_data_dir_that_cannot_be_created_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let mut cmd = opie();
    cmd.args(["up", "--port", &free_port().to_string(), "--data-dir"])
        .arg(file.join("d"));
    let (code, err) = run_cmd_to_exit(cmd, 60);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot use {} as the data directory",
            file.join("d").display()
        )),
        "{err}"
    );
}

#[test]
fn up_killed_takes_its_children_along() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("opie-data");
    let port = free_port();
    let mut up = spawn_up(&data, port);
    up.wait_ready();
    let children = up.children();
    up.signal(libc::SIGKILL);
    up.wait_exit(30);
    let end = Instant::now() + Duration::from_secs(60);
    while !children.iter().all(|p| gone(*p)) {
        assert!(
            Instant::now() < end,
            "children outlived opie up: {children:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The lock went with it; the array comes back after the crash.
    let mut up = spawn_up(&data, port);
    let text = up.wait_ready();
    assert!(text.contains("again"), "{text}");
    up.signal(libc::SIGINT);
    let (st, out) = up.wait_exit(120);
    assert!(st.success(), "{st}:\n{out}\n{}", up.stderr());
}
