//! The head assembles its arrays from the members' superblocks, not from
//! `head.toml` (whose members and spares are only the seed), and its stop
//! is bounded: real `opie isu serve` processes, `opie head serve` over
//! them, verified data through our initiator. A hot spare pulled in, an
//! online replace and a grow survive a restart with `head.toml` unchanged
//! (or its members reordered); a disk the array left is seen as stale and
//! never taken back; SIGTERM ends the head within its bound after every
//! ISU was killed under writes, and every acknowledged write reads back.

mod common;
#[path = "common/head.rs"]
mod head;

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::SharedDevice;
use head::{
    array_state, in_sync, log_has, open, runtime, until, verify_acked, verify_all, write_all,
    AckedWriter, Rig, RigSpec, RUNS,
};

/// SIGTERM, and the head must end successfully (a clean stop).
fn stop(head: &mut common::Daemon) {
    head.signal(libc::SIGTERM);
    let st = head
        .wait_exit(60)
        .expect("the head did not stop on SIGTERM");
    assert!(st.success(), "exit {st}:\n{}", head.log_text());
}

/// Waits until the array is clean with its members in sync on `isus`.
fn clean_on(rig: &Rig, secs: u64, isus: &[&str]) -> serde_json::Value {
    until(rig, secs, &format!("clean on {isus:?}"), |s| {
        array_state(s) == "clean" && in_sync(s) == isus
    })
}

/// The text of the head's log written after byte `from`.
fn log_since(rig: &Rig, from: usize) -> String {
    std::fs::read_to_string(rig.head_log()).unwrap_or_default()[from..].to_string()
}

fn log_len(rig: &Rig) -> usize {
    std::fs::read_to_string(rig.head_log())
        .unwrap_or_default()
        .len()
}

/// Runs `opie ARGS --json` whose answer is a task, and waits for it done.
fn task_done(rig: &Rig, args: &[&str]) {
    let (code, out) = rig.admin(args);
    assert_eq!(code, Some(0), "{args:?}: {out}");
    let task: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let id = task["result"]["id"].as_u64().unwrap().to_string();
    let (code, out) = rig.admin(&["task", "get", &id, "--wait", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let task: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(task["result"]["state"], "done", "{task}");
}

#[test]
fn a_spare_pulled_in_keeps_its_slot_across_restarts_and_the_old_member_is_stale() {
    // The head waits for every member (no degraded start): on a head that
    // trusted head.toml, the restart below would wait for isu1 forever.
    let mut rig = Rig::start_spec(RigSpec {
        spares: vec![3],
        spare_timeout: Some("2s"),
        strict_start: true,
        ..RigSpec::default()
    });
    let rt = runtime();
    let mut head = rig.head();
    clean_on(&rig, 30, &["isu0", "isu1", "isu2"]);
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, false));
    rig.kill_isu(1);
    // Writes find isu1 gone: it is failed, and the spare pulled in after
    // its 2 s and rebuilt.
    rt.block_on(write_all(&dev, 2, true));
    let s = until(&rig, 120, "rebuilt onto the spare", |s| {
        array_state(s) == "clean" && in_sync(s) == ["isu0", "isu3", "isu2"]
    });
    println!("spare in: {}", s["arrays"][0]["members"]);
    drop(dev);
    stop(&mut head);
    drop(head);
    // isu1 still dead, head.toml unchanged: the members come from the
    // superblocks, and they are all there.
    let at = log_len(&rig);
    let started = Instant::now();
    let mut head = rig.head();
    println!(
        "restart without isu1 listening in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    clean_on(&rig, 30, &["isu0", "isu3", "isu2"]);
    let log = log_since(&rig, at);
    assert!(!log.contains("starting degraded"), "{log}");
    rt.block_on(async {
        let dev: SharedDevice = Arc::new(open(&rig, 1).await);
        verify_all(&dev, &[2; RUNS as usize]).await;
    });
    stop(&mut head);
    drop(head);
    // isu1 back with its old superblock (slot 1, an old event count): seen
    // as stale, not assembled, not resynced into the array.
    rig.start_isu(1);
    let at = log_len(&rig);
    let mut head = rig.head();
    clean_on(&rig, 30, &["isu0", "isu3", "isu2"]);
    let log = log_since(&rig, at);
    let stale: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("stale disk of this array"))
        .collect();
    println!("{stale:#?}");
    assert_eq!(stale.len(), 1, "{log}");
    assert!(stale[0].contains("isu1:"), "{}", stale[0]);
    assert!(
        stale[0].contains("lists another device there"),
        "{}",
        stale[0]
    );
    rt.block_on(async {
        let dev: SharedDevice = Arc::new(open(&rig, 0).await);
        verify_all(&dev, &[2; RUNS as usize]).await;
    });
    stop(&mut head);
}

