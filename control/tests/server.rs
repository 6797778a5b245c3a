//! The control server and the client over a real Unix socket in a temp
//! dir, with a small in-test handler (the head is not part of this crate):
//! permissions, peer credentials, hostile input, limits, task lifecycle.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control::status::{IsuState, IsuStatus};
use control::{
    Client, ControlError, ErrorCode, Handler, Peer, Reply, Request, Response, Server, ServerConfig,
    ServerError, Status, TaskId, TaskKind, TaskState, Tasks,
};
use tokio::sync::{oneshot, watch};

/// A stand-in for the head: `status` with one ISU, `array.scrub` as a task
/// that reports the progress the test sets and ends when the test says (or
/// when cancelled), everything else `not-found`.
struct TestHead {
    tasks: Tasks,
    progress: watch::Receiver<f64>,
    finish: Mutex<Option<oneshot::Receiver<()>>>,
}

#[async_trait::async_trait]
impl Handler for TestHead {
    async fn handle(&self, request: Request, _peer: Peer) -> Result<Reply, ControlError> {
        match request {
            Request::Status => Ok(Reply::Status(Status {
                isus: vec![IsuStatus {
                    name: "isu1".into(),
                    state: IsuState::Up,
                    paths: vec![],
                }],
                ..Status::default()
            })),
            Request::ArrayScrub { array } => {
                let mut progress = self.progress.clone();
                let finish = self.finish.lock().unwrap().take();
                Ok(Reply::Task(self.tasks.spawn(
                    TaskKind::ArrayScrub,
                    array,
                    |h| async move {
                        let work = async {
                            loop {
                                h.progress(*progress.borrow_and_update());
                                if progress.changed().await.is_err() {
                                    break;
                                }
                            }
                        };
                        tokio::select! {
                            _ = work => unreachable!(),
                            _ = async { finish.unwrap().await.ok() } => Ok("0 mismatches".into()),
                            _ = h.cancelled() => Err(ControlError::Conflict("scrub stopped".into())),
                        }
                    },
                )))
            }
            other => Err(ControlError::NotFound(format!(
                "nothing for {}",
                other.op()
            ))),
        }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
    stop: Option<oneshot::Sender<()>>,
    progress: watch::Sender<f64>,
    finish: Option<oneshot::Sender<()>>,
}

impl Fixture {
    fn start(config: ServerConfig) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let socket = control::socket_path(dir.path());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (progress, progress_rx) = watch::channel(0.0);
        let (finish, finish_rx) = oneshot::channel();
        let tasks = Tasks::default();
        let head = Arc::new(TestHead {
            tasks: tasks.clone(),
            progress: progress_rx,
            finish: Mutex::new(Some(finish_rx)),
        });
        let server = rt
            .block_on(async { Server::bind(&socket, config, head, tasks) })
            .unwrap();
        let (stop, stop_rx) = oneshot::channel::<()>();
        rt.spawn(server.serve(async {
            let _ = stop_rx.await;
        }));
        Fixture {
            _dir: dir,
            socket,
            rt,
            stop: Some(stop),
            progress,
            finish: Some(finish),
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket, Duration::from_secs(30)).unwrap()
    }

    fn raw(&self) -> (UnixStream, BufReader<UnixStream>) {
        let s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        (s, r)
    }
}

fn call(client: &mut Client, request: Request) -> Result<Reply, ControlError> {
    client.call(&request).unwrap().1.into()
}

fn read_response(r: &mut BufReader<UnixStream>) -> Response {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.ends_with('\n'), "no full response line: {line:?}");
    serde_json::from_str(&line).unwrap()
}

fn error_code(response: Response) -> ErrorCode {
    match response {
        Response::Error(e) => e.code(),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn assert_status_works(client: &mut Client) {
    match call(client, Request::Status) {
        Ok(Reply::Status(s)) => assert_eq!(s.isus[0].name, "isu1"),
        other => panic!("status: {other:?}"),
    }
}

#[test]
fn socket_is_0600_in_a_0700_directory_and_removed_at_shutdown() {
    let mut f = Fixture::start(ServerConfig::default());
    let dir = f.socket.parent().unwrap();
    assert_eq!(std::fs::metadata(dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&f.socket).unwrap().mode() & 0o777, 0o600);
    assert_status_works(&mut f.client());
    f.stop.take().unwrap().send(()).unwrap();
    // The server removes the socket as it stops.
    f.rt.block_on(async {
        while f.socket.exists() {
            tokio::task::yield_now().await;
        }
    });
}

#[test]
fn a_directory_others_can_enter_and_a_live_socket_are_refused_a_stale_one_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tasks = Tasks::default();
    let (_p, progress) = watch::channel(0.0);
    let head: Arc<dyn Handler> = Arc::new(TestHead {
        tasks: tasks.clone(),
        progress,
        finish: Mutex::new(None),
    });
    let bind = |path: &Path| {
        rt.block_on(async {
            Server::bind(path, ServerConfig::default(), head.clone(), tasks.clone())
        })
    };
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    match bind(&open.join("head.sock")) {
        Err(ServerError::UnsafeDirectory { why, .. }) => assert!(why.contains("0755"), "{why}"),
        other => panic!("bound in a 0755 directory: {:?}", other.err()),
    }
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&open, &link).unwrap();
    assert!(matches!(
        bind(&link.join("head.sock")).err(),
        Some(ServerError::UnsafeDirectory { .. })
    ));

    let path = control::socket_path(tmp.path());
    let live = bind(&path).unwrap();
    assert!(matches!(bind(&path).err(), Some(ServerError::InUse { .. })));
    drop(live); // the socket file stays, nobody accepts: stale
    assert!(path.exists());
    let again = bind(&path).unwrap();
    drop(again);

    let file = tmp.path().join("priv");
    std::fs::create_dir(&file).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(file.join("head.sock"), b"not a socket").unwrap();
    assert!(matches!(
        bind(&file.join("head.sock")).err(),
        Some(ServerError::NotASocket { .. })
    ));
}

