//! XOR parity, word-wide so the compiler vectorises it.
//!
//! RAID5 parity is the XOR of the data chunks of a row, and any one missing
//! chunk is the XOR of all the others. The loop works on fixed 64-byte lanes
//! with no bounds checks in the body, which LLVM turns into SIMD loads, XORs
//! and stores; the benchmark compares it with `memcpy`.

const LANE: usize = 64;

/// `dst ^= src`. Both slices must have the same length.
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "xor operands differ in length");
    let mut d = dst.chunks_exact_mut(LANE);
    let mut s = src.chunks_exact(LANE);
    for (dl, sl) in (&mut d).zip(&mut s) {
        // Fixed-size lanes: no bounds checks, and LLVM emits SIMD XORs.
        let dl: &mut [u8; LANE] = dl.try_into().expect("lane-sized chunk");
        let sl: &[u8; LANE] = sl.try_into().expect("lane-sized chunk");
        for i in 0..LANE {
            dl[i] ^= sl[i];
        }
    }
    for (a, b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a ^= b;
    }
}

/// `dst = s0 ^ s1 ^ ...` in one pass (each source read once, `dst` written
/// once). All slices must have the same length; no sources gives zeroes.
pub fn xor_many(dst: &mut [u8], sources: &[&[u8]]) {
    let Some((first, rest)) = sources.split_first() else {
        dst.fill(0);
        return;
    };
    assert!(
        sources.iter().all(|s| s.len() == dst.len()),
        "xor operands differ in length"
    );
    let lanes = dst.len() / LANE;
    for l in 0..lanes {
        let r = l * LANE..(l + 1) * LANE;
        let mut acc: [u8; LANE] = first[r.clone()].try_into().expect("lane-sized chunk");
        for s in rest {
            let sl: &[u8; LANE] = s[r.clone()].try_into().expect("lane-sized chunk");
            for i in 0..LANE {
                acc[i] ^= sl[i];
            }
        }
        dst[r].copy_from_slice(&acc);
    }
    for i in lanes * LANE..dst.len() {
        dst[i] = sources.iter().fold(0, |a, s| a ^ s[i]);
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
            let c: Vec<u8> = (0..len).map(|i| (i * 3 + 11) as u8).collect();
            let mut m = vec![0xee; len];
            xor_many(&mut m, &[&a, &b, &c]);
            assert_eq!(m, xor_all(&[&a, &b, &c]));
            xor_many(&mut m, &[]);
            assert!(m.iter().all(|&x| x == 0));
        }
    }
}
