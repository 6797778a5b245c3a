//! `opie head serve` against three real `opie isu serve` processes (sparse
//! files, two loopback portals each): the head assembles a RAID5 array over
//! one disk of each, exports it on two head portals, and we write verified
//! data through our initiator (every block stamped with its address, a
//! generation and a CRC32C), then stop, kill and restart things and read it
//! all back.

mod common;
#[path = "common/head.rs"]
mod head;

use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::{BlockDevice, SharedDevice};
use head::{
    log_has, open, runtime, verify_acked, verify_all, write_all, AckedWriter, Rig, ISU2_DISK, RUNS,
};

#[test]
fn sigterm_closes_clean_and_a_restart_reassembles_the_same_data() {
    let rig = Rig::start();
    let rt = runtime();
    let mut head = rig.head();
    // ISU 2's disk was found by its identity (SendTargets, REPORT LUNS,
    // VPD: the survey of every ISU), ISU 0's reached with CHAP.
    let log = std::fs::read_to_string(rig.head_log()).unwrap();
    assert!(
        log.contains(&format!(
            "disk reached array=a0 disk=isu2:iqn.2026-01.org.opie.test:isu2:d0/0 paths=2 identity={ISU2_DISK}"
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
    // The volumes' changed-block maps were closed clean (kept for the next
    // incremental backup), before the array was.
    assert!(log_has(
        &rig.head_log(),
        "volume pool closed: changed-block maps kept"
    ));
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
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, true));
    let mut writer = AckedWriter::spawn(&rt, dev.clone());
    std::thread::sleep(Duration::from_millis(1500));
    head.signal(libc::SIGKILL);
    head.wait_exit(10).expect("SIGKILL ends the head");
    let generations = {
        rt.block_on(&mut writer.task).unwrap();
        writer.acked()
    };
    drop(dev);
    drop(head);
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
        verify_acked(&dev, &generations).await;
    });
}

#[test]
fn writes_answered_before_a_head_sigkill_are_there_after_its_restart() {
    // Plain writes (no FUA), each a part of a row, answered, then the head
    // killed before any SYNCHRONIZE CACHE: the client that retries its
    // flush on the restarted head hears good, so nothing answered may have
    // lived only in the dead head's memory (the head runs with no stripe
    // cache; with one, every run here read back zeroes).
    let rig = Rig::start();
    let rt = runtime();
    let mut head = rig.head();
    write_generation_1(&rig, &rt);
    head.signal(libc::SIGKILL);
    head.wait_exit(10).expect("SIGKILL ends the head");
    drop(head);
    let _head = rig.head();
    rt.block_on(async {
        let dev: SharedDevice = Arc::new(open(&rig, 0).await);
        dev.flush().await.expect("flush on the restarted head");
        verify_all(&dev, &[1; RUNS as usize]).await;
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
    write_generation_1(&rig, &rt);
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

/// Writes every run with generation 1 (no FUA) through head portal 0.
fn write_generation_1(rig: &Rig, rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        let dev: SharedDevice = Arc::new(open(rig, 0).await);
        write_all(&dev, 1, false).await;
    });
}
