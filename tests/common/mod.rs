//! Shared helpers of the `opie` integration tests: running the daemon, and a
//! minimal iSCSI initiator (blocking TCP, one connection, ERL 0) that speaks
//! just enough RFC 7143 to log in, discover, and run SCSI commands.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

// ---- the daemon ----------------------------------------------------------------

/// A running `opie isu serve`, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// A TCP port free on 127.0.0.1 and [::1] right now.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        if TcpListener::bind(("::1", p)).is_ok() {
            return p;
        }
    }
}

pub fn opie() -> Command {
    Command::new(env!("CARGO_BIN_EXE_opie"))
}

/// Writes `config` to `dir/isu.toml` and returns its path.
pub fn write_config(dir: &Path, config: &str) -> PathBuf {
    let p = dir.join("isu.toml");
    std::fs::write(&p, config).unwrap();
    p
}

/// Runs `opie ARGS` expecting it to exit by itself within `secs` (a refused
/// config, or `check`); returns its exit code and stderr. A process still
/// running then (a `serve` that should have refused but serves) is killed
/// and reported as code None.
pub fn run_to_exit(args: &[&std::ffi::OsStr], secs: u64) -> (Option<i32>, String) {
    let mut cmd = opie();
    cmd.args(args);
    run_cmd_to_exit(cmd, secs)
}

/// [`run_to_exit`] for a prepared command.
pub fn run_cmd_to_exit(mut cmd: Command, secs: u64) -> (Option<i32>, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(secs);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (code, err)
}

/// Runs `opie isu check`, then `opie isu serve`, of `config` with data dir
/// `data` on a free port, and asserts that both refuse it with exit status
/// 1 (what serve refuses at startup, check finds) and every one of `want`
/// in their message.
pub fn both_refuse<S: AsRef<str>>(config: &Path, data: &Path, want: &[S]) {
    let listen = format!("127.0.0.1:{}", free_port());
    for sub in ["check", "serve"] {
        let mut cmd = opie();
        cmd.args(["isu", sub, "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", &listen]);
        let (code, err) = run_cmd_to_exit(cmd, 10);
        assert_eq!(
            code,
            Some(1),
            "{sub}: exit {code:?} (None: it served), stderr: {err}"
        );
        for w in want {
            let w = w.as_ref();
            assert!(err.contains(w), "{sub}: {w:?} missing from: {err}");
        }
    }
}

impl Daemon {
    /// Starts `opie isu serve` with `config` (a file path), data dir and
    /// portals, and waits until every `wait_for` address accepts connections.
    pub fn start(
        config: &Path,
        data_dir: &Path,
        listen: &[String],
        wait_for: &[SocketAddr],
    ) -> Daemon {
        Self::start_with(opie(), config, data_dir, listen, wait_for)
    }

