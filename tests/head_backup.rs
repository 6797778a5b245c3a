//! `opie backup` on a real head: three `opie isu serve` processes, `opie
//! head serve` over them, the admin commands beside `head.toml`, and
//! verified data written through our initiator (every block stamped with
//! its address, a generation and a CRC32C; the stamps, not the backup
//! code, say what a restore must hold). Backups go to a directory and to
//! s3s-fs (a real S3 server; under `CI=true` a missing s3s-fs fails).

#[path = "common/backup_ops.rs"]
mod backup_ops;
mod common;
#[path = "common/head.rs"]
mod head;
#[path = "../backup/tests/common/s3s.rs"]
mod s3s;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backup_ops::{admin_json, made_id, restore_file, BUCKET, S3};
use blockdev::SharedDevice;
use head::{
    array_state, open, run_lba, runtime, stamping, status, until, write_all, write_runs, Rig,
    RigSpec, Writer, BS, RUN, RUNS,
};
use serde_json::Value;

/// s3s-fs's port (this suite's range is 26000-26099).
const S3_PORT: u16 = 26050;

/// A rig whose volume v0 is 26M of a 48M-disk array (room for a snapshot
/// reserve and a restored volume), with `backup` appended to `head.toml`.
fn rig(backup: &str) -> Rig {
    let rig = Rig::start_spec(RigSpec {
        disk_size: Some("48M"),
        ..RigSpec::default()
    });
    let path = rig.dir.path().join("head.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "name = \"v0\"\narray = \"a0\"\n",
        "name = \"v0\"\narray = \"a0\"\nsize = \"26M\"\n",
    );
    std::fs::write(&path, format!("{text}\n{backup}")).unwrap();
    rig
}

/// `opie backup run ... --wait --json`: exit code and the task as it ended.
fn backup_run(rig: &Rig, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["backup", "run"];
    all.extend_from_slice(args);
    all.push("--wait");
    let (code, v) = admin_json(rig, &all);
    (code, v["result"].clone())
}

/// The backups of v0 in `target` (`None`: the first), oldest first.
fn list(rig: &Rig, target: Option<&str>) -> Vec<Value> {
    let mut args = vec!["backup", "list", "v0"];
    if let Some(t) = target {
        args.extend(["--from", t]);
    }
    let (code, v) = admin_json(rig, &args);
    assert_eq!(code, Some(0), "{v}");
    v["result"]["backups"].as_array().unwrap().clone()
}

/// The generation of each run in an image of v0, each run checked whole
/// (every block at its address, of one generation, its CRC good).
fn generations(image: &[u8]) -> Vec<u64> {
    (0..RUNS)
        .map(|r| {
            let lba = run_lba(r);
            let at = (lba as usize) * BS;
            let data = &image[at..at + RUN as usize * BS];
            let g = u64::from_be_bytes(data[8..16].try_into().unwrap());
            stamping::verify(data, lba, g, BS).unwrap_or_else(|e| panic!("run {r}: {e}"));
            g
        })
        .collect()
}

