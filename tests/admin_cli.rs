//! The admin commands (`opie status`, `isu`, `array`, `volume`, `task`) run
//! as the real binary against a control server in this test process, with
//! a small in-test head behind it (the head daemon is not built yet): every
//! command's `--json` output and its exit status, `--wait` on tasks that
//! end done, failed and cancelled, and peer credentials through a real
//! non-root user.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{can_run, opie};
use control::status::{
    ArrayState, ArrayStatus, Event, EventLevel, ExportStatus, IsuState, IsuStatus, MemberState,
    MemberStatus, PathState, PathStats, PathStatus, VolumeStatus,
};
use control::{
    ControlError, Handler, Peer, Reply, Request, Response, Server, ServerConfig, Status, TaskKind,
    Tasks,
};
use serde_json::Value;

/// The state of the in-test head.
#[derive(Default)]
struct State {
    /// ISU name -> suspended.
    isus: BTreeMap<String, bool>,
    /// Array name -> members.
    arrays: BTreeMap<String, Vec<String>>,
    /// Volume name -> (array, size).
    volumes: BTreeMap<String, (String, u64)>,
}

/// A stand-in for the head with the rules a test can see through the CLI.
struct TestHead {
    tasks: Tasks,
    state: Mutex<State>,
}

/// A task that steps its progress and ends with `outcome`.
fn stepping(
    tasks: &Tasks,
    kind: TaskKind,
    target: String,
    outcome: Result<String, ControlError>,
) -> Reply {
    Reply::Task(tasks.spawn(kind, target, |h| async move {
        for step in 1..4 {
            h.progress(step as f64 / 4.0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        outcome
    }))
}

impl TestHead {
    fn handle_sync(&self, request: Request) -> Result<Reply, ControlError> {
        let mut s = self.state.lock().unwrap();
        let done = |m: String| Ok(Reply::Done { message: m });
        let no_isu = |i: &str| ControlError::NotFound(format!("no ISU {i}"));
        match request {
            Request::Status => Ok(Reply::Status(self.status(&s))),
            Request::IsuAdd {
                isu,
                portals,
                aoe_interfaces,
                ..
            } => {
                if portals.is_empty() && aoe_interfaces.is_empty() {
                    return Err(ControlError::Invalid(
                        "give a portal or an AoE interface".into(),
                    ));
                }
                if s.isus.insert(isu.clone(), false).is_some() {
                    return Err(ControlError::Conflict(format!("ISU {isu} exists")));
                }
                done(format!("ISU {isu} added"))
            }
            Request::IsuSuspend { isu } => match s.isus.get_mut(&isu) {
                None => Err(no_isu(&isu)),
                Some(true) => Err(ControlError::Conflict(format!("{isu} is suspended"))),
                Some(sus) => {
                    *sus = true;
                    done(format!("ISU {isu} suspended"))
                }
            },
            Request::IsuResume { isu } => match s.isus.get_mut(&isu) {
                None => Err(no_isu(&isu)),
                Some(sus) => {
                    *sus = false;
                    Ok(stepping(
                        &self.tasks,
                        TaskKind::IsuResume,
                        isu,
                        Ok("resynced 128 blocks".into()),
                    ))
                }
            },
            Request::IsuReplace { isu, with } => {
                if !s.isus.contains_key(&isu) {
                    return Err(no_isu(&isu));
                }
                if with == "broken" {
                    return Ok(stepping(
                        &self.tasks,
                        TaskKind::IsuReplace,
                        isu,
                        Err(ControlError::Internal("read error on broken".into())),
                    ));
                }
                // Copies until cancelled.
                Ok(Reply::Task(self.tasks.spawn(
                    TaskKind::IsuReplace,
                    isu,
                    |h| async move {
                        h.progress(0.1);
                        h.cancelled().await;
                        Err(ControlError::Conflict("copy stopped".into()))
                    },
                )))
            }
            Request::IsuRemove { isu } => {
                if s.arrays.values().any(|m| m.contains(&isu)) {
                    return Err(ControlError::Conflict(format!("{isu} is in an array")));
                }
                s.isus.remove(&isu).ok_or_else(|| no_isu(&isu))?;
                done(format!("ISU {isu} removed"))
            }
            Request::ArrayCreate { array, members, .. } => {
                if s.arrays.contains_key(&array) {
                    return Err(ControlError::Conflict(format!("array {array} exists")));
                }
                if let Some(m) = members.iter().find(|m| !s.isus.contains_key(*m)) {
                    return Err(no_isu(m));
                }
                s.arrays.insert(array.clone(), members);
                Ok(stepping(
                    &self.tasks,
                    TaskKind::ArrayCreate,
                    array,
                    Ok("synced".into()),
                ))
            }
            Request::ArrayGrow { array, members } => {
                if !s.arrays.contains_key(&array) {
                    return Err(ControlError::NotFound(format!("no array {array}")));
                }
                if members.iter().any(|m| m == "isu-down") {
                    return Err(ControlError::Unavailable("isu-down is unreachable".into()));
                }
                if let Some(t) = self.tasks.list().iter().find(|t| !t.state.is_final()) {
                    return Err(ControlError::Busy(format!("task {} is running", t.id)));
                }
                Ok(stepping(
                    &self.tasks,
                    TaskKind::ArrayGrow,
                    array,
                    Ok("reshaped".into()),
                ))
            }
            Request::ArrayScrub { array } => {
                if !s.arrays.contains_key(&array) {
                    return Err(ControlError::NotFound(format!("no array {array}")));
                }
                Ok(stepping(
                    &self.tasks,
                    TaskKind::ArrayScrub,
                    array,
                    Ok("0 mismatches".into()),
                ))
            }
            Request::VolumeCreate {
                volume,
                array,
                size,
            } => {
                if size == 0 {
                    return Err(ControlError::Invalid("size 0".into()));
                }
                if !s.arrays.contains_key(&array) {
                    return Err(ControlError::NotFound(format!("no array {array}")));
                }
                s.volumes.insert(volume.clone(), (array, size));
                done(format!("volume {volume} created"))
            }
            Request::VolumeGrow { volume, size } => {
                let Some(v) = s.volumes.get_mut(&volume) else {
                    return Err(ControlError::NotFound(format!("no volume {volume}")));
                };
                if size <= v.1 {
                    return Err(ControlError::Invalid("a volume only grows".into()));
                }
                v.1 = size;
                Ok(stepping(
                    &self.tasks,
                    TaskKind::VolumeGrow,
                    volume,
                    Ok("grown".into()),
                ))
            }
            Request::VolumeDelete { volume } => {
                if volume == "crash" {
                    return Err(ControlError::Internal("mapping table write failed".into()));
                }
                s.volumes
                    .remove(&volume)
                    .ok_or_else(|| ControlError::NotFound(format!("no volume {volume}")))?;
                done(format!("volume {volume} deleted"))
            }
            Request::BackupRun { .. }
            | Request::BackupList { .. }
            | Request::BackupVerify { .. }
            | Request::BackupRestore { .. }
            | Request::BackupPrune { .. } => Err(ControlError::Unavailable(
                "this test head has no backups (tests/head_backup.rs runs them)".into(),
            )),
            Request::TaskGet { .. } | Request::TaskList | Request::TaskCancel { .. } => {
                unreachable!("the server answers task requests")
            }
        }
    }

    fn status(&self, s: &State) -> Status {
        Status {
            isus: s
                .isus
                .iter()
                .map(|(name, suspended)| IsuStatus {
                    name: name.clone(),
                    state: if *suspended {
                        IsuState::Suspended
                    } else {
                        IsuState::Up
                    },
                    paths: vec![PathStatus {
                        name: "iscsi 127.0.0.1:3261".into(),
                        state: PathState::Up,
                        stats: PathStats {
                            completed: 3,
                            ..PathStats::default()
                        },
                    }],
                })
                .collect(),
            arrays: s
                .arrays
                .iter()
                .map(|(name, members)| ArrayStatus {
                    name: name.clone(),
                    state: ArrayState::Clean,
                    progress: None,
                    members: members
                        .iter()
                        .map(|m| MemberStatus {
                            isu: m.clone(),
                            disk: "0123".into(),
                            size: 1 << 30,
                            state: MemberState::InSync,
                        })
                        .collect(),
                    chunk_size: 65536,
                    capacity: 2 << 30,
                    wasted: 0,
                })
                .collect(),
            volumes: s
                .volumes
                .iter()
                .map(|(name, (array, size))| VolumeStatus {
                    name: name.clone(),
                    array: array.clone(),
                    size: *size,
                    exports: vec![ExportStatus {
                        target: format!("iqn.2026-12.test:{name}"),
                        lun: 0,
                        read_only: false,
                    }],
                })
                .collect(),
            tasks: vec![],
            events: vec![Event {
                unix_ms: 1_780_000_000_000,
                level: EventLevel::Info,
                subject: "head".into(),
                message: "started".into(),
            }],
            backups: vec![],
        }
    }
}

#[async_trait::async_trait]
impl Handler for TestHead {
    async fn handle(&self, request: Request, _peer: Peer) -> Result<Reply, ControlError> {
        self.handle_sync(request)
    }
}

/// A control server with the in-test head, on its own runtime.
struct Head {
    dir: tempfile::TempDir,
    socket: PathBuf,
    _rt: tokio::runtime::Runtime,
}

fn head() -> Head {
    let dir = tempfile::tempdir().unwrap();
    let socket = control::socket_path(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tasks = Tasks::default();
    let h = Arc::new(TestHead {
        tasks: tasks.clone(),
        state: Mutex::new(State::default()),
    });
    let server = rt
        .block_on(async { Server::bind(&socket, ServerConfig::default(), h, tasks) })
        .unwrap();
    rt.spawn(server.serve(std::future::pending()));
    Head {
        dir,
        socket,
        _rt: rt,
    }
}

/// What one CLI run gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Stdout as the one JSON response line it must be.
    fn json(&self) -> Value {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "not one line: {}", self.stdout);
        serde_json::from_str(lines[0]).unwrap()
    }

    /// Stdout as a response.
    fn response(&self) -> Response {
        serde_json::from_str(self.stdout.trim_end()).unwrap()
    }
}

fn run_cmd(mut cmd: Command) -> Run {
    cmd.stdin(Stdio::null());
    // A binary just copied may still be open for writing in a child that
    // another test thread forked meanwhile (ETXTBSY until it execs).
    let out = loop {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            r => break r.unwrap(),
        }
    };
    Run {
        code: out.status.code().expect("killed by a signal"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn cli(socket: &Path, args: &[&str]) -> Run {
    let mut cmd = opie();
    cmd.args(args).arg("--socket").arg(socket);
    run_cmd(cmd)
}

/// `--json` run: asserts the exit status and returns the response.
fn json(socket: &Path, args: &[&str], code: i32) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let r = cli(socket, &all);
    assert_eq!(r.code, code, "{args:?}: {} / {}", r.stdout, r.stderr);
    r.json()
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("{v}"))
}

#[test]
fn every_command_answers_json_with_documented_exit_codes() {
    let h = head();
    let s = &h.socket;
    // isu add: done, conflict, invalid.
    for isu in ["isu1", "isu2", "isu3", "isu4"] {
        let v = json(s, &["isu", "add", isu, "--portal", "127.0.0.1:3261"], 0);
        assert_eq!(v["result"]["type"], "done");
    }
    let v = json(s, &["isu", "add", "isu1", "--portal", "127.0.0.1:3261"], 4);
    assert_eq!(error_code(&v), "conflict");
    let v = json(s, &["isu", "add", "isu9"], 2);
    assert_eq!(error_code(&v), "invalid");
    // array create: a task; not-found member.
    let v = json(s, &["array", "create", "a1", "isu1", "isu2", "isu3"], 0);
    assert_eq!(v["result"]["type"], "task");
    assert_eq!(v["result"]["kind"], "array-create");
    assert_eq!(v["result"]["target"], "a1");
    let id = v["result"]["id"].as_u64().unwrap().to_string();
    let v = json(s, &["task", "get", &id, "--wait"], 0);
    assert_eq!(v["result"]["state"], "done");
    let v = json(s, &["array", "create", "a2", "isu1", "nope"], 5);
    assert_eq!(error_code(&v), "not-found");
    // array grow: unavailable member; busy while a task runs; a task.
    let v = json(s, &["array", "grow", "a1", "isu-down"], 6);
    assert_eq!(error_code(&v), "unavailable");
    let v = json(s, &["isu", "replace", "isu3", "--with", "isu4"], 0);
    let replace = v["result"]["id"].as_u64().unwrap().to_string();
    let v = json(s, &["array", "grow", "a1", "isu4"], 4);
    assert_eq!(error_code(&v), "busy");
    json(s, &["task", "cancel", &replace], 0);
    json(s, &["task", "get", &replace, "--wait"], 1);
    let v = json(s, &["array", "grow", "a1", "isu4", "--wait"], 0);
    assert_eq!(v["result"]["state"], "done");
    assert_eq!(v["result"]["result"], "reshaped");
    // array scrub.
    let v = json(s, &["array", "scrub", "a1"], 0);
    assert_eq!(v["result"]["kind"], "array-scrub");
    let v = json(s, &["array", "scrub", "zz"], 5);
    assert_eq!(error_code(&v), "not-found");
    // volume create / grow / delete.
    let v = json(
        s,
        &["volume", "create", "v1", "--array", "a1", "--size", "1G"],
        0,
    );
    assert_eq!(v["result"]["message"], "volume v1 created");
    let v = json(
        s,
        &["volume", "create", "v2", "--array", "a1", "--size", "0"],
        2,
    );
    assert_eq!(error_code(&v), "invalid");
    let v = json(s, &["volume", "grow", "v1", "--size", "2G", "--wait"], 0);
    assert_eq!(v["result"]["kind"], "volume-grow");
    assert_eq!(v["result"]["state"], "done");
    assert_eq!(v["result"]["progress"], 1.0);
    let v = json(s, &["volume", "grow", "v1", "--size", "1G"], 2);
    assert_eq!(error_code(&v), "invalid");
    let v = json(s, &["volume", "delete", "crash"], 1);
    assert_eq!(error_code(&v), "internal");
    // isu suspend / resume / remove.
    let v = json(s, &["isu", "suspend", "isu2"], 0);
    assert_eq!(v["result"]["type"], "done");
    let v = json(s, &["isu", "suspend", "isu2"], 4);
    assert_eq!(error_code(&v), "conflict");
    let v = json(s, &["isu", "resume", "isu2", "--wait"], 0);
    assert_eq!(v["result"]["result"], "resynced 128 blocks");
    let v = json(s, &["isu", "remove", "isu1"], 4);
    assert_eq!(error_code(&v), "conflict");
    let v = json(s, &["isu", "remove", "isu4"], 0);
    assert_eq!(v["result"]["message"], "ISU isu4 removed");
    let v = json(s, &["isu", "remove", "isu4"], 5);
    assert_eq!(error_code(&v), "not-found");
    // status: everything above, and the tasks from the registry.
    let v = json(s, &["status"], 0);
    let st = &v["result"];
    assert_eq!(st["type"], "status");
    assert_eq!(st["isus"].as_array().unwrap().len(), 3);
    assert_eq!(st["arrays"][0]["name"], "a1");
    assert_eq!(st["arrays"][0]["state"], "clean");
    assert_eq!(st["volumes"][0]["size"], 2u64 << 30);
    assert!(st["tasks"].as_array().unwrap().len() >= 4);
    assert_eq!(st["events"][0]["message"], "started");
    match cli(s, &["status", "--json"]).response() {
        Response::Result(Reply::Status(st)) => assert_eq!(st.isus[0].name, "isu1"),
        other => panic!("{other:?}"),
    }
    // volume delete.
    let v = json(s, &["volume", "delete", "v1"], 0);
    assert_eq!(v["result"]["type"], "done");
    let v = json(s, &["volume", "delete", "v1"], 5);
    assert_eq!(error_code(&v), "not-found");
    // task list / get.
    let v = json(s, &["task", "list"], 0);
    let tasks = v["result"]["tasks"].as_array().unwrap();
    assert!(tasks.len() >= 4);
    let id = tasks[0]["id"].as_u64().unwrap().to_string();
    let v = json(s, &["task", "get", &id], 0);
    assert_eq!(v["result"]["id"].to_string(), id);
    let v = json(s, &["task", "get", "999999"], 5);
    assert_eq!(error_code(&v), "not-found");
}

#[test]
fn wait_follows_tasks_to_failure_and_cancellation() {
    let h = head();
    let s = &h.socket;
    for isu in ["isu1", "isu2"] {
        json(s, &["isu", "add", isu, "--portal", "127.0.0.1:3261"], 0);
    }
    // A task that fails: exit 1, the final task line as JSON.
    let v = json(
        s,
        &["isu", "replace", "isu1", "--with", "broken", "--wait"],
        1,
    );
    assert_eq!(v["result"]["state"], "failed");
    assert_eq!(v["result"]["error"]["code"], "internal");
    // Without --json: plain lines (stdout is not a terminal), error on stderr.
    let r = cli(s, &["isu", "replace", "isu1", "--with", "broken", "--wait"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("failed: internal: read error on broken"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.lines().all(|l| l.starts_with("task ")),
        "{}",
        r.stdout
    );
    // A task that runs until cancelled.
    let v = json(s, &["isu", "replace", "isu1", "--with", "isu2"], 0);
    assert_eq!(v["result"]["state"], "running");
    let id = v["result"]["id"].as_u64().unwrap().to_string();
    let v = json(s, &["task", "cancel", &id], 0);
    assert_eq!(v["result"]["state"], "cancelling");
    let v = json(s, &["task", "get", &id, "--wait"], 1);
    assert_eq!(v["result"]["state"], "cancelled");
    assert_eq!(v["result"]["error"]["message"], "copy stopped");
    let v = json(s, &["task", "cancel", &id], 4);
    assert_eq!(error_code(&v), "conflict");
    // task cancel --wait succeeds once the task has ended cancelled.
    let v = json(s, &["isu", "replace", "isu1", "--with", "isu2"], 0);
    let id = v["result"]["id"].as_u64().unwrap().to_string();
    let v = json(s, &["task", "cancel", &id, "--wait"], 0);
    assert_eq!(v["result"]["state"], "cancelled");
    // A task that ends done, without --json.
    json(s, &["array", "create", "a1", "isu1", "isu2"], 0);
    let r = cli(s, &["array", "scrub", "a1", "--wait"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let last = r.stdout.lines().last().unwrap();
    assert!(
        last.ends_with("array-scrub a1: done: 0 mismatches"),
        "{last}"
    );
}

#[test]
fn readable_output_is_tables() {
    let h = head();
    let s = &h.socket;
    json(s, &["isu", "add", "isu1", "--portal", "127.0.0.1:3261"], 0);
    json(s, &["isu", "add", "isu2", "--portal", "127.0.0.1:3261"], 0);
    json(s, &["array", "create", "a1", "isu1", "isu2", "--wait"], 0);
    json(
        s,
        &["volume", "create", "v1", "--array", "a1", "--size", "1G"],
        0,
    );
    let r = cli(s, &["status"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = &r.stdout;
    for want in [
        "ISU   STATE  PATHS",
        "isu1  up     iscsi 127.0.0.1:3261 up (io 3 err 0)",
        "a1     clean  -         2.0 GiB   0 B     isu1:0123 1.0 GiB in-sync, isu2:0123 1.0 GiB in-sync",
        "v1      a1     1.0 GiB  iqn.2026-12.test:v1 lun 0",
        "array-create  a1      done",
    ] {
        assert!(out.contains(want), "no {want:?} in\n{out}");
    }
    let r = cli(s, &["volume", "delete", "v1"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "volume v1 deleted\n"));
    let r = cli(s, &["volume", "delete", "v1"]);
    assert_eq!(r.code, 5);
    assert_eq!(r.stderr, "opie: no volume v1\n");
    assert!(r.stdout.is_empty());
}

#[test]
fn no_daemon_is_exit_3_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let v = json(&dir.path().join("none.sock"), &["status"], 3);
    assert_eq!(error_code(&v), "unreachable");
    // The default socket is under --data-dir.
    let mut cmd = opie();
    cmd.args(["status", "--data-dir"]).arg(dir.path());
    let r = run_cmd(cmd);
    assert_eq!(r.code, 3);
    assert!(
        r.stderr
            .contains(&format!("{}/control/head.sock", dir.path().display())),
        "{}",
        r.stderr
    );
    let mut cmd = opie();
    cmd.args(["volume", "create", "v", "--size", "lots"]);
    assert_eq!(run_cmd(cmd).code, 2);
    let mut cmd = opie();
    cmd.args(["array", "create", "a"]);
    assert_eq!(run_cmd(cmd).code, 2);
}

#[test]
fn a_non_root_user_cannot_reach_the_socket_and_is_denied_if_it_could() {
    if !can_run(euid_is_root(), "needs root to run the CLI as user nobody") {
        return;
    }
    let h = head();
    // A copy of the binary nobody can run wherever the build tree is.
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = h.dir.path().join("opie");
    std::fs::copy(env!("CARGO_BIN_EXE_opie"), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = || {
        let mut cmd = Command::new(&exe);
        cmd.args(["status", "--json", "--socket"])
            .arg(&h.socket)
            .uid(65534)
            .gid(65534)
            .current_dir("/");
        run_cmd(cmd)
    };
    // As set up: the 0700 directory keeps nobody out.
    let r = nobody();
    assert_eq!(r.code, 3, "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    // Opened up by hand (a mistake): the peer credentials still refuse.
    std::fs::set_permissions(
        h.socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&h.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let r = nobody();
    assert_eq!(r.code, 7, "{} {}", r.stdout, r.stderr);
    assert_eq!(error_code(&r.json()), "denied");
    // Root is still served.
    assert_eq!(json(&h.socket, &["status"], 0)["result"]["type"], "status");
}

fn euid_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let h = head();
    let s = &h.socket;
    json(s, &["isu", "add", "isu1", "--portal", "127.0.0.1:3261"], 0);
    json(s, &["isu", "add", "isu2", "--portal", "127.0.0.1:3261"], 0);
    json(s, &["array", "create", "a1", "isu1", "isu2", "--wait"], 0);
    // `opie ... | head -0`: the reader is gone before anything is written.
    for args in [&["array", "scrub", "a1", "--wait"][..], &["status"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = opie();
        cmd.args(args).arg("--socket").arg(s).stdout(writer);
        let out = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
