//! Reading an IDENTIFY DEVICE page, the 512 bytes a target answers
//! IDENTIFY DEVICE with: what an initiator needs to size and name a disk.
//!
//! The page is 256 words, little-endian on the wire (ATA8-ACS 7.16). Strings
//! hold two characters per word, the first in the high byte, padded with
//! spaces (or left zero), which are not part of the text. Building a page is the target's business (it is emulation); the
//! words read here are the ones the Linux `aoe` driver reads to size a disk,
//! plus the names.

use crate::frame::{FrameError, SECTOR_SIZE};

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
        Ok(Identify {
            sectors,
            lba48,
            serial: string(10, 20),
            firmware: string(23, 27),
            model: string(27, 47),
            write_cache: w85_valid && word(85) & (1 << 5) != 0,
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
        fn any_page_parses_or_fails_cleanly(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Identify::parse(&b);
        }
    }
}
