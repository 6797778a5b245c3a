//! A real `ScsiTarget` with two logical units over `MemDevice`s, driven by
//! arbitrary sequences of commands from four I_T nexuses (two initiator
//! names, two ISIDs, two target ports), some of them concurrent, with task
//! management functions, logins, logouts, ALUA state changes and LUN 1
//! removed and added back in between.
//!
//! The input is structure-aware (the `arbitrary` crate): besides raw CDBs it
//! builds well-formed PERSISTENT RESERVE OUT (every service action, SPEC_I_PT,
//! ALL_TG_PT, APTPL, TransportIDs of the nexuses or arbitrary text), PR IN,
//! UNMAP, EXTENDED COPY naming the LUs, RECEIVE COPY RESULTS, MODE SELECT(6/10)
//! of the pages MODE SENSE returned, WRITE SAME(10/16) with UNMAP/ANCHOR/NDOB,
//! COMPARE AND WRITE and the reads and writes, then lets byte edits spoil them.
//!
//! Any panic is a failure, and so is a response that breaks one of these
//! invariants: a known status; sense data exactly with CHECK CONDITION, in
//! well-formed fixed format, its CDB field pointer inside the CDB; no data-in
//! unless GOOD or CONDITION MET; data-in never longer than the allocation
//! length (a GOOD read returns exactly its blocks).
#![no_main]

use std::path::PathBuf;
use std::sync::Arc;

use arbitrary::Arbitrary;
use blockdev::{DeviceIdentity, MemDevice};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use scsi_disk::{
    status, AluaState, Command, InitiatorPort, LuConfig, Nexus, PortGroup, Response, ScsiTarget,
    TaskAttr, TmfFunction,
};
use tokio::task::JoinHandle;

/// Reservation keys the nexuses use, so registrations meet each other.
const KEYS: [u64; 4] = [0x1111, 0x2222, 0x3333, 0xdead_beef_0000_0001];
/// Valid persistent reservation types.
const TYPES: [u8; 6] = [1, 3, 5, 6, 7, 8];
/// Mode pages (and "all pages").
const PAGES: [u8; 6] = [0x01, 0x02, 0x08, 0x0A, 0x1C, 0x3F];
/// Every opcode the target implements (raw CDBs pick among these mostly).
const OPCODES: [u8; 49] = [
    0x00, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x16, 0x17, 0x1A, 0x1B, 0x1E, 0x25, 0x28, 0x2A, 0x2E, 0x2F,
    0x34, 0x35, 0x37, 0x41, 0x42, 0x48, 0x55, 0x56, 0x57, 0x5A, 0x5E, 0x5F, 0x83, 0x84, 0x88, 0x89,
    0x8A, 0x8B, 0x8E, 0x8F, 0x90, 0x91, 0x93, 0x9C, 0x9E, 0xA0, 0xA3, 0xA8, 0xAA, 0xAE, 0xAF, 0xB7,
    0x7F,
];
/// Read, write, verify and cache commands built by [`Rw`].
const RW_OPS: [u8; 20] = [
    0x08, 0x0A, 0x28, 0x2A, 0xA8, 0xAA, 0x88, 0x8A, 0x2E, 0xAE, 0x8E, 0x2F, 0xAF, 0x8F, 0x8B, 0x9C,
    0x34, 0x90, 0x35, 0x91,
];
/// Blocks of LUN 0 and LUN 1 (LUN 9 does not exist).
const LUN0_BYTES: u64 = 1 << 20;
const LUN1_BYTES: u64 = 256 << 10;
/// Write data is capped at this many blocks (the CDB may claim more).
const MAX_DATA_BLOCKS: u64 = 64;

#[derive(Arbitrary, Debug)]
struct Input {
    block_4k: bool,
    /// LUs with a state path, so APTPL registrations are persisted.
    aptpl_state: bool,
    /// Two target port groups (relative ports 1 and 2) instead of one.
    two_groups: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    One(Cmd),
    /// Submitted together (their task-set order fixed at submission) and run
    /// concurrently; the task management function comes once they started.
    Batch(Vec<Cmd>, Option<Tmf>),
    Tmf(Tmf),
    ModeEcho(ModeEcho),
    Login(u8),
    Logout(u8),
    PortState(bool, u8),
    /// LUN 1 leaves the target, its commands ended (false), or comes back
    /// on a fresh device (true), as a config reload does.
    Lun1(bool),
}

#[derive(Arbitrary, Debug)]
struct Tmf {
    nexus: u8,
    lun: u8,
    f: TmfKind,
}

