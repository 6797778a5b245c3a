//! Wire format of AoE r11: the common header and the arguments of the four
//! commands (ATA, Query Config, MAC Mask List, Reserve/Release).
//!
//! The Ethernet header is handled by `etherparse`; everything after it is ours.
//! Parsing never panics: every read is bounds-checked and a short buffer is a
//! [`FrameError::Truncated`].

use std::fmt;
use std::str::FromStr;

use etherparse::{EtherType, Ethernet2Header};

/// EtherType of AoE.
pub const ETHERTYPE_AOE: u16 = 0x88A2;
/// The protocol version this crate speaks (and the only one r11 defines).
pub const AOE_VERSION: u8 = 1;
/// Length of the Ethernet II header.
pub const ETH_HEADER_LEN: usize = 14;
/// Length of the AoE header after the Ethernet header.
pub const AOE_HEADER_LEN: usize = 10;
/// Length of the ATA command argument.
pub const ATA_ARG_LEN: usize = 12;
/// Bytes in front of ATA data in a frame: Ethernet + AoE header + ATA argument.
pub const ATA_DATA_OFFSET: usize = ETH_HEADER_LEN + AOE_HEADER_LEN + ATA_ARG_LEN;
/// Length of the fixed part of the Query Config argument.
pub const CONFIG_ARG_LEN: usize = 8;
/// Longest config string r11 allows.
pub const MAX_CONFIG_STRING: usize = 1024;
/// Shelf number addressing every shelf.
pub const BROADCAST_SHELF: u16 = 0xFFFF;
/// Slot number addressing every slot.
pub const BROADCAST_SLOT: u8 = 0xFF;
/// ATA sector size; AoE always counts in 512-byte sectors.
pub const SECTOR_SIZE: usize = 512;
/// Shortest Ethernet frame (without FCS); shorter replies are zero-padded.
pub const MIN_FRAME_LEN: usize = 60;

/// Header flag: this frame is a response.
pub const FLAG_RESPONSE: u8 = 0x8;
/// Header flag: the response reports an error (the error byte says which).
pub const FLAG_ERROR: u8 = 0x4;

/// ATA argument flag: 48-bit LBA (extended) command.
pub const AFLAG_EXTENDED: u8 = 0x40;
/// ATA argument flag: the device/head register bit.
pub const AFLAG_DEVICE: u8 = 0x10;
/// ATA argument flag: asynchronous write (the target may answer before writing).
pub const AFLAG_ASYNC: u8 = 0x02;
/// ATA argument flag: the command carries data to write.
pub const AFLAG_WRITE: u8 = 0x01;

/// Errors while decoding a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The buffer ended before the named part was complete.
    #[error("frame truncated in {0}")]
    Truncated(&'static str),
    /// The Ethernet frame does not carry AoE.
    #[error("not an AoE frame (ethertype {0:#06x})")]
    NotAoe(u16),
    /// A field holds a value the protocol does not allow.
    #[error("bad {0}")]
    Bad(&'static str),
}

/// AoE error codes (r11 section 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AoeErrorCode {
    /// Unrecognized command code.
    UnrecognizedCommand = 1,
    /// Bad argument parameter.
    BadArgument = 2,
    /// Device unavailable.
    DeviceUnavailable = 3,
    /// Config string present (set-if-empty refused).
    ConfigStringPresent = 4,
    /// Unsupported version.
    UnsupportedVersion = 5,
    /// The target is reserved by another initiator.
    TargetReserved = 6,
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Whether this is a group address (broadcast or multicast: the
    /// individual/group bit, the low bit of the first octet, is set). No
    /// station sends from one.
    pub fn is_group(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = FrameError;
    /// Parses `aa:bb:cc:dd:ee:ff` (also with `-` separators, or 12 bare hex digits).
    fn from_str(s: &str) -> Result<Self, FrameError> {
        let hex: String = s
            .trim()
            .chars()
            .filter(|c| *c != ':' && *c != '-')
            .collect();
        if hex.len() != 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FrameError::Bad("MAC address"));
        }
        let mut m = [0u8; 6];
        for (i, b) in m.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| FrameError::Bad("MAC address"))?;
        }
        Ok(Mac(m))
    }
}

/// The AoE command carried by a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// 0: issue an ATA command.
    Ata,
    /// 1: Query Config Information.
    QueryConfig,
    /// 2: MAC Mask List.
    MacMask,
    /// 3: Reserve/Release.
    ReserveRelease,
    /// Any other command code.
    Other(u8),
}

impl From<u8> for Command {
    fn from(c: u8) -> Self {
        match c {
            0 => Command::Ata,
            1 => Command::QueryConfig,
            2 => Command::MacMask,
            3 => Command::ReserveRelease,
            x => Command::Other(x),
        }
    }
}