#[test]
fn a_backup_under_writes_restores_its_instant_and_incrementals_read_what_changed() {
    let rig =
        rig("[backup]\nreserve = \"8M\"\n[[backup.target]]\nname = \"local\"\ndir = \"backups\"\n");
    let rt = runtime();
    let _head = rig.head();
    until(&rig, 60, "clean", |s| array_state(s) == "clean");
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, true));

    // A full backup while a client rewrites every run, pass after pass.
    let writer = Writer::start(&rt, &dev, 0..RUNS, 1);
    while writer.passes() < 2 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, task) = backup_run(&rig, &["v0"]);
    let passes_during = writer.passes();
    let last = writer.stop(&rt);
    assert_eq!(code, Some(0), "{task}");
    assert!(passes_during >= 2, "the writer went on during the backup");
    let full = made_id(&task);
    assert!(task["result"].as_str().unwrap().contains("(full"), "{task}");

    // The restore is one instant of the writer's sequential passes: the
    // runs before some k hold generation g + 1, the rest g.
    let image = restore_file(&rig, &full, "local", "full.img");
    assert!(image.len() as u64 >= 26 << 20, "{}", image.len());
    let g = generations(&image);
    eprintln!("generation of each run at the snapshot: {g:?} (writer's last {last})");
    let (lo, hi) = (*g.iter().min().unwrap(), *g.iter().max().unwrap());
    assert!(hi - lo <= 1 && lo >= 2 && hi <= last, "{g:?} (last {last})");
    assert!(g.windows(2).all(|w| w[0] >= w[1]), "not one instant: {g:?}");
    let past_runs = (run_lba(RUNS - 1) + RUN) as usize * BS;
    assert!(
        image[past_runs..].iter().all(|&b| b == 0),
        "beyond the runs: zero"
    );

    // Incrementals: the first reads what the writer changed after the
    // snapshot; then one run changed reads and uploads one chunk of seven.
    let (code, task) = backup_run(&rig, &["v0"]);
    assert_eq!(code, Some(0), "{task}");
    let mut gens = vec![last; RUNS as usize];
    let mut ids = vec![made_id(&task)];
    for (i, run) in [(0, 3u64), (1, 40)] {
        let gen = last + 10 + i;
        rt.block_on(write_runs(&dev, run..run + 1, gen, true));
        gens[run as usize] = gen;
        let (code, task) = backup_run(&rig, &["v0", "--to", "local"]);
        assert_eq!(code, Some(0), "{task}");
        ids.push(made_id(&task));
        let b = list(&rig, None);
        let newest = b.last().unwrap();
        assert_eq!(newest["id"], *ids.last().unwrap());
        let size = newest["size"].as_u64().unwrap();
        assert_eq!(newest["chunks"], size.div_ceil(4 << 20), "{newest}");
        assert_eq!(newest["chunks_read"], 1, "one chunk changed: {newest}");
        assert_eq!(newest["chunks_uploaded"], 1, "{newest}");
        assert_eq!(newest["parent"], ids[ids.len() - 2]);
    }
    // Each of the last three restores exactly.
    let mut expect = vec![last; RUNS as usize];
    for (n, id) in ids.iter().enumerate() {
        if n == 1 {
            expect[3] = gens[3];
        }
        if n == 2 {
            expect[40] = gens[40];
        }
        let image = restore_file(&rig, id, "local", &format!("inc{n}.img"));
        assert_eq!(generations(&image), expect, "backup {n} ({id})");
    }

    // Status: the last backup of v0.
    let s = status(&rig);
    let b = &s["backups"][0];
    assert_eq!(b["volume"], "v0", "{s:#}");
    assert_eq!(b["id"], *ids.last().unwrap());
    assert_eq!(b["result"], "ok");
    assert!(b["size"].as_u64().unwrap() >= 26 << 20, "{s:#}");

    // A restore onto the exported volume is refused at once (conflict: 4);
    // onto a new volume it creates the volume with the backup's size.
    let (code, v) = admin_json(&rig, &["backup", "restore", &full, "--to-volume", "v0"]);
    assert_eq!(code, Some(4), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("exported"),
        "{v}"
    );
    let (code, v) = admin_json(
        &rig,
        &["backup", "restore", &full, "--to-volume", "v9", "--wait"],
    );
    assert_eq!(code, Some(0), "{v}");
    let s = status(&rig);
    let v9 = s["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "v9");
    assert!(
        v9.is_some_and(|v| v["size"].as_u64().unwrap() >= 26 << 20),
        "{s:#}"
    );
    // Unknown backups and volumes: not found (5).
    let (code, _) = admin_json(
        &rig,
        &["backup", "verify", "20000101T000000Z-0000000", "--wait"],
    );
    assert_eq!(code, Some(5));
    let (code, _) = admin_json(&rig, &["backup", "run", "v7"]);
    assert_eq!(code, Some(5));
    let (code, v) = admin_json(&rig, &["backup", "verify", &full, "--wait"]);
    assert_eq!(code, Some(0), "{v}");
}

