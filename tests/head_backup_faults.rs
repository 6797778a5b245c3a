//! Backups on a real head while the volume or its array changes under them
//! (issue 16's fault tests): UNMAP of blocks the backup has not read, a
//! volume grown, a member lost and rebuilt onto a spare, the array grown
//! onto an added ISU, and a copy-on-write reserve too small for what the
//! client rewrites. Each backup goes to s3s-fs, which the test holds still
//! (SIGSTOP) once the run has written its in-progress marker: the snapshot
//! is taken by then and the backup cannot finish, so the change lands
//! mid-backup, by an event rather than a sleep. Every restore is checked
//! against the test's own stamps (each block: its address, a generation, a
//! CRC32C), never against the backup code, and the client's writes are
//! read back after.

#[path = "common/backup_ops.rs"]
mod backup_ops;
mod common;
#[path = "common/head.rs"]
mod head;
#[path = "../backup/tests/common/s3s.rs"]
mod s3s;

use std::sync::Arc;

use backup_ops::{admin_json, made_id, restore_file, BUCKET, S3};
use blockdev::SharedDevice;
use head::{
    array_state, in_sync, open, run_lba, runtime, stamping, stamps, status, until, verify_all,
    write_all, write_runs, Rig, RigSpec, Writer, BS, RUN, RUNS,
};
use serde_json::Value;

/// s3s-fs's ports, one per test (this suite's range is 26200-26299).
const S3_PORT: u16 = 26210;

/// Blocks of a 4 MiB backup chunk (and copy-on-write grain).
const CHUNK_BLOCKS: u64 = (4 << 20) / BS as u64;
/// Chunks of the 64 MiB volume past the 8 a backup reads ahead at most
/// (`backup::RunOptions::in_flight`): while the store is held still, the
/// backup has read none of them. Each holds one stamped run at
/// [`far_lba`].
const FAR: std::ops::Range<u64> = 9..16;

/// The first block of the stamped run in chunk `c`.
fn far_lba(c: u64) -> u64 {
    c * CHUNK_BLOCKS + 64
}

/// Writes the far runs with `generation` (FUA).
async fn write_far(dev: &SharedDevice, generation: u64) {
    for c in FAR {
        let lba = far_lba(c);
        dev.write(lba, stamps(lba, generation), blockdev::WriteFlags::FUA)
            .await
            .unwrap_or_else(|e| panic!("write of chunk {c}'s run: {e}"));
    }
}

/// Reads the far runs back: each must be whole of `generation`.
async fn verify_far(dev: &SharedDevice, generation: u64) {
    for c in FAR {
        let lba = far_lba(c);
        let data = dev.read(lba, RUN as u32).await.expect("read");
        stamping::verify(&data, lba, generation, BS).unwrap_or_else(|e| panic!("chunk {c}: {e}"));
    }
}

/// A rig whose volume v0 is 64M of a 72M-disk array, backing up to s3s-fs
/// with a `reserve` copy-on-write reserve; `None` when s3s-fs is missing.
fn rig(port: u16, spec: RigSpec, reserve: &str) -> Option<(Rig, S3)> {
    let bin = s3s::s3s_fs()?;
    let rig = Rig::start_spec(RigSpec {
        disk_size: Some("72M"),
        ..spec
    });
    let path = rig.dir.path().join("head.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "name = \"v0\"\narray = \"a0\"\n",
        "name = \"v0\"\narray = \"a0\"\nsize = \"64M\"\n",
    );
    let backup = format!(
        "[backup]\nreserve = \"{reserve}\"\nsecrets = \"backup-secrets.toml\"\n\
         [[backup.target]]\nname = \"s3\"\ns3 = {{ endpoint = \"http://127.0.0.1:{port}\", bucket = \"{BUCKET}\", credentials = \"good\" }}\n"
    );
    std::fs::write(&path, format!("{text}\n{backup}")).unwrap();
    std::fs::write(
        rig.dir.path().join("backup-secrets.toml"),
        "[credentials.good]\naccess_key = \"opie-ak\"\nsecret_key = \"opie-secret-key\"\n",
    )
    .unwrap();
    let s3 = S3::start(bin, &rig.dir.path().join("s3"), port);
    Some((rig, s3))
}

/// Runs a backup of v0 and calls `during` while the run is held mid-way
/// (its snapshot taken, the store stopped); then lets it go on and returns
/// its exit code and the task as it ended.
fn backup_during(
    rig: &Rig,
    s3: &S3,
    known: &[String],
    during: impl FnOnce(),
) -> (Option<i32>, Value) {
    let (code, v) = admin_json(rig, &["backup", "run", "v0", "--to", "s3"]);
    assert_eq!(code, Some(0), "{v}");
    let task = v["result"]["id"].as_u64().unwrap().to_string();
    s3.until_running(known);
    s3.signal(libc::SIGSTOP);
    during();
    s3.signal(libc::SIGCONT);
    let (code, t) = admin_json(rig, &["task", "get", &task, "--wait"]);
    (code, t["result"].clone())
}

