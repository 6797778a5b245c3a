//! One AoE target (a shelf.slot address in front of a block device), as a
//! sans-I/O state machine: frames in, replies or I/O requests out.
//!
//! The caller (the server, a test, the fuzzer) decodes a frame once with
//! [`Frame::decode`], hands it to every [`Target`] on the interface, sends the
//! [`Reply`]s and runs the [`IoRequest`]s against the device, finishing each
//! with the request's [`ReplyCtx`]. Nothing here touches a socket or a file.

use aoe_proto::ata::AtaStatus;
use aoe_proto::frame::{
    encode_headers, pad_min, AoeErrorCode, AtaArg, Command, ConfigArg, ConfigCommand, Directive,
    Frame, Header, Mac, MaskArg, ReserveArg, AOE_HEADER_LEN, AOE_VERSION, ATA_DATA_OFFSET,
    BROADCAST_SHELF, BROADCAST_SLOT, CONFIG_ARG_LEN, DIRECTIVE_ADD, DIRECTIVE_DELETE,
    DIRECTIVE_NOP, ETH_HEADER_LEN, MASK_EDIT, MASK_ERR_BAD_DIRECTIVE, MASK_ERR_FULL, MASK_READ,
    RESERVE_FORCE, RESERVE_READ, RESERVE_SET, SECTOR_SIZE,
};
use aoe_proto::outcome::AtaOutcome;
use bytes::Bytes;
use tracing::debug;

use crate::ata::{identify_page, AtaOp, IdentifyParams, FIRMWARE_VERSION};

/// Most MACs a mask or reservation list holds (the reply must fit a 1500-byte frame).
pub const MAX_LIST: usize = 128;

/// The interface a frame arrived on: its MAC and MTU decide replies and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// The interface's own MAC (source of replies).
    pub mac: Mac,
    /// The interface MTU (payload bytes after the Ethernet header).
    pub mtu: usize,
}

impl InterfaceInfo {
    /// Most sectors one ATA command may carry on this interface: the data plus
    /// the AoE header and ATA argument must fit the MTU.
    pub fn max_sectors(&self) -> u8 {
        aoe_proto::frame::max_sectors_in(self.mtu)
    }
}

/// Static settings of a target.
#[derive(Debug, Clone)]
pub struct TargetSettings {
    /// Shelf (major) address.
    pub shelf: u16,
    /// Slot (minor) address.
    pub slot: u8,
    /// Frames the target will queue per initiator, advertised in Query Config.
    pub buffer_count: u16,
    /// Acknowledge writes before they are durable (volatile write cache).
    pub write_back: bool,
    /// Model string for IDENTIFY DEVICE.
    pub model: String,
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    /// Stable identity of the device.
    pub identity: blockdev::DeviceIdentity,
    /// Whether the device refuses writes.
    pub read_only: bool,
    /// The device's limits: its maximum transfer caps the sectors one ATA
    /// command may carry (Query Config, IDENTIFY word 47).
    pub limits: blockdev::Limits,
}

/// Why a frame got no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// The source MAC is a group (broadcast or multicast) address: no
    /// initiator sends from one, and a reply would go to the whole group.
    GroupSource(Mac),
    /// The destination is neither the interface's MAC nor broadcast (a
    /// frame for another station, flooded by a switch, or a multicast one:
    /// the Linux driver sends only to a target's MAC or to broadcast).
    NotForUs(Mac),
    /// The frame is a response (from another target, or our own echo).
    Response,
    /// Addressed to another shelf/slot.
    NotAddressed,
    /// The source MAC is not on a non-empty mask list.
    Masked(Mac),
    /// A Query Config test that did not match (r11: no reply).
    NoMatch,
    /// A command other than Query Config sent to a broadcast address.
    BroadcastNonConfig,
}

/// A frame to transmit: the bytes of `head` followed by `data` (scatter/gather,
/// so read data is never copied into a frame buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Ethernet and AoE headers plus the command argument.
    pub head: Vec<u8>,
    /// Payload after the argument (read data, IDENTIFY page), possibly empty.
    pub data: Bytes,
}

impl Reply {
    /// Total frame length.
    pub fn len(&self) -> usize {
        self.head.len() + self.data.len()
    }

    /// Whether the frame is empty (never true for a built reply).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame as one contiguous buffer (tests, tools).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = self.head.clone();
        v.extend_from_slice(&self.data);
        v
    }
}

/// Work that needs the device (or the disk) before the reply can be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoOp {
    /// Read `sectors` sectors at `lba`.
    Read {
        /// First sector.
        lba: u64,
        /// Number of sectors.
        sectors: u32,
    },
    /// Write `data` at `lba`; with `fua` the reply must wait until it is durable.
    Write {
        /// First sector.
        lba: u64,
        /// Whole sectors of data.
        data: Bytes,
        /// Force unit access (false only in write-back mode).
        fua: bool,
    },
    /// Make every acknowledged write durable.
    Flush,
}

/// The two parts of a target's state that survive a restart, each persisted
/// on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatePart {
    /// The Query Config string.
    Config,
    /// The MAC mask list and the reservation list.
    Access,
}

impl StatePart {
    /// Both parts.
    pub const ALL: [StatePart; 2] = [StatePart::Config, StatePart::Access];
}

/// One part of a target's state as it is (or is to be) persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    /// The config string.
    Config(Vec<u8>),
    /// The access lists.
    Access(Access),
}

impl Snapshot {
    /// Which part this is.
    pub fn part(&self) -> StatePart {
        match self {
            Snapshot::Config(_) => StatePart::Config,
            Snapshot::Access(_) => StatePart::Access,
        }
    }
}

/// A change of the persisted state (a config set, a mask list edit, a
/// reservation set), already applied: its reply may be sent only once the
/// state it reports is durable. See [`crate::persist`] for when that is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistRequest {
    /// The part of the state the request is about.
    pub part: StatePart,
    /// Whether the request changed it (an edit that changed nothing still
    /// reports a state that may not be durable yet).
    pub changed: bool,
    /// How to answer: [`ReplyCtx::persisted`] with the state written, or
    /// [`ReplyCtx::error`] (device unavailable) when the write failed and the
    /// caller put the last durable state back with [`Target::restore`].
    pub ctx: ReplyCtx,
}

