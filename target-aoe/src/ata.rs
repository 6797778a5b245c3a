//! ATA emulation: command classification and IDENTIFY DEVICE data. The
//! registers themselves (opcodes, status and error bits) are wire format, in
//! [`aoe_proto::ata`]; the registers of each outcome, in
//! [`aoe_proto::outcome`].

use aoe_proto::ata::{
    CMD_CHECK_POWER, CMD_FLUSH, CMD_FLUSH_EXT, CMD_IDENTIFY, CMD_READ, CMD_READ_DMA,
    CMD_READ_DMA_EXT, CMD_READ_EXT, CMD_WRITE, CMD_WRITE_DMA, CMD_WRITE_DMA_EXT, CMD_WRITE_EXT,
    LBA28_LIMIT,
};
use aoe_proto::frame::{AtaArg, AFLAG_EXTENDED, SECTOR_SIZE};
use aoe_proto::identify::{put_identity, put_string};
use blockdev::DeviceIdentity;

/// Firmware revision reported in IDENTIFY and Query Config.
pub const FIRMWARE_VERSION: u16 = 0x0001;

/// What an ATA command asks of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtaOp {
    /// IDENTIFY DEVICE.
    Identify,
    /// Read `sectors` sectors at `lba`.
    Read {
        /// First sector.
        lba: u64,
        /// Sector count (1..=255).
        sectors: u32,
    },
    /// Write `sectors` sectors at `lba` (data follows the argument).
    Write {
        /// First sector.
        lba: u64,
        /// Sector count.
        sectors: u32,
    },
    /// FLUSH CACHE (EXT).
    Flush,
    /// CHECK POWER MODE.
    CheckPower,
    /// Anything else: aborted.
    Unsupported(u8),
}

impl AtaOp {
    /// Classifies the command of `arg`.
    ///
    /// The address form follows the E flag of the AoE argument, as r11
    /// specifies. A sector count of 0 stands for 256 (LBA28) or 65536 (LBA48)
    /// sectors, more than any frame holds; the caller rejects it.
    pub fn classify(arg: &AtaArg) -> AtaOp {
        let sectors = u32::from(arg.sector_count);
        let sectors = if sectors == 0 {
            if arg.aflags & AFLAG_EXTENDED != 0 {
                65536
            } else {
                256
            }
        } else {
            sectors
        };
        match arg.cmd_status {
            CMD_IDENTIFY => AtaOp::Identify,
            CMD_READ | CMD_READ_EXT | CMD_READ_DMA | CMD_READ_DMA_EXT => AtaOp::Read {
                lba: arg.lba(),
                sectors,
            },
            CMD_WRITE | CMD_WRITE_EXT | CMD_WRITE_DMA | CMD_WRITE_DMA_EXT => AtaOp::Write {
                lba: arg.lba(),
                sectors,
            },
            CMD_FLUSH | CMD_FLUSH_EXT => AtaOp::Flush,
            CMD_CHECK_POWER => AtaOp::CheckPower,
            other => AtaOp::Unsupported(other),
        }
    }
}

/// Inputs of the IDENTIFY DEVICE page.
#[derive(Debug, Clone)]
pub struct IdentifyParams<'a> {
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    /// Stable identity (serial number, world wide name, the identity words:
    /// [`aoe_proto::identify::put_identity`]).
    pub identity: &'a DeviceIdentity,
    /// Model string (at most 40 characters).
    pub model: &'a str,
    /// Whether a volatile write cache is on (write-back mode).
    pub write_cache: bool,
    /// The device's limits (word 47: sectors per READ/WRITE MULTIPLE block,
    /// at most its maximum transfer).
    pub limits: blockdev::Limits,
}

