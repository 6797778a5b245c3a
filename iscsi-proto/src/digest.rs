//! Header and data digests (RFC 7143 §13.1): CRC32C, sent least significant
//! byte first, over the BHS and AHS (header digest) or the data segment and
//! its padding (data digest).

/// Which digest a connection uses on one of its two streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Digest {
    /// No digest.
    #[default]
    None,
    /// CRC32C (Castagnoli).
    Crc32c,
}

impl Digest {
    /// Bytes the digest occupies on the wire.
    pub fn len(self) -> usize {
        match self {
            Digest::None => 0,
            Digest::Crc32c => 4,
        }
    }

    /// Whether the digest is absent (occupies no bytes).
    pub fn is_empty(self) -> bool {
        self == Digest::None
    }
}

/// CRC32C over several slices, as the wire value (little-endian bytes).
pub fn crc32c_of(parts: &[&[u8]]) -> [u8; 4] {
    let mut crc = 0u32;
    for p in parts {
        crc = crc32c::crc32c_append(crc, p);
    }
    crc.to_le_bytes()
}

/// The data digest of a segment: its bytes plus zero padding to 4 bytes.
pub fn data_digest(data: &[u8]) -> [u8; 4] {
    let pad = crate::pdu::pad_len(data.len());
    crc32c_of(&[data, &[0u8; 3][..pad]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // RFC 7143 B.4: 32 bytes of zeroes give CRC 0x8a9136aa, sent aa 36 91 8a.
        assert_eq!(crc32c_of(&[&[0u8; 32]]), [0xaa, 0x36, 0x91, 0x8a]);
        // 32 bytes of 0xff: 0x62a8ab43.
        assert_eq!(crc32c_of(&[&[0xffu8; 32]]), [0x43, 0xab, 0xa8, 0x62]);
    }

    #[test]
    fn split_equals_whole() {
        let data: Vec<u8> = (0..100u8).collect();
        assert_eq!(crc32c_of(&[&data[..37], &data[37..]]), crc32c_of(&[&data]));
        // padding counts: 3 data bytes are digested with one zero byte.
        assert_eq!(data_digest(&[1, 2, 3]), crc32c_of(&[&[1, 2, 3, 0]]));
    }
}