/// A target's access lists, which survive a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// MAC mask list (empty: any initiator).
    pub mask: Vec<Mac>,
    /// Reservation list (empty: not reserved).
    pub reservations: Vec<Mac>,
}

/// What the reply to an I/O request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyCtx {
    to: Mac,
    from: Mac,
    header: Header,
    arg: PendingArg,
}

/// What a reply needs besides the headers: the ATA argument of an ATA
/// command, or the few fields of a change's reply that are not state (the
/// state comes from the snapshot written). Small, so that waiting replies
/// cost little memory.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PendingArg {
    Ata(AtaArg),
    ConfigSet {
        ccmd: ConfigCommand,
        buffer_count: u16,
        max_sectors: u8,
    },
    MaskEdit {
        mcmd: u8,
        merror: u8,
    },
    Reserve {
        rcmd: u8,
    },
}

impl ReplyCtx {
    /// The request's tag.
    pub fn tag(&self) -> u32 {
        self.header.tag
    }

    /// The initiator's MAC.
    pub fn initiator(&self) -> Mac {
        self.to
    }

    /// Completes an ATA command with `status` and optional read data. (On
    /// the context of a state change, which has no ATA status: error 3.)
    pub fn ata_done(&self, status: AtaStatus, data: Bytes) -> Reply {
        match &self.arg {
            PendingArg::Ata(a) => ata_reply(self.to, self.from, &self.header, a, status, data),
            _ => self.error(AoeErrorCode::DeviceUnavailable),
        }
    }

    /// Answers a state change once `written` is durable: the reply reports
    /// the state written, which is this request's own or, when later changes
    /// superseded it before the write, theirs (what is now in effect). (On
    /// an ATA context, or a snapshot of the other part: error 3.)
    pub fn persisted(&self, written: &Snapshot) -> Reply {
        let (to, from, h) = (self.to, self.from, &self.header);
        match (&self.arg, written) {
            (
                PendingArg::ConfigSet {
                    ccmd,
                    buffer_count,
                    max_sectors,
                },
                Snapshot::Config(config),
            ) => config_reply(
                to,
                from,
                h,
                &ConfigArg {
                    buffer_count: *buffer_count,
                    firmware: FIRMWARE_VERSION,
                    max_sectors: *max_sectors,
                    aoe_version: AOE_VERSION,
                    ccmd: *ccmd,
                    config: config.clone(),
                },
            ),
            (PendingArg::MaskEdit { mcmd, merror }, Snapshot::Access(a)) => {
                mask_reply(to, from, h, *mcmd, *merror, &a.mask)
            }
            (PendingArg::Reserve { rcmd }, Snapshot::Access(a)) => {
                reserve_reply(to, from, h, *rcmd, &a.reservations)
            }
            _ => self.error(AoeErrorCode::DeviceUnavailable),
        }
    }

    /// Completes an ATA command as `outcome` says (registers, or an AoE
    /// error: [`aoe_proto::outcome`]), with optional read data.
    pub fn answer(&self, outcome: AtaOutcome, data: Bytes) -> Reply {
        match outcome {
            AtaOutcome::Registers(st) => self.ata_done(st, data),
            AtaOutcome::Error(code) => self.error(code),
        }
    }

    /// Answers the request with an AoE error.
    pub fn error(&self, code: AoeErrorCode) -> Reply {
        error_reply(self.to, self.from, &self.header, code)
    }
}

/// A request that needs I/O, with what its reply needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoRequest {
    /// The work.
    pub op: IoOp,
    /// How to answer once it is done.
    pub ctx: ReplyCtx,
}

/// Result of handing a frame to a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No reply, for the given reason.
    Ignore(Ignored),
    /// Send this reply now.
    Reply(Reply),
    /// Run this I/O, then reply.
    Io(IoRequest),
    /// The persisted state changed (or was asked to): reply once it is durable.
    Persist(PersistRequest),
}

/// One AoE target: its addresses, config string, mask and reservation lists.
#[derive(Debug, Clone)]
pub struct Target {
    settings: TargetSettings,
    config: Vec<u8>,
    mask: Vec<Mac>,
    reservations: Vec<Mac>,
}

fn error_reply(to: Mac, from: Mac, req: &Header, code: AoeErrorCode) -> Reply {
    let mut head = Vec::with_capacity(64);
    encode_headers(&mut head, to, from, &req.error_response(code));
    pad_min(&mut head);
    Reply {
        head,
        data: Bytes::new(),
    }
}

fn ata_reply(to: Mac, from: Mac, req: &Header, arg: &AtaArg, st: AtaStatus, data: Bytes) -> Reply {
    let mut head = Vec::with_capacity(ATA_DATA_OFFSET);
    encode_headers(&mut head, to, from, &req.response());
    let mut resp = AtaArg {
        err_feature: st.error,
        cmd_status: st.status,
        ..*arg
    };
    if let Some(lba) = st.lba {
        resp.set_lba(lba);
    }
    resp.encode(&mut head);
    if data.is_empty() {
        pad_min(&mut head);
    }
    Reply { head, data }
}

fn mask_reply(to: Mac, from: Mac, req: &Header, mcmd: u8, merror: u8, mask: &[Mac]) -> Reply {
    let mut head = Vec::new();
    encode_headers(&mut head, to, from, &req.response());
    MaskArg {
        mcmd,
        merror,
        directives: mask
            .iter()
            .map(|m| Directive {
                dcmd: DIRECTIVE_NOP,
                mac: *m,
            })
            .collect(),
    }
    .encode(&mut head);
    pad_min(&mut head);
    Reply {
        head,
        data: Bytes::new(),
    }
}

