//! CHAP and access control of `opie isu serve`, end to end: libiscsi's
//! `iscsi-inq` logs in with one-way and mutual CHAP; the test initiator
//! (CHAP through chap::Responder, from a chosen source address) checks
//! the status class and detail of refusals, the per-source backoff, discovery
//! filtering and SIGHUP reload; the daemon's trace log never holds a secret.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chap::{AlgorithmList, Credential, ResponderConfig};
use common::*;

const BASE: &str = "iqn.2026-01.org.opie.test:chap";
const ALICE: &str = "iqn.2026-01.org.opie.test:alice";
const EVE: &str = "iqn.2026-01.org.opie.test:eve";
const SECRET: &str = "alice-secret-16b";
const WRONG: &str = "wrong-secret-16b";
const TARGET_USER: &str = "isu-target";
const TARGET_SECRET: &str = "target-secret-16";

fn iqn(disk: &str) -> String {
    format!("{BASE}:{disk}")
}

/// Targets: `one` (CHAP, one-way), `mutual` (CHAP with a target secret),
/// `chapacl` (CHAP with a credential anyone may use, but only alice from
/// 127.0.0.0/31 on its ACLs), `acl` (no CHAP, only alice), `open` (anyone).
fn config(port: u16, backoff: &str) -> String {
    format!(
        "[isu]\nbase_iqn = \"{BASE}\"\nlisten = [\"127.0.0.1:{port}\"]\nnop_interval = \"0s\"\n\
         [auth]\nsecrets = \"secrets.toml\"\n{backoff}\n\
         [limits]\nlogin_idle_timeout = \"60s\"\n\
         [[disk]]\nname = \"one\"\nsize = \"4M\"\nauth = \"chap\"\n\
         [[disk]]\nname = \"mutual\"\nsize = \"4M\"\nauth = \"chap\"\n\
         [[disk]]\nname = \"chapacl\"\nsize = \"4M\"\nauth = \"chap\"\n\
         initiators = [\"{ALICE}\"]\nsources = [\"127.0.0.0/31\"]\n\
         [[disk]]\nname = \"acl\"\nsize = \"4M\"\ninitiators = [\"{ALICE}\"]\n\
         [[disk]]\nname = \"open\"\nsize = \"4M\"\n"
    )
}

fn secrets(alice_secret: &str) -> String {
    format!(
        "[target.\"{one}\"]\n[[target.\"{one}\".chap]]\nuser = \"alice\"\nsecret = \"{alice_secret}\"\n\
         [target.\"{m}\"]\nmutual = {{ user = \"{TARGET_USER}\", secret = \"{TARGET_SECRET}\" }}\n\
         [[target.\"{m}\".chap]]\nuser = \"alice\"\nsecret = \"{alice_secret}\"\ninitiators = [\"{ALICE}\"]\n\
         [[target.\"{c}\".chap]]\nuser = \"alice\"\nsecret = \"{alice_secret}\"\n",
        one = iqn("one"),
        m = iqn("mutual"),
        c = iqn("chapacl"),
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    daemon: Daemon,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

fn start(backoff: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), &config(port, backoff));
    let sec = dir.path().join("secrets.toml");
    std::fs::write(&sec, secrets(SECRET)).unwrap();
    std::fs::set_permissions(&sec, std::fs::Permissions::from_mode(0o600)).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // `env` sets RUST_LOG after the helper's own default, so trace wins.
    let mut cmd = Command::new("env");
    cmd.arg("RUST_LOG=trace").arg(env!("CARGO_BIN_EXE_opie"));
    let daemon = Daemon::start_with(cmd, &cfg, &dir.path().join("data"), &[], &[addr]);
    Setup {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        daemon,
        addr,
    }
}

/// `iscsi-inq` with CHAP credentials in the URL: whether it succeeded.
fn inq(addr: SocketAddr, initiator: &str, target: &str, auth: &str, query: &str) -> bool {
    let url = format!("iscsi://{auth}{addr}/{target}/0{query}");
    let out = Command::new("iscsi-inq")
        .args(["-i", initiator, &url])
        .stdin(Stdio::null())
        .output()
        .expect("iscsi-inq (libiscsi-bin) must be installed");
    out.status.success()
}

