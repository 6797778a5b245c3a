//! Helpers of the head's backup tests (`tests/head_backup*.rs`): the admin
//! commands' JSON, restores to a file, and s3s-fs as a store a test can
//! hold still (SIGSTOP), kill and restart. Declared beside `mod common` and
//! `mod head`: `#[path = "common/backup_ops.rs"] mod backup_ops;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::head::Rig;
use crate::s3s;

/// The bucket the tests back up to.
pub const BUCKET: &str = "opie-backups";

/// `opie ARGS --json` in the rig's directory: exit code and the JSON line.
pub fn admin_json(rig: &Rig, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out) = rig.admin(&all);
    let v = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {args:?}: {out}"));
    (code, v)
}

/// Restores backup `id` into a file of the rig's directory; its bytes.
pub fn restore_file(rig: &Rig, id: &str, target: &str, name: &str) -> Vec<u8> {
    let path = rig.dir.path().join(name);
    let p = path.to_str().unwrap();
    let (code, v) = admin_json(
        rig,
        &[
            "backup",
            "restore",
            id,
            "--to-file",
            p,
            "--from",
            target,
            "--wait",
        ],
    );
    assert_eq!(code, Some(0), "restore {id}: {v}");
    std::fs::read(&path).unwrap()
}

/// The backup task's id in a `backup run` result line ("v0 -> ID (...").
pub fn made_id(task: &Value) -> String {
    let r = task["result"].as_str().unwrap_or_else(|| panic!("{task}"));
    r.split("-> ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

/// s3s-fs serving `dir` on `port` (access key `opie-ak`, secret
/// `opie-secret-key`, bucket [`BUCKET`]), killed on drop.
pub struct S3 {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl S3 {
    /// Starts it (the bucket created) and waits until it listens.
    pub fn start(bin: PathBuf, dir: &Path, port: u16) -> S3 {
        std::fs::create_dir_all(dir.join(BUCKET)).unwrap();
        let mut s = S3 {
            bin,
            dir: dir.to_path_buf(),
            port,
            child: None,
        };
        s.restart();
        s
    }

    /// Starts it again (after [`S3::kill`]).
    pub fn restart(&mut self) {
        self.child = Some(s3s::spawn(
            &self.bin,
            &self.dir,
            self.port,
            "opie-ak",
            "opie-secret-key",
        ));
    }

    /// Sends `sig` to it (SIGSTOP holds it still, SIGCONT lets it go on).
    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().unwrap().id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Kills it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The backup directories of v0 in the bucket holding objects, and
    /// whether each has a manifest.
    pub fn runs(&self) -> Vec<(String, bool)> {
        let d = self.dir.join(BUCKET).join("backups/v0");
        let mut out: Vec<(String, bool)> = std::fs::read_dir(&d)
            .map(|r| {
                r.filter_map(Result::ok)
                    .filter(|e| {
                        std::fs::read_dir(e.path())
                            .map(|mut f| f.next().is_some())
                            .unwrap_or(false)
                    })
                    .map(|e| {
                        let id = e.file_name().to_string_lossy().into_owned();
                        (id, e.path().join("manifest.json").exists())
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Chunk objects in the bucket.
    pub fn chunks(&self) -> usize {
        let d = self.dir.join(BUCKET).join("chunks");
        std::fs::read_dir(&d)
            .map(|r| {
                r.filter_map(Result::ok)
                    .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten())
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().len() == 64)
                    .count()
            })
            .unwrap_or(0)
    }

    /// Waits until a run of v0 not in `known` has written its
    /// in-progress marker and returns its id.
    pub fn until_running(&self, known: &[String]) -> String {
        let d = self.dir.join(BUCKET).join("backups/v0");
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = std::fs::read_dir(&d) {
                for e in r.filter_map(Result::ok) {
                    let id = e.file_name().to_string_lossy().into_owned();
                    if e.path().join("running").exists()
                        && !e.path().join("manifest.json").exists()
                        && !known.contains(&id)
                    {
                        return id;
                    }
                }
            }
            assert!(Instant::now() < end, "no backup run started");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
    }
}