impl From<Command> for u8 {
    fn from(c: Command) -> u8 {
        match c {
            Command::Ata => 0,
            Command::QueryConfig => 1,
            Command::MacMask => 2,
            Command::ReserveRelease => 3,
            Command::Other(x) => x,
        }
    }
}

/// The AoE header (the 10 bytes after the Ethernet header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Protocol version (high nibble of the first byte).
    pub version: u8,
    /// Flags (low nibble): [`FLAG_RESPONSE`], [`FLAG_ERROR`].
    pub flags: u8,
    /// Error code, meaningful with [`FLAG_ERROR`].
    pub error: u8,
    /// Shelf (major) address.
    pub shelf: u16,
    /// Slot (minor) address.
    pub slot: u8,
    /// Command.
    pub command: Command,
    /// Tag chosen by the initiator, echoed verbatim.
    pub tag: u32,
}

impl Header {
    /// Decodes the header from the start of `b`.
    pub fn decode(b: &[u8]) -> Result<Header, FrameError> {
        let b: &[u8; AOE_HEADER_LEN] = b
            .get(..AOE_HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(FrameError::Truncated("AoE header"))?;
        Ok(Header {
            version: b[0] >> 4,
            flags: b[0] & 0x0f,
            error: b[1],
            shelf: u16::from_be_bytes([b[2], b[3]]),
            slot: b[4],
            command: Command::from(b[5]),
            tag: u32::from_be_bytes([b[6], b[7], b[8], b[9]]),
        })
    }

    /// Appends the encoded header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push((self.version << 4) | (self.flags & 0x0f));
        out.push(self.error);
        out.extend_from_slice(&self.shelf.to_be_bytes());
        out.push(self.slot);
        out.push(u8::from(self.command));
        out.extend_from_slice(&self.tag.to_be_bytes());
    }

    /// Whether the response flag is set.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// The header of a successful response to this request.
    pub fn response(&self) -> Header {
        Header {
            version: AOE_VERSION,
            flags: FLAG_RESPONSE,
            error: 0,
            ..*self
        }
    }

    /// The header of an error response to this request.
    pub fn error_response(&self, code: AoeErrorCode) -> Header {
        Header {
            version: AOE_VERSION,
            flags: FLAG_RESPONSE | FLAG_ERROR,
            error: code as u8,
            ..*self
        }
    }
}

/// A decoded AoE frame borrowing its payload (the command argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Destination MAC.
    pub dst: Mac,
    /// Source MAC.
    pub src: Mac,
    /// AoE header.
    pub header: Header,
    /// Everything after the AoE header.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Decodes an Ethernet frame (without FCS) carrying AoE.
    pub fn decode(buf: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let (eth, rest) = Ethernet2Header::from_slice(buf)
            .map_err(|_| FrameError::Truncated("Ethernet header"))?;
        if eth.ether_type != EtherType(ETHERTYPE_AOE) {
            return Err(FrameError::NotAoe(eth.ether_type.0));
        }
        let header = Header::decode(rest)?;
        Ok(Frame {
            dst: Mac(eth.destination),
            src: Mac(eth.source),
            header,
            payload: &rest[AOE_HEADER_LEN..],
        })
    }
}

/// Starts a frame: Ethernet header plus AoE header, appended to `out`.
pub fn encode_headers(out: &mut Vec<u8>, dst: Mac, src: Mac, header: &Header) {
    let eth = Ethernet2Header {
        destination: dst.0,
        source: src.0,
        ether_type: EtherType(ETHERTYPE_AOE),
    };
    out.extend_from_slice(&eth.to_bytes());
    header.encode(out);
}

/// Most sectors one ATA frame carries on a link with this MTU (the bytes
/// after the Ethernet header): the data plus the AoE header and the ATA
/// argument must fit.
pub fn max_sectors_in(mtu: usize) -> u8 {
    let room = mtu.saturating_sub(AOE_HEADER_LEN + ATA_ARG_LEN) / SECTOR_SIZE;
    room.min(255) as u8
}

/// Zero-pads `out` to the Ethernet minimum frame length.
pub fn pad_min(out: &mut Vec<u8>) {
    if out.len() < MIN_FRAME_LEN {
        out.resize(MIN_FRAME_LEN, 0);
    }
}

