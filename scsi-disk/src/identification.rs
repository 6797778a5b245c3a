//! How a disk's identity crosses SCSI, both ways: the logical unit's
//! designators this target puts in the Device Identification VPD page
//! (0x83), and the reading of that page and of the Unit Serial Number page
//! (0x80) back into a [`DeviceIdentity`], as the head's initiator does.
//!
//! The page carries two designators of the logical unit:
//! - first, as since the first release, an NAA IEEE Registered Extended
//!   designator ([`DeviceIdentity::naa6`]): 100 bits of the uuid behind a
//!   fixed company id. Linux (udev's `ID_SERIAL`, `/dev/disk/by-id/wwn-*`,
//!   the kernel's `wwid`) and multipath name the disk by it, so it stays
//!   as it is;
//! - then a T10 vendor ID based designator (SPC-4 7.8.6.4, code set ASCII):
//!   T10 VENDOR IDENTIFICATION `OPIE` (space padded to 8 bytes, as in the
//!   standard INQUIRY data) followed by the whole 128-bit uuid as 32
//!   lower-case hex digits. Initiators rank a T10 vendor ID designator below
//!   an NAA one, so it names nothing they named otherwise.
//!
//! No designator can hold the 128 bits in a standard binary form (an NAA 6
//! value has 100 bits beside its company id, an EUI-64 based 16-byte one
//! 104); a SCSI name string of the logical unit could, but Linux ranks it
//! above NAA and would rename every disk.
//!
//! The serial ([`DeviceIdentity::serial`]) is the Unit Serial Number page's
//! PRODUCT SERIAL NUMBER, unpadded.

use blockdev::DeviceIdentity;

/// The T10 VENDOR IDENTIFICATION of the identity designator, as in the
/// standard INQUIRY data.
pub const T10_VENDOR: &[u8; 8] = b"OPIE    ";

/// Designator type: T10 vendor ID based.
const TYPE_T10: u8 = 0x1;
/// Designator type: NAA.
const TYPE_NAA: u8 = 0x3;
/// Code set: binary.
const CODE_SET_BINARY: u8 = 0x1;
/// Code set: ASCII.
const CODE_SET_ASCII: u8 = 0x2;

/// Why a pair of VPD pages gives no identity, and so whether the disk can
/// be used: a malformed page means a broken target (do not use the disk),
/// a page without the opie designator a foreign disk (it cannot be a RAID
/// member), an inconsistent one a target that lies (do not use it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentificationError {
    /// The page is not the one asked for, or is cut short (an allocation
    /// length too small for it) or its structure is broken.
    #[error("VPD page {page:#04x}: {what}")]
    Malformed {
        /// The page that was expected.
        page: u8,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The Device Identification page has no opie identity designator: the
    /// disk is not one of opie's.
    #[error("no opie identity designator in the Device Identification page")]
    NotOpie,
    /// The NAA designator is opie's but not the one the identity designator
    /// implies.
    #[error("the NAA designator disagrees with the identity designator")]
    Inconsistent,
    /// The unit serial number is not a valid serial (see
    /// [`DeviceIdentity::is_valid_serial`]).
    #[error("unit serial number {0:?} is not 1 to 20 printable characters")]
    BadSerial(String),
}

/// One designator of a Device Identification page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Designator<'a> {
    /// PROTOCOL IDENTIFIER (meaningful when `piv` is set).
    pub protocol: u8,
    /// CODE SET: 1 binary, 2 ASCII, 3 UTF-8.
    pub code_set: u8,
    /// PROTOCOL IDENTIFIER VALID.
    pub piv: bool,
    /// ASSOCIATION: 0 the logical unit, 1 the target port, 2 the target device.
    pub association: u8,
    /// DESIGNATOR TYPE.
    pub kind: u8,
    /// The designator itself.
    pub value: &'a [u8],
}