fn reserve_reply(to: Mac, from: Mac, req: &Header, rcmd: u8, macs: &[Mac]) -> Reply {
    let mut head = Vec::new();
    encode_headers(&mut head, to, from, &req.response());
    ReserveArg {
        rcmd,
        macs: macs.to_vec(),
    }
    .encode(&mut head);
    pad_min(&mut head);
    Reply {
        head,
        data: Bytes::new(),
    }
}

fn config_reply(to: Mac, from: Mac, req: &Header, arg: &ConfigArg) -> Reply {
    let mut head =
        Vec::with_capacity(ETH_HEADER_LEN + AOE_HEADER_LEN + CONFIG_ARG_LEN + arg.config.len());
    encode_headers(&mut head, to, from, &req.response());
    arg.encode(&mut head);
    pad_min(&mut head);
    Reply {
        head,
        data: Bytes::new(),
    }
}

/// Whether a frame that arrived on `iface` may be answered at all, whatever
/// its content: its source must be a station (not a group address) and its
/// destination this interface or broadcast.
pub fn admissible(iface: &InterfaceInfo, f: &Frame<'_>) -> Result<(), Ignored> {
    if f.src.is_group() {
        return Err(Ignored::GroupSource(f.src));
    }
    if f.dst != iface.mac && f.dst != Mac::BROADCAST {
        return Err(Ignored::NotForUs(f.dst));
    }
    Ok(())
}

impl Target {
    /// A target with the given settings, initial mask list and persisted config string.
    pub fn new(settings: TargetSettings, mask: Vec<Mac>, config: Vec<u8>) -> Target {
        let mut mask = mask;
        mask.sort();
        mask.dedup();
        mask.truncate(MAX_LIST);
        let mut config = config;
        config.truncate(aoe_proto::frame::MAX_CONFIG_STRING);
        Target {
            settings,
            config,
            mask,
            reservations: Vec::new(),
        }
    }

    /// The static settings.
    pub fn settings(&self) -> &TargetSettings {
        &self.settings
    }

    /// Most sectors one ATA command may carry on `iface`: what a frame
    /// holds, and no more than the device takes in one call.
    pub fn max_sectors(&self, iface: &InterfaceInfo) -> u8 {
        let frame = iface.max_sectors();
        match self.settings.limits.max_transfer {
            0 => frame,
            m => frame.min(u8::try_from(m).unwrap_or(u8::MAX)),
        }
    }

    /// The current config string.
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// The current MAC mask list (empty: everyone may talk to the target).
    pub fn mask(&self) -> &[Mac] {
        &self.mask
    }

    /// The current reservation list (empty: not reserved).
    pub fn reservations(&self) -> &[Mac] {
        &self.reservations
    }

    /// The current access lists.
    pub fn access(&self) -> Access {
        Access {
            mask: self.mask.clone(),
            reservations: self.reservations.clone(),
        }
    }

    /// One part of the state as it is now, to be persisted.
    pub fn snapshot(&self, part: StatePart) -> Snapshot {
        match part {
            StatePart::Config => Snapshot::Config(self.config.clone()),
            StatePart::Access => Snapshot::Access(self.access()),
        }
    }

    /// Puts a part of the state back: the last durable one when persisting
    /// changes failed (they are undone).
    pub fn restore(&mut self, snapshot: Snapshot) {
        match snapshot {
            Snapshot::Config(mut c) => {
                c.truncate(aoe_proto::frame::MAX_CONFIG_STRING);
                self.config = c;
            }
            Snapshot::Access(a) => self.restore_access(a),
        }
    }

    /// Installs access lists (the persisted ones, at start).
    pub fn restore_access(&mut self, access: Access) {
        let clean = |mut l: Vec<Mac>| {
            l.sort();
            l.dedup();
            l.truncate(MAX_LIST);
            l
        };
        self.mask = clean(access.mask);
        self.reservations = clean(access.reservations);
    }

    /// An edit of the access lists (which `changed` them or not), answered
    /// with `arg` once the lists it reports are durable.
    fn access_edited(changed: bool, to: Mac, from: Mac, h: &Header, arg: PendingArg) -> Outcome {
        Outcome::Persist(PersistRequest {
            part: StatePart::Access,
            changed,
            ctx: ReplyCtx {
                to,
                from,
                header: *h,
                arg,
            },
        })
    }

    fn addressed(&self, h: &Header) -> (bool, bool) {
        let bshelf = h.shelf == BROADCAST_SHELF;
        let bslot = h.slot == BROADCAST_SLOT;
        let hit =
            (bshelf || h.shelf == self.settings.shelf) && (bslot || h.slot == self.settings.slot);
        (hit, bshelf || bslot)
    }

    fn reserved_against(&self, src: Mac) -> bool {
        !self.reservations.is_empty() && !self.reservations.contains(&src)
    }

    /// Handles one decoded frame that arrived on `iface`. A write's data is
    /// copied out of the frame; see [`Target::handle_owned`] to avoid that.
    pub fn handle(&mut self, iface: &InterfaceInfo, f: &Frame<'_>) -> Outcome {
        self.handle_owned(iface, f, None)
    }