/// The ATA command argument (12 bytes), in requests and responses alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AtaArg {
    /// AoE ATA flags: [`AFLAG_EXTENDED`], [`AFLAG_DEVICE`], [`AFLAG_ASYNC`], [`AFLAG_WRITE`].
    pub aflags: u8,
    /// Feature register (request) / error register (response).
    pub err_feature: u8,
    /// Sector count register.
    pub sector_count: u8,
    /// Command register (request) / status register (response).
    pub cmd_status: u8,
    /// LBA registers 0..5 (low byte first).
    pub lba: [u8; 6],
}

impl AtaArg {
    /// Decodes the argument at the start of `b`; returns it and the data after it.
    pub fn decode(b: &[u8]) -> Result<(AtaArg, &[u8]), FrameError> {
        let a = b
            .get(..ATA_ARG_LEN)
            .ok_or(FrameError::Truncated("ATA argument"))?;
        let mut lba = [0u8; 6];
        lba.copy_from_slice(&a[4..10]);
        Ok((
            AtaArg {
                aflags: a[0],
                err_feature: a[1],
                sector_count: a[2],
                cmd_status: a[3],
                lba,
            },
            &b[ATA_ARG_LEN..],
        ))
    }

    /// Appends the encoded argument to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[
            self.aflags,
            self.err_feature,
            self.sector_count,
            self.cmd_status,
        ]);
        out.extend_from_slice(&self.lba);
        out.extend_from_slice(&[0, 0]);
    }

    /// The LBA, 48-bit with [`AFLAG_EXTENDED`], else 28-bit.
    pub fn lba(&self) -> u64 {
        let l = &self.lba;
        if self.aflags & AFLAG_EXTENDED != 0 {
            u64::from_le_bytes([l[0], l[1], l[2], l[3], l[4], l[5], 0, 0])
        } else {
            u64::from_le_bytes([l[0], l[1], l[2], l[3] & 0x0f, 0, 0, 0, 0])
        }
    }

    /// Sets the LBA registers from `lba` (48-bit; also fine for 28-bit commands).
    pub fn set_lba(&mut self, lba: u64) {
        self.lba.copy_from_slice(&lba.to_le_bytes()[..6]);
    }
}

/// Query Config sub-commands (`ccmd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigCommand {
    /// 0: read the config string.
    Read,
    /// 1: answer only if the string matches exactly.
    TestExact,
    /// 2: answer only if the string is a prefix of the config string.
    TestPrefix,
    /// 3: set the string if none is set.
    SetIfEmpty,
    /// 4: set the string unconditionally.
    ForceSet,
    /// Anything else.
    Other(u8),
}

impl From<u8> for ConfigCommand {
    fn from(c: u8) -> Self {
        match c {
            0 => ConfigCommand::Read,
            1 => ConfigCommand::TestExact,
            2 => ConfigCommand::TestPrefix,
            3 => ConfigCommand::SetIfEmpty,
            4 => ConfigCommand::ForceSet,
            x => ConfigCommand::Other(x),
        }
    }
}

impl From<ConfigCommand> for u8 {
    fn from(c: ConfigCommand) -> u8 {
        match c {
            ConfigCommand::Read => 0,
            ConfigCommand::TestExact => 1,
            ConfigCommand::TestPrefix => 2,
            ConfigCommand::SetIfEmpty => 3,
            ConfigCommand::ForceSet => 4,
            ConfigCommand::Other(x) => x,
        }
    }
}

/// The Query Config argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigArg {
    /// Frames the target can queue (responses) / 0 (requests).
    pub buffer_count: u16,
    /// Target firmware version (responses).
    pub firmware: u16,
    /// Most sectors one ATA command may carry (responses).
    pub max_sectors: u8,
    /// AoE version of the target (responses).
    pub aoe_version: u8,
    /// Sub-command.
    pub ccmd: ConfigCommand,
    /// Config string (at most [`MAX_CONFIG_STRING`] bytes).
    pub config: Vec<u8>,
}

impl ConfigArg {
    /// Decodes the argument. The string length must fit the frame and r11's limit.
    pub fn decode(b: &[u8]) -> Result<ConfigArg, FrameError> {
        let a = b
            .get(..CONFIG_ARG_LEN)
            .ok_or(FrameError::Truncated("Query Config argument"))?;
        let len = usize::from(u16::from_be_bytes([a[6], a[7]]));
        if len > MAX_CONFIG_STRING {
            return Err(FrameError::Bad("config string length"));
        }
        let config = b
            .get(CONFIG_ARG_LEN..CONFIG_ARG_LEN + len)
            .ok_or(FrameError::Truncated("config string"))?
            .to_vec();
        Ok(ConfigArg {
            buffer_count: u16::from_be_bytes([a[0], a[1]]),
            firmware: u16::from_be_bytes([a[2], a[3]]),
            max_sectors: a[4],
            aoe_version: a[5] >> 4,
            ccmd: ConfigCommand::from(a[5] & 0x0f),
            config,
        })
    }