/// Appends one designator descriptor (SPC-4 7.8.6.1) to a Device
/// Identification page body.
pub(crate) fn put_designator(
    out: &mut Vec<u8>,
    proto_codeset: u8,
    piv_assoc_type: u8,
    value: &[u8],
) {
    out.push(proto_codeset);
    out.push(piv_assoc_type);
    out.push(0);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// The identity designator's value: [`T10_VENDOR`] and the uuid in hex.
fn t10_value(id: &DeviceIdentity) -> Vec<u8> {
    let mut v = T10_VENDOR.to_vec();
    v.extend_from_slice(hex::encode(id.uuid).as_bytes());
    v
}

/// Appends the logical unit's designators: the NAA one, then the identity one.
pub(crate) fn put_lu_designators(out: &mut Vec<u8>, id: &DeviceIdentity) {
    put_designator(out, CODE_SET_BINARY, TYPE_NAA, &id.naa6());
    put_designator(out, CODE_SET_ASCII, TYPE_T10, &t10_value(id));
}

/// The body of VPD page `code` (`page` with its 4-byte header), checked.
fn body(page: &[u8], code: u8) -> Result<&[u8], IdentificationError> {
    let bad = |what| IdentificationError::Malformed { page: code, what };
    if page.len() < 4 {
        return Err(bad("shorter than its header"));
    }
    if page[1] != code {
        return Err(bad("another page"));
    }
    let len = usize::from(u16::from_be_bytes([page[2], page[3]]));
    page.get(4..4 + len).ok_or(bad("cut short"))
}

/// The designators of a Device Identification page (0x83, with its header).
pub fn designators(page: &[u8]) -> Result<Vec<Designator<'_>>, IdentificationError> {
    let mut rest = body(page, 0x83)?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (head, tail) = rest
            .split_at_checked(4)
            .ok_or(IdentificationError::Malformed {
                page: 0x83,
                what: "a designator header cut short",
            })?;
        let (value, tail) =
            tail.split_at_checked(usize::from(head[3]))
                .ok_or(IdentificationError::Malformed {
                    page: 0x83,
                    what: "a designator cut short",
                })?;
        out.push(Designator {
            protocol: head[0] >> 4,
            code_set: head[0] & 0x0f,
            piv: head[1] & 0x80 != 0,
            association: (head[1] >> 4) & 0x03,
            kind: head[1] & 0x0f,
            value,
        });
        rest = tail;
    }
    Ok(out)
}

/// The serial number of a Unit Serial Number page (0x80, with its header),
/// without the padding SPC-4 allows around it.
pub fn unit_serial(page: &[u8]) -> Result<String, IdentificationError> {
    let raw = body(page, 0x80)?;
    let text = String::from_utf8_lossy(raw);
    let serial = text.trim_matches(|c| c == ' ' || c == '\0');
    if !DeviceIdentity::is_valid_serial(serial) {
        return Err(IdentificationError::BadSerial(serial.to_string()));
    }
    Ok(serial.to_string())
}