#[test]
fn libiscsi_chap_one_way_and_mutual() {
    let s = start("");
    let one = iqn("one");
    let m = iqn("mutual");
    let a = s.addr;
    assert!(
        inq(a, ALICE, &one, &format!("alice%{SECRET}@"), ""),
        "{}",
        s.daemon.log_text()
    );
    assert!(!inq(a, ALICE, &one, &format!("alice%{WRONG}@"), ""));
    assert!(!inq(a, ALICE, &one, &format!("mallory%{SECRET}@"), ""));
    assert!(
        !inq(a, ALICE, &one, "", ""),
        "CHAP required: AuthMethod=None must fail"
    );
    let q = |secret: &str| format!("?target_user={TARGET_USER}&target_password={secret}");
    assert!(inq(
        a,
        ALICE,
        &m,
        &format!("alice%{SECRET}@"),
        &q(TARGET_SECRET)
    ));
    assert!(!inq(a, ALICE, &m, &format!("alice%{SECRET}@"), &q(WRONG)));
    // Alice's credential on `mutual` is bound to her IQN.
    assert!(!inq(
        a,
        EVE,
        &m,
        &format!("alice%{SECRET}@"),
        &q(TARGET_SECRET)
    ));
    // Targets without CHAP still work, and the ACL target only for alice.
    assert!(inq(a, EVE, &iqn("open"), "", ""));
    assert!(inq(a, ALICE, &iqn("acl"), "", ""));
    assert!(!inq(a, EVE, &iqn("acl"), "", ""));
    assert_no_secret(&s.daemon.log_text());
}

fn assert_no_secret(log: &str) {
    assert!(
        log.contains("TRACE") || log.contains("trace"),
        "not a trace log"
    );
    for secret in [SECRET, WRONG, TARGET_SECRET, "replacement-secret"] {
        assert!(!log.contains(secret), "secret {secret:?} in the daemon log");
        assert!(
            !log.contains(&hex(secret.as_bytes())),
            "secret {secret:?} (hex) in the daemon log"
        );
    }
    for value in ["CHAP_R=0", "CHAP_C=0"] {
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(value)).collect();
        assert!(leaks.is_empty(), "{value}... in the daemon log: {leaks:#?}");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---- CHAP logins from a chosen source address ----------------------------------

/// A login of `initiator` to `target` with one-way CHAP as alice.
fn chap_config(initiator: &str, target: &str, secret: &str) -> LoginConfig {
    let mut cfg = login_config(initiator, Some(target));
    cfg.isid = [0x80, 0, 0, 0x43, 0x48, 0x41];
    cfg.auth = Auth::Chap(ResponderConfig {
        algorithms: AlgorithmList::default(),
        credential: Credential::new("alice", secret),
        mutual: None,
    });
    cfg
}

fn connect_from(src: IpAddr, dst: SocketAddr) -> Conn {
    let mut c = Conn::connect_from(src, dst).unwrap();
    c.set_timeout(Duration::from_secs(60));
    c
}

/// Logs in to `target` from `src` with CHAP as alice: the final status
/// (class, detail); (0, 0) when logged in.
fn chap_login(
    src: IpAddr,
    dst: SocketAddr,
    initiator: &str,
    target: &str,
    secret: &str,
) -> (u8, u8) {
    match connect_from(src, dst).login(chap_config(initiator, target, secret)) {
        Ok(_) => (0, 0),
        Err(Error::Login(e)) => e.status().unwrap_or((0xff, 0xff)),
        Err(_) => (0xff, 0xff),
    }
}

#[test]
fn a_chap_target_does_not_tell_strangers_what_its_acls_hold() {
    let s = start("");
    let (lo, other): (IpAddr, IpAddr) =
        ("127.0.0.1".parse().unwrap(), "127.0.0.3".parse().unwrap());
    let t = iqn("chapacl");
    assert_eq!(chap_login(lo, s.addr, ALICE, &t, SECRET), (0, 0));
    // Without the secret, on the ACLs or not: a challenge, then 0201.
    assert_eq!(chap_login(lo, s.addr, ALICE, &t, WRONG), (2, 1));
    assert_eq!(chap_login(lo, s.addr, EVE, &t, WRONG), (2, 1));
    assert_eq!(chap_login(other, s.addr, ALICE, &t, WRONG), (2, 1));
    // With it, the ACLs still refuse, without saying so on the wire.
    assert_eq!(chap_login(lo, s.addr, EVE, &t, SECRET), (2, 1));
    assert_eq!(chap_login(other, s.addr, ALICE, &t, SECRET), (2, 1));
    let log = s.daemon.log_text();
    for reason in [
        "initiator not on the target's initiators list",
        "source address not on the target's sources list",
    ] {
        assert!(log.contains(reason), "no {reason:?} in the log:\n{log}");
    }
    // libiscsi sees the same refusal for eve as for a wrong secret.
    let a = s.addr;
    assert!(inq(a, ALICE, &t, &format!("alice%{SECRET}@"), ""));
    assert!(!inq(a, EVE, &t, &format!("alice%{SECRET}@"), ""));
    assert_no_secret(&s.daemon.log_text());
}

#[test]
fn refusals_carry_the_right_status() {
    let s = start("");
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(chap_login(lo, s.addr, ALICE, &iqn("one"), SECRET), (0, 0));
    assert_eq!(chap_login(lo, s.addr, ALICE, &iqn("one"), WRONG), (2, 1));
    assert_eq!(chap_login(lo, s.addr, EVE, &iqn("mutual"), SECRET), (2, 1));
    assert_eq!(chap_login(lo, s.addr, EVE, &iqn("acl"), SECRET), (2, 2));
    assert_eq!(chap_login(lo, s.addr, ALICE, &iqn("nope"), SECRET), (2, 3));
    let e = Session::login(s.addr, EVE, Some(&iqn("acl")))
        .err()
        .unwrap();
    assert!(matches!(e, Error::Login(LoginError::NotAuthorized)), "{e}");
    assert_no_secret(&s.daemon.log_text());
}

fn discovered(addr: SocketAddr, initiator: &str) -> Vec<String> {
    let mut d = Session::login(addr, initiator, None).unwrap();
    let names = d
        .send_targets()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k == "TargetName")
        .map(|(_, v)| v)
        .collect();
    let _ = d.logout();
    names
}

