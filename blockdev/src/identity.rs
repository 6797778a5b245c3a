use std::fmt;

/// Stable identity of a block device: the same through every path (iSCSI
/// portal, AoE interface) and across restarts.
///
/// The whole identity, the 128-bit `uuid` and the `serial`, crosses both
/// wires intact, so an initiator recovers exactly this value from what the
/// target reports: SCSI carries the serial in VPD page 0x80 and the uuid in a
/// T10 vendor ID designator of VPD page 0x83 (`scsi_disk::identification`),
/// ATA the serial in IDENTIFY DEVICE words 10-19 and the uuid in its
/// vendor-specific words (`aoe_proto::identify`). The older, shorter
/// designators derived from the uuid ([`DeviceIdentity::naa6`],
/// [`DeviceIdentity::eui64`]) stay beside them for the names initiators
/// already use.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DeviceIdentity {
    /// 128 random bits fixed when the device was created.
    pub uuid: [u8; 16],
    /// Serial number: 1 to 20 printable ASCII characters without spaces (the
    /// ATA field's size; see [`DeviceIdentity::is_valid_serial`]).
    pub serial: String,
}

impl DeviceIdentity {
    /// Builds an identity from its 128 bits; the serial is the first 10 bytes in hex.
    pub fn from_uuid(uuid: [u8; 16]) -> Self {
        let serial = uuid[..10].iter().map(|b| format!("{b:02X}")).collect();
        DeviceIdentity { uuid, serial }
    }

    /// Whether `s` can be a serial number: 1 to 20 printable ASCII
    /// characters without spaces, so that it survives both wires' padding.
    pub fn is_valid_serial(s: &str) -> bool {
        (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
    }

    /// A fresh random identity (for devices created now).
    pub fn random() -> Self {
        Self::from_uuid(rand::random())
    }

    /// A deterministic identity derived from a name, for tests and scratch devices.
    pub fn from_name(name: &str) -> Self {
        // FNV-1a over two lanes: stable, dependency-free, not security relevant.
        let mut uuid = [0u8; 16];
        for (lane, chunk) in uuid.chunks_mut(8).enumerate() {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (lane as u64);
            for b in name.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            chunk.copy_from_slice(&h.to_be_bytes());
        }
        Self::from_uuid(uuid)
    }

    /// Parses the 32-hex-digit form written by [`fmt::Display`].
    pub fn parse_hex(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut uuid = [0u8; 16];
        for (i, b) in uuid.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self::from_uuid(uuid))
    }

    /// NAA type 6 (IEEE Registered Extended) designator, 16 bytes, for SCSI VPD 0x83.
    /// Uses an IEEE company id from the locally administered range and 100 bits of the uuid.
    pub fn naa6(&self) -> [u8; 16] {
        // NAA(4)=6 | OUI(24) | vendor specific id (36) | vendor specific extension (64)
        const OUI: u32 = 0x0A_0B_0C; // locally administered ("opie") company id
        let mut d = [0u8; 16];
        d[0] = 0x60 | ((OUI >> 20) & 0x0f) as u8;
        d[1] = (OUI >> 12) as u8;
        d[2] = (OUI >> 4) as u8;
        d[3] = ((OUI & 0x0f) as u8) << 4 | (self.uuid[0] & 0x0f);
        d[4..16].copy_from_slice(&self.uuid[1..13]);
        d
    }

    /// EUI-64 based 8-byte designator (for AoE/ATA world wide name and multipath ids).
    pub fn eui64(&self) -> [u8; 8] {
        let mut d = [0u8; 8];
        d.copy_from_slice(&self.uuid[..8]);
        d
    }
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.uuid {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceIdentity({self}, serial {})", self.serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_stable_name() {
        let a = DeviceIdentity::from_name("disk0");
        assert_eq!(a, DeviceIdentity::from_name("disk0"));
        assert_ne!(a, DeviceIdentity::from_name("disk1"));
        assert_eq!(DeviceIdentity::parse_hex(&a.to_string()), Some(a.clone()));
        assert_eq!(a.serial.len(), 20);
        assert_eq!(a.naa6()[0] >> 4, 6);
        assert!(DeviceIdentity::parse_hex("xyz").is_none());
        assert!(DeviceIdentity::is_valid_serial(&a.serial));
    }

    #[test]
    fn serials_are_short_printable_and_unpadded() {
        assert!(DeviceIdentity::is_valid_serial("A"));
        assert!(DeviceIdentity::is_valid_serial("~!09azAZ-_./12345678"));
        assert!(!DeviceIdentity::is_valid_serial(""));
        assert!(!DeviceIdentity::is_valid_serial("123456789012345678901"));
        assert!(!DeviceIdentity::is_valid_serial("has space"));
        assert!(!DeviceIdentity::is_valid_serial("nul\0"));
        assert!(!DeviceIdentity::is_valid_serial("é"));
    }
}