// ---- against s3s-fs ---------------------------------------------------------

/// Starts `opie backup run v0 --to s3` without waiting; its task id.
fn start_run(rig: &Rig) -> u64 {
    let (code, v) = admin_json(rig, &["backup", "run", "v0", "--to", "s3"]);
    assert_eq!(code, Some(0), "{v}");
    v["result"]["id"].as_u64().unwrap()
}

#[test]
fn s3_faults_wrong_secret_unreachable_store_cancel_and_a_head_killed_mid_backup() {
    let Some(bin) = s3s::s3s_fs() else { return };
    let rig = rig(&format!(
        "[backup]\nreserve = \"8M\"\ngrace = \"1s\"\nsecrets = \"backup-secrets.toml\"\n\
         [[backup.target]]\nname = \"s3\"\ns3 = {{ endpoint = \"http://127.0.0.1:{S3_PORT}\", bucket = \"{BUCKET}\", credentials = \"good\" }}\n\
         [[backup.target]]\nname = \"bad\"\ns3 = {{ endpoint = \"http://127.0.0.1:{S3_PORT}\", bucket = \"{BUCKET}\", credentials = \"wrong\" }}\n"
    ));
    std::fs::write(
        rig.dir.path().join("backup-secrets.toml"),
        "[credentials.good]\naccess_key = \"opie-ak\"\nsecret_key = \"opie-secret-key\"\n\
         [credentials.wrong]\naccess_key = \"opie-ak\"\nsecret_key = \"not-the-secret\"\n",
    )
    .unwrap();
    let s3dir = rig.dir.path().join("s3");
    let mut s3 = S3::start(bin, &s3dir, S3_PORT);
    let rt = runtime();
    let mut head = rig.head();
    until(&rig, 60, "clean", |s| array_state(s) == "clean");
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, true));

    // A wrong secret: the store's refusal, exit 7 (denied), no retries.
    let (code, task) = backup_run(&rig, &["v0", "--to", "bad"]);
    assert_eq!(code, Some(7), "{task}");
    assert_eq!(task["error"]["code"], "denied", "{task}");
    assert!(
        task["error"]["message"]
            .as_str()
            .unwrap()
            .contains("credentials"),
        "{task}"
    );

    // The store gone mid-upload: held still once the run has started,
    // then killed; the run fails unavailable (6), and no backup is visible.
    let task = start_run(&rig);
    let failed = s3.until_running(&[]);
    let end = Instant::now() + Duration::from_secs(60);
    while s3.chunks() == 0 {
        assert!(Instant::now() < end, "no chunk uploaded");
        std::thread::sleep(Duration::from_millis(2));
    }
    s3.signal(libc::SIGSTOP);
    s3.kill();
    let (code, t) = admin_json(&rig, &["task", "get", &task.to_string(), "--wait"]);
    assert_eq!(code, Some(6), "{t}");
    let msg = t["result"]["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("store unreachable"), "{t}");
    s3.restart();
    assert!(
        list(&rig, Some("s3")).is_empty(),
        "a failed run leaves no backup"
    );
    assert!(s3.runs().iter().all(|(_, manifest)| !manifest));
    let s = status(&rig);
    assert!(
        s["backups"][0]["result"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{s:#}"
    );

    // A run cancelled mid-way (the store held still): it ends cancelled
    // after its next chunk, no backup made.
    let task = start_run(&rig);
    let cancelled = s3.until_running(std::slice::from_ref(&failed));
    s3.signal(libc::SIGSTOP);
    let (code, v) = admin_json(&rig, &["task", "cancel", &task.to_string()]);
    assert_eq!(code, Some(0), "{v}");
    s3.signal(libc::SIGCONT);
    let (code, t) = admin_json(&rig, &["task", "get", &task.to_string(), "--wait"]);
    assert_eq!(t["result"]["state"], "cancelled", "{t}");
    assert_eq!(code, Some(4), "{t}");
    assert!(
        list(&rig, Some("s3")).is_empty(),
        "a cancelled run leaves no backup"
    );

    // The head killed mid-backup (the store held still so it is mid-way).
    start_run(&rig);
    let killed = s3.until_running(&[failed, cancelled]);
    s3.signal(libc::SIGSTOP);
    head.signal(libc::SIGKILL);
    head.wait_exit(10).expect("SIGKILL ends the head");
    s3.signal(libc::SIGCONT);
    assert!(
        s3.runs()
            .iter()
            .any(|(id, manifest)| *id == killed && !manifest),
        "{:?}",
        s3.runs()
    );
    drop(head);
    let _head = rig.head();
    until(&rig, 60, "serving", |s| {
        s["arrays"].as_array().is_some_and(|a| !a.is_empty())
    });
    assert!(list(&rig, Some("s3")).is_empty(), "no manifest: no backup");
    // New data, then the next backup (full: no complete parent) restores exactly.
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 7, true));
    let (code, task) = backup_run(&rig, &["v0", "--to", "s3"]);
    assert_eq!(code, Some(0), "{task}");
    let id = made_id(&task);
    let image = restore_file(&rig, &id, "s3", "s3.img");
    assert_eq!(generations(&image), vec![7; RUNS as usize]);
    // GC (past the 1 s grace) removes the dead runs and their chunks.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, v) = admin_json(&rig, &["backup", "prune", "--from", "s3", "--wait"]);
    assert_eq!(code, Some(0), "{v}");
    let r = v["result"]["result"].as_str().unwrap().to_string();
    assert!(r.contains("3 unfinished backups removed"), "{r}");
    let swept: u64 = r
        .split("gc swept ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        swept >= 1,
        "the dead runs' chunks of old data are swept: {r}"
    );
    assert_eq!(s3.runs(), vec![(id.clone(), true)]);
    let (code, v) = admin_json(&rig, &["backup", "verify", &id, "--from", "s3", "--wait"]);
    assert_eq!(code, Some(0), "what the backup uses survives GC: {v}");
}