/// `opie backup run v0 --to s3 --wait`: exit code and the task.
fn backup_run(rig: &Rig) -> (Option<i32>, Value) {
    let (code, v) = admin_json(rig, &["backup", "run", "v0", "--to", "s3", "--wait"]);
    (code, v["result"].clone())
}

/// The backups of v0 in the store, oldest first.
fn list(rig: &Rig) -> Vec<Value> {
    let (code, v) = admin_json(rig, &["backup", "list", "v0", "--from", "s3"]);
    assert_eq!(code, Some(0), "{v}");
    v["result"]["backups"].as_array().unwrap().clone()
}

/// The stamped runs of an image of v0 (the runs, then the far runs),
/// each checked whole (every block at its address, of one generation, its
/// CRC good), zero everywhere else: each one's generation.
fn all_generations(image: &[u8]) -> Vec<u64> {
    let lbas = (0..RUNS).map(run_lba).chain(FAR.map(far_lba));
    let mut at_end = 0;
    let g = lbas
        .map(|lba| {
            let at = (lba as usize) * BS;
            assert!(
                image[at_end..at].iter().all(|&b| b == 0),
                "before {lba}: zero"
            );
            at_end = at + RUN as usize * BS;
            let data = &image[at..at_end];
            let g = u64::from_be_bytes(data[8..16].try_into().unwrap());
            stamping::verify(data, lba, g, BS).unwrap_or_else(|e| panic!("run at {lba}: {e}"));
            g
        })
        .collect();
    assert!(
        image[at_end..].iter().all(|&b| b == 0),
        "past the runs: zero"
    );
    g
}

/// [`all_generations`] of the runs only (the far runs checked too).
fn generations(image: &[u8]) -> Vec<u64> {
    all_generations(image)[..RUNS as usize].to_vec()
}

/// [`all_generations`] of the far runs only.
fn far_generations(image: &[u8]) -> Vec<u64> {
    all_generations(image)[RUNS as usize..].to_vec()
}

/// A head serving v0 with every run at generation 1; the client's device.
fn serving(rig: &Rig, rt: &tokio::runtime::Runtime) -> (common::Daemon, SharedDevice) {
    let head = rig.head();
    until(rig, 60, "clean", |s| array_state(s) == "clean");
    let dev: SharedDevice = rt.block_on(async { Arc::new(open(rig, 0).await) as SharedDevice });
    rt.block_on(write_all(&dev, 1, true));
    rt.block_on(write_far(&dev, 1));
    (head, dev)
}

/// The largest volume, in MiB, that can still be created on the array
/// (created and deleted again to find out).
fn room(rig: &Rig) -> u64 {
    let s = status(rig);
    let mut mib = (s["arrays"][0]["capacity"].as_u64().unwrap() >> 20) - 64;
    loop {
        assert!(mib > 0, "no room at all: {s:#}");
        let size = format!("{mib}M");
        if rig
            .admin(&["volume", "create", "room", "--array", "a0", "--size", &size])
            .0
            == Some(0)
        {
            let (code, out) = rig.admin(&["volume", "delete", "room"]);
            assert_eq!(code, Some(0), "{out}");
            return mib;
        }
        mib -= 1;
    }
}