#[test]
fn discovery_shows_only_permitted_targets_and_sighup_reloads() {
    let mut s = start("");
    let alice = discovered(s.addr, ALICE);
    let all = [
        iqn("one"),
        iqn("mutual"),
        iqn("chapacl"),
        iqn("acl"),
        iqn("open"),
    ];
    assert_eq!(alice, all);
    // Discovery is open (no CHAP), so the name eve claims proves nothing:
    // she sees every CHAP target her address may reach, whatever their
    // initiator ACLs and credentials say, as any other name would. `acl`
    // has no CHAP: its ACL is all that guards it, and it is alice's only.
    let eve = discovered(s.addr, EVE);
    assert_eq!(
        eve,
        [iqn("one"), iqn("mutual"), iqn("chapacl"), iqn("open")]
    );
    assert_eq!(discovered(s.addr, "iqn.2026-01.org.opie.test:x"), eve);

    // An established session survives a reload that revokes it.
    let mut kept = Session::login(s.addr, ALICE, Some(&iqn("acl"))).unwrap();
    std::fs::write(s.dir.join("secrets.toml"), secrets("replacement-secret")).unwrap();
    let cfg = std::fs::read_to_string(s.dir.join("isu.toml"))
        .unwrap()
        .replace(
            &format!("initiators = [\"{ALICE}\"]"),
            &format!("initiators = [\"{EVE}\"]"),
        );
    std::fs::write(s.dir.join("isu.toml"), cfg).unwrap();
    s.daemon.signal(libc::SIGHUP);
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while chap_login(lo, s.addr, ALICE, &iqn("one"), "replacement-secret") != (0, 0) {
        assert!(
            Instant::now() < end,
            "reload not applied:\n{}",
            s.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(chap_login(lo, s.addr, ALICE, &iqn("one"), SECRET), (2, 1));
    assert!(Session::login(s.addr, ALICE, Some(&iqn("acl"))).is_err());
    assert!(Session::login(s.addr, EVE, Some(&iqn("acl"))).is_ok());
    assert_eq!(discovered(s.addr, EVE), all);
    // The session opened before the reload still does I/O.
    let data = pattern(7, 4096);
    // The first command reports the power-on unit attention.
    let _ = kept.scsi(0, &[0u8; 6], &[], 0);
    write16(&mut kept, 0, 0, &data, 512, false).good("write after reload");
    assert_eq!(read16(&mut kept, 0, 0, 8, 512), data);
    kept.logout().unwrap();
    assert!(
        s.daemon.child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop the daemon"
    );
    assert_no_secret(&s.daemon.log_text());
}

#[test]
fn backoff_slows_one_source_only() {
    let (free, base, cap) = (2u32, Duration::from_millis(20), Duration::from_millis(300));
    let s = start(&format!(
        "[auth.backoff]\nfree_failures = {free}\nbase = \"{}ms\"\ncap = \"{}ms\"\n",
        base.as_millis(),
        cap.as_millis()
    ));
    let cfg = chap::BackoffConfig {
        free_failures: free,
        base,
        cap,
        ..chap::BackoffConfig::default()
    };
    let configured: Duration = (1..=50).map(|n| cfg.delay_for(n)).sum();
    let attacker: IpAddr = "127.0.0.1".parse().unwrap();
    let good: IpAddr = "127.0.0.2".parse().unwrap();
    let addr = s.addr;
    let target = iqn("one");
    let t = target.clone();
    let attack = std::thread::spawn(move || {
        let start = Instant::now();
        for _ in 0..50 {
            assert_eq!(chap_login(attacker, addr, ALICE, &t, WRONG), (2, 1));
        }
        start.elapsed()
    });
    // While the attacker is held back at the cap, the other source logs in
    // without waiting for it.
    std::thread::sleep(cap * 4);
    let mut good_times = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        assert_eq!(chap_login(good, addr, ALICE, &target, SECRET), (0, 0));
        good_times.push(t0.elapsed());
    }
    let attack_time = attack.join().unwrap();
    assert!(
        attack_time >= configured,
        "50 wrong logins took {attack_time:?}, less than the configured {configured:?}"
    );
    let best = good_times.iter().min().unwrap();
    assert!(
        *best < cap,
        "a login from another source took {best:?}, as slow as the attacker's {cap:?} hold"
    );
    eprintln!("50 wrong logins: {attack_time:?} (configured {configured:?}); other source: {good_times:?}");
    assert_no_secret(&s.daemon.log_text());
}

/// Opens a login to `one` from `src` and sends its first step (no CHAP
/// answer yet), without reading the reply.
fn first_login_step(src: IpAddr, dst: SocketAddr) -> Conn {
    let mut c = connect_from(src, dst);
    c.send_first_login_request(chap_config(ALICE, &iqn("one"), SECRET))
        .unwrap();
    c
}

/// A login from `src` that the target admitted (it answered the first step)
/// and that then stalls, occupying one of the source's logins in flight.
fn stalled_login(src: IpAddr, dst: SocketAddr) -> Conn {
    let mut c = first_login_step(src, dst);
    let (class, _) = c.login_status().unwrap();
    assert_eq!(class, 0, "first login step refused");
    c
}

#[test]
fn parallel_logins_from_one_source_are_taken_a_few_at_a_time() {
    // Two logins per source at a time. Two logins from 127.0.0.1 stalled
    // after their first step occupy both: a third login from there waits
    // until one of them goes away, while 127.0.0.2 logs in at once.
    let s = start("[auth.backoff]\nmax_in_flight = 2\n");
    let busy: IpAddr = "127.0.0.1".parse().unwrap();
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let idle1 = stalled_login(busy, s.addr);
    let idle2 = stalled_login(busy, s.addr);
    let (addr, target) = (s.addr, iqn("one"));
    let t = target.clone();
    let queued = std::thread::spawn(move || {
        let t0 = Instant::now();
        (chap_login(busy, addr, ALICE, &t, SECRET), t0.elapsed())
    });
    let t0 = Instant::now();
    assert_eq!(chap_login(other, s.addr, ALICE, &target, SECRET), (0, 0));
    let other_took = t0.elapsed();
    let hold = Duration::from_millis(1500);
    std::thread::sleep(hold.saturating_sub(t0.elapsed()));
    assert!(
        !queued.is_finished(),
        "a third login from a busy source was not held back"
    );
    drop(idle1);
    let (status, took) = queued.join().unwrap();
    assert_eq!(status, (0, 0), "the held-back login failed");
    assert!(took >= hold, "the held-back login took only {took:?}");
    assert!(other_took < hold, "another source waited {other_took:?}");
    drop(idle2);
}

#[test]
fn open_secrets_file_is_refused_with_strict_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(port, "").replace("[auth]\n", "[auth]\nstrict_secrets = true\n");
    let path = write_config(dir.path(), &cfg);
    let sec = dir.path().join("secrets.toml");
    std::fs::write(&sec, secrets(SECRET)).unwrap();
    std::fs::set_permissions(&sec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = opie()
        .args(["isu", "serve", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("secrets"), "{err}");
    assert!(!err.contains(SECRET));
}

/// Polls the daemon's log until it holds `what` (or fails after a deadline).
fn await_log(d: &Daemon, what: &str) -> String {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let log = d.log_text();
        if log.contains(what) {
            return log;
        }
        assert!(Instant::now() < end, "no {what:?} in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_applies_new_backoff_settings_and_keeps_failure_history() {
    let backoff = |base: &str, cap: &str, max_in_flight: u32| {
        format!(
            "[auth.backoff]\nfree_failures = 2\nbase = \"{base}\"\ncap = \"{cap}\"\nmax_in_flight = {max_in_flight}\n"
        )
    };
    let before = backoff("10ms", "10ms", 2);
    let s = start(&before);
    let reload = |section: &str| {
        let path = s.dir.join("isu.toml");
        let cfg = std::fs::read_to_string(&path).unwrap();
        let current = cfg
            .lines()
            .skip_while(|l| *l != "[auth.backoff]")
            .take(5)
            .map(|l| format!("{l}\n"))
            .collect::<String>();
        std::fs::write(&path, cfg.replace(&current, section)).unwrap();
        s.daemon.signal(libc::SIGHUP);
    };
    let (busy, attacker): (IpAddr, IpAddr) =
        ("127.0.0.1".parse().unwrap(), "127.0.0.3".parse().unwrap());
    // Two failures: still free, but counted.
    for _ in 0..2 {
        assert_eq!(
            chap_login(attacker, s.addr, ALICE, &iqn("one"), WRONG),
            (2, 1)
        );
    }

    // An invalid file (cap below base) is refused as a whole: the old limit
    // of two logins in flight stays, as both stalled logins are answered.
    reload(&backoff("1500ms", "10ms", 1));
    await_log(&s.daemon, "config refused");
    let idle1 = stalled_login(busy, s.addr);
    let idle2 = stalled_login(busy, s.addr);

    // A valid one applies: one login in flight, base and cap 1.5 s.
    reload(&backoff("1500ms", "1500ms", 1));
    let log = await_log(&s.daemon, "backoff settings changed");
    assert!(
        log.contains("cap 10ms -> 1.5s") && log.contains("max_in_flight 2 -> 1"),
        "{log}"
    );
    // The two logins in flight still count: with one of them gone the new
    // limit of one still holds a third back (the old limit of two would
    // admit it); with both gone it is answered.
    let mut third = first_login_step(busy, s.addr);
    drop(idle1);
    third.set_timeout(Duration::from_secs(1));
    let early = third.login_status();
    assert!(
        early.is_err(),
        "a login was admitted beyond the reloaded max_in_flight: {early:?}"
    );
    drop(idle2);
    third.set_timeout(Duration::from_secs(60));
    let (class, _) = third
        .login_status()
        .expect("held-back login never admitted");
    assert_eq!(class, 0);
    drop(third);

    // The attacker's two failures survived the reload: the third is past
    // free_failures and held back by the new base (capped at 1.5 s).
    let t0 = Instant::now();
    assert_eq!(
        chap_login(attacker, s.addr, ALICE, &iqn("one"), WRONG),
        (2, 1)
    );
    let held = t0.elapsed();
    assert!(
        held >= Duration::from_millis(1500),
        "third failure after the reload answered in {held:?}"
    );
    assert_no_secret(&s.daemon.log_text());
}
