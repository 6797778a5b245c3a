//! What the admin changes at run time outlives the head: an ISU added with
//! `opie isu add` (a hot spare, an unassigned one, one an array grew onto)
//! is kept in the head's data directory (`head-data/isus.toml`, 0600) and
//! is there again after a SIGTERM or a SIGKILL and a restart; `isu remove`
//! forgets it for good; a corrupt state file stops the head at the start
//! with a message naming it.

mod common;
#[path = "common/head.rs"]
mod head;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use blockdev::SharedDevice;
use common::Daemon;
use head::{
    array_state, in_sync, isu_state, members_in, open, runtime, status, until, verify_all,
    write_all, Rig, RigSpec, RUNS,
};
use serde_json::Value;

fn state_file(rig: &Rig) -> PathBuf {
    rig.dir.path().join("head-data/isus.toml")
}

/// `isu add NAME --portal <its port>` with `extra` arguments; must succeed.
fn add(rig: &Rig, n: usize, extra: &[&str]) {
    let portal = format!("127.0.0.1:{}", rig.isu_ports[n]);
    let name = format!("isu{n}");
    let mut args = vec!["isu", "add", name.as_str(), "--portal", portal.as_str()];
    args.extend_from_slice(extra);
    args.push("--json");
    let (code, out) = rig.admin(&args);
    assert_eq!(code, Some(0), "{out}");
}

/// Stops the head with `sig` and starts it again; the new head, serving.
fn restart(rig: &Rig, mut h: Daemon, sig: libc::c_int) -> Daemon {
    h.signal(sig);
    h.wait_exit(30).expect("the head stops");
    rig.head()
}

/// The ISUs of the array's spares.
fn spares(s: &Value) -> Vec<String> {
    members_in(s, "spare")
}

/// ISUs 0-2 in the array, ISU 3 started but not in `head.toml`, the head
/// waiting for every member; the head once the array is clean.
fn rig_and_head(spare_timeout: Option<&'static str>) -> (Rig, Daemon) {
    let rig = Rig::start_spec(RigSpec {
        unconfigured: vec![3],
        spare_timeout,
        strict_start: true,
        ..RigSpec::default()
    });
    let h = rig.head();
    until(&rig, 30, "clean", |s| array_state(s) == "clean");
    (rig, h)
}

fn isus(s: &Value) -> Vec<String> {
    s["isus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_added_spare_survives_sigterm_and_sigkill_and_is_then_pulled_in() {
    let (mut rig, h) = rig_and_head(Some("3s"));
    add(&rig, 3, &["--spare-for", "a0"]);
    let file = state_file(&rig);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("name = \"isu3\"") && text.contains("role = \"spare\""),
        "{text}"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "isus.toml mode {mode:o}");
    let mut h = h;
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        h = restart(&rig, h, sig);
        let s = until(&rig, 60, "clean with the spare after a restart", |s| {
            array_state(s) == "clean" && !spares(s).is_empty()
        });
        assert_eq!(spares(&s), ["isu3"], "after signal {sig}: {s:#}");
    }
    // A member lost under writes: the added spare is pulled in and
    // rebuilt, and the data reads back.
    let rt = runtime();
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rig.kill_isu(1);
    rt.block_on(write_all(&dev, 1, true));
    let s = until(&rig, 120, "the spare rebuilt in", |s| {
        array_state(s) == "clean" && in_sync(s).contains(&"isu3".to_string())
    });
    assert_eq!(in_sync(&s), ["isu0", "isu3", "isu2"], "{s:#}");
    rt.block_on(verify_all(&dev, &[1; RUNS as usize]));
    drop(h);
}

#[test]
fn an_array_grown_onto_an_added_isu_assembles_with_it_after_a_restart() {
    let (rig, h) = rig_and_head(None);
    add(&rig, 3, &[]);
    let (code, out) = rig.admin(&["array", "grow", "a0", "isu3", "--wait", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let text = std::fs::read_to_string(state_file(&rig)).unwrap();
    assert!(text.contains("role = \"member\""), "{text}");
    until(&rig, 60, "clean after the reshape", |s| {
        array_state(s) == "clean"
    });
    // The head is killed: only isus.toml tells where isu3 is.
    let _h = restart(&rig, h, libc::SIGKILL);
    let s = until(&rig, 60, "clean with four members after the restart", |s| {
        array_state(s) == "clean" && in_sync(s).len() == 4
    });
    assert_eq!(in_sync(&s), ["isu0", "isu1", "isu2", "isu3"], "{s:#}");
}

#[test]
fn a_removed_isu_stays_gone_and_a_corrupt_state_file_stops_the_head() {
    let (rig, mut h) = rig_and_head(None);
    add(&rig, 3, &[]);
    h = restart(&rig, h, libc::SIGTERM);
    until(&rig, 30, "clean", |s| array_state(s) == "clean");
    assert_eq!(isu_state(&status(&rig), "isu3"), "unassigned");
    let (code, out) = rig.admin(&["isu", "remove", "isu3", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    h = restart(&rig, h, libc::SIGKILL);
    let s = until(&rig, 30, "clean", |s| array_state(s) == "clean");
    assert_eq!(isus(&s), ["isu0", "isu1", "isu2"], "{s:#}");
    let text = std::fs::read_to_string(state_file(&rig)).unwrap();
    assert!(!text.contains("isu3"), "{text}");
    h.signal(libc::SIGTERM);
    h.wait_exit(30).expect("the head stops");
    // A state file that does not parse: exit 1 at the start, naming it.
    std::fs::write(state_file(&rig), "version = 1\n[[isu]\n").unwrap();
    let mut bad = rig.spawn_head();
    let st = bad.wait_exit(30).expect("the head refuses to start");
    assert_eq!(st.code(), Some(1), "{}", bad.log_text());
    let log = bad.log_text();
    assert!(
        log.contains("isus.toml: not a valid state file of added ISUs"),
        "{log}"
    );
    // Another version: named as such.
    std::fs::write(state_file(&rig), "version = 9\n").unwrap();
    let mut bad = rig.spawn_head();
    let st = bad.wait_exit(30).expect("the head refuses to start");
    assert_eq!(st.code(), Some(1));
    assert!(bad.log_text().contains("version 9"), "{}", bad.log_text());
}
