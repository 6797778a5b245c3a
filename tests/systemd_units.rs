//! The systemd side of the daemons (issue 17, point 4): the units that
//! `opie systemd install` writes pass `systemd-analyze verify`, and
//! `opie isu serve` speaks the notify protocol the units rely on (Type=notify,
//! WatchdogSec=, ExecReload= by SIGHUP): READY=1 once its portal listens,
//! WATCHDOG=1 at the interval systemd asks for, RELOADING=1 then READY=1
//! around a SIGHUP, STOPPING=1 when SIGTERM starts the drain; and
//! `opie head serve` READY=1 only once its arrays are up and its exports
//! listen.

mod common;
#[path = "common/head.rs"]
mod head;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{can_run, free_port, opie, write_config};

#[test]
fn installed_units_pass_systemd_analyze_verify() {
    let t = tempfile::tempdir().unwrap();
    let units = t.path().join("units");
    let out = opie()
        .args(["systemd", "install", "--no-reload", "--unit-dir"])
        .arg(&units)
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_opie"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = ["opie-isu.service", "opie-head.service"];
    for n in names {
        let text = std::fs::read_to_string(units.join(n)).unwrap();
        assert!(
            text.contains(&format!("ExecStart={} ", env!("CARGO_BIN_EXE_opie"))),
            "{n}: {text}"
        );
    }
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if !can_run(
        analyze.is_ok(),
        "systemd-analyze missing (apt-get install systemd)",
    ) {
        return;
    }
    let v = Command::new("systemd-analyze")
        .arg("verify")
        .args(names.map(|n| units.join(n)))
        .output()
        .unwrap();
    assert!(
        v.status.success() && v.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}

/// The notify socket's messages, one datagram each, until one holds `want`
/// (within `secs`); all of them in order.
fn until_message(sock: &UnixDatagram, want: &str, secs: u64, seen: &mut Vec<String>) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = m.lines().any(|l| l == want);
            seen.push(m);
            if hit {
                return true;
            }
        }
    }
    false
}

#[test]
fn isu_serve_speaks_the_notify_protocol() {
    let t = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(
        t.path(),
        &format!(
            "[isu]\nbase_iqn = \"iqn.2026-01.org.opie.test:sd\"\nlisten = [\"127.0.0.1:{port}\"]\n\
             [[disk]]\nname = \"d0\"\nsize = \"4M\"\n"
        ),
    );
    let sock_path = t.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    // WATCHDOG_PID must be the daemon's own pid: the shell execs opie in
    // its place, so its $$ is that pid.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" isu serve --config \"$1\" --data-dir \"$2\"")
        .arg(env!("CARGO_BIN_EXE_opie"))
        .arg(&cfg)
        .arg(t.path().join("data"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "300000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut seen = Vec::new();
    let ok = until_message(&sock, "READY=1", 20, &mut seen);
    let kill = |sig| {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(pid, sig) };
    };
    if !ok {
        kill(libc::SIGKILL);
        panic!("no READY=1 within 20 s: {seen:?}");
    }
    let ready = seen.last().unwrap().clone();
    assert!(
        ready.contains(&format!("STATUS=serving 1 targets on 127.0.0.1:{port}")),
        "{ready}"
    );
    // The portal listens by the time READY=1 arrives.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    // Keep-alives at a third of 300 ms: several within a second.
    let start = seen.len();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(1) {
        until_message(&sock, "WATCHDOG=1", 1, &mut seen);
    }
    let pings = seen[start..]
        .iter()
        .filter(|m| m.contains("WATCHDOG=1"))
        .count();
    assert!(pings >= 3, "{pings} keep-alives in a second: {seen:?}");
    kill(libc::SIGHUP);
    assert!(
        until_message(&sock, "RELOADING=1", 10, &mut seen),
        "no RELOADING=1 after SIGHUP: {seen:?}"
    );
    assert!(
        until_message(&sock, "READY=1", 10, &mut seen),
        "no READY=1 after the reload: {seen:?}"
    );
    kill(libc::SIGTERM);
    assert!(
        until_message(&sock, "STOPPING=1", 10, &mut seen),
        "no STOPPING=1 after SIGTERM: {seen:?}"
    );
    let end = Instant::now() + Duration::from_secs(20);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < end, "no exit within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st.code(), Some(0));
}

#[test]
fn head_is_ready_once_its_exports_listen() {
    let rig = head::Rig::start();
    let sock_path = rig.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut d = rig.spawn_head_env(&[("NOTIFY_SOCKET", sock_path.as_os_str())]);
    let mut seen = Vec::new();
    assert!(
        until_message(&sock, "READY=1", 120, &mut seen),
        "no READY=1 within 120 s: {seen:?}\n{}",
        d.log_text()
    );
    let ready = seen.last().unwrap();
    assert!(
        ready.contains("STATUS=serving 1 exports of 1 arrays on 127.0.0.1:"),
        "{ready}"
    );
    // Ready means serving: both portals accept at once.
    for i in 0..2 {
        assert!(
            std::net::TcpStream::connect(rig.portal(i)).is_ok(),
            "portal {i}"
        );
    }
    d.signal(libc::SIGTERM);
    assert!(
        until_message(&sock, "STOPPING=1", 10, &mut seen),
        "no STOPPING=1 after SIGTERM: {seen:?}"
    );
    let st = d.wait_exit(60).expect("the head exits after SIGTERM");
    assert_eq!(st.code(), Some(0), "{}", d.log_text());
}
