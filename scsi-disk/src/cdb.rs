//! Bounds-safe big-endian field access for CDBs and parameter lists: a field
//! past the end of the buffer reads as zero, so no input can panic a decoder.

/// Big-endian unsigned integer of `n` (<= 8) bytes at `off`; missing bytes read as zero.
pub(crate) fn be(buf: &[u8], off: usize, n: usize) -> u64 {
    (0..n).fold(0u64, |acc, i| {
        (acc << 8) | u64::from(buf.get(off + i).copied().unwrap_or(0))
    })
}

/// One byte at `off`, zero when missing.
pub(crate) fn byte(buf: &[u8], off: usize) -> u8 {
    buf.get(off).copied().unwrap_or(0)
}

/// A 16-bit field.
pub(crate) fn be16(buf: &[u8], off: usize) -> u16 {
    be(buf, off, 2) as u16
}

/// A 32-bit field.
pub(crate) fn be32(buf: &[u8], off: usize) -> u32 {
    be(buf, off, 4) as u32
}

/// A 64-bit field.
pub(crate) fn be64(buf: &[u8], off: usize) -> u64 {
    be(buf, off, 8)
}

/// Allocation length applied to data-in: never more than asked for.
pub(crate) fn trim(mut data: Vec<u8>, alloc: usize) -> Vec<u8> {
    data.truncate(alloc);
    data
}

/// Writes `s` space-padded into `dst`.
pub(crate) fn put_ascii(dst: &mut [u8], s: &str) {
    for (i, d) in dst.iter_mut().enumerate() {
        *d = s.as_bytes().get(i).copied().unwrap_or(b' ');
    }
}

/// Blocks of data-out a CDB transfers, for the write commands whose
/// residuals the transport reports.
pub(crate) fn data_out_blocks(cdb: &[u8]) -> Option<u64> {
    let be = |from: usize, n: usize| -> Option<u64> {
        cdb.get(from..from + n)
            .map(|b| b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x)))
    };
    match *cdb.first()? {
        0x0a => be(4, 1).map(|n| if n == 0 { 256 } else { n }),
        0x2a | 0x2e => be(7, 2),
        0xaa | 0xae => be(6, 4),
        0x8a | 0x8e | 0x8b => be(10, 4),
        0x89 => be(13, 1).map(|n| 2 * n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_past_the_end_read_zero() {
        let b = [1u8, 2, 3];
        assert_eq!(be16(&b, 1), 0x0203);
        assert_eq!(be32(&b, 1), 0x0203_0000);
        assert_eq!(be64(&b, 10), 0);
        assert_eq!(byte(&b, 3), 0);
    }
}