    /// As [`Target::handle`], for a frame decoded from `buf`: a write's data
    /// is then a slice of `buf`, not a copy. (`f` must borrow from `buf`.)
    pub fn handle_owned(
        &mut self,
        iface: &InterfaceInfo,
        f: &Frame<'_>,
        buf: Option<&Bytes>,
    ) -> Outcome {
        if let Err(why) = admissible(iface, f) {
            return Outcome::Ignore(why);
        }
        let h = &f.header;
        if h.is_response() {
            return Outcome::Ignore(Ignored::Response);
        }
        let (hit, broadcast) = self.addressed(h);
        if !hit {
            return Outcome::Ignore(Ignored::NotAddressed);
        }
        if !self.mask.is_empty() && !self.mask.contains(&f.src) {
            return Outcome::Ignore(Ignored::Masked(f.src));
        }
        // Replies carry our real address, never the broadcast one.
        let mut reply_header = *h;
        reply_header.shelf = self.settings.shelf;
        reply_header.slot = self.settings.slot;
        let (to, from) = (f.src, iface.mac);
        if h.version != AOE_VERSION {
            return Outcome::Reply(error_reply(
                to,
                from,
                &reply_header,
                AoeErrorCode::UnsupportedVersion,
            ));
        }
        if broadcast && h.command != Command::QueryConfig {
            return Outcome::Ignore(Ignored::BroadcastNonConfig);
        }
        let err = |code| Outcome::Reply(error_reply(to, from, &reply_header, code));
        match h.command {
            Command::Ata => match AtaArg::decode(f.payload) {
                Ok((arg, data)) => {
                    let data = Payload { data, buf };
                    self.ata(iface, to, from, &reply_header, arg, data)
                }
                Err(e) => {
                    debug!(%to, error = %e, "bad ATA argument");
                    err(AoeErrorCode::BadArgument)
                }
            },
            Command::QueryConfig => match ConfigArg::decode(f.payload) {
                Ok(arg) => self.query_config(iface, to, from, &reply_header, arg),
                Err(e) => {
                    debug!(%to, error = %e, "bad Query Config argument");
                    err(AoeErrorCode::BadArgument)
                }
            },
            Command::MacMask => match MaskArg::decode(f.payload) {
                Ok(arg) => self.mac_mask(to, from, &reply_header, arg),
                Err(e) => {
                    debug!(%to, error = %e, "bad MAC Mask List argument");
                    err(AoeErrorCode::BadArgument)
                }
            },
            Command::ReserveRelease => match ReserveArg::decode(f.payload) {
                Ok(arg) => self.reserve(to, from, &reply_header, arg),
                Err(e) => {
                    debug!(%to, error = %e, "bad Reserve/Release argument");
                    err(AoeErrorCode::BadArgument)
                }
            },
            Command::Other(c) => {
                debug!(%to, command = c, "unrecognized AoE command");
                err(AoeErrorCode::UnrecognizedCommand)
            }
        }
    }

    fn ata(
        &mut self,
        iface: &InterfaceInfo,
        to: Mac,
        from: Mac,
        h: &Header,
        arg: AtaArg,
        data: Payload<'_>,
    ) -> Outcome {
        let op = AtaOp::classify(&arg);
        if op != AtaOp::Identify && self.reserved_against(to) {
            return Outcome::Reply(error_reply(to, from, h, AoeErrorCode::TargetReserved));
        }
        let done =
            |st: AtaStatus, data: Bytes| Outcome::Reply(ata_reply(to, from, h, &arg, st, data));
        let ctx = || ReplyCtx {
            to,
            from,
            header: *h,
            arg: PendingArg::Ata(arg),
        };
        let max = u32::from(self.max_sectors(iface));
        let s = &self.settings;
        match op {
            AtaOp::Identify => {
                let page = identify_page(&IdentifyParams {
                    sectors: s.sectors,
                    identity: &s.identity,
                    model: &s.model,
                    write_cache: s.write_back,
                    limits: s.limits,
                });
                done(AtaStatus::OK, Bytes::copy_from_slice(&page))
            }
            AtaOp::Read { lba, sectors } | AtaOp::Write { lba, sectors } if sectors > max => {
                debug!(%to, lba, sectors, max, "ATA transfer larger than a frame");
                Outcome::Reply(error_reply(to, from, h, AoeErrorCode::BadArgument))
            }
            AtaOp::Read { lba, sectors } | AtaOp::Write { lba, sectors }
                if lba
                    .checked_add(u64::from(sectors))
                    .is_none_or(|end| end > s.sectors) =>
            {
                done(AtaStatus::ID_NOT_FOUND, Bytes::new())
            }
            AtaOp::Read { lba, sectors } => Outcome::Io(IoRequest {
                op: IoOp::Read { lba, sectors },
                ctx: ctx(),
            }),
            AtaOp::Write { lba, sectors } => {
                let len = sectors as usize * SECTOR_SIZE;
                let Some(payload) = data.data.get(..len) else {
                    debug!(%to, lba, sectors, got = data.data.len(), "write frame shorter than its sector count");
                    return Outcome::Reply(error_reply(to, from, h, AoeErrorCode::BadArgument));
                };
                if s.read_only {
                    let refused = AtaOutcome::of_error(&blockdev::BlockError::ReadOnly);
                    return Outcome::Reply(ctx().answer(refused, Bytes::new()));
                }
                Outcome::Io(IoRequest {
                    op: IoOp::Write {
                        lba,
                        data: data.share(payload),
                        fua: !s.write_back,
                    },
                    ctx: ctx(),
                })
            }
            AtaOp::Flush => Outcome::Io(IoRequest {
                op: IoOp::Flush,
                ctx: ctx(),
            }),
            AtaOp::CheckPower => {
                // Sector count 0xFF: active or idle.
                let arg = AtaArg {
                    sector_count: 0xFF,
                    ..arg
                };
                Outcome::Reply(ata_reply(to, from, h, &arg, AtaStatus::OK, Bytes::new()))
            }
            AtaOp::Unsupported(cmd) => {
                debug!(%to, cmd, "unsupported ATA command aborted");
                done(AtaStatus::ABORTED, Bytes::new())
            }
        }
    }