    /// Appends the encoded argument to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.buffer_count.to_be_bytes());
        out.extend_from_slice(&self.firmware.to_be_bytes());
        out.push(self.max_sectors);
        out.push((self.aoe_version << 4) | (u8::from(self.ccmd) & 0x0f));
        let len = self.config.len().min(MAX_CONFIG_STRING);
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&self.config[..len]);
    }
}

/// MAC Mask List sub-command: read the list.
pub const MASK_READ: u8 = 0;
/// MAC Mask List sub-command: edit the list with directives.
pub const MASK_EDIT: u8 = 1;
/// Directive: no operation.
pub const DIRECTIVE_NOP: u8 = 0;
/// Directive: add the MAC.
pub const DIRECTIVE_ADD: u8 = 1;
/// Directive: delete the MAC.
pub const DIRECTIVE_DELETE: u8 = 2;
/// Mask error: unspecified.
pub const MASK_ERR_UNSPECIFIED: u8 = 1;
/// Mask error: bad directive command.
pub const MASK_ERR_BAD_DIRECTIVE: u8 = 2;
/// Mask error: the list is full.
pub const MASK_ERR_FULL: u8 = 3;

/// One MAC Mask List directive (8 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Directive {
    /// Directive command: [`DIRECTIVE_NOP`], [`DIRECTIVE_ADD`], [`DIRECTIVE_DELETE`].
    pub dcmd: u8,
    /// The MAC it applies to.
    pub mac: Mac,
}

/// The MAC Mask List argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskArg {
    /// [`MASK_READ`] or [`MASK_EDIT`].
    pub mcmd: u8,
    /// Error in responses (0 = none).
    pub merror: u8,
    /// Directives (requests) or the list (responses).
    pub directives: Vec<Directive>,
}

impl MaskArg {
    /// Decodes the argument; the directive count must match the bytes present.
    pub fn decode(b: &[u8]) -> Result<MaskArg, FrameError> {
        let a = b
            .get(..4)
            .ok_or(FrameError::Truncated("MAC Mask List argument"))?;
        let count = usize::from(a[3]);
        let body = b
            .get(4..4 + 8 * count)
            .ok_or(FrameError::Truncated("MAC Mask List directives"))?;
        let directives = body
            .chunks_exact(8)
            .map(|d| {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&d[2..8]);
                Directive {
                    dcmd: d[1],
                    mac: Mac(mac),
                }
            })
            .collect();
        Ok(MaskArg {
            mcmd: a[1],
            merror: a[2],
            directives,
        })
    }

    /// Appends the encoded argument to `out` (at most 255 directives).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let n = self.directives.len().min(255);
        out.extend_from_slice(&[0, self.mcmd, self.merror, n as u8]);
        for d in &self.directives[..n] {
            out.extend_from_slice(&[0, d.dcmd]);
            out.extend_from_slice(&d.mac.0);
        }
    }
}

/// Reserve/Release sub-command: read the reservation list.
pub const RESERVE_READ: u8 = 0;
/// Reserve/Release sub-command: set the list (only by a holder or when free).
pub const RESERVE_SET: u8 = 1;
/// Reserve/Release sub-command: set the list unconditionally.
pub const RESERVE_FORCE: u8 = 2;

/// The Reserve/Release argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveArg {
    /// [`RESERVE_READ`], [`RESERVE_SET`] or [`RESERVE_FORCE`].
    pub rcmd: u8,
    /// The MACs.
    pub macs: Vec<Mac>,
}

impl ReserveArg {
    /// Decodes the argument; the MAC count must match the bytes present.
    pub fn decode(b: &[u8]) -> Result<ReserveArg, FrameError> {
        let a = b
            .get(..2)
            .ok_or(FrameError::Truncated("Reserve/Release argument"))?;
        let count = usize::from(a[1]);
        let body = b
            .get(2..2 + 6 * count)
            .ok_or(FrameError::Truncated("Reserve/Release MAC list"))?;
        let macs = body
            .chunks_exact(6)
            .map(|m| {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(m);
                Mac(mac)
            })
            .collect();
        Ok(ReserveArg { rcmd: a[0], macs })
    }