#[test]
fn a_peer_whose_uid_is_not_allowed_is_denied() {
    // Our own uid off the list: SO_PEERCRED says who we are.
    let f = Fixture::start(ServerConfig {
        allowed_uids: vec![4_000_000],
        ..ServerConfig::default()
    });
    let (_, response) = f.client().call(&Request::Status).unwrap();
    match response {
        Response::Error(ControlError::Denied(m)) => assert!(m.contains("may not use"), "{m}"),
        other => panic!("not denied: {other:?}"),
    }
}

#[test]
fn garbage_gets_invalid_and_the_connection_stays_usable() {
    let f = Fixture::start(ServerConfig::default());
    let (mut w, mut r) = f.raw();
    for garbage in [
        &b"hello\n"[..],
        b"{\"op\":\"status\"\n",
        b"{\"op\":\"isu.explode\"}\n",
        b"{\"op\":\"isu.suspend\",\"isu\":\"a\",\"force\":1}\n",
        b"[1,2,3]\n",
        b"\xff\xfe\x00\x01garbage\n",
    ] {
        w.write_all(garbage).unwrap();
        assert_eq!(
            error_code(read_response(&mut r)),
            ErrorCode::Invalid,
            "{garbage:?}"
        );
    }
    // Blank lines are skipped; the connection still answers.
    w.write_all(b"\n\n{\"op\":\"status\"}\n").unwrap();
    assert!(matches!(
        read_response(&mut r),
        Response::Result(Reply::Status(_))
    ));
}

#[test]
fn a_10_mib_line_gets_invalid_and_the_connection_goes_on() {
    let f = Fixture::start(ServerConfig::default());
    let (mut w, mut r) = f.raw();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..10 {
            w.write_all(&chunk).unwrap();
        }
        w.write_all(b"\n{\"op\":\"status\"}\n").unwrap();
        w
    });
    // Meanwhile another client is served.
    assert_status_works(&mut f.client());
    let response = read_response(&mut r);
    match response {
        Response::Error(ControlError::Invalid(m)) => assert!(m.contains("longer than"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        read_response(&mut r),
        Response::Result(Reply::Status(_))
    ));
    // One error for the one long line, nothing more.
    let _w = writer.join().unwrap();
}

#[test]
fn silent_and_half_line_clients_stall_nobody() {
    let f = Fixture::start(ServerConfig::default());
    let _silent: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(&f.socket).unwrap())
        .collect();
    let (mut half, _r) = f.raw();
    half.write_all(b"{\"op\":\"sta").unwrap();
    for _ in 0..3 {
        assert_status_works(&mut f.client());
    }
}

#[test]
fn silent_and_dribbling_clients_are_disconnected_at_the_idle_timeout() {
    let f = Fixture::start(ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    });
    // Silent: the server closes it (EOF, no answer).
    let (_w, mut r) = f.raw();
    let mut rest = vec![];
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // Dribbling a line one byte every 20 ms, far longer than the timeout
    // (at most 20 s): cut off before the line is done.
    let (mut w, _r) = f.raw();
    let line = format!("{{\"op\":\"status\"{}}}\n", " ".repeat(1000));
    let cut = line.as_bytes().iter().position(|b| {
        std::thread::sleep(Duration::from_millis(20));
        w.write_all(&[*b]).is_err()
    });
    assert!(cut.is_some(), "a dribbling client was never disconnected");
    // A client that keeps sending whole requests stays.
    let mut c = f.client();
    for _ in 0..3 {
        assert_status_works(&mut c);
    }
}

#[test]
fn a_client_that_never_reads_stalls_nobody_and_is_dropped() {
    let f = Fixture::start(ServerConfig {
        write_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    });
    // 20,000 requests and no reads: the answers (mostly `busy`, over the
    // rate) fill the socket buffer and the server's write to it stalls.
    let (mut w, r) = f.raw();
    let flood = b"{\"op\":\"status\"}\n".repeat(20_000);
    let writer = std::thread::spawn(move || {
        // Fails once the server gives up on the client.
        let _ = w.write_all(&flood);
        w
    });
    for _ in 0..3 {
        assert_status_works(&mut f.client());
    }
    // The stalled client is dropped: reading what was buffered ends in EOF.
    let _w = writer.join().unwrap();
    let mut r = r;
    let mut answers = String::new();
    let _ = r.read_to_string(&mut answers);
    assert!(answers.lines().count() < 20_000, "every answer was taken");
}