#[test]
fn zeroing_blocks_a_running_backup_still_needs_copies_them_first() {
    let Some((rig, s3)) = rig(S3_PORT + 1, RigSpec::default(), "64M") else {
        return;
    };
    let rt = runtime();
    let (_head, dev) = serving(&rig, &rt);
    let zeroed: Vec<u64> = (RUNS / 2..RUNS).chain([1]).collect();
    let far_zeroed: Vec<u64> = FAR.map(far_lba).collect();
    // Mid-backup, on the far runs (which the held backup has not read), on
    // the upper runs and one it has likely read: the head's volumes are not thin, so an UNMAP (WRITE SAME
    // with the UNMAP bit) is refused, never reported done undone, and the
    // run keeps its data; WRITE SAME zeroing is acknowledged only once
    // done: the run reads zero at once.
    let (code, task) = backup_during(&rig, &s3, &[], || {
        rt.block_on(async {
            for (r, lba) in zeroed
                .iter()
                .map(|&r| (r, run_lba(r)))
                .chain(far_zeroed.iter().map(|&l| (l, l)))
            {
                let e = dev.unmap(lba, RUN).await;
                assert!(
                    e.is_err(),
                    "run {r}: an unmap the head cannot do is refused"
                );
                let data = dev.read(lba, RUN as u32).await.unwrap();
                stamping::verify(&data, lba, 1, BS).expect("a refused unmap changes nothing");
                dev.write_zeroes(lba, RUN, false).await.expect("zeroing");
                let data = dev.read(lba, RUN as u32).await.unwrap();
                assert!(
                    data.iter().all(|&b| b == 0),
                    "run {r} reads zero once zeroed"
                );
            }
        })
    });
    assert_eq!(code, Some(0), "{task}");
    // The snapshot still read the old data: the restore is the instant.
    let image = restore_file(&rig, &made_id(&task), "s3", "unmap.img");
    assert_eq!(image.len(), 64 << 20);
    assert_eq!(
        all_generations(&image),
        vec![1; RUNS as usize + FAR.count()]
    );
    // The volume keeps the zeroes; the next backup has them.
    let (code, task) = backup_run(&rig);
    assert_eq!(code, Some(0), "{task}");
    let image = restore_file(&rig, &made_id(&task), "s3", "after.img");
    for r in 0..RUNS {
        let lba = run_lba(r);
        let at = lba as usize * BS;
        let data = &image[at..at + RUN as usize * BS];
        if zeroed.contains(&r) {
            assert!(data.iter().all(|&b| b == 0), "run {r}");
            let now = rt.block_on(dev.read(lba, RUN as u32)).unwrap();
            assert!(now.iter().all(|&b| b == 0), "run {r} still zero");
        } else {
            stamping::verify(data, lba, 1, BS).unwrap_or_else(|e| panic!("run {r}: {e}"));
        }
    }
    for lba in far_zeroed {
        let at = lba as usize * BS;
        assert!(
            image[at..at + RUN as usize * BS].iter().all(|&b| b == 0),
            "far run at {lba}"
        );
    }
}

#[test]
fn a_volume_grown_during_a_backup_backs_up_its_old_size_then_its_new() {
    let Some((rig, s3)) = rig(S3_PORT + 2, RigSpec::default(), "16M") else {
        return;
    };
    let rt = runtime();
    let (_head, dev) = serving(&rig, &rt);
    let (code, task) = backup_during(&rig, &s3, &[], || {
        let (code, out) = rig.admin(&["volume", "grow", "v0", "--size", "68M"]);
        assert_eq!(code, Some(0), "{out}");
        // The client writes the grown part and some runs while held.
        rt.block_on(write_runs(&dev, 0..4, 2, true));
    });
    assert_eq!(code, Some(0), "{task}");
    let first = made_id(&task);
    let image = restore_file(&rig, &first, "s3", "old.img");
    assert_eq!(image.len(), 64 << 20, "the snapshot's size: the old one");
    assert_eq!(generations(&image), vec![1; RUNS as usize]);
    let b = list(&rig);
    assert_eq!(b[0]["size"], 64u64 << 20, "{b:?}");
    // The next backup: the new size, the client's new data.
    let (code, task) = backup_run(&rig);
    assert_eq!(code, Some(0), "{task}");
    let image = restore_file(&rig, &made_id(&task), "s3", "new.img");
    assert_eq!(image.len(), 68 << 20);
    let mut expect = vec![1; RUNS as usize];
    expect[..4].fill(2);
    assert_eq!(generations(&image), expect);
    assert_eq!(list(&rig).last().unwrap()["size"], 68u64 << 20);
    rt.block_on(verify_all(&dev, &expect));
}

/// A backup held while isu1 is SIGKILLed and the array turns degraded
/// (with `spare`, the spare pulled in after 1 s and rebuilt while the
/// backup reads), a client rewriting every run throughout: the backup
/// completes and restores one instant of the writer, no write fails.
fn member_lost_during_a_backup(port: u16, spare: bool) {
    let spec = RigSpec {
        spares: if spare { vec![3] } else { vec![] },
        spare_timeout: spare.then_some("1s"),
        ..RigSpec::default()
    };
    let Some((mut rig, s3)) = rig(port, spec, "64M") else {
        return;
    };
    let rt = runtime();
    let (_head, dev) = serving(&rig, &rt);
    let writer = Writer::start(&rt, &dev, 0..RUNS, 1);
    let mut isu1 = rig.isus[1].take().unwrap();
    let (code, task) = backup_during(&rig, &s3, &[], || {
        isu1.signal(libc::SIGKILL);
        isu1.wait_exit(10).expect("SIGKILL ends the ISU");
        let want = if spare { "rebuilding" } else { "degraded" };
        until(&rig, 60, want, |s| array_state(s) == want);
    });
    assert_eq!(code, Some(0), "{task}");
    let image = restore_file(&rig, &made_id(&task), "s3", "degraded.img");
    let g = generations(&image);
    // One instant of the writer's sequential passes.
    assert!(g.windows(2).all(|w| w[0] >= w[1]), "not one instant: {g:?}");
    assert!(g[0] - g[RUNS as usize - 1] <= 1, "{g:?}");
    if spare {
        until(&rig, 120, "rebuilt onto the spare", |s| {
            array_state(s) == "clean" && in_sync(s) == ["isu0", "isu3", "isu2"]
        });
    } else {
        assert_eq!(array_state(&status(&rig)), "degraded");
    }
    let last = writer.stop(&rt);
    assert!(g[0] <= last, "{g:?} (last {last})");
    rt.block_on(verify_all(&dev, &[last; RUNS as usize]));
}