#[test]
fn a_schedule_runs_when_due_incremental_with_a_full_every_n() {
    let rig = rig(
        "[backup]\nreserve = \"8M\"\n[[backup.target]]\nname = \"local\"\ndir = \"backups\"\n\
         [[backup.schedule]]\nvolumes = [\"v0\"]\nevery = \"1s\"\nfull_every = 2\n",
    );
    let rt = runtime();
    let _head = rig.head();
    until(&rig, 60, "clean", |s| array_state(s) == "clean");
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(&rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, true));
    let written = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The head's own runs: full, incremental, full (every 2nd is full),
    // until one was taken after the writes.
    let end = Instant::now() + Duration::from_secs(120);
    let b = loop {
        let b = list(&rig, None);
        let after = b
            .last()
            .is_some_and(|l| l["created"].as_u64().unwrap() > written);
        if b.len() >= 3 && after {
            break b;
        }
        assert!(Instant::now() < end, "3 scheduled backups not made: {b:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(b[0]["parent"].is_null(), "{b:?}");
    assert_eq!(b[1]["parent"], b[0]["id"], "{b:?}");
    assert!(b[2]["parent"].is_null(), "{b:?}");
    // They ran as backup-run tasks, one at a time.
    let (code, v) = admin_json(&rig, &["task", "list"]);
    assert_eq!(code, Some(0));
    let runs: Vec<&Value> = v["result"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "backup-run")
        .collect();
    assert!(runs.len() >= 3, "{v}");
    assert!(
        runs.iter().filter(|t| t["state"] == "running").count() <= 1,
        "{v}"
    );
    let newest = b.last().unwrap()["id"].as_str().unwrap();
    let image = restore_file(&rig, newest, "local", "sched.img");
    assert_eq!(generations(&image), vec![1; RUNS as usize]);
}