#[derive(Arbitrary, Debug)]
enum TmfKind {
    /// Aborts the batch's command with this index (or an unknown tag).
    AbortTask(u8),
    AbortTaskSet,
    ClearTaskSet,
    ClearAca,
    LunReset,
    TargetWarmReset,
    TargetColdReset,
}

#[derive(Arbitrary, Debug)]
struct Cmd {
    nexus: u8,
    lun: u8,
    attr: u8,
    kind: Kind,
    /// Byte edits of the CDB after it is built: (index, new value).
    cdb_edits: Vec<(u8, u8)>,
    /// Byte edits of the data-out: (index, xor).
    data_edits: Vec<(u16, u8)>,
    /// Data-out cut to this length.
    data_cut: Option<u16>,
    /// Expected data-in length of the transport header.
    expected_in: Option<u32>,
}

#[derive(Arbitrary, Debug)]
enum Kind {
    PrOut(PrOut),
    PrIn { sa: u8, alloc: Alloc },
    Unmap(Unmap),
    Xcopy(Xcopy),
    ReceiveCopyResults { sa: u8, list_id: u8, alloc: Alloc },
    WriteSame(WriteSame),
    CompareAndWrite(Caw),
    Rw(Rw),
    Raw(Raw),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Lba {
    Zero,
    Low(u8),
    End(u8),
    Any(u64),
}

impl Lba {
    fn get(self, blocks: u64) -> u64 {
        match self {
            Lba::Zero => 0,
            Lba::Low(x) => u64::from(x) % blocks,
            Lba::End(x) => blocks.saturating_sub(u64::from(x % 32)),
            Lba::Any(x) => x,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Count {
    Small(u8),
    Any(u32),
}

impl Count {
    fn get(self) -> u32 {
        match self {
            Count::Small(x) => u32::from(x % 17),
            Count::Any(x) => x,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Alloc {
    Small(u8),
    Big,
    Any(u32),
}

impl Alloc {
    fn get(self) -> u32 {
        match self {
            Alloc::Small(x) => u32::from(x),
            Alloc::Big => 8192,
            Alloc::Any(x) => x,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Key {
    Zero,
    Known(u8),
    Any(u64),
}

impl Key {
    fn get(self) -> u64 {
        match self {
            Key::Zero => 0,
            Key::Known(i) => KEYS[usize::from(i) % KEYS.len()],
            Key::Any(k) => k,
        }
    }
}

/// The parameter list length field: the true length, or another one.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    True,
    Off(i8),
    Any(u32),
}

impl Len {
    fn get(self, actual: usize) -> u32 {
        match self {
            Len::True => actual as u32,
            Len::Off(d) => (actual as i64 + i64::from(d)).max(0) as u32,
            Len::Any(x) => x,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Tid {
    /// The TransportID of one of the nexuses, port format (with ISID) or not.
    Of {
        nexus: u8,
        port: bool,
        upper: bool,
    },
    /// A nexus' name with an arbitrary ISID text (any Unicode) after ",i,0x".
    Isid {
        nexus: u8,
        isid: String,
    },
    /// A nexus' name and 12 hex digits of which some, from a position on,
    /// are replaced by one character of as many bytes (non-ASCII or not).
    IsidChar {
        nexus: u8,
        isid: [u8; 6],
        at: u8,
        c: char,
    },
    /// Arbitrary text (any Unicode) in a TransportID of either format.
    Text {
        port: bool,
        text: String,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct PrOut {
    sa: u8,
    scope_type: Option<u8>,
    key: Key,
    sa_key: Key,
    /// SPEC_I_PT 0x08, ALL_TG_PT 0x04, APTPL 0x01 (REGISTER AND MOVE: UNREG 0x02, APTPL 0x01).
    flags: u8,
    tids: Vec<Tid>,
    rel_port: u8,
    len: Len,
}

#[derive(Arbitrary, Debug)]
struct Unmap {
    anchor: bool,
    descs: Vec<(Lba, Count)>,
    header: Option<(u16, u16)>,
    len: Len,
}

#[derive(Arbitrary, Debug)]
enum XTarget {
    /// An identification descriptor naming LU n, with its block size or not.
    Lun {
        lun: u8,
        right_bs: bool,
    },
    Raw([u8; 32]),
}

#[derive(Arbitrary, Debug)]
struct XSeg {
    src: u8,
    dst: u8,
    blocks: Count,
    src_lba: Lba,
    dst_lba: Lba,
    kind: Option<u8>,
}

#[derive(Arbitrary, Debug)]
struct Xcopy {
    list_id: u8,
    flags: u8,
    targets: Vec<XTarget>,
    segs: Vec<XSeg>,
    inline: Option<u32>,
    len: Len,
}

#[derive(Arbitrary, Debug)]
struct WriteSame {
    sixteen: bool,
    /// WRPROTECT 0xE0, ANCHOR 0x10, UNMAP 0x08, NDOB 0x01 (16 only).
    flags: u8,
    lba: Lba,
    blocks: Count,
    fill: u8,
}

#[derive(Arbitrary, Debug)]
struct Caw {
    flags: u8,
    lba: Lba,
    blocks: u8,
    verify_fill: u8,
    write_fill: u8,
}

#[derive(Arbitrary, Debug)]
struct Rw {
    op: u8,
    flags: u8,
    lba: Lba,
    blocks: Count,
    fill: u8,
}

#[derive(Arbitrary, Debug)]
struct Raw {
    op: Option<u8>,
    cdb: Vec<u8>,
    data: Vec<u8>,
}

/// MODE SENSE of a page, then MODE SELECT of what came back, edited.
#[derive(Arbitrary, Debug)]
struct ModeEcho {
    nexus: u8,
    ten: bool,
    page: u8,
    flags: u8,
    edits: Vec<(u8, u8)>,
}

/// The fixed world every input runs in.
struct World {
    target: Arc<ScsiTarget>,
    nexuses: Vec<Nexus>,
    logged_in: Vec<bool>,
    bs: u32,
    blocks: [u64; 2],
    naa: [[u8; 16]; 2],
}

fn nexus(i: usize) -> Nexus {
    // Two initiator names; A has two ISIDs on port 1, B one ISID on ports 2 and 1.
    let (name, isid, port) = match i {
        0 => ("iqn.2026-01.fuzz:a", 1, 1),
        1 => ("iqn.2026-01.fuzz:a", 2, 1),
        2 => ("iqn.2026-01.fuzz:b", 1, 2),
        _ => ("iqn.2026-01.fuzz:b", 1, 1),
    };
    Nexus {
        id: i as u64 + 1,
        initiator: InitiatorPort::iscsi(name, [0x80, 0, 0, 0, 0, isid]),
        relative_port: port,
    }
}

/// The iSCSI name and the ISID (hex) of a nexus' initiator port, from its
/// port name `name,i,0x<isid>`.
fn name_and_isid(n: &Nexus) -> (String, String) {
    let port = n.initiator.to_string();
    let (name, isid) = port.split_once(",i,0x").expect("an iSCSI initiator port");
    (name.to_string(), isid.to_string())
}

/// A directory for the LUs' persistent reservation state, in /dev/shm when
/// there is one (fsync there costs nothing). Per process; the directories of
/// processes that are gone are removed on first use.
fn state_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        const PREFIX: &str = "opie-fuzz-scsi-";
        for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = e.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix(PREFIX));
            if pid.is_some_and(|p| !std::path::Path::new("/proc").join(p).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        base.join(format!("{PREFIX}{}", std::process::id()))
    })
    .clone()
}

impl World {
    fn new(inp: &Input) -> World {
        let bs: u32 = if inp.block_4k { 4096 } else { 512 };
        let blocks = [LUN0_BYTES / u64::from(bs), LUN1_BYTES / u64::from(bs)];
        let dir = state_dir();
        let mut luns = Vec::new();
        let mut naa = [[0u8; 16]; 2];
        for (i, &n) in blocks.iter().enumerate() {
            let id = DeviceIdentity::from_name(&format!("fuzz{i}"));
            naa[i] = id.naa6();
            let state_path = inp.aptpl_state.then(|| {
                let _ = std::fs::create_dir_all(&dir);
                let p = dir.join(format!("pr-{i}"));
                let _ = std::fs::remove_file(&p);
                p
            });
            luns.push((
                i as u64,
                LuConfig {
                    device: Arc::new(MemDevice::new(bs, n, id)),
                    read_only: false,
                    state_path,
                },
            ));
        }
        let groups = if inp.two_groups {
            vec![
                PortGroup {
                    id: 1,
                    state: AluaState::ActiveOptimized,
                    relative_ports: vec![1],
                },
                PortGroup {
                    id: 2,
                    state: AluaState::ActiveNonOptimized,
                    relative_ports: vec![2],
                },
            ]
        } else {
            vec![]
        };
        let target = ScsiTarget::new("iqn.2026-01.fuzz:target", luns, groups).expect("target");
        let nexuses: Vec<Nexus> = (0..4).map(nexus).collect();
        for n in &nexuses {
            // Nothing runs yet: no task of an earlier session to wait for.
            let _ = target.nexus_login(n);
        }
        World {
            target,
            nexuses,
            logged_in: vec![true; 4],
            bs,
            blocks,
            naa,
        }
    }

    async fn nexus(&mut self, i: u8) -> usize {
        let i = usize::from(i) % self.nexuses.len();
        if !self.logged_in[i] {
            self.target.nexus_login(&self.nexuses[i]).wait().await;
            self.logged_in[i] = true;
        }
        i
    }

    fn lun(lun: u8) -> u64 {
        match lun % 8 {
            0..=5 => 0,
            6 => 1,
            _ => 9,
        }
    }

    fn blocks_of(&self, lun: u64) -> u64 {
        self.blocks[usize::from(lun == 1)]
    }

    fn transport_id(&self, t: &Tid) -> Vec<u8> {
        let (format, text) = match t {
            Tid::Raw(v) => return v.clone(),
            Tid::Of { nexus, port, upper } => {
                let n = &self.nexuses[usize::from(*nexus) % self.nexuses.len()];
                let (mut s, isid) = name_and_isid(n);
                if *port {
                    s.push_str(",i,0x");
                    s.push_str(&isid);
                }
                if *upper {
                    s = s.to_ascii_uppercase();
                }
                (u8::from(*port), s.into_bytes())
            }
            Tid::Isid { nexus, isid } => {
                let (name, _) =
                    name_and_isid(&self.nexuses[usize::from(*nexus) % self.nexuses.len()]);
                (1, format!("{name},i,0x{isid}").into_bytes())
            }
            Tid::IsidChar { nexus, isid, at, c } => {
                let (name, _) =
                    name_and_isid(&self.nexuses[usize::from(*nexus) % self.nexuses.len()]);
                let mut hex: Vec<char> = isid
                    .iter()
                    .flat_map(|b| format!("{b:02x}").chars().collect::<Vec<_>>())
                    .collect();
                let at = usize::from(*at) % 12;
                let end = (at + c.len_utf8()).min(12);
                hex.splice(at..end, [*c]);
                let hex: String = hex.into_iter().collect();
                (1, format!("{name},i,0x{hex}").into_bytes())
            }
            Tid::Text { port, text } => (u8::from(*port), text.as_bytes().to_vec()),
        };
        let mut name = text;
        name.push(0);
        while name.len() < 20 || name.len() % 4 != 0 {
            name.push(0);
        }
        let mut v = vec![(format << 6) | 0x05, 0];
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(&name);
        v
    }

    /// The CDB (16 bytes unless raw) and data-out of a command.
    fn build(&self, c: &Cmd, lun: u64) -> (Vec<u8>, Vec<u8>) {
        let nb = self.blocks_of(lun);
        let bs = self.bs as usize;
        let mut cdb = vec![0u8; 16];
        let mut data = Vec::new();
        match &c.kind {
            Kind::PrOut(p) => {
                let sa = p.sa % 9;
                cdb[0] = 0x5F;
                cdb[1] = sa;
                cdb[2] = match p.scope_type {
                    None => 0,
                    Some(t) if t < 0xC0 => TYPES[usize::from(t) % TYPES.len()],
                    Some(t) => t,
                };
                data.extend_from_slice(&p.key.get().to_be_bytes());
                data.extend_from_slice(&p.sa_key.get().to_be_bytes());
                let tids: Vec<u8> = p.tids.iter().flat_map(|t| self.transport_id(t)).collect();
                if sa == 7 {
                    data.extend_from_slice(&[0; 8]);
                    data[17] = p.flags & 0x03;
                    data.extend_from_slice(&u16::from(p.rel_port % 4).to_be_bytes());
                    data.extend_from_slice(&(tids.len() as u32).to_be_bytes());
                    data.extend_from_slice(&tids);
                } else {
                    data.extend_from_slice(&[0; 8]);
                    data[20] = p.flags & 0x0d;
                    if p.flags & 0x08 != 0 && !tids.is_empty() {
                        data.extend_from_slice(&(tids.len() as u32).to_be_bytes());
                        data.extend_from_slice(&tids);
                    }
                }
                cdb[5..9].copy_from_slice(&p.len.get(data.len()).to_be_bytes());
            }
            Kind::PrIn { sa, alloc } => {
                cdb[0] = 0x5E;
                cdb[1] = sa % 5;
                cdb[7..9].copy_from_slice(&(alloc.get() as u16).to_be_bytes());
            }
            Kind::Unmap(u) => {
                cdb[0] = 0x42;
                cdb[1] = u8::from(u.anchor);
                let body: Vec<u8> = u
                    .descs
                    .iter()
                    .flat_map(|(l, n)| {
                        let mut d = l.get(nb).to_be_bytes().to_vec();
                        d.extend_from_slice(&n.get().to_be_bytes());
                        d.extend_from_slice(&[0; 4]);
                        d
                    })
                    .collect();
                let (dl, bdl) = u
                    .header
                    .unwrap_or((6 + body.len() as u16, body.len() as u16));
                data.extend_from_slice(&dl.to_be_bytes());
                data.extend_from_slice(&bdl.to_be_bytes());
                data.extend_from_slice(&[0; 4]);
                data.extend_from_slice(&body);
                cdb[7..9].copy_from_slice(&(u.len.get(data.len()) as u16).to_be_bytes());
            }
            Kind::Xcopy(x) => {
                cdb[0] = 0x83;
                let mut tds = Vec::new();
                for t in &x.targets {
                    match t {
                        XTarget::Raw(r) => tds.extend_from_slice(r),
                        XTarget::Lun { lun, right_bs } => {
                            let mut d = [0u8; 32];
                            d[0] = 0xE4;
                            d[4] = 1;
                            d[5] = 3;
                            d[7] = 16;
                            d[8..24].copy_from_slice(&self.naa[usize::from(*lun) % 2]);
                            let b = if *right_bs { self.bs } else { self.bs * 2 };
                            d[28..32].copy_from_slice(&b.to_be_bytes());
                            tds.extend_from_slice(&d);
                        }
                    }
                }
                let mut sds = Vec::new();
                for s in &x.segs {
                    let mut d = [0u8; 28];
                    d[0] = s.kind.unwrap_or(0x02);
                    d[2..4].copy_from_slice(&24u16.to_be_bytes());
                    d[4..6].copy_from_slice(&u16::from(s.src % 4).to_be_bytes());
                    d[6..8].copy_from_slice(&u16::from(s.dst % 4).to_be_bytes());
                    d[10..12].copy_from_slice(&(s.blocks.get() as u16).to_be_bytes());
                    d[12..20].copy_from_slice(&s.src_lba.get(nb).to_be_bytes());
                    d[20..28].copy_from_slice(&s.dst_lba.get(nb).to_be_bytes());
                    sds.extend_from_slice(&d);
                }
                data.push(x.list_id);
                data.push(x.flags);
                data.extend_from_slice(&(tds.len() as u16).to_be_bytes());
                data.extend_from_slice(&[0; 4]);
                data.extend_from_slice(&(sds.len() as u32).to_be_bytes());
                data.extend_from_slice(&x.inline.unwrap_or(0).to_be_bytes());
                data.extend_from_slice(&tds);
                data.extend_from_slice(&sds);
                cdb[10..14].copy_from_slice(&x.len.get(data.len()).to_be_bytes());
            }
            Kind::ReceiveCopyResults { sa, list_id, alloc } => {
                cdb[0] = 0x84;
                cdb[1] = sa % 5;
                cdb[2] = *list_id;
                cdb[10..14].copy_from_slice(&alloc.get().to_be_bytes());
            }
            Kind::WriteSame(w) => {
                let n = w.blocks.get();
                let lba = w.lba.get(nb);
                if w.sixteen {
                    cdb[0] = 0x93;
                    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
                    cdb[10..14].copy_from_slice(&n.to_be_bytes());
                } else {
                    cdb[0] = 0x41;
                    cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
                    cdb[7..9].copy_from_slice(&(n as u16).to_be_bytes());
                }
                cdb[1] = w.flags;
                if !(w.sixteen && w.flags & 0x01 != 0) {
                    data = vec![w.fill; bs];
                }
            }
            Kind::CompareAndWrite(cw) => {
                let n = usize::from(cw.blocks % 4);
                cdb[0] = 0x89;
                cdb[1] = cw.flags;
                cdb[2..10].copy_from_slice(&cw.lba.get(nb).to_be_bytes());
                cdb[13] = n as u8;
                data = vec![cw.verify_fill; n * bs];
                data.extend(std::iter::repeat_n(cw.write_fill, n * bs));
            }
            Kind::Rw(r) => {
                let op = RW_OPS[usize::from(r.op) % RW_OPS.len()];
                let lba = r.lba.get(nb);
                let n = r.blocks.get();
                cdb[0] = op;
                cdb[1] = r.flags;
                match op >> 5 {
                    0 => {
                        cdb[1] = ((lba >> 16) & 0x1f) as u8;
                        cdb[2] = (lba >> 8) as u8;
                        cdb[3] = lba as u8;
                        cdb[4] = n as u8;
                    }
                    1 => {
                        cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
                        cdb[7..9].copy_from_slice(&(n as u16).to_be_bytes());
                    }
                    5 => {
                        cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
                        cdb[6..10].copy_from_slice(&n.to_be_bytes());
                    }
                    _ => {
                        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
                        cdb[10..14].copy_from_slice(&n.to_be_bytes());
                    }
                }
                if matches!(
                    op,
                    0x0A | 0x2A | 0xAA | 0x8A | 0x2E | 0xAE | 0x8E | 0x8B | 0x9C
                ) {
                    let n = match op {
                        0x0A if n % 256 == 0 => 256,
                        0x0A => u64::from(n % 256),
                        _ => u64::from(n),
                    };
                    data = vec![r.fill; (n.min(MAX_DATA_BLOCKS) as usize) * bs];
                }
            }
            Kind::Raw(r) => {
                cdb = r.cdb.clone();
                cdb.truncate(32);
                if let Some(op) = r.op {
                    if cdb.is_empty() {
                        cdb.push(0);
                    }
                    cdb[0] = OPCODES[usize::from(op) % OPCODES.len()];
                    if cdb.len() < 16 {
                        cdb.resize(16, 0);
                    }
                }
                data = r.data.clone();
            }
        }
        for &(i, v) in &c.cdb_edits {
            if let Some(b) = cdb.get_mut(usize::from(i) % 16) {
                *b = v;
            }
        }
        if !data.is_empty() {
            for &(i, x) in &c.data_edits {
                let n = data.len();
                data[usize::from(i) % n] ^= x;
            }
        }
        if let Some(cut) = c.data_cut {
            data.truncate(usize::from(cut));
        }
        (cdb, data)
    }

    fn command(&self, c: &Cmd, lun: u64, tag: u32) -> Command {
        let (cdb, data) = self.build(c, lun);
        Command {
            lun,
            expected_in: c.expected_in.unwrap_or(1 << 20),
            cdb: Bytes::from(cdb),
            data_out: Bytes::from(data),
            tag,
            attr: match c.attr % 8 {
                0..=4 => TaskAttr::Simple,
                5 => TaskAttr::Ordered,
                6 => TaskAttr::HeadOfQueue,
                _ => TaskAttr::Aca,
            },
            data_in_from_file: false,
        }
    }
}

/// Length of the CDB that the opcode's group code defines.
fn cdb_len(cdb: &[u8]) -> usize {
    match cdb.first().map(|op| op >> 5) {
        Some(0) => 6,
        Some(1 | 2) => 10,
        Some(4) => 16,
        Some(5) => 12,
        // Reserved and vendor groups; an empty CDB is refused pointing at byte 0.
        _ => cdb.len().max(1),
    }
}

/// The most data-in a command may return, by its CDB.
fn max_data_in(cdb: &[u8], bs: u32) -> usize {
    let b = |i: usize| usize::from(cdb.get(i).copied().unwrap_or(0));
    let be16 = |i: usize| b(i) << 8 | b(i + 1);
    let be32 = |i: usize| be16(i) << 16 | be16(i + 2);
    let bs = bs as usize;
    match cdb.first().copied().unwrap_or(0) {
        0x03 | 0x1A => b(4),
        0x08 => (if b(4) == 0 { 256 } else { b(4) }) * bs,
        0x12 => be16(3),
        0x25 => 8,
        0x28 => be16(7) * bs,
        0x37 | 0x5A | 0x5E => be16(7),
        0x84 | 0x9E => be32(10),
        0x88 => be32(10) * bs,
        0xA0 | 0xA3 | 0xB7 => be32(6),
        0xA8 => be32(6) * bs,
        _ => 0,
    }
}

/// Outcomes per (opcode, status), printed to stderr every 100,000 commands
/// when `SCSI_FUZZ_STATS` is set: shows which commands the generator gets
/// past their checks.
fn record(cdb: &[u8], status: u8) {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    static STATS: Mutex<Option<(u64, BTreeMap<(u8, u8), u64>)>> = Mutex::new(None);
    if std::env::var_os("SCSI_FUZZ_STATS").is_none() {
        return;
    }
    let mut g = STATS.lock().unwrap_or_else(|e| e.into_inner());
    let (n, m) = g.get_or_insert_with(Default::default);
    *n += 1;
    *m.entry((cdb.first().copied().unwrap_or(0), status))
        .or_default() += 1;
    if *n % 100_000 == 0 {
        let line: Vec<String> = m
            .iter()
            .map(|((op, st), c)| format!("{op:02x}/{st:02x}:{c}"))
            .collect();
        eprintln!("scsi stats after {n}: {}", line.join(" "));
    }
}

/// The invariants every response keeps.
fn check(cmd: &Command, r: &Response, bs: u32) {
    let cdb = &cmd.cdb[..];
    record(cdb, r.status);
    let ok = matches!(
        r.status,
        status::GOOD
            | status::CHECK_CONDITION
            | status::CONDITION_MET
            | status::BUSY
            | status::RESERVATION_CONFLICT
            | status::TASK_SET_FULL
            | status::TASK_ABORTED
    );
    assert!(ok, "status {:#x} for {cdb:02x?}", r.status);
    assert_eq!(
        r.sense.is_some(),
        r.status == status::CHECK_CONDITION,
        "sense without CHECK CONDITION or the reverse: {cdb:02x?} {r:?}"
    );
    if let Some(s) = &r.sense {
        assert_eq!(s.len(), 18, "sense length {cdb:02x?} {s:02x?}");
        assert_eq!(s[0] & 0x7f, 0x70, "sense response code {cdb:02x?} {s:02x?}");
        assert_eq!(s[7], 10, "additional sense length {cdb:02x?} {s:02x?}");
        assert!(
            matches!(s[2] & 0x0f, 1..=0x0e),
            "sense key {cdb:02x?} {s:02x?}"
        );
        assert_eq!(s[2] & 0xf0, 0, "sense byte 2 {cdb:02x?} {s:02x?}");
        if s[15] & 0xC0 == 0xC0 {
            let at = usize::from(u16::from_be_bytes([s[16], s[17]]));
            assert!(
                at < cdb_len(cdb),
                "CDB field pointer {at} past {cdb:02x?}: {s:02x?}"
            );
        }
    }
    let n = r.data_in_len();
    if !matches!(r.status, status::GOOD | status::CONDITION_MET) {
        assert_eq!(n, 0, "data-in with status {:#x}: {cdb:02x?}", r.status);
    }
    let max = max_data_in(cdb, bs);
    assert!(
        n <= max,
        "{n} bytes of data-in, allocation {max}: {cdb:02x?}"
    );
    if r.status == status::GOOD && matches!(cdb[0], 0x08 | 0x28 | 0x88 | 0xA8) {
        assert_eq!(n, max, "a GOOD read returns its blocks: {cdb:02x?}");
    }
}

struct Running {
    nexus: usize,
    lun: u64,
    tag: u32,
    cmd: Command,
    h: JoinHandle<Response>,
}

async fn finish(w: &World, tasks: Vec<Running>) {
    for t in tasks {
        match t.h.await {
            Ok(r) => check(&t.cmd, &r, w.bs),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {} // aborted by the transport
        }
    }
}

async fn spawn(w: &mut World, c: &Cmd, tag: u32) -> Running {
    let i = w.nexus(c.nexus).await;
    let lun = World::lun(c.lun);
    let cmd = w.command(c, lun, tag);
    let h = tokio::spawn(w.target.submit(&w.nexuses[i], cmd.clone()));
    Running {
        nexus: i,
        lun,
        tag,
        cmd,
        h,
    }
}

/// A task management function, with the futures of the tasks it aborts of
/// its own nexus dropped first (the target must run a started task to its
/// end anyway and answer the function only once it has).
async fn tmf(w: &mut World, t: &Tmf, running: &mut Vec<Running>) {
    let i = w.nexus(t.nexus).await;
    let lun = World::lun(t.lun);
    let f = match t.f {
        TmfKind::AbortTask(k) => TmfFunction::AbortTask { tag: u32::from(k) },
        TmfKind::AbortTaskSet => TmfFunction::AbortTaskSet,
        TmfKind::ClearTaskSet => TmfFunction::ClearTaskSet,
        TmfKind::ClearAca => TmfFunction::ClearAca,
        TmfKind::LunReset => TmfFunction::LunReset,
        TmfKind::TargetWarmReset => TmfFunction::TargetWarmReset,
        TmfKind::TargetColdReset => TmfFunction::TargetColdReset,
    };
    for r in running.iter() {
        let mine = r.nexus == i;
        let hit = match f {
            TmfFunction::AbortTask { tag } => mine && r.tag == tag && r.lun == lun,
            TmfFunction::ClearAca => false,
            TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => mine,
            _ => mine && r.lun == lun,
        };
        if hit {
            r.h.abort();
        }
    }
    let _ = w.target.task_management(&w.nexuses[i], lun, f).await;
}

async fn run(inp: Input) {
    let mut w = World::new(&inp);
    for op in inp.ops.iter().take(48) {
        match op {
            Op::One(c) => {
                let t = spawn(&mut w, c, 0).await;
                finish(&w, vec![t]).await;
            }
            Op::Batch(cmds, t) => {
                let mut running = Vec::new();
                for (k, c) in cmds.iter().take(8).enumerate() {
                    running.push(spawn(&mut w, c, k as u32).await);
                }
                if let Some(t) = t {
                    for _ in 0..cmds.len() % 4 {
                        tokio::task::yield_now().await;
                    }
                    tmf(&mut w, t, &mut running).await;
                }
                finish(&w, running).await;
            }
            Op::Tmf(t) => tmf(&mut w, t, &mut Vec::new()).await,
            Op::ModeEcho(m) => {
                let i = w.nexus(m.nexus).await;
                let page = PAGES[usize::from(m.page) % PAGES.len()];
                let mut sense = vec![0u8; 16];
                if m.ten {
                    sense[0] = 0x5A;
                    sense[1] = m.flags & 0x18; // LLBAA, DBD
                    sense[7..9].copy_from_slice(&4096u16.to_be_bytes());
                } else {
                    sense[0] = 0x1A;
                    sense[1] = m.flags & 0x08; // DBD
                    sense[4] = 255;
                }
                sense[2] = page;
                let c = Command {
                    lun: 0,
                    cdb: Bytes::from(sense),
                    data_out: Bytes::new(),
                    expected_in: 4096,
                    tag: 0,
                    attr: TaskAttr::Simple,
                    data_in_from_file: false,
                };
                let r = w.target.submit(&w.nexuses[i], c.clone()).await;
                check(&c, &r, w.bs);
                let mut data = r.data_in.to_vec();
                let hdr = if m.ten { 2 } else { 1 };
                for b in data.iter_mut().take(hdr) {
                    *b = 0; // MODE DATA LENGTH is reserved in MODE SELECT
                }
                for &(k, v) in &m.edits {
                    if !data.is_empty() {
                        let n = data.len();
                        data[usize::from(k) % n] = v;
                    }
                }
                let mut sel = vec![0u8; 16];
                // PF always, SP from the flags.
                sel[1] = 0x10 | (m.flags & 0x01);
                if m.ten {
                    sel[0] = 0x55;
                    sel[7..9].copy_from_slice(&(data.len() as u16).to_be_bytes());
                } else {
                    sel[0] = 0x15;
                    sel[4] = data.len() as u8;
                }
                let c = Command {
                    cdb: Bytes::from(sel),
                    data_out: Bytes::from(data),
                    ..c
                };
                let r = w.target.submit(&w.nexuses[i], c.clone()).await;
                check(&c, &r, w.bs);
            }
            Op::Login(i) => {
                let i = usize::from(*i) % w.nexuses.len();
                w.target.nexus_login(&w.nexuses[i]).wait().await;
                w.logged_in[i] = true;
            }
            Op::Logout(i) => {
                let i = usize::from(*i) % w.nexuses.len();
                w.target.nexus_logout(&w.nexuses[i]);
                w.logged_in[i] = false;
            }
            Op::PortState(second, s) => {
                let state = match s % 6 {
                    0 => AluaState::ActiveOptimized,
                    1 => AluaState::ActiveNonOptimized,
                    2 => AluaState::Standby,
                    3 => AluaState::Unavailable,
                    4 => AluaState::Transitioning,
                    _ => AluaState::Offline,
                };
                let _ = w.target.set_port_group_state(1 + u16::from(*second), state);
            }
            Op::Lun1(true) => {
                let id = DeviceIdentity::from_name("fuzz1");
                let cfg = LuConfig {
                    device: Arc::new(MemDevice::new(w.bs, w.blocks[1], id)),
                    read_only: false,
                    state_path: None,
                };
                // Already there: refused, nothing changes.
                let _ = w.target.add_lun(1, cfg);
            }
            Op::Lun1(false) => {
                if let Some(removed) = w.target.remove_lun(1) {
                    removed.wait().await;
                }
            }
        }
    }
}

fuzz_target!(|inp: Input| {
    // Paused time: a paced SANITIZE runs as fast as the runtime goes idle.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(run(inp));
});