    fn query_config(
        &mut self,
        iface: &InterfaceInfo,
        to: Mac,
        from: Mac,
        h: &Header,
        arg: ConfigArg,
    ) -> Outcome {
        let reply_arg = |ccmd, config: &[u8]| ConfigArg {
            buffer_count: self.settings.buffer_count,
            firmware: FIRMWARE_VERSION,
            max_sectors: self.max_sectors(iface),
            aoe_version: AOE_VERSION,
            ccmd,
            config: config.to_vec(),
        };
        let reply = |a: &ConfigArg| Outcome::Reply(config_reply(to, from, h, a));
        match arg.ccmd {
            ConfigCommand::Read => reply(&reply_arg(arg.ccmd, &self.config)),
            ConfigCommand::TestExact if arg.config == self.config => {
                reply(&reply_arg(arg.ccmd, &self.config))
            }
            ConfigCommand::TestPrefix if self.config.starts_with(&arg.config) => {
                reply(&reply_arg(arg.ccmd, &self.config))
            }
            ConfigCommand::TestExact | ConfigCommand::TestPrefix => {
                Outcome::Ignore(Ignored::NoMatch)
            }
            ConfigCommand::SetIfEmpty | ConfigCommand::ForceSet => {
                if self.reserved_against(to) {
                    return Outcome::Reply(error_reply(to, from, h, AoeErrorCode::TargetReserved));
                }
                if arg.ccmd == ConfigCommand::SetIfEmpty && !self.config.is_empty() {
                    return Outcome::Reply(error_reply(
                        to,
                        from,
                        h,
                        AoeErrorCode::ConfigStringPresent,
                    ));
                }
                let changed = self.config != arg.config;
                self.config = arg.config;
                Outcome::Persist(PersistRequest {
                    part: StatePart::Config,
                    changed,
                    ctx: ReplyCtx {
                        to,
                        from,
                        header: *h,
                        arg: PendingArg::ConfigSet {
                            ccmd: arg.ccmd,
                            buffer_count: self.settings.buffer_count,
                            max_sectors: self.max_sectors(iface),
                        },
                    },
                })
            }
            ConfigCommand::Other(c) => {
                debug!(%to, ccmd = c, "unknown Query Config sub-command");
                Outcome::Reply(error_reply(to, from, h, AoeErrorCode::BadArgument))
            }
        }
    }

    fn mac_mask(&mut self, to: Mac, from: Mac, h: &Header, arg: MaskArg) -> Outcome {
        let (mut merror, mut changed) = (0, false);
        match arg.mcmd {
            MASK_READ => {
                return Outcome::Reply(mask_reply(to, from, h, arg.mcmd, 0, &self.mask));
            }
            MASK_EDIT => {
                if self.reserved_against(to) {
                    return Outcome::Reply(error_reply(to, from, h, AoeErrorCode::TargetReserved));
                }
                for d in &arg.directives {
                    match d.dcmd {
                        DIRECTIVE_NOP => {}
                        DIRECTIVE_ADD if self.mask.contains(&d.mac) => {}
                        DIRECTIVE_ADD if self.mask.len() >= MAX_LIST => {
                            merror = MASK_ERR_FULL;
                            break;
                        }
                        DIRECTIVE_ADD => {
                            self.mask.push(d.mac);
                            self.mask.sort();
                            changed = true;
                        }
                        DIRECTIVE_DELETE => {
                            let before = self.mask.len();
                            self.mask.retain(|m| *m != d.mac);
                            changed |= self.mask.len() != before;
                        }
                        _ => {
                            merror = MASK_ERR_BAD_DIRECTIVE;
                            break;
                        }
                    }
                }
            }
            other => {
                debug!(%to, mcmd = other, "unknown MAC Mask List sub-command");
                return Outcome::Reply(error_reply(to, from, h, AoeErrorCode::BadArgument));
            }
        }
        let arg = PendingArg::MaskEdit {
            mcmd: arg.mcmd,
            merror,
        };
        Self::access_edited(changed, to, from, h, arg)
    }

    fn reserve(&mut self, to: Mac, from: Mac, h: &Header, arg: ReserveArg) -> Outcome {
        let changed;
        match arg.rcmd {
            RESERVE_READ => {
                return Outcome::Reply(reserve_reply(to, from, h, arg.rcmd, &self.reservations));
            }
            RESERVE_SET | RESERVE_FORCE => {
                if arg.rcmd == RESERVE_SET && self.reserved_against(to) {
                    return Outcome::Reply(error_reply(to, from, h, AoeErrorCode::TargetReserved));
                }
                if arg.macs.len() > MAX_LIST {
                    return Outcome::Reply(error_reply(to, from, h, AoeErrorCode::BadArgument));
                }
                let mut macs = arg.macs;
                macs.sort();
                macs.dedup();
                changed = self.reservations != macs;
                self.reservations = macs;
            }
            other => {
                debug!(%to, rcmd = other, "unknown Reserve/Release sub-command");
                return Outcome::Reply(error_reply(to, from, h, AoeErrorCode::BadArgument));
            }
        }
        Self::access_edited(changed, to, from, h, PendingArg::Reserve { rcmd: arg.rcmd })
    }
}

/// The data after a request's argument, and the received frame it lies in
/// when the caller has it as [`Bytes`].
#[derive(Clone, Copy)]
struct Payload<'a> {
    data: &'a [u8],
    buf: Option<&'a Bytes>,
}