/// Builds the 512-byte IDENTIFY DEVICE page (words little-endian, as the wire carries them).
pub fn identify_page(p: &IdentifyParams<'_>) -> [u8; SECTOR_SIZE] {
    let mut w = [0u16; 256];
    let lba28 = p.sectors.min(LBA28_LIMIT);
    // Legacy CHS geometry for hosts that still look at it.
    let cyls = (p.sectors / (16 * 63)).min(16383) as u16;
    w[0] = 0x0040; // fixed, non-removable ATA device
    w[1] = cyls;
    w[3] = 16;
    w[6] = 63;
    put_identity(&mut w, p.identity);
    put_string(&mut w[23..27], &format!("opie{FIRMWARE_VERSION:04x}"));
    put_string(&mut w[27..47], p.model);
    // READ/WRITE MULTIPLE: up to 128 sectors a block, and no more than the
    // device takes in one call.
    let multiple = match p.limits.max_transfer {
        0 => 128,
        m => m.min(128) as u16,
    };
    w[47] = 0x8000 | multiple;
    w[49] = (1 << 9) | (1 << 8); // LBA and DMA supported
    w[50] = 0x4000;
    w[53] = 0x0006; // words 64-70 and 88 valid
    w[54] = cyls;
    w[55] = 16;
    w[56] = 63;
    let chs = u32::from(cyls) * 16 * 63;
    w[57] = chs as u16;
    w[58] = (chs >> 16) as u16;
    w[59] = 0x0100 | 0x80;
    w[60] = lba28 as u16;
    w[61] = (lba28 >> 16) as u16;
    w[63] = 0x0007; // multiword DMA 0-2 supported
    w[64] = 0x0003; // PIO 3-4
    w[65] = 120;
    w[66] = 120;
    w[67] = 120;
    w[68] = 120;
    w[80] = 0x01F0; // ATA/ATAPI-4 .. ACS-? major versions
                    // Word 82: bit 5 write cache supported. Word 83: bit 14 valid, 13 FLUSH CACHE EXT,
                    // 12 FLUSH CACHE, 10 48-bit address feature set.
    w[82] = 1 << 5;
    w[83] = (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10);
    w[84] = 1 << 14;
    w[85] = if p.write_cache { 1 << 5 } else { 0 };
    w[86] = (1 << 13) | (1 << 12) | (1 << 10);
    w[87] = 1 << 14;
    w[88] = 0x203F; // UDMA 0-5 supported, mode 5 selected
    for (i, chunk) in p.sectors.to_le_bytes().chunks(2).enumerate() {
        w[100 + i] = u16::from_le_bytes([chunk[0], chunk[1]]);
    }
    w[106] = 1 << 14; // word valid; one logical sector per physical, 512 bytes
    w[255] = 0x00A5; // integrity word signature; checksum filled below
    let mut page = [0u8; SECTOR_SIZE];
    for (i, word) in w.iter().enumerate() {
        page[2 * i..2 * i + 2].copy_from_slice(&word.to_le_bytes());
    }
    let sum = page[..511].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    page[511] = sum.wrapping_neg();
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use aoe_proto::identify::Identify;

    fn word(p: &[u8], i: usize) -> u16 {
        u16::from_le_bytes([p[2 * i], p[2 * i + 1]])
    }

    /// The page reads back, through the initiator's parser, as what it was
    /// built from.
    #[test]
    fn identify_carries_capacity_serial_model_and_lba48() {
        let id = DeviceIdentity::from_name("disk7");
        for (sectors, write_cache) in [
            (131_072u64, false),
            (LBA28_LIMIT + 5, true),
            (1 << 40, false),
        ] {
            let p = identify_page(&IdentifyParams {
                sectors,
                identity: &id,
                model: "opie AoE disk",
                write_cache,
                limits: blockdev::Limits::default(),
            });
            let parsed = Identify::parse(&p).unwrap();
            assert_eq!(
                parsed,
                Identify {
                    sectors,
                    lba48: true,
                    serial: id.serial.clone(),
                    firmware: "opie0001".into(),
                    model: "opie AoE disk".into(),
                    write_cache,
                    identity: Some(id.clone()),
                }
            );
            // LBA28 commands see at most what they can address.
            let lba28 = u64::from(word(&p, 60)) | u64::from(word(&p, 61)) << 16;
            assert_eq!(lba28, sectors.min(LBA28_LIMIT));
            assert_ne!(word(&p, 86) & (1 << 10), 0);
            assert_eq!(p.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            assert_eq!(p[510], 0xA5);
            assert_eq!(word(&p, 47), 0x8080, "READ/WRITE MULTIPLE: 128 sectors");
        }
    }

    #[test]
    fn classify_address_forms() {
        let mut a = AtaArg {
            aflags: AFLAG_EXTENDED,
            sector_count: 0,
            cmd_status: CMD_READ_EXT,
            ..AtaArg::default()
        };
        a.set_lba(0x1234_5678_9abc);
        assert_eq!(
            AtaOp::classify(&a),
            AtaOp::Read {
                lba: 0x1234_5678_9abc,
                sectors: 65536
            }
        );
        a.aflags = 0;
        a.cmd_status = CMD_WRITE_DMA;
        a.sector_count = 3;
        assert_eq!(
            AtaOp::classify(&a),
            AtaOp::Write {
                lba: 0x0678_9abc,
                sectors: 3
            }
        );
        a.cmd_status = 0xB0;
        assert_eq!(AtaOp::classify(&a), AtaOp::Unsupported(0xB0));
    }
}