#[test]
fn clients_beyond_the_cap_get_busy() {
    let f = Fixture::start(ServerConfig {
        max_clients: 2,
        ..ServerConfig::default()
    });
    let mut a = f.client();
    let mut b = f.client();
    assert_status_works(&mut a);
    assert_status_works(&mut b);
    let (_, response) = f.client().call(&Request::Status).unwrap();
    assert_eq!(error_code(response), ErrorCode::Busy);
    drop(a);
    // Once a client leaves there is room again (the server sees it go).
    let mut tries = 0;
    loop {
        let (_, response) = f.client().call(&Request::Status).unwrap();
        match response {
            Response::Result(_) => break,
            Response::Error(e) => assert_eq!(e.code(), ErrorCode::Busy),
        }
        tries += 1;
        assert!(tries < 10_000, "the cap never freed");
        std::thread::yield_now();
    }
}

#[test]
fn a_client_over_its_rate_gets_busy_and_goes_on() {
    let f = Fixture::start(ServerConfig {
        rate: control::RateLimit {
            per_second: 0.001,
            burst: 5.0,
        },
        ..ServerConfig::default()
    });
    let (mut w, mut r) = f.raw();
    w.write_all(&b"{\"op\":\"status\"}\n".repeat(8)).unwrap();
    let codes: Vec<Option<ErrorCode>> = (0..8)
        .map(|_| match read_response(&mut r) {
            Response::Result(_) => None,
            Response::Error(e) => Some(e.code()),
        })
        .collect();
    assert_eq!(&codes[..5], &[None; 5]);
    assert_eq!(&codes[5..], &[Some(ErrorCode::Busy); 3]);
    // Another client has its own bucket.
    assert_status_works(&mut f.client());
}

#[test]
fn a_task_reports_progress_can_be_cancelled_and_keeps_its_outcome() {
    let mut f = Fixture::start(ServerConfig::default());
    let mut c = f.client();
    let task = match call(&mut c, Request::ArrayScrub { array: "a1".into() }) {
        Ok(Reply::Task(t)) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!(task.state, TaskState::Running);
    assert_eq!(task.kind, TaskKind::ArrayScrub);
    f.progress.send(0.4).unwrap();
    let seen = loop {
        match call(&mut c, Request::TaskGet { task: task.id }) {
            Ok(Reply::Task(t)) if t.progress > 0.0 => break t,
            Ok(Reply::Task(_)) => std::thread::yield_now(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(seen.progress, 0.4);
    assert_eq!(seen.state, TaskState::Running);
    // status lists it.
    match call(&mut c, Request::Status) {
        Ok(Reply::Status(s)) => assert_eq!(s.tasks[0].id, task.id),
        other => panic!("{other:?}"),
    }
    match call(&mut c, Request::TaskCancel { task: task.id }) {
        Ok(Reply::Task(t)) => assert_eq!(t.state, TaskState::Cancelling),
        other => panic!("{other:?}"),
    }
    let end = loop {
        match call(&mut c, Request::TaskGet { task: task.id }) {
            Ok(Reply::Task(t)) if t.state.is_final() => break t,
            Ok(Reply::Task(_)) => std::thread::yield_now(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(end.state, TaskState::Cancelled);
    assert_eq!(end.error.unwrap().code(), ErrorCode::Conflict);
    assert_eq!(
        call(&mut c, Request::TaskCancel { task: task.id })
            .unwrap_err()
            .code(),
        ErrorCode::Conflict
    );
    assert_eq!(
        call(&mut c, Request::TaskGet { task: TaskId(77) })
            .unwrap_err()
            .code(),
        ErrorCode::NotFound
    );
    match call(&mut c, Request::TaskList) {
        Ok(Reply::Tasks { tasks }) => assert_eq!(tasks.len(), 1),
        other => panic!("{other:?}"),
    }
    // Requests the handler does not know get its error.
    assert_eq!(
        call(&mut c, Request::VolumeDelete { volume: "v".into() })
            .unwrap_err()
            .code(),
        ErrorCode::NotFound
    );
    let _ = f.finish.take();
    // The daemon's socket answers a raw client the same bytes as documented.
    let (mut w, mut r) = f.raw();
    w.write_all(format!("{{\"op\":\"task.get\",\"task\":{}}}\n", task.id).as_bytes())
        .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(
        line.starts_with(&format!(
            "{{\"result\":{{\"type\":\"task\",\"id\":{},\"kind\":\"array-scrub\",\"target\":\"a1\",\"state\":\"cancelled\"",
            task.id
        )),
        "{line}"
    );
    let mut rest = vec![];
    w.shutdown(std::net::Shutdown::Write).unwrap();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}