    /// Appends the encoded argument to `out` (at most 255 MACs).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let n = self.macs.len().min(255);
        out.extend_from_slice(&[self.rcmd, n as u8]);
        for m in &self.macs[..n] {
            out.extend_from_slice(&m.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_with(payload: &[u8], header: Header) -> Vec<u8> {
        let mut v = Vec::new();
        encode_headers(&mut v, Mac([1; 6]), Mac([2; 6]), &header);
        v.extend_from_slice(payload);
        v
    }

    fn any_header() -> impl Strategy<Value = Header> {
        (
            0u8..16,
            0u8..16,
            any::<u8>(),
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
            any::<u32>(),
        )
            .prop_map(|(version, flags, error, shelf, slot, cmd, tag)| Header {
                version,
                flags,
                error,
                shelf,
                slot,
                command: Command::from(cmd),
                tag,
            })
    }

    proptest! {
        #[test]
        fn header_round_trips(h in any_header(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let buf = frame_with(&payload, h);
            let f = Frame::decode(&buf).unwrap();
            prop_assert_eq!(f.header, h);
            prop_assert_eq!(f.payload, &payload[..]);
            prop_assert_eq!(f.dst, Mac([1; 6]));
            prop_assert_eq!(f.src, Mac([2; 6]));
        }

        #[test]
        fn ata_arg_round_trips(aflags in any::<u8>(), f in any::<u8>(), n in any::<u8>(), c in any::<u8>(), lba in 0u64..(1 << 48)) {
            let mut a = AtaArg { aflags: aflags | AFLAG_EXTENDED, err_feature: f, sector_count: n, cmd_status: c, lba: [0; 6] };
            a.set_lba(lba);
            let mut v = Vec::new();
            a.encode(&mut v);
            prop_assert_eq!(v.len(), ATA_ARG_LEN);
            let (b, rest) = AtaArg::decode(&v).unwrap();
            prop_assert_eq!(b, a);
            prop_assert_eq!(b.lba(), lba);
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn config_arg_round_trips(bc in any::<u16>(), fw in any::<u16>(), ms in any::<u8>(), cc in 0u8..16, s in proptest::collection::vec(any::<u8>(), 0..=MAX_CONFIG_STRING)) {
            let a = ConfigArg { buffer_count: bc, firmware: fw, max_sectors: ms, aoe_version: 1, ccmd: ConfigCommand::from(cc), config: s };
            let mut v = Vec::new();
            a.encode(&mut v);
            prop_assert_eq!(ConfigArg::decode(&v).unwrap(), a);
        }

        #[test]
        fn mask_and_reserve_round_trip(macs in proptest::collection::vec(any::<[u8; 6]>(), 0..40), cmd in 0u8..3) {
            let m = MaskArg { mcmd: 1, merror: 0, directives: macs.iter().map(|m| Directive { dcmd: cmd, mac: Mac(*m) }).collect() };
            let mut v = Vec::new();
            m.encode(&mut v);
            prop_assert_eq!(MaskArg::decode(&v).unwrap(), m);
            let r = ReserveArg { rcmd: cmd, macs: macs.iter().map(|m| Mac(*m)).collect() };
            let mut v = Vec::new();
            r.encode(&mut v);
            prop_assert_eq!(ReserveArg::decode(&v).unwrap(), r);
        }

        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Frame::decode(&b);
            let _ = AtaArg::decode(&b);
            let _ = ConfigArg::decode(&b);
            let _ = MaskArg::decode(&b);
            let _ = ReserveArg::decode(&b);
        }
    }

    #[test]
    fn lba28_ignores_high_nibble_of_register_3() {
        let a = AtaArg {
            lba: [0x78, 0x56, 0x34, 0xE2, 0xff, 0xff],
            ..AtaArg::default()
        };
        assert_eq!(a.lba(), 0x0234_5678);
    }

    #[test]
    fn truncated_and_foreign_frames_are_errors() {
        let h = Header {
            version: 1,
            flags: 0,
            error: 0,
            shelf: 1,
            slot: 1,
            command: Command::Ata,
            tag: 7,
        };
        let buf = frame_with(&[], h);
        for cut in 0..buf.len() {
            assert!(Frame::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut ip = buf.clone();
        ip[12] = 0x08;
        ip[13] = 0x00;
        assert_eq!(Frame::decode(&ip), Err(FrameError::NotAoe(0x0800)));
        let cfg = [0, 0, 0, 0, 0, 0, 0x04, 0x01];
        assert_eq!(
            ConfigArg::decode(&cfg),
            Err(FrameError::Bad("config string length"))
        );
    }

    #[test]
    fn mac_parses_and_prints() {
        let m: Mac = "02:00:0A:0b:0c:0d".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:0a:0b:0c:0d");
        assert_eq!("02000a0b0c0d".parse::<Mac>().unwrap(), m);
        assert!("02:00:0a".parse::<Mac>().is_err());
        assert!("zz:00:0a:0b:0c:0d".parse::<Mac>().is_err());
    }
}
