//! Reading an IDENTIFY DEVICE page, the 512 bytes a target answers
//! IDENTIFY DEVICE with: what an initiator needs to size and name a disk,
//! and the disk's whole identity, which both roles write and read here.
//!
//! The page is 256 words, little-endian on the wire (ATA8-ACS 7.16). Strings
//! hold two characters per word, the first in the high byte, padded with
//! spaces (or left zero), which are not part of the text. Building a page is
//! the target's business (it is emulation); the words read here are the ones
//! the Linux `aoe` driver reads to size a disk, plus the names.
//!
//! The identity ([`DeviceIdentity`]) crosses in three places
//! ([`put_identity`] writes them, [`Identify::parse`] reads them back):
//! - the serial in words 10-19, as every ATA disk has it;
//! - a world wide name in words 108-111, NAA 5 with 60 bits of the uuid
//!   (unchanged since the first release);
//! - the whole uuid in the vendor-specific words 129-159 (ACS-3 7.12.7.62):
//!   words 129-146 hold the ATA string `OPIE` followed by the uuid as 32
//!   lower-case hex digits, the same text the SCSI side puts in its T10
//!   vendor ID designator.
//!
//! The Query Config string is not used: AoE r11 gives it to the initiators
//! (they set it, and claim a target by setting it only while it is empty), so
//! a target may not fill it with anything of its own.

use blockdev::DeviceIdentity;

use crate::frame::{FrameError, SECTOR_SIZE};

/// The IDENTIFY words that carry the identity tag and the uuid.
pub const IDENTITY_WORDS: std::ops::Range<usize> = 129..147;

/// The tag that opens the identity words.
const IDENTITY_TAG: &str = "OPIE";

/// Writes an ATA string (two characters per word, first in the high byte),
/// space padded, into `words`; characters other than printable ASCII are
/// left out.
pub fn put_string(words: &mut [u16], s: &str) {
    let mut bytes = s.bytes().filter(|b| b.is_ascii_graphic() || *b == b' ');
    for w in words.iter_mut() {
        let hi = bytes.next().unwrap_or(b' ');
        let lo = bytes.next().unwrap_or(b' ');
        *w = u16::from_be_bytes([hi, lo]);
    }
}

/// Writes `id` into the words of an IDENTIFY page: the serial, the world
/// wide name and the identity words.
pub fn put_identity(words: &mut [u16; 256], id: &DeviceIdentity) {
    put_string(&mut words[10..20], &id.serial);
    let eui = id.eui64();
    let mut wwn = [0u8; 8];
    wwn[0] = 0x50 | (eui[0] & 0x0f);
    wwn[1..].copy_from_slice(&eui[1..]);
    for (i, pair) in wwn.chunks(2).enumerate() {
        words[108 + i] = u16::from_be_bytes([pair[0], pair[1]]);
    }
    put_string(&mut words[IDENTITY_WORDS], &format!("{IDENTITY_TAG}{id}"));
}

/// What an IDENTIFY DEVICE page says about a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identify {
    /// Capacity in 512-byte sectors: words 100-103 when the 48-bit address
    /// feature set is supported, else words 60-61.
    pub sectors: u64,
    /// Whether the 48-bit address feature set is supported (word 83 bit 10):
    /// the EXT commands address the whole disk.
    pub lba48: bool,
    /// Serial number (words 10-19), without padding (spaces, NULs).
    pub serial: String,
    /// Firmware revision (words 23-26), without padding.
    pub firmware: String,
    /// Model number (words 27-46), without padding.
    pub model: String,
    /// Whether a volatile write cache is enabled (word 85 bit 5): writes may
    /// be acknowledged before they are durable, until FLUSH CACHE.
    pub write_cache: bool,
    /// The disk's whole identity: the serial and the uuid of the identity
    /// words. None when the page has no identity words (not an opie disk)
    /// or its serial is not a valid one.
    pub identity: Option<DeviceIdentity>,
}