#[test]
fn a_member_lost_during_a_backup_reads_degraded() {
    member_lost_during_a_backup(S3_PORT + 3, false);
}

#[test]
fn a_member_lost_during_a_backup_rebuilds_onto_the_spare_while_it_reads() {
    member_lost_during_a_backup(S3_PORT + 6, true);
}

#[test]
fn an_array_grown_during_a_backup_does_not_disturb_it() {
    let Some((rig, s3)) = rig(
        S3_PORT + 4,
        RigSpec {
            unconfigured: vec![3],
            ..RigSpec::default()
        },
        "64M",
    ) else {
        return;
    };
    let rt = runtime();
    let (_head, dev) = serving(&rig, &rt);
    let portal = format!("127.0.0.1:{}", rig.isu_ports[3]);
    let (code, out) = rig.admin(&["isu", "add", "isu3", "--portal", &portal, "--json"]);
    assert_eq!(code, Some(0), "{out}");
    // The reshape starts while the backup is held, and runs beside it.
    let mut grow = None;
    let (code, task) = backup_during(&rig, &s3, &[], || {
        let (code, v) = admin_json(&rig, &["array", "grow", "a0", "isu3"]);
        assert_eq!(code, Some(0), "{v}");
        grow = Some(v["result"]["id"].as_u64().unwrap().to_string());
        rt.block_on(write_runs(&dev, 0..RUNS, 2, true));
        rt.block_on(write_far(&dev, 2));
    });
    assert_eq!(code, Some(0), "{task}");
    let (_, t) = admin_json(&rig, &["task", "get", grow.as_deref().unwrap()]);
    eprintln!("reshape when the backup ended: {}", t["result"]["state"]);
    let image = restore_file(&rig, &made_id(&task), "s3", "morph.img");
    assert_eq!(generations(&image), vec![1; RUNS as usize]);
    assert_eq!(far_generations(&image), vec![1; FAR.count()]);
    let (code, t) = admin_json(&rig, &["task", "get", &grow.unwrap(), "--wait"]);
    assert_eq!(code, Some(0), "{t}");
    until(&rig, 60, "clean after the reshape", |s| {
        array_state(s) == "clean" && in_sync(s).len() == 4
    });
    rt.block_on(verify_all(&dev, &[2; RUNS as usize]));
    // The next backup, on the grown array, restores the new instant.
    let (code, task) = backup_run(&rig);
    assert_eq!(code, Some(0), "{task}");
    let image = restore_file(&rig, &made_id(&task), "s3", "grown.img");
    assert_eq!(
        all_generations(&image),
        vec![2; RUNS as usize + FAR.count()]
    );
}

#[test]
fn a_full_reserve_aborts_the_backup_naming_it_and_no_client_write_fails() {
    // One 4 MiB grain of reserve; the client rewrites every run and the
    // seven far chunks the held backup has not read: the second copy
    // finds the reserve full.
    let Some((rig, s3)) = rig(S3_PORT + 5, RigSpec::default(), "4M") else {
        return;
    };
    let rt = runtime();
    let (_head, dev) = serving(&rig, &rt);
    let before = room(&rig);
    let (code, task) = backup_during(&rig, &s3, &[], || {
        rt.block_on(write_far(&dev, 2));
        rt.block_on(write_runs(&dev, 0..RUNS, 2, true));
    });
    assert_eq!(code, Some(6), "unavailable: {task}");
    assert_eq!(task["error"]["code"], "unavailable", "{task}");
    let msg = task["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("backup.reserve"),
        "the error names the reserve: {task}"
    );
    assert!(list(&rig).is_empty(), "an aborted backup leaves no backup");
    // Every write succeeded and reads back.
    rt.block_on(verify_all(&dev, &[2; RUNS as usize]));
    rt.block_on(verify_far(&dev, 2));
    // The snapshot's reserve is gone: the array has its room back.
    assert_eq!(room(&rig), before, "the reserve is freed");
    // The next backup (no writes racing it) succeeds and is exact.
    let (code, task) = backup_run(&rig);
    assert_eq!(code, Some(0), "{task}");
    let image = restore_file(&rig, &made_id(&task), "s3", "next.img");
    assert_eq!(
        all_generations(&image),
        vec![2; RUNS as usize + FAR.count()]
    );
}
