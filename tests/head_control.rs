//! The head's control socket and monitor, end to end: real `opie isu
//! serve` processes, `opie head serve` over them, and the `opie` admin
//! commands run beside `head.toml` with their default data directory (so
//! the CLI's default finds the head's socket). Under verified writes: an
//! ISU killed shows degraded and its hot spare is pulled in and rebuilt; a
//! suspended ISU resumes with only the written regions resynced; an ISU is
//! replaced online by one added at run time.

mod common;
#[path = "common/head.rs"]
mod head;

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::SharedDevice;
use head::{
    array_state, in_sync, isu_state, open, runtime, status, until, verify_all, write_all, Rig,
    RigSpec, Writer, RUNS,
};
use serde_json::Value;

fn events(s: &Value) -> String {
    s["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}: {}", e["subject"], e["message"]))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_killed_isu_shows_degraded_then_its_spare_is_pulled_in_and_rebuilt() {
    let mut rig = Rig::start_spec(RigSpec {
        spares: vec![3],
        spare_timeout: Some("3s"),
        ..RigSpec::default()
    });
    let rt = runtime();
    let _head = rig.head();
    let s = until(&rig, 30, "clean", |s| array_state(s) == "clean");
    for i in 0..4 {
        assert_eq!(isu_state(&s, &format!("isu{i}")), "up", "{s:#}");
    }
    assert_eq!(in_sync(&s), ["isu0", "isu1", "isu2"], "{s:#}");
    assert_eq!(s["arrays"][0]["members"][3]["state"], "spare", "{s:#}");
    assert_eq!(s["volumes"][0]["exports"][0]["target"], head::EXPORT);
    assert!(s["arrays"][0]["capacity"].as_u64().unwrap() > 0);
    // The same as a table for people.
    let (code, table) = rig.admin(&["status"]);
    assert_eq!(code, Some(0), "{table}");
    println!("{table}");
    for w in ["a0", "clean", "isu3", "spare", "v0", head::EXPORT] {
        assert!(table.contains(w), "{w:?} missing from:\n{table}");
    }
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, false));
    let writer = Writer::start(&rt, &dev, 0..RUNS, 1);
    std::thread::sleep(Duration::from_millis(500));
    rig.kill_isu(1);
    let killed = Instant::now();
    // The spare waits 3 s after the member fails: status sees it degraded
    // first.
    let s = until(&rig, 60, "degraded", |s| array_state(s) == "degraded");
    println!(
        "degraded in status {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(isu_state(&s, "isu1"), "down", "{s:#}");
    // The spare is pulled in after its 3 s and rebuilt while writes go on;
    // its progress shows in status.
    let mut saw_progress = None;
    let s = until(&rig, 180, "rebuilt onto the spare", |s| {
        if let Some(p) = s["arrays"][0]["progress"]["fraction"].as_f64() {
            saw_progress.get_or_insert(p);
        }
        // The monitor records the rebuild's end at its next look.
        array_state(s) == "clean" && events(s).contains("rebuild finished")
    });
    assert_eq!(in_sync(&s), ["isu0", "isu3", "isu2"], "{s:#}");
    let ev = events(&s);
    assert!(ev.contains("hot spare pulled into slot 1"), "{ev}");
    assert!(ev.contains("rebuild finished"), "{ev}");
    // The rebuild ran as a task of the head's own, done by now or soon.
    let task = s["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "rebuild")
        .unwrap_or_else(|| panic!("no rebuild task: {s:#}"))["id"]
        .clone();
    until(&rig, 10, "the rebuild task done", |s| {
        s["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == task && t["state"] == "done")
    });
    println!("rebuild progress seen in status: {saw_progress:?}; events:\n{ev}");
    assert!(
        saw_progress.is_some() || ev.contains("rebuild started"),
        "the rebuild never showed: {ev}"
    );
    assert!(writer.passes() > 0);
    let last = writer.stop(&rt);
    rt.block_on(verify_all(&dev, &[last; RUNS as usize]));
}

/// Starts the head, waits for its array clean, opens its export through
/// portal 0 and writes every run with generation 1.
fn serving(rig: &Rig, rt: &tokio::runtime::Runtime) -> (common::Daemon, SharedDevice) {
    let head = rig.head();
    until(rig, 30, "clean", |s| array_state(s) == "clean");
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, false));
    (head, dev)
}

#[test]
fn a_suspended_isu_resumes_with_only_the_written_regions_resynced() {
    let rig = Rig::start();
    let rt = runtime();
    let (_head, dev) = serving(&rig, &rt);
    // Writes to the first 4 runs (the array's first 2 MiB) only.
    let writer = Writer::start(&rt, &dev, 0..4, 1);
    let (code, out) = rig.admin(&["isu", "suspend", "isu1", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(r#""type":"done""#), "{out}");
    let s = status(&rig);
    assert_eq!(isu_state(&s, "isu1"), "suspended", "{s:#}");
    assert_eq!(array_state(&s), "degraded", "{s:#}");
    // Suspending again is a conflict (exit 4); an unknown ISU not found (5).
    assert_eq!(rig.admin(&["isu", "suspend", "isu1"]).0, Some(4));
    assert_eq!(rig.admin(&["isu", "suspend", "isu9"]).0, Some(5));
    let at = writer.passes();
    while writer.passes() < at + 3 {
        assert!(!writer.is_finished(), "a write failed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out) = rig.admin(&["isu", "resume", "isu1", "--wait", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let task: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(task["result"]["state"], "done", "{task}");
    let msg = task["result"]["result"].as_str().unwrap().to_string();
    println!("resume: {msg}");
    // "isu isu1: resynced R of T rows (B blocks) of slot 1 of a0"
    let words: Vec<&str> = msg.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "resynced").unwrap();
    let rows: u64 = words[at + 1].parse().unwrap();
    let total: u64 = words[at + 3].parse().unwrap();
    assert!(rows > 0, "the writes meanwhile are resynced: {msg}");
    assert!(
        rows * 4 < total,
        "only the written regions are resynced, not the whole member: {msg}"
    );
    let s = until(&rig, 30, "clean after resume", |s| {
        array_state(s) == "clean"
    });
    assert_eq!(isu_state(&s, "isu1"), "up", "{s:#}");
    let last = writer.stop(&rt);
    let mut want = vec![1; RUNS as usize];
    want[..4].fill(last);
    rt.block_on(verify_all(&dev, &want));
}

#[test]
fn an_isu_is_replaced_online_by_one_added_at_run_time_and_a_second_loss_meanwhile_costs_nothing() {
    // Disks large enough for the copy to take a while.
    let mut rig = Rig::start_spec(RigSpec {
        unconfigured: vec![3],
        disk_size: Some("64M"),
        ..RigSpec::default()
    });
    let rt = runtime();
    let _head = rig.head();
    until(&rig, 30, "clean", |s| array_state(s) == "clean");
    let portal = format!("127.0.0.1:{}", rig.isu_ports[3]);
    let (code, out) = rig.admin(&["isu", "add", "isu3", "--portal", &portal, "--json"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(isu_state(&status(&rig), "isu3"), "unassigned");
    // v0 (no size configured) took the whole array: no space for another
    // volume, a conflict (4).
    assert_eq!(
        rig.admin(&["volume", "create", "v1", "--array", "a0", "--size", "1M"])
            .0,
        Some(4)
    );
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, false));
    let writer = Writer::start(&rt, &dev, 0..RUNS, 1);
    let (code, out) = rig.admin(&["isu", "replace", "isu1", "--with", "isu3", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let task: Value = serde_json::from_str(out.trim()).unwrap();
    let id = task["result"]["id"].as_u64().unwrap().to_string();
    // Redundancy never drops during the copy: another ISU lost meanwhile
    // costs no write and no data.
    let s = until(&rig, 60, "replacing", |s| {
        array_state(s) == "replacing"
            && s["arrays"][0]["progress"]["fraction"].as_f64().unwrap() < 0.5
    });
    println!(
        "replacing at {:.0}%: isu2 killed",
        s["arrays"][0]["progress"]["fraction"].as_f64().unwrap() * 100.0
    );
    rig.kill_isu(2);
    let (code, out) = rig.admin(&["task", "get", &id, "--wait", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let task: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(task["result"]["state"], "done", "{task}");
    println!("replace: {}", task["result"]["result"]);
    let s = status(&rig);
    assert_eq!(in_sync(&s), ["isu0", "isu3"], "{s:#}");
    assert_eq!(array_state(&s), "degraded", "{s:#}");
    assert_eq!(isu_state(&s, "isu1"), "unassigned", "{s:#}");
    assert_eq!(isu_state(&s, "isu2"), "down", "{s:#}");
    assert!(writer.passes() > 0);
    let last = writer.stop(&rt);
    rt.block_on(verify_all(&dev, &[last; RUNS as usize]));
}

#[test]
fn an_array_grows_online_onto_an_added_isu_and_scrubs_clean() {
    let rig = Rig::start_spec(RigSpec {
        unconfigured: vec![3],
        ..RigSpec::default()
    });
    let rt = runtime();
    let _head = rig.head();
    let before = until(&rig, 30, "clean", |s| array_state(s) == "clean");
    let portal = format!("127.0.0.1:{}", rig.isu_ports[3]);
    let (code, out) = rig.admin(&["isu", "add", "isu3", "--portal", &portal, "--json"]);
    assert_eq!(code, Some(0), "{out}");
    // Arrays come from head.toml: unavailable (exit 6).
    assert_eq!(rig.admin(&["array", "create", "a1", "isu3"]).0, Some(6));
    // Growing onto an ISU the array uses already is a conflict (exit 4).
    assert_eq!(rig.admin(&["array", "grow", "a0", "isu1"]).0, Some(4));
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, false));
    let writer = Writer::start(&rt, &dev, 0..RUNS, 1);
    let (code, out) = rig.admin(&["array", "grow", "a0", "isu3", "--wait", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let task: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(task["result"]["state"], "done", "{task}");
    println!("grow: {}", task["result"]["result"]);
    let s = until(&rig, 30, "clean after the reshape", |s| {
        array_state(s) == "clean"
    });
    assert_eq!(in_sync(&s), ["isu0", "isu1", "isu2", "isu3"], "{s:#}");
    let (cap0, cap1) = (
        before["arrays"][0]["capacity"].as_u64().unwrap(),
        s["arrays"][0]["capacity"].as_u64().unwrap(),
    );
    assert!(cap1 > cap0, "capacity {cap0} -> {cap1}");
    let last = writer.stop(&rt);
    rt.block_on(verify_all(&dev, &[last; RUNS as usize]));
    // The grown array has room for another volume: created, grown, listed,
    // deleted; the exported one cannot be deleted (conflict, 4), a
    // volume of no array is not found (5).
    let (code, out) = rig.admin(&["volume", "create", "v1", "--array", "a0", "--size", "1M"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        rig.admin(&["volume", "grow", "v1", "--size", "2M"]).0,
        Some(0)
    );
    let s = status(&rig);
    let v1 = s["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "v1")
        .unwrap_or_else(|| panic!("{s:#}"))
        .clone();
    assert!(v1["size"].as_u64().unwrap() >= 2 << 20, "{v1}");
    assert_eq!(rig.admin(&["volume", "delete", "v0"]).0, Some(4));
    assert_eq!(rig.admin(&["volume", "delete", "v1"]).0, Some(0));
    assert_eq!(
        rig.admin(&["volume", "grow", "v9", "--size", "2M"]).0,
        Some(5)
    );
    let (code, out) = rig.admin(&["array", "scrub", "a0", "--wait", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let task: Value = serde_json::from_str(out.trim()).unwrap();
    let msg = task["result"]["result"].as_str().unwrap().to_string();
    println!("scrub: {msg}");
    assert!(msg.ends_with(" 0 unrecoverable"), "{msg}");
}

#[test]
fn a_suspension_survives_a_head_restart_and_resumes_there() {
    let rig = Rig::start();
    let rt = runtime();
    let mut head = rig.head();
    until(&rig, 30, "clean", |s| array_state(s) == "clean");
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, false));
    assert_eq!(rig.admin(&["isu", "suspend", "isu2"]).0, Some(0));
    rt.block_on(head::write_runs(&dev, 0..4, 2, true));
    drop(dev);
    head.signal(libc::SIGTERM);
    assert!(head.wait_exit(60).expect("stopped").success());
    drop(head);
    let _head = rig.head();
    // The member stays out, suspended, after the restart (isu2's disk is
    // found by its identity).
    let s = until(&rig, 30, "suspended after the restart", |s| {
        isu_state(s, "isu2") == "suspended"
    });
    assert_eq!(array_state(&s), "degraded", "{s:#}");
    let (code, out) = rig.admin(&["isu", "resume", "isu2", "--wait", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let task: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(task["result"]["state"], "done", "{task}");
    println!("resume after a restart: {}", task["result"]["result"]);
    until(&rig, 30, "clean after resume", |s| {
        array_state(s) == "clean"
    });
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 1).await) as SharedDevice });
    let mut want = vec![1; RUNS as usize];
    want[..4].fill(2);
    rt.block_on(verify_all(&dev, &want));
}

#[test]
fn a_killed_isu_that_comes_back_is_taken_back_and_resynced() {
    let mut rig = Rig::start();
    let rt = runtime();
    let (_head, dev) = serving(&rig, &rt);
    // Writes to the first 4 runs only, through the loss and the return.
    let writer = Writer::start(&rt, &dev, 0..4, 1);
    rig.kill_isu(1);
    until(&rig, 60, "degraded", |s| array_state(s) == "degraded");
    rig.start_isu(1);
    let s = until(&rig, 90, "clean again", |s| {
        array_state(s) == "clean" && events(s).contains("rebuild finished")
    });
    assert_eq!(in_sync(&s), ["isu0", "isu1", "isu2"], "{s:#}");
    let ev = events(&s);
    println!("events:\n{ev}");
    assert!(
        ev.contains("slot 1 (isu1): reachable again; taken back"),
        "{ev}"
    );
    assert!(
        ev.contains("resync started (regions written while away)"),
        "{ev}"
    );
    let last = writer.stop(&rt);
    let mut want = vec![1; RUNS as usize];
    want[..4].fill(last);
    rt.block_on(verify_all(&dev, &want));
}

#[test]
fn a_head_waiting_for_members_answers_unavailable_then_serves() {
    let mut rig = Rig::start_without(&[2]);
    let mut head = rig.spawn_head();
    let end = Instant::now() + Duration::from_secs(60);
    while !head::log_has(&rig.head_log(), "waiting for members") {
        assert!(Instant::now() < end, "no wait:\n{}", head.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The socket is there while the head waits: unavailable (exit 6), not
    // unreachable (3).
    let (code, out) = rig.admin(&["status", "--json"]);
    assert_eq!(code, Some(6), "{out}");
    assert!(out.contains("waiting for members"), "{out}");
    rig.start_isu(2);
    rig.wait_listening(&mut head);
    until(&rig, 30, "clean", |s| array_state(s) == "clean");
}
