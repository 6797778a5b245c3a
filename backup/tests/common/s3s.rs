//! Finding the `s3s-fs` binary the S3 tests start (the backup crate's and
//! the head's): on `PATH` or in `$CARGO_HOME/bin` (`~/.cargo/bin`). Under
//! `CI=true` a missing one fails the test; elsewhere it is a skip.

use std::path::PathBuf;

/// The `s3s-fs` binary, or `None` (a skip, said on stderr) outside CI.
pub fn s3s_fs() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(home.map(|h| h.join("bin")));
    for dir in candidates {
        let p = dir.join("s3s-fs");
        if p.is_file() {
            return Some(p);
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "s3s-fs is required under CI: cargo install s3s-fs --version 0.14.1 --features binary --locked"
    );
    eprintln!("SKIP: s3s-fs not installed");
    None
}

/// Starts `bin` serving directory `dir` on `127.0.0.1:port` with one
/// access key and secret, and waits (bounded) until it listens.
pub fn spawn(
    bin: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    access_key: &str,
    secret_key: &str,
) -> std::process::Child {
    use std::time::{Duration, Instant};
    let child = std::process::Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", access_key, "--secret-key", secret_key])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start s3s-fs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}
