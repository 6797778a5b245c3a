//! XOR parity, word-wide so the compiler vectorises it.
//!
//! RAID5 parity is the XOR of the data chunks of a row, and any one missing
//! chunk is the XOR of all the others. These loops work on 64-byte lanes of
//! `u64` words with no bounds checks in the body, which LLVM turns into SIMD
//! loads and stores; the benchmark compares them with `memcpy`.

const LANE: usize = 64;

/// `dst ^= src`. Both slices must have the same length.
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "xor operands differ in length");
    let mut d = dst.chunks_exact_mut(LANE);
    let mut s = src.chunks_exact(LANE);
    for (dl, sl) in (&mut d).zip(&mut s) {
        xor_lane(dl, sl);
    }
    for (a, b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a ^= b;
    }
}

#[inline(always)]
fn xor_lane(d: &mut [u8], s: &[u8]) {
    let mut dw = [0u64; LANE / 8];
    let mut sw = [0u64; LANE / 8];
    for (w, c) in dw.iter_mut().zip(d.chunks_exact(8)) {
        *w = u64::from_ne_bytes(c.try_into().expect("8-byte chunk"));
    }
    for (w, c) in sw.iter_mut().zip(s.chunks_exact(8)) {
        *w = u64::from_ne_bytes(c.try_into().expect("8-byte chunk"));
    }
    for (a, b) in dw.iter_mut().zip(sw.iter()) {
        *a ^= *b;
    }
    for (w, c) in dw.iter().zip(d.chunks_exact_mut(8)) {
        c.copy_from_slice(&w.to_ne_bytes());
    }
}

/// `dst = a ^ b` over equal-length slices.
pub fn xor2(dst: &mut [u8], a: &[u8], b: &[u8]) {
    dst.copy_from_slice(a);
    xor_into(dst, b);
}

/// XOR of all `sources` (at least one, all the same length) into a new buffer.
pub fn xor_all<S: AsRef<[u8]>>(sources: &[S]) -> Vec<u8> {
    let (first, rest) = sources.split_first().expect("xor of no sources");
    let mut out = first.as_ref().to_vec();
    for s in rest {
        xor_into(&mut out, s.as_ref());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_matches_bytewise_for_odd_lengths() {
        for len in [0, 1, 7, 63, 64, 65, 200, 4096 + 3] {
            let a: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let b: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
            let mut d = a.clone();
            xor_into(&mut d, &b);
            let want: Vec<u8> = a.iter().zip(&b).map(|(x, y)| x ^ y).collect();
            assert_eq!(d, want);
            let mut e = vec![0; len];
            xor2(&mut e, &a, &b);
            assert_eq!(e, want);
            // Any source is the XOR of the parity and the others.
            let p = xor_all(&[&a, &b]);
            assert_eq!(xor_all(&[&p, &b]), a);
        }
    }
}
