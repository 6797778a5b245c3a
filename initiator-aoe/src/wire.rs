//! The request frames the initiator sends, built on `aoe-proto`'s codec.

use aoe_proto::ata::{
    CMD_FLUSH, CMD_FLUSH_EXT, CMD_IDENTIFY, CMD_READ, CMD_READ_EXT, CMD_WRITE, CMD_WRITE_EXT,
};
use aoe_proto::frame::{
    encode_headers, pad_min, AtaArg, Command, ConfigArg, ConfigCommand, Header, Mac,
    AFLAG_EXTENDED, AFLAG_WRITE, AOE_VERSION, BROADCAST_SHELF, BROADCAST_SLOT,
};

/// An ATA command of the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtaCommand<'a> {
    /// READ SECTORS (EXT).
    Read {
        /// First sector.
        lba: u64,
        /// Sectors (1..=255).
        sectors: u8,
    },
    /// WRITE SECTORS (EXT) with its data (whole sectors).
    Write {
        /// First sector.
        lba: u64,
        /// The data.
        data: &'a [u8],
    },
    /// FLUSH CACHE (EXT).
    Flush,
    /// IDENTIFY DEVICE.
    Identify,
}

/// Where a request goes: the Ethernet addresses and the shelf.slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The target's MAC (or broadcast).
    pub dst: Mac,
    /// The local interface's MAC.
    pub src: Mac,
    /// Shelf.
    pub shelf: u16,
    /// Slot.
    pub slot: u8,
}

fn head(out: &mut Vec<u8>, to: &Address, command: Command, tag: u32) {
    let h = Header {
        version: AOE_VERSION,
        flags: 0,
        error: 0,
        shelf: to.shelf,
        slot: to.slot,
        command,
        tag,
    };
    encode_headers(out, to.dst, to.src, &h);
}

/// A whole ATA request frame; `lba48` picks the EXT commands and 48-bit
/// addresses (else LBA28, with the LBA-mode bits set as ATA asks).
pub fn ata_request(to: &Address, tag: u32, cmd: AtaCommand<'_>, lba48: bool) -> Vec<u8> {
    let ext = if lba48 { AFLAG_EXTENDED } else { 0 };
    let (aflags, command, sectors, lba, data): (u8, u8, u8, u64, &[u8]) = match cmd {
        AtaCommand::Read { lba, sectors } => (
            ext,
            if lba48 { CMD_READ_EXT } else { CMD_READ },
            sectors,
            lba,
            &[],
        ),
        AtaCommand::Write { lba, data } => (
            ext | AFLAG_WRITE,
            if lba48 { CMD_WRITE_EXT } else { CMD_WRITE },
            (data.len() / aoe_proto::frame::SECTOR_SIZE) as u8,
            lba,
            data,
        ),
        AtaCommand::Flush => (
            ext,
            if lba48 { CMD_FLUSH_EXT } else { CMD_FLUSH },
            0,
            0,
            &[],
        ),
        AtaCommand::Identify => (0, CMD_IDENTIFY, 1, 0, &[]),
    };
    let mut arg = AtaArg {
        aflags,
        err_feature: 0,
        sector_count: sectors,
        cmd_status: command,
        lba: [0; 6],
    };
    arg.set_lba(lba);
    if !lba48 {
        arg.lba[3] = (arg.lba[3] & 0x0f) | 0xe0;
    }
    let mut out = Vec::with_capacity(aoe_proto::frame::ATA_DATA_OFFSET + data.len());
    head(&mut out, to, Command::Ata, tag);
    arg.encode(&mut out);
    out.extend_from_slice(data);
    pad_min(&mut out);
    out
}

/// A Query Config read: to one target, or with a broadcast `to` (shelf,
/// slot and MAC) the discovery of every target on the wire.
pub fn config_query(to: &Address, tag: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    head(&mut out, to, Command::QueryConfig, tag);
    ConfigArg {
        buffer_count: 0,
        firmware: 0,
        max_sectors: 0,
        aoe_version: AOE_VERSION,
        ccmd: ConfigCommand::Read,
        config: Vec::new(),
    }
    .encode(&mut out);
    pad_min(&mut out);
    out
}

/// The broadcast Query Config that discovers every target reachable from
/// the interface with MAC `src`.
pub fn discovery(src: Mac, tag: u32) -> Vec<u8> {
    config_query(
        &Address {
            dst: Mac::BROADCAST,
            src,
            shelf: BROADCAST_SHELF,
            slot: BROADCAST_SLOT,
        },
        tag,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aoe_proto::frame::Frame;

    #[test]
    fn requests_decode_as_what_they_ask() {
        let to = Address {
            dst: Mac([4; 6]),
            src: Mac([2; 6]),
            shelf: 3,
            slot: 9,
        };
        let data = vec![7u8; 1024];
        for lba48 in [false, true] {
            let f = ata_request(
                &to,
                42,
                AtaCommand::Write {
                    lba: 0x0123_4567,
                    data: &data,
                },
                lba48,
            );
            let fr = Frame::decode(&f).unwrap();
            assert_eq!((fr.header.shelf, fr.header.slot, fr.header.tag), (3, 9, 42));
            assert_eq!((fr.dst, fr.src), (to.dst, to.src));
            let (arg, rest) = AtaArg::decode(fr.payload).unwrap();
            assert_eq!(arg.lba(), 0x0123_4567);
            assert_eq!(arg.sector_count, 2);
            assert_eq!(arg.aflags & AFLAG_WRITE, AFLAG_WRITE);
            assert_eq!(arg.aflags & AFLAG_EXTENDED != 0, lba48);
            assert_eq!(rest, &data[..]);
        }
        let d = discovery(Mac([2; 6]), 5);
        let fr = Frame::decode(&d).unwrap();
        assert_eq!(fr.dst, Mac::BROADCAST);
        assert_eq!((fr.header.shelf, fr.header.slot), (0xffff, 0xff));
        assert_eq!(
            ConfigArg::decode(fr.payload).unwrap().ccmd,
            ConfigCommand::Read
        );
    }
}