#[test]
fn an_online_replace_survives_a_restart_with_members_reordered_and_the_retired_disk_is_not_used() {
    let rig = Rig::start_spec(RigSpec {
        idle: vec![3],
        ..RigSpec::default()
    });
    let rt = runtime();
    let mut head = rig.head();
    clean_on(&rig, 30, &["isu0", "isu1", "isu2"]);
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, true));
    task_done(
        &rig,
        &["isu", "replace", "isu1", "--with", "isu3", "--json"],
    );
    clean_on(&rig, 30, &["isu0", "isu3", "isu2"]);
    assert!(log_has(&rig.head_log(), "retired device marked"));
    rt.block_on(write_all(&dev, 2, true));
    drop(dev);
    stop(&mut head);
    drop(head);
    // head.toml still lists isu1's disk as a member; now also in another
    // order (slots come from the superblocks).
    let toml = rig.dir.path().join("head.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.iter().position(|l| *l == "members = [").unwrap() + 1;
    let mut reordered: Vec<&str> = lines.clone();
    reordered[first..first + 3].reverse();
    std::fs::write(&toml, reordered.join("\n") + "\n").unwrap();
    let at = log_len(&rig);
    let mut head = rig.head();
    let s = clean_on(&rig, 30, &["isu0", "isu3", "isu2"]);
    println!("after the restart: {}", s["arrays"][0]["members"]);
    let log = log_since(&rig, at);
    assert!(!log.contains("starting degraded"), "{log}");
    let stale: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("stale disk of this array"))
        .collect();
    assert_eq!(stale.len(), 1, "{log}");
    assert!(stale[0].contains("isu1:"), "{}", stale[0]);
    assert!(stale[0].contains("retired"), "{}", stale[0]);
    rt.block_on(async {
        let dev: SharedDevice = Arc::new(open(&rig, 1).await);
        verify_all(&dev, &[2; RUNS as usize]).await;
    });
    stop(&mut head);
}

#[test]
fn a_grown_array_reassembles_with_its_fourth_member_not_in_head_toml() {
    let rig = Rig::start_spec(RigSpec {
        idle: vec![3],
        ..RigSpec::default()
    });
    let rt = runtime();
    let mut head = rig.head();
    clean_on(&rig, 30, &["isu0", "isu1", "isu2"]);
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, true));
    drop(dev);
    let (code, out) = rig.admin(&["array", "grow", "a0", "isu3", "--wait", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    clean_on(&rig, 60, &["isu0", "isu1", "isu2", "isu3"]);
    stop(&mut head);
    drop(head);
    let at = log_len(&rig);
    let mut head = rig.head();
    clean_on(&rig, 30, &["isu0", "isu1", "isu2", "isu3"]);
    assert!(!log_since(&rig, at).contains("starting degraded"));
    rt.block_on(async {
        let dev: SharedDevice = Arc::new(open(&rig, 1).await);
        verify_all(&dev, &[1; RUNS as usize]).await;
    });
    stop(&mut head);
}

/// The bound within which the head ends on SIGTERM when no ISU answers
/// (drain 5 s, close 5 s, logouts 2 s, and some slack).
const STOP_BOUND: Duration = Duration::from_secs(15);

#[test]
fn sigterm_ends_the_head_in_bounded_time_after_every_isu_died_and_acknowledged_writes_survive() {
    let mut rig = Rig::start();
    let rt = runtime();
    let mut head = rig.head();
    until(&rig, 30, "clean", |s| array_state(s) == "clean");
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, true));
    let writer = AckedWriter::spawn(&rt, dev.clone());
    std::thread::sleep(Duration::from_millis(800));
    for i in 0..3 {
        rig.kill_isu(i);
    }
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    head.signal(libc::SIGTERM);
    let st = head.wait_exit(60).expect("the head never ended");
    let took = sent.elapsed();
    println!(
        "SIGTERM with every ISU dead: exit {st} after {:.1} s",
        took.as_secs_f64()
    );
    assert!(took < STOP_BOUND, "took {took:?}:\n{}", head.log_text());
    let log = head.log_text();
    assert!(log.contains("array not closed clean"), "{log}");
    drop(head);
    // No write is acknowledged with the head gone: what each run
    // acknowledged is final. The client keeps logging in again: stopped.
    writer.task.abort();
    drop(dev);
    let acked = writer.acked();
    println!("acknowledged generations per run: {acked:?}");
    for i in 0..3 {
        rig.start_isu(i);
    }
    let mut head = rig.head();
    until(&rig, 60, "clean", |s| array_state(s) == "clean");
    rt.block_on(async {
        let dev: SharedDevice = Arc::new(open(&rig, 1).await);
        verify_acked(&dev, &acked).await;
    });
    // A second SIGTERM ends a stop at once.
    for i in 0..3 {
        rig.kill_isu(i);
    }
    let sent = Instant::now();
    head.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    head.signal(libc::SIGTERM);
    let st = head
        .wait_exit(10)
        .expect("the second SIGTERM did not end it");
    println!(
        "second SIGTERM: exit {st} {:.1} s after the first",
        sent.elapsed().as_secs_f64()
    );
    assert!(!st.success());
    assert!(sent.elapsed() < Duration::from_secs(2));
}