    /// Like [`Daemon::start`] with `cmd` (opie, or a wrapper such as `ip netns exec NS opie`).
    pub fn start_with(
        mut cmd: Command,
        config: &Path,
        data_dir: &Path,
        listen: &[String],
        wait_for: &[SocketAddr],
    ) -> Daemon {
        let log = data_dir.with_extension("log");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        cmd.args(["isu", "serve", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir);
        for l in listen {
            cmd.args(["--listen", l]);
        }
        let child = cmd
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            data_dir: data_dir.to_path_buf(),
            log,
        };
        let end = Instant::now() + Duration::from_secs(20);
        for a in wait_for {
            while TcpStream::connect_timeout(a, Duration::from_millis(200)).is_err() {
                if let Ok(Some(st)) = d.child.try_wait() {
                    panic!(
                        "opie exited ({st}) before listening on {a}:\n{}",
                        d.log_text()
                    );
                }
                assert!(
                    Instant::now() < end,
                    "opie never listened on {a}:\n{}",
                    d.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        d
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// Waits up to `secs` for the process to exit.
    pub fn wait_exit(&mut self, secs: u64) -> Option<ExitStatus> {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether this test can have what it needs (`why` names it): prints SKIP
/// and returns false when not, and fails instead under `CI=true`.
pub fn can_run(ok: bool, why: &str) -> bool {
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and this test cannot run: {why}"
        );
        eprintln!("SKIP: {why}");
    }
    ok
}

/// A loop device over a sparse file, detached on drop.
pub struct LoopDevice {
    pub path: PathBuf,
}

impl LoopDevice {
    /// Attaches a loop device to a new sparse file of `bytes` at `file`;
    /// None when that is not possible here (not root, no losetup).
    pub fn attach(file: &Path, bytes: u64) -> Option<LoopDevice> {
        // SAFETY: geteuid has no memory effects.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        std::fs::File::create(file).ok()?.set_len(bytes).ok()?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Some(LoopDevice { path })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

// ---- a minimal initiator -------------------------------------------------------

const OP_NOP_OUT: u8 = 0x00;
const OP_SCSI_CMD: u8 = 0x01;
const OP_LOGIN: u8 = 0x03;
const OP_TEXT: u8 = 0x04;
const OP_DATA_OUT: u8 = 0x05;
const OP_LOGOUT: u8 = 0x06;
const OP_NOP_IN: u8 = 0x20;
const OP_SCSI_RESP: u8 = 0x21;
const OP_LOGIN_RESP: u8 = 0x23;
const OP_TEXT_RESP: u8 = 0x24;
const OP_DATA_IN: u8 = 0x25;
const OP_LOGOUT_RESP: u8 = 0x26;
const OP_R2T: u8 = 0x31;
const OP_ASYNC: u8 = 0x32;
const OP_REJECT: u8 = 0x3f;

/// One received PDU: header and data segment.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub bhs: [u8; 48],
    pub data: Vec<u8>,
}

impl Pdu {
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    fn u32_at(&self, i: usize) -> u32 {
        u32::from_be_bytes(self.bhs[i..i + 4].try_into().unwrap())
    }
}

/// Result of a SCSI command.
#[derive(Debug, Clone)]
pub struct ScsiResult {
    pub status: u8,
    pub sense: Vec<u8>,
    pub data: Vec<u8>,
}

impl ScsiResult {
    /// Panics unless GOOD.
    pub fn good(self, what: &str) -> Vec<u8> {
        assert_eq!(
            self.status, 0,
            "{what}: status {:#x}, sense {:02x?}",
            self.status, self.sense
        );
        self.data
    }
}

/// A logged-in iSCSI session over one TCP connection.
pub struct Session {
    sock: TcpStream,
    cmd_sn: u32,
    exp_stat_sn: u32,
    itt: u32,
    /// Target's MaxRecvDataSegmentLength: the largest data segment we may send.
    pub max_send: usize,
    pub immediate_data: bool,
    pub first_burst: usize,
    /// Every key=value the target sent during login.
    pub login_keys: Vec<(String, String)>,
}

fn put_u32(b: &mut [u8], i: usize, v: u32) {
    b[i..i + 4].copy_from_slice(&v.to_be_bytes());
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

fn parse_keys(data: &[u8]) -> Vec<(String, String)> {
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn lun_bytes(lun: u64) -> [u8; 8] {
    let mut l = [0u8; 8];
    if lun < 256 {
        l[1] = lun as u8;
    } else {
        l[0] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        l[1] = lun as u8;
    }
    l
}

impl Session {
    fn send(&mut self, mut bhs: [u8; 48], data: &[u8]) -> io::Result<()> {
        bhs[5..8].copy_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        let mut buf = bhs.to_vec();
        buf.extend_from_slice(data);
        buf.extend(std::iter::repeat_n(0, pad4(data.len())));
        self.sock.write_all(&buf)
    }

    /// Reads one PDU (no digests). Answers target NOP-In pings transparently.
    pub fn recv(&mut self) -> io::Result<Pdu> {
        loop {
            let mut bhs = [0u8; 48];
            self.sock.read_exact(&mut bhs)?;
            let ahs = bhs[4] as usize * 4;
            let dlen = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
            let mut skip = vec![0u8; ahs];
            self.sock.read_exact(&mut skip)?;
            let mut data = vec![0u8; dlen + pad4(dlen)];
            self.sock.read_exact(&mut data)?;
            data.truncate(dlen);
            let pdu = Pdu { bhs, data };
            let op = pdu.opcode();
            // Responses carrying StatSN advance ExpStatSN.
            if matches!(
                op,
                OP_SCSI_RESP
                    | OP_TMF_RESP
                    | OP_TEXT_RESP
                    | OP_LOGIN_RESP
                    | OP_LOGOUT_RESP
                    | OP_NOP_IN
                    | OP_ASYNC
                    | OP_REJECT
            ) || (op == OP_DATA_IN && bhs[1] & 0x01 != 0)
            {
                // A ping (NOP-In with a TTT) carries StatSN without advancing it.
                let ping = op == OP_NOP_IN && pdu.u32_at(20) != 0xffff_ffff;
                self.exp_stat_sn = pdu.u32_at(24).wrapping_add(u32::from(!ping));
            }
            if op == OP_NOP_IN && pdu.u32_at(20) != 0xffff_ffff {
                // Target ping: answer with the same TTT, as an immediate NOP-Out.
                let mut h = [0u8; 48];
                h[0] = 0x40 | OP_NOP_OUT;
                h[1] = 0x80;
                h[8..16].copy_from_slice(&pdu.bhs[8..16]);
                put_u32(&mut h, 16, 0xffff_ffff);
                put_u32(&mut h, 20, pdu.u32_at(20));
                put_u32(&mut h, 24, self.cmd_sn);
                put_u32(&mut h, 28, self.exp_stat_sn);
                self.send(h, &pdu.data.clone())?;
                continue;
            }
            return Ok(pdu);
        }
    }

    /// Connects and logs in (no authentication, no digests). `target` None
    /// opens a discovery session.
    pub fn login(addr: SocketAddr, initiator: &str, target: Option<&str>) -> io::Result<Session> {
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        sock.set_nodelay(true)?;
        let mut s = Session {
            sock,
            cmd_sn: 1,
            exp_stat_sn: 0,
            itt: 1,
            max_send: 8192,
            immediate_data: false,
            first_burst: 65536,
            login_keys: Vec::new(),
        };
        let isid: [u8; 6] = [0x80, 0, 0, 0x4f, 0x50, (std::process::id() & 0xff) as u8];
        let mut keys = format!("InitiatorName={initiator}\0");
        match target {
            Some(t) => keys += &format!("SessionType=Normal\0TargetName={t}\0"),
            None => keys += "SessionType=Discovery\0",
        }
        keys += "AuthMethod=None\0";
        let mut csg = 0u8;
        let mut stage_keys = true;
        let mut tsih = [0u8; 2];
        loop {
            let mut data = String::new();
            if stage_keys && csg == 0 {
                data = keys.clone();
            } else if stage_keys {
                data += "HeaderDigest=None\0DataDigest=None\0MaxRecvDataSegmentLength=65536\0";
                if target.is_some() {
                    data += "InitialR2T=Yes\0ImmediateData=Yes\0MaxBurstLength=262144\0FirstBurstLength=65536\0\
                             MaxOutstandingR2T=1\0DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0\
                             ErrorRecoveryLevel=0\0DefaultTime2Wait=0\0DefaultTime2Retain=0\0MaxConnections=1\0";
                }
            }
            let nsg = if csg == 0 { 1 } else { 3 };
            let mut h = [0u8; 48];
            h[0] = 0x40 | OP_LOGIN;
            h[1] = 0x80 | (csg << 2) | nsg;
            h[8..14].copy_from_slice(&isid);
            h[14..16].copy_from_slice(&tsih);
            put_u32(&mut h, 16, 0);
            put_u32(&mut h, 24, s.cmd_sn);
            put_u32(&mut h, 28, s.exp_stat_sn);
            s.send(h, data.as_bytes())?;
            stage_keys = false;
            let r = s.recv()?;
            if r.opcode() != OP_LOGIN_RESP {
                return Err(io::Error::other(format!(
                    "login: unexpected opcode {:#x}",
                    r.opcode()
                )));
            }
            if r.bhs[36] != 0 {
                return Err(io::Error::other(format!(
                    "login refused: status class {} detail {}",
                    r.bhs[36], r.bhs[37]
                )));
            }
            tsih.copy_from_slice(&r.bhs[14..16]);
            s.login_keys.extend(parse_keys(&r.data));
            let transit = r.bhs[1] & 0x80 != 0;
            let rnsg = r.bhs[1] & 3;
            if transit && rnsg == 3 {
                break;
            }
            if transit {
                csg = rnsg;
                stage_keys = true;
            }
        }
        for (k, v) in s.login_keys.clone() {
            match k.as_str() {
                "MaxRecvDataSegmentLength" => s.max_send = v.parse().unwrap_or(8192),
                "ImmediateData" => s.immediate_data = v == "Yes",
                "FirstBurstLength" => s.first_burst = v.parse().unwrap_or(65536),
                _ => {}
            }
        }
        Ok(s)
    }

    fn next_itt(&mut self) -> u32 {
        self.itt = self.itt.wrapping_add(1);
        self.itt
    }

    /// SendTargets=All on a discovery session: the text response's keys.
    pub fn send_targets(&mut self) -> io::Result<Vec<(String, String)>> {
        let itt = self.next_itt();
        let mut out = Vec::new();
        let mut ttt = 0xffff_ffffu32;
        let mut data: &[u8] = b"SendTargets=All\0";
        loop {
            let mut h = [0u8; 48];
            h[0] = OP_TEXT;
            h[1] = 0x80;
            put_u32(&mut h, 16, itt);
            put_u32(&mut h, 20, ttt);
            put_u32(&mut h, 24, self.cmd_sn);
            put_u32(&mut h, 28, self.exp_stat_sn);
            self.send(h, data)?;
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
            let r = self.recv()?;
            if r.opcode() != OP_TEXT_RESP {
                return Err(io::Error::other(format!(
                    "text: unexpected opcode {:#x}",
                    r.opcode()
                )));
            }
            out.extend(parse_keys(&r.data));
            if r.bhs[1] & 0x40 == 0 {
                return Ok(out);
            }
            ttt = r.u32_at(20);
            data = b"";
        }
    }

    /// Runs one SCSI command: `data_out` for writes, `expect_in` bytes of data-in.
    pub fn scsi(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        expect_in: u32,
    ) -> io::Result<ScsiResult> {
        let itt = self.send_command(lun, cdb, data_out, expect_in)?;
        let mut data_in = Vec::new();
        loop {
            let r = self.recv()?;
            match r.opcode() {
                OP_DATA_IN => {
                    let off = r.u32_at(40) as usize;
                    if data_in.len() < off + r.data.len() {
                        data_in.resize(off + r.data.len(), 0);
                    }
                    data_in[off..off + r.data.len()].copy_from_slice(&r.data);
                    if r.bhs[1] & 0x01 != 0 {
                        return Ok(ScsiResult {
                            status: r.bhs[3],
                            sense: Vec::new(),
                            data: data_in,
                        });
                    }
                }
                OP_R2T => {
                    self.answer_r2t(lun, itt, &r, data_out)?;
                }
                OP_SCSI_RESP => {
                    let sense = if r.data.len() >= 2 {
                        let n = u16::from_be_bytes([r.data[0], r.data[1]]) as usize;
                        r.data[2..(2 + n).min(r.data.len())].to_vec()
                    } else {
                        Vec::new()
                    };
                    if r.bhs[2] != 0 {
                        return Err(io::Error::other(format!(
                            "iSCSI response code {:#x}",
                            r.bhs[2]
                        )));
                    }
                    return Ok(ScsiResult {
                        status: r.bhs[3],
                        sense,
                        data: data_in,
                    });
                }
                OP_ASYNC => continue,
                OP_REJECT => return Err(io::Error::other("target rejected the command PDU")),
                op => return Err(io::Error::other(format!("unexpected opcode {op:#x}"))),
            }
        }
    }

    /// Sends a SCSI Command PDU (SIMPLE, with as much immediate data as
    /// negotiated); returns its ITT.
    fn send_command(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        expect_in: u32,
    ) -> io::Result<u32> {
        let itt = self.next_itt();
        let mut h = [0u8; 48];
        h[0] = OP_SCSI_CMD;
        h[1] = 0x80 | 0x01; // F, SIMPLE
        if expect_in > 0 {
            h[1] |= 0x40;
        }
        if !data_out.is_empty() {
            h[1] |= 0x20;
        }
        h[8..16].copy_from_slice(&lun_bytes(lun));
        put_u32(&mut h, 16, itt);
        put_u32(
            &mut h,
            20,
            if data_out.is_empty() {
                expect_in
            } else {
                data_out.len() as u32
            },
        );
        put_u32(&mut h, 24, self.cmd_sn);
        put_u32(&mut h, 28, self.exp_stat_sn);
        h[32..32 + cdb.len()].copy_from_slice(cdb);
        let imm = self.immediate_len(data_out.len());
        self.send(h, &data_out[..imm])?;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        Ok(itt)
    }

    /// How much of `len` bytes of data-out go as immediate data.
    fn immediate_len(&self, len: usize) -> usize {
        if self.immediate_data {
            len.min(self.first_burst).min(self.max_send)
        } else {
            0
        }
    }

    /// Answers the R2T `r` of task `itt` with the data it asks for; returns
    /// how many bytes it asked for.
    fn answer_r2t(&mut self, lun: u64, itt: u32, r: &Pdu, data_out: &[u8]) -> io::Result<usize> {
        let ttt = r.u32_at(20);
        let off = r.u32_at(40) as usize;
        let len = r.u32_at(44) as usize;
        let mut done = 0;
        let mut data_sn = 0;
        while done < len {
            let n = (len - done).min(self.max_send);
            let mut d = [0u8; 48];
            d[0] = OP_DATA_OUT;
            if done + n == len {
                d[1] = 0x80;
            }
            d[8..16].copy_from_slice(&lun_bytes(lun));
            put_u32(&mut d, 16, itt);
            put_u32(&mut d, 20, ttt);
            put_u32(&mut d, 28, self.exp_stat_sn);
            put_u32(&mut d, 36, data_sn);
            put_u32(&mut d, 40, (off + done) as u32);
            self.send(d, &data_out[off + done..off + done + n])?;
            done += n;
            data_sn += 1;
        }
        Ok(len)
    }

    /// Logs out (close the session); waits for the Logout Response.
    pub fn logout(mut self) -> io::Result<()> {
        let itt = self.next_itt();
        let mut h = [0u8; 48];
        h[0] = 0x40 | OP_LOGOUT;
        h[1] = 0x80;
        put_u32(&mut h, 16, itt);
        put_u32(&mut h, 24, self.cmd_sn);
        put_u32(&mut h, 28, self.exp_stat_sn);
        self.send(h, &[])?;
        loop {
            let r = self.recv()?;
            if r.opcode() == OP_LOGOUT_RESP {
                return Ok(());
            }
        }
    }

    /// Waits for the target to end the session: an Async Message asking for
    /// logout (answered) or the connection closing. True if it ended.
    pub fn await_target_close(mut self) -> bool {
        loop {
            match self.recv() {
                Ok(p)
                    if p.opcode() == OP_ASYNC
                        && (p.bhs[36] == 1 || p.bhs[36] == 2 || p.bhs[36] == 3) =>
                {
                    let _ = self.logout();
                    return true;
                }
                Ok(_) => continue,
                Err(e) => {
                    return e.kind() != io::ErrorKind::WouldBlock
                        && e.kind() != io::ErrorKind::TimedOut
                }
            }
        }
    }
}

// ---- task management and cut-short commands -----------------------------------

const OP_TMF: u8 = 0x02;
const OP_TMF_RESP: u8 = 0x22;

/// Task management function codes (RFC 7143 11.5.1).
pub mod tmf {
    /// ABORT TASK.
    pub const ABORT_TASK: u8 = 1;
    /// LOGICAL UNIT RESET.
    pub const LUN_RESET: u8 = 5;
    /// Response: function complete.
    pub const COMPLETE: u8 = 0;
}

/// The answer to a task management request.
#[derive(Debug, Clone)]
pub struct TmfAnswer {
    /// The TMF response code.
    pub response: u8,
    /// ITTs of the SCSI responses that arrived before it.
    pub completed: Vec<u32>,
}

impl Session {
    /// Sends a write command and all of its data-out (answering R2Ts), and
    /// returns without waiting for its status: (ITT, CmdSN) of the command.
    pub fn start_write(&mut self, lun: u64, cdb: &[u8], data_out: &[u8]) -> io::Result<(u32, u32)> {
        let cmd_sn = self.cmd_sn;
        let itt = self.send_command(lun, cdb, data_out, 0)?;
        let mut sent = self.immediate_len(data_out.len());
        while sent < data_out.len() {
            let r = self.recv()?;
            match r.opcode() {
                OP_R2T => sent += self.answer_r2t(lun, itt, &r, data_out)?,
                OP_ASYNC => {}
                op => {
                    return Err(io::Error::other(format!(
                        "opcode {op:#x} before the write's data was all sent"
                    )))
                }
            }
        }
        Ok((itt, cmd_sn))
    }

    /// Sends an immediate task management request and waits for its
    /// response. `rtt` and `ref_cmd_sn` name the task of an ABORT TASK.
    pub fn task_management(
        &mut self,
        function: u8,
        lun: u64,
        rtt: u32,
        ref_cmd_sn: u32,
    ) -> io::Result<TmfAnswer> {
        let itt = self.next_itt();
        let mut h = [0u8; 48];
        h[0] = 0x40 | OP_TMF;
        h[1] = 0x80 | function;
        h[8..16].copy_from_slice(&lun_bytes(lun));
        put_u32(&mut h, 16, itt);
        put_u32(&mut h, 20, rtt);
        put_u32(&mut h, 24, self.cmd_sn);
        put_u32(&mut h, 28, self.exp_stat_sn);
        put_u32(&mut h, 32, ref_cmd_sn);
        self.send(h, &[])?;
        let mut completed = Vec::new();
        loop {
            let r = self.recv()?;
            match r.opcode() {
                OP_TMF_RESP if r.u32_at(16) == itt => {
                    return Ok(TmfAnswer {
                        response: r.bhs[2],
                        completed,
                    })
                }
                OP_SCSI_RESP => completed.push(r.u32_at(16)),
                OP_DATA_IN | OP_ASYNC | OP_R2T => {}
                op => return Err(io::Error::other(format!("unexpected opcode {op:#x}"))),
            }
        }
    }

    /// Drops the connection with a TCP reset, as a crashing initiator or a
    /// broken network would, without logging out.
    pub fn reset(self) {
        let _ = socket2::SockRef::from(&self.sock).set_linger(Some(Duration::ZERO));
    }
}

// ---- SCSI helpers ------------------------------------------------------------------

pub fn inquiry_vpd(s: &mut Session, lun: u64, page: u8) -> Vec<u8> {
    s.scsi(lun, &[0x12, 0x01, page, 0x01, 0x00, 0], &[], 256)
        .unwrap()
        .good(&format!("INQUIRY VPD {page:#x}"))
}

pub fn write16(
    s: &mut Session,
    lun: u64,
    lba: u64,
    data: &[u8],
    block: usize,
    fua: bool,
) -> ScsiResult {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x8a;
    if fua {
        cdb[1] = 0x08;
    }
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&((data.len() / block) as u32).to_be_bytes());
    s.scsi(lun, &cdb, data, 0).unwrap()
}

pub fn read16(s: &mut Session, lun: u64, lba: u64, blocks: u32, block: usize) -> Vec<u8> {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    s.scsi(lun, &cdb, &[], blocks * block as u32)
        .unwrap()
        .good("READ(16)")
}

pub fn sync_cache10(s: &mut Session, lun: u64) -> ScsiResult {
    s.scsi(lun, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0)
        .unwrap()
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