/// The identity of a disk from its Unit Serial Number (0x80) and Device
/// Identification (0x83) pages, as INQUIRY returns them: the inverse of
/// what this target reports, for any identity.
pub fn identity_from_vpd(
    vpd80: &[u8],
    vpd83: &[u8],
) -> Result<DeviceIdentity, IdentificationError> {
    let serial = unit_serial(vpd80)?;
    let ds = designators(vpd83)?;
    let lu = |kind| {
        ds.iter()
            .filter(move |d| d.association == 0 && d.kind == kind)
            .map(|d| d.value)
    };
    let uuid = lu(TYPE_T10)
        .filter(|v| v.len() == 40 && v[..8] == T10_VENDOR[..])
        .find_map(|v| {
            let mut uuid = [0u8; 16];
            hex::decode_to_slice(&v[8..], &mut uuid).ok()?;
            Some(uuid)
        })
        .ok_or(IdentificationError::NotOpie)?;
    let id = DeviceIdentity { uuid, serial };
    // An NAA designator under opie's company id must be this identity's.
    let naa = id.naa6();
    let ours = |v: &[u8]| v.len() == 16 && v[..3] == naa[..3] && v[3] >> 4 == naa[3] >> 4;
    if lu(TYPE_NAA).any(|v| ours(v) && v != naa) {
        return Err(IdentificationError::Inconsistent);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A page as the target builds it: header and body.
    fn page(code: u8, body: &[u8]) -> Vec<u8> {
        let mut p = vec![0, code];
        p.extend_from_slice(&(body.len() as u16).to_be_bytes());
        p.extend_from_slice(body);
        p
    }

    fn pages(id: &DeviceIdentity) -> (Vec<u8>, Vec<u8>) {
        let mut d = Vec::new();
        put_lu_designators(&mut d, id);
        // A target port designator after them, as the real page has.
        put_designator(&mut d, 0x51, 0x94, &[0, 0, 0, 1]);
        (page(0x80, id.serial.as_bytes()), page(0x83, &d))
    }

    fn identity() -> impl Strategy<Value = DeviceIdentity> {
        (any::<[u8; 16]>(), "[!-~]{1,20}")
            .prop_map(|(uuid, serial)| DeviceIdentity { uuid, serial })
    }

    proptest! {
        #[test]
        fn any_identity_reads_back_whole(id in identity()) {
            let (p80, p83) = pages(&id);
            prop_assert_eq!(identity_from_vpd(&p80, &p83), Ok(id));
        }

        #[test]
        fn any_pages_parse_or_fail_cleanly(a in proptest::collection::vec(any::<u8>(), 0..80),
                                           b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = identity_from_vpd(&a, &b);
        }
    }

    #[test]
    fn designators_as_sent() {
        let id = DeviceIdentity::from_name("disk0");
        let (_, p83) = pages(&id);
        let ds = designators(&p83).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(
            (ds[0].code_set, ds[0].kind, ds[0].value),
            (1, 3, &id.naa6()[..])
        );
        assert_eq!((ds[1].code_set, ds[1].association, ds[1].kind), (2, 0, 1));
        assert_eq!(&ds[1].value[..8], b"OPIE    ");
        assert_eq!(&ds[1].value[8..], id.to_string().as_bytes());
        assert_eq!(
            (ds[2].protocol, ds[2].piv, ds[2].association, ds[2].kind),
            (5, true, 1, 4)
        );
    }

    #[test]
    fn a_padded_serial_reads_without_its_padding() {
        let id = DeviceIdentity::from_name("d");
        let (_, p83) = pages(&id);
        let p80 = page(0x80, format!("   {}\0", id.serial).as_bytes());
        assert_eq!(identity_from_vpd(&p80, &p83), Ok(id));
    }

    #[test]
    fn what_is_not_an_opie_identity() {
        let id = DeviceIdentity::from_name("d");
        let (p80, p83) = pages(&id);
        let e = |page, what| Err(IdentificationError::Malformed { page, what });
        assert_eq!(
            identity_from_vpd(&p80, &p83[..p83.len() - 1]),
            e(0x83, "cut short")
        );
        assert_eq!(identity_from_vpd(&p83, &p83), e(0x80, "another page"));
        assert_eq!(
            identity_from_vpd(&p80, &[0, 0x83]),
            e(0x83, "shorter than its header")
        );
        assert_eq!(
            identity_from_vpd(&page(0x80, b"has space"), &p83),
            Err(IdentificationError::BadSerial("has space".into()))
        );
        // Without the identity designator (an older opie, another target).
        let mut naa_only = Vec::new();
        put_designator(&mut naa_only, 1, 3, &id.naa6());
        assert_eq!(
            identity_from_vpd(&p80, &page(0x83, &naa_only)),
            Err(IdentificationError::NotOpie)
        );
        // A designator longer than the page.
        assert_eq!(
            identity_from_vpd(&p80, &page(0x83, &[1, 3, 0, 16, 0x60])),
            e(0x83, "a designator cut short")
        );
        // The NAA designator of another identity beside this one's.
        let other = DeviceIdentity::from_name("other");
        let mut mixed = Vec::new();
        put_designator(&mut mixed, 1, 3, &other.naa6());
        put_designator(&mut mixed, 2, 1, &t10_value(&id));
        assert_eq!(
            identity_from_vpd(&p80, &page(0x83, &mixed)),
            Err(IdentificationError::Inconsistent)
        );
    }
}