impl Identify {
    /// Reads the page at the start of `page` (the data of an IDENTIFY reply).
    /// A page with the integrity signature (0xA5 in word 255's low byte) must
    /// have a zero byte sum.
    pub fn parse(page: &[u8]) -> Result<Identify, FrameError> {
        let page = page
            .get(..SECTOR_SIZE)
            .ok_or(FrameError::Truncated("IDENTIFY DEVICE page"))?;
        let word = |i: usize| u16::from_le_bytes([page[2 * i], page[2 * i + 1]]);
        if page[510] == 0xA5 && page.iter().fold(0u8, |a, b| a.wrapping_add(*b)) != 0 {
            return Err(FrameError::Bad("IDENTIFY DEVICE checksum"));
        }
        // Word 83 holds feature bits only when bits 15:14 are 01.
        let w83 = word(83);
        let lba48 = w83 & 0xC000 == 0x4000 && w83 & (1 << 10) != 0;
        let sectors = if lba48 {
            (0..4).fold(0u64, |s, i| s | u64::from(word(100 + i)) << (16 * i))
        } else {
            u64::from(word(60)) | u64::from(word(61)) << 16
        };
        let w85_valid = word(87) & 0xC000 == 0x4000;
        let string = |from: usize, to: usize| {
            let bytes: Vec<u8> = (from..to).flat_map(|i| word(i).to_be_bytes()).collect();
            String::from_utf8_lossy(&bytes)
                .trim_matches(|c: char| c == ' ' || c == '\0')
                .to_string()
        };
        let serial = string(10, 20);
        let tagged = string(IDENTITY_WORDS.start, IDENTITY_WORDS.end);
        let identity = tagged
            .strip_prefix(IDENTITY_TAG)
            .and_then(DeviceIdentity::parse_hex)
            .filter(|_| DeviceIdentity::is_valid_serial(&serial))
            .map(|id| DeviceIdentity {
                uuid: id.uuid,
                serial: serial.clone(),
            });
        Ok(Identify {
            sectors,
            lba48,
            serial,
            firmware: string(23, 27),
            model: string(27, 47),
            write_cache: w85_valid && word(85) & (1 << 5) != 0,
            identity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A page with `words` set (index, value) and `model` in words 27-46.
    fn page(words: &[(usize, u16)], model: &str) -> Vec<u8> {
        let mut p = vec![0u8; SECTOR_SIZE];
        for &(i, w) in words {
            p[2 * i..2 * i + 2].copy_from_slice(&w.to_le_bytes());
        }
        for (k, pair) in model.as_bytes().chunks(2).enumerate() {
            let i = 27 + k;
            p[2 * i + 1] = pair[0];
            p[2 * i] = *pair.get(1).unwrap_or(&b' ');
        }
        p
    }

    /// Fills in the integrity word of a page.
    fn sign(p: &mut [u8]) {
        p[510] = 0xA5;
        let sum = p[..511].iter().fold(0u8, |a, b| a.wrapping_add(*b));
        p[511] = sum.wrapping_neg();
    }

    /// A signed page holding only `id`.
    fn identity_page(id: &DeviceIdentity) -> Vec<u8> {
        let mut w = [0u16; 256];
        put_identity(&mut w, id);
        let mut p: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        sign(&mut p);
        p
    }

    #[test]
    fn identity_words_as_sent() {
        let id = DeviceIdentity::from_name("disk7");
        let p = identity_page(&id);
        let text: Vec<u8> = (129..147).flat_map(|i| [p[2 * i + 1], p[2 * i]]).collect();
        assert_eq!(text, format!("OPIE{id}").into_bytes());
        assert_eq!(p[2 * 147..2 * 160], [0u8; 26]);
        // The world wide name, NAA 5, as before.
        assert_eq!(p[2 * 108 + 1] >> 4, 5);
        let parsed = Identify::parse(&p).unwrap();
        assert_eq!(parsed.serial, id.serial);
        assert_eq!(parsed.identity, Some(id));
    }

    #[test]
    fn a_page_without_valid_identity_words_has_no_identity() {
        let p = identity_page(&DeviceIdentity::from_name("x"));
        // Another tag (another vendor's words), a bad hex digit, a serial
        // with a space in it: no identity.
        for (byte, value) in [(2 * 129 + 1, b'X'), (2 * 146, b'g'), (2 * 12, b' ')] {
            let mut q = p.clone();
            q[byte] = value;
            sign(&mut q);
            assert_eq!(Identify::parse(&q).unwrap().identity, None, "byte {byte}");
        }
    }

    fn identity() -> impl Strategy<Value = DeviceIdentity> {
        (any::<[u8; 16]>(), "[!-~]{1,20}")
            .prop_map(|(uuid, serial)| DeviceIdentity { uuid, serial })
    }

    #[test]
    fn capacity_follows_the_address_feature_set() {
        let words = [(60, 0xFFFF), (61, 0x0FFF), (100, 5), (101, 0), (102, 1)];
        let mut w = words.to_vec();
        w.push((83, 0x4000 | 1 << 10));
        let p = Identify::parse(&page(&w, "Disk X")).unwrap();
        assert!(p.lba48);
        assert_eq!(p.sectors, (1 << 32) + 5);
        assert_eq!(p.model, "Disk X");
        // Bit 10 without the validity pattern counts for nothing.
        w.pop();
        w.push((83, 1 << 10));
        let p = Identify::parse(&page(&w, "")).unwrap();
        assert!(!p.lba48);
        assert_eq!(p.sectors, 0x0FFF_FFFF);
    }

    #[test]
    fn a_signed_page_must_sum_to_zero() {
        let mut p = page(&[(255, 0x00A5)], "m");
        assert_eq!(
            Identify::parse(&p),
            Err(FrameError::Bad("IDENTIFY DEVICE checksum"))
        );
        let sum = p[..511].iter().fold(0u8, |a, b| a.wrapping_add(*b));
        p[511] = sum.wrapping_neg();
        assert_eq!(Identify::parse(&p).unwrap().model, "m");
        assert_eq!(
            Identify::parse(&p[..511]),
            Err(FrameError::Truncated("IDENTIFY DEVICE page"))
        );
    }

    proptest! {
        #[test]
        fn any_identity_reads_back_whole(id in identity()) {
            let parsed = Identify::parse(&identity_page(&id)).unwrap();
            prop_assert_eq!(parsed.identity, Some(id));
        }

        #[test]
        fn any_page_parses_or_fails_cleanly(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Identify::parse(&b);
        }
    }
}