impl Payload<'_> {
    /// `part` (of `data`) as a slice of the frame when it lies within it, so
    /// no copy is made; a copy otherwise.
    fn share(&self, part: &[u8]) -> Bytes {
        if let Some(b) = self.buf {
            let (start, p) = (b.as_ptr() as usize, part.as_ptr() as usize);
            if p >= start && p + part.len() <= start + b.len() {
                return b.slice_ref(part);
            }
        }
        Bytes::copy_from_slice(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aoe_proto::ata::{CMD_READ_EXT, CMD_WRITE_EXT};
    use aoe_proto::client::{ata_arg, config_arg, request};
    use aoe_proto::frame::{AFLAG_EXTENDED, AFLAG_WRITE, ATA_ARG_LEN, FLAG_ERROR, FLAG_RESPONSE};
    use proptest::prelude::*;

    const ME: Mac = Mac([2, 0, 0, 0, 0, 1]);
    const HOST: Mac = Mac([2, 0, 0, 0, 0, 9]);
    const IFACE: InterfaceInfo = InterfaceInfo { mac: ME, mtu: 1500 };

    fn target() -> Target {
        Target::new(
            TargetSettings {
                shelf: 1,
                slot: 2,
                buffer_count: 8,
                write_back: false,
                model: "t".into(),
                sectors: 1000,
                identity: blockdev::DeviceIdentity::from_name("t"),
                read_only: false,
                limits: blockdev::Limits::default(),
            },
            vec![],
            vec![],
        )
    }

    fn ata(lba: u64, n: u8, write: bool) -> Vec<u8> {
        let mut a = AtaArg {
            aflags: AFLAG_EXTENDED | if write { AFLAG_WRITE } else { 0 },
            sector_count: n,
            cmd_status: if write { CMD_WRITE_EXT } else { CMD_READ_EXT },
            ..AtaArg::default()
        };
        a.set_lba(lba);
        let data = if write {
            vec![7u8; usize::from(n) * 512]
        } else {
            vec![]
        };
        request(ME, HOST, 1, 2, Command::Ata, 42, &ata_arg(&a), &data)
    }

    /// A Query Config read (tag 1) for shelf 1, `slot`.
    fn config_read(slot: u8) -> Vec<u8> {
        let arg = config_arg(ConfigCommand::Read, b"");
        request(ME, HOST, 1, slot, Command::QueryConfig, 1, &arg, &[])
    }

    fn write_data(o: Outcome) -> Bytes {
        match o {
            Outcome::Io(IoRequest {
                op: IoOp::Write { data, .. },
                ..
            }) => data,
            o => panic!("expected a write, got {o:?}"),
        }
    }

    #[test]
    fn write_data_is_shared_with_the_frame_it_came_in() {
        let mut t = target();
        let buf = Bytes::from(ata(20, 2, true));
        let range = buf.as_ptr_range();
        let frame = Frame::decode(&buf).unwrap();
        let shared = write_data(t.handle_owned(&IFACE, &frame, Some(&buf)));
        assert!(
            range.contains(&shared.as_ptr()),
            "a slice of the frame, not a copy"
        );
        assert_eq!(&shared[..], &[7u8; 2 * 512][..]);
        // A frame that does not lie in the buffer given is copied.
        let other = Bytes::from(ata(20, 2, true));
        let copied = write_data(t.handle_owned(&IFACE, &frame, Some(&other)));
        assert!(
            !range.contains(&copied.as_ptr()) && !other.as_ptr_range().contains(&copied.as_ptr())
        );
        assert_eq!(copied, shared);
        let plain = write_data(t.handle(&IFACE, &frame));
        assert!(!range.contains(&plain.as_ptr()));
        assert_eq!(plain, shared);
    }

    #[test]
    fn reads_and_writes_become_io_with_echoed_tags() {
        let mut t = target();
        let f = ata(10, 2, false);
        let Outcome::Io(req) = t.handle(&IFACE, &Frame::decode(&f).unwrap()) else {
            panic!("expected I/O")
        };
        assert_eq!(
            req.op,
            IoOp::Read {
                lba: 10,
                sectors: 2
            }
        );
        let r = req
            .ctx
            .ata_done(AtaStatus::OK, Bytes::from(vec![1u8; 1024]))
            .to_vec();
        let rf = Frame::decode(&r).unwrap();
        assert_eq!(
            (rf.header.tag, rf.header.flags, rf.dst, rf.src),
            (42, FLAG_RESPONSE, HOST, ME)
        );
        assert_eq!(rf.payload.len(), ATA_ARG_LEN + 1024);
        let f = ata(998, 2, true);
        match t.handle(&IFACE, &Frame::decode(&f).unwrap()) {
            Outcome::Io(IoRequest {
                op:
                    IoOp::Write {
                        lba: 998,
                        data,
                        fua: true,
                    },
                ..
            }) => assert_eq!(data.len(), 1024),
            o => panic!("unexpected {o:?}"),
        }
        // Past the end: answered at once with IDNF.
        let f = ata(999, 2, false);
        let Outcome::Reply(r) = t.handle(&IFACE, &Frame::decode(&f).unwrap()) else {
            panic!()
        };
        let (a, _) = AtaArg::decode(Frame::decode(&r.to_vec()).unwrap().payload).unwrap();
        assert_eq!(a.err_feature, aoe_proto::ata::ERR_IDNF);
    }

    fn persist(o: Outcome) -> PersistRequest {
        match o {
            Outcome::Persist(p) => p,
            o => panic!("expected a change to persist, got {o:?}"),
        }
    }

    #[test]
    fn config_sets_are_answered_with_the_state_written_or_undone() {
        let mut t = target();
        let set = |t: &mut Target, s: &[u8]| {
            let arg = config_arg(ConfigCommand::ForceSet, s);
            let f = request(ME, HOST, 1, 2, Command::QueryConfig, 5, &arg, &[]);
            persist(t.handle(&IFACE, &Frame::decode(&f).unwrap()))
        };
        let first = set(&mut t, b"new");
        assert_eq!((first.part, first.changed), (StatePart::Config, true));
        assert_eq!(t.config(), b"new", "in effect at once");
        // Superseded before the write: both are answered with what was
        // written, the later string.
        let second = set(&mut t, b"newer");
        assert!(second.changed);
        let written = t.snapshot(StatePart::Config);
        assert_eq!(written, Snapshot::Config(b"newer".to_vec()));
        for req in [&first, &second] {
            let r = req.ctx.persisted(&written).to_vec();
            let rf = Frame::decode(&r).unwrap();
            assert_eq!((rf.header.flags & FLAG_ERROR, rf.header.tag), (0, 5));
            let arg = ConfigArg::decode(rf.payload).unwrap();
            assert_eq!(
                (arg.ccmd, &arg.config[..]),
                (ConfigCommand::ForceSet, &b"newer"[..])
            );
            assert_eq!((arg.buffer_count, arg.max_sectors), (8, 2));
        }
        // Setting what is set changes nothing (its reply may still wait for
        // the write of that state).
        assert!(!set(&mut t, b"newer").changed);
        // The write failed: the last durable state is put back, the
        // replies say "device unavailable".
        t.restore(Snapshot::Config(Vec::new()));
        assert_eq!(t.config(), b"");
        let r = first.ctx.error(AoeErrorCode::DeviceUnavailable).to_vec();
        let h = Frame::decode(&r).unwrap().header;
        assert_eq!((h.flags & FLAG_ERROR, h.error), (FLAG_ERROR, 3));
        // A snapshot of the other part cannot answer a config set.
        let r = first.ctx.persisted(&t.snapshot(StatePart::Access)).to_vec();
        assert_eq!(Frame::decode(&r).unwrap().header.error, 3);
    }

    #[test]
    fn reservation_changes_wait_for_persistence_and_reads_do_not() {
        let mut t = target();
        let other = Mac([2, 0, 0, 0, 0, 0x77]);
        let reserve = |t: &mut Target, rcmd: u8, macs: Vec<Mac>| {
            let arg = aoe_proto::client::reserve_arg(&ReserveArg { rcmd, macs });
            let f = request(ME, HOST, 1, 2, Command::ReserveRelease, 7, &arg, &[]);
            t.handle(&IFACE, &Frame::decode(&f).unwrap())
        };
        let before = t.snapshot(StatePart::Access);
        let req = persist(reserve(&mut t, RESERVE_SET, vec![other, other]));
        assert_eq!((req.part, req.changed), (StatePart::Access, true));
        let Snapshot::Access(access) = t.snapshot(StatePart::Access) else {
            panic!()
        };
        assert_eq!(access.reservations, vec![other]);
        // The reply, sent after persisting, lists the reservation.
        let r = req.ctx.persisted(&Snapshot::Access(access)).to_vec();
        let rf = Frame::decode(&r).unwrap();
        let arg = ReserveArg::decode(rf.payload).unwrap();
        assert_eq!((rf.header.flags & FLAG_ERROR, arg.macs), (0, vec![other]));
        // Reading is answered at once.
        assert!(matches!(
            reserve(&mut t, RESERVE_READ, vec![]),
            Outcome::Reply(_)
        ));
        // HOST is not the holder: refused without a change.
        assert!(matches!(
            reserve(&mut t, RESERVE_SET, vec![]),
            Outcome::Reply(_)
        ));
        assert_eq!(t.reservations(), &[other]);
        // The holder sets what is set: nothing changes.
        let mut h = t.clone();
        let f = request(
            ME,
            other,
            1,
            2,
            Command::ReserveRelease,
            8,
            &aoe_proto::client::reserve_arg(&ReserveArg {
                rcmd: RESERVE_SET,
                macs: vec![other],
            }),
            &[],
        );
        assert!(!persist(h.handle(&IFACE, &Frame::decode(&f).unwrap())).changed);
        // Persisting failed: the server puts the old lists back.
        t.restore(before);
        assert!(t.reservations().is_empty());
        assert!(persist(reserve(&mut t, RESERVE_SET, vec![HOST])).changed);
    }

    #[test]
    fn mask_edits_report_whether_they_changed_the_list() {
        let mut t = target();
        let edit = |t: &mut Target, dcmd: u8, mac: Mac| {
            let arg = aoe_proto::client::mask_arg(&MaskArg {
                mcmd: MASK_EDIT,
                merror: 0,
                directives: vec![Directive { dcmd, mac }],
            });
            let f = request(ME, HOST, 1, 2, Command::MacMask, 9, &arg, &[]);
            persist(t.handle(&IFACE, &Frame::decode(&f).unwrap()))
        };
        assert!(edit(&mut t, DIRECTIVE_ADD, HOST).changed);
        assert!(!edit(&mut t, DIRECTIVE_ADD, HOST).changed);
        assert!(!edit(&mut t, DIRECTIVE_DELETE, ME).changed);
        let req = edit(&mut t, DIRECTIVE_DELETE, HOST);
        assert!(req.changed);
        let r = req.ctx.persisted(&t.snapshot(StatePart::Access)).to_vec();
        let arg = MaskArg::decode(Frame::decode(&r).unwrap().payload).unwrap();
        assert_eq!(
            (arg.mcmd, arg.merror, arg.directives.len()),
            (MASK_EDIT, 0, 0)
        );
    }

    /// What an initiator reads from a reply frame to a command at `lba`.
    fn read_back(reply: &Reply, lba: u64) -> Result<(), blockdev::BlockError> {
        let r = reply.to_vec();
        let f = Frame::decode(&r).unwrap();
        let arg = if f.header.flags & FLAG_ERROR != 0 {
            AtaArg::default()
        } else {
            AtaArg::decode(f.payload).unwrap().0
        };
        aoe_proto::outcome::reply_result(&f.header, &arg, lba)
    }

    #[test]
    fn every_device_error_reaches_the_initiator_with_its_class() {
        let mut t = target();
        for write in [false, true] {
            let f = ata(990, 2, write);
            let Outcome::Io(req) = t.handle(&IFACE, &Frame::decode(&f).unwrap()) else {
                panic!("expected I/O")
            };
            for e in blockdev::BlockError::examples() {
                let reply = req.ctx.answer(AtaOutcome::of_error(&e), Bytes::new());
                let back = read_back(&reply, 990).unwrap_err();
                assert_eq!(back.class(), e.class(), "{e:?} came back as {back:?}");
            }
            let ok = req.ctx.answer(AtaOutcome::OK, Bytes::new());
            assert!(read_back(&ok, 990).is_ok());
        }
        // The target's own refusals read as what they are.
        let mut settings = target().settings().clone();
        settings.read_only = true;
        let mut ro = Target::new(settings, vec![], vec![]);
        let Outcome::Reply(r) = ro.handle(&IFACE, &Frame::decode(&ata(0, 1, true)).unwrap()) else {
            panic!("refused at once")
        };
        assert_eq!(
            read_back(&r, 0).unwrap_err().class(),
            blockdev::ErrorClass::ReadOnly
        );
        let Outcome::Reply(r) = t.handle(&IFACE, &Frame::decode(&ata(999, 2, false)).unwrap())
        else {
            panic!("refused at once")
        };
        assert_eq!(
            read_back(&r, 999).unwrap_err().class(),
            blockdev::ErrorClass::Invalid
        );
    }

    #[test]
    fn the_devices_maximum_transfer_caps_every_ata_command() {
        let jumbo = InterfaceInfo { mac: ME, mtu: 9000 };
        let mut settings = target().settings().clone();
        settings.limits.max_transfer = 4;
        let mut t = Target::new(settings, vec![], vec![]);
        assert_eq!((jumbo.max_sectors(), t.max_sectors(&jumbo)), (17, 4));
        // Query Config says so,
        let f = config_read(2);
        let Outcome::Reply(r) = t.handle(&jumbo, &Frame::decode(&f).unwrap()) else {
            panic!("Query Config is answered at once")
        };
        let r = r.to_vec();
        let arg = ConfigArg::decode(Frame::decode(&r).unwrap().payload).unwrap();
        assert_eq!(arg.max_sectors, 4);
        // IDENTIFY's READ/WRITE MULTIPLE word too,
        let id = AtaArg {
            cmd_status: aoe_proto::ata::CMD_IDENTIFY,
            sector_count: 1,
            ..AtaArg::default()
        };
        let f = request(ME, HOST, 1, 2, Command::Ata, 2, &ata_arg(&id), &[]);
        let Outcome::Reply(r) = t.handle(&jumbo, &Frame::decode(&f).unwrap()) else {
            panic!("IDENTIFY is answered at once")
        };
        let page = &r.data[..];
        assert_eq!(u16::from_le_bytes([page[94], page[95]]), 0x8004);
        // and a longer command is refused before it reaches the device.
        assert!(matches!(
            t.handle(&jumbo, &Frame::decode(&ata(0, 4, false)).unwrap()),
            Outcome::Io(_)
        ));
        let Outcome::Reply(r) = t.handle(&jumbo, &Frame::decode(&ata(0, 5, false)).unwrap()) else {
            panic!("refused at once")
        };
        let r = r.to_vec();
        let h = Frame::decode(&r).unwrap().header;
        assert_eq!((h.flags & FLAG_ERROR, h.error), (FLAG_ERROR, 2));
        // Without a device limit the frame decides, as before.
        assert_eq!(target().max_sectors(&jumbo), 17);
    }

    #[test]
    fn others_addresses_and_responses_are_ignored() {
        let mut t = target();
        let f = config_read(3);
        assert_eq!(
            t.handle(&IFACE, &Frame::decode(&f).unwrap()),
            Outcome::Ignore(Ignored::NotAddressed)
        );
        let mut f = config_read(2);
        f[14] |= FLAG_RESPONSE;
        assert_eq!(
            t.handle(&IFACE, &Frame::decode(&f).unwrap()),
            Outcome::Ignore(Ignored::Response)
        );
        let f = request(ME, HOST, BROADCAST_SHELF, 2, Command::Ata, 1, &[0; 12], &[]);
        assert_eq!(
            t.handle(&IFACE, &Frame::decode(&f).unwrap()),
            Outcome::Ignore(Ignored::BroadcastNonConfig)
        );
    }

    #[test]
    fn group_sources_and_frames_for_others_are_ignored() {
        let read = config_arg(ConfigCommand::Read, b"");
        let frame =
            |dst: Mac, src: Mac| request(dst, src, 1, 2, Command::QueryConfig, 3, &read, &[]);
        let mut t = target();
        // Broadcast, IPv4 and IPv6 multicast sources: dropped, whatever the
        // command (a read would send disk data to the whole group).
        for src in [
            Mac::BROADCAST,
            Mac([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]),
            Mac([0x33, 0x33, 0x00, 0x00, 0x00, 0x01]),
        ] {
            for f in [frame(ME, src), frame(Mac::BROADCAST, src)] {
                assert_eq!(
                    t.handle(&IFACE, &Frame::decode(&f).unwrap()),
                    Outcome::Ignore(Ignored::GroupSource(src))
                );
            }
            let mut f = ata(0, 1, false);
            f[6..12].copy_from_slice(&src.0);
            assert_eq!(
                t.handle(&IFACE, &Frame::decode(&f).unwrap()),
                Outcome::Ignore(Ignored::GroupSource(src))
            );
        }
        // Another station's MAC, or a multicast group: not ours.
        for dst in [
            Mac([2, 0, 0, 0, 0, 0x42]),
            Mac([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]),
            Mac([0x33, 0x33, 0x00, 0x00, 0x00, 0x01]),
        ] {
            assert_eq!(
                t.handle(&IFACE, &Frame::decode(&frame(dst, HOST)).unwrap()),
                Outcome::Ignore(Ignored::NotForUs(dst))
            );
        }
        // Our MAC and broadcast are answered.
        for dst in [ME, Mac::BROADCAST] {
            assert!(matches!(
                t.handle(&IFACE, &Frame::decode(&frame(dst, HOST)).unwrap()),
                Outcome::Reply(_)
            ));
        }
    }

    proptest! {
        /// Whatever follows a valid header, the target answers with a frame that
        /// decodes, echoes the tag and fits the MTU, or asks for bounded I/O.
        #[test]
        fn any_payload_gets_a_sane_outcome(cmd in 0u8..6, payload in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let mut t = target();
            let f = request(ME, HOST, 1, 2, Command::from(cmd), 77, &payload, &[]);
            match t.handle(&IFACE, &Frame::decode(&f).unwrap()) {
                Outcome::Reply(r) => {
                    let v = r.to_vec();
                    prop_assert!(v.len() <= IFACE.mtu + ETH_HEADER_LEN);
                    prop_assert_eq!(Frame::decode(&v).unwrap().header.tag, 77);
                }
                Outcome::Io(req) => match req.op {
                    IoOp::Read { lba, sectors } => prop_assert!(lba + u64::from(sectors) <= 1000 && sectors <= 2),
                    IoOp::Write { lba, data, .. } => prop_assert!(lba + (data.len() / 512) as u64 <= 1000 && data.len() <= 1024),
                    _ => {}
                },
                Outcome::Persist(req) => {
                    // Answered with the state now in effect, the reply fits.
                    let v = req.ctx.persisted(&t.snapshot(req.part)).to_vec();
                    prop_assert!(v.len() <= IFACE.mtu + ETH_HEADER_LEN);
                    prop_assert_eq!(Frame::decode(&v).unwrap().header.tag, 77);
                }
                Outcome::Ignore(_) => {}
            }
        }
    }
}
