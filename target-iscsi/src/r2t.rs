//! Collecting a write's data-out (RFC 7143 §4.2.5, §11.7-8): immediate data,
//! unsolicited Data-Out up to FirstBurstLength, then R2T-solicited bursts of
//! at most MaxBurstLength with at most MaxOutstandingR2T outstanding, and
//! the DataSN, buffer offset and length checks on every Data-Out.

use bytes::{Bytes, BytesMut};

use iscsi_proto::pdu::RESERVED_TAG;

/// A Data-Out that breaks the rules (at ERL 0 the connection is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataOutError {
    /// The TTT matches no outstanding R2T.
    #[error("unknown target transfer tag")]
    UnknownTtt,
    /// Unsolicited data where none is allowed.
    #[error("unexpected unsolicited data")]
    Unsolicited,
    /// DataSN out of sequence.
    #[error("DataSN out of sequence")]
    DataSn,
    /// Buffer offset not the next expected one.
    #[error("buffer offset out of sequence")]
    Offset,
    /// More data than the sequence (or the command) allows.
    #[error("data beyond the sequence")]
    Overrun,
    /// The F bit ended a sequence before all its data arrived.
    #[error("sequence ended early")]
    ShortSequence,
}

#[derive(Debug)]
struct Sequence {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_sn: u32,
}

/// The data-out of one write task being collected.
#[derive(Debug)]
pub struct WriteBuffer {
    edtl: u32,
    buf: BytesMut,
    whole: Option<Bytes>,
    received: u32,
    unsol_end: u32,
    unsol_next: u32,
    unsol_sn: u32,
    outstanding: Vec<Sequence>,
    next_r2t_offset: u32,
    r2t_sn: u32,
}

impl WriteBuffer {
    /// Starts a write of `edtl` bytes with the command's immediate data;
    /// unsolicited Data-Out may follow up to `unsolicited_end`.
    pub fn new(edtl: u32, immediate: Bytes, unsolicited_end: u32) -> WriteBuffer {
        let imm = immediate.len() as u32;
        let unsol_end = unsolicited_end.max(imm).min(edtl);
        let (buf, whole) = if imm == edtl {
            (BytesMut::new(), Some(immediate))
        } else {
            // Grown as data arrives; the command's EDTL was bounded by the session.
            let mut b = BytesMut::with_capacity((edtl as usize).min(1 << 20));
            b.extend_from_slice(&immediate);
            (b, None)
        };
        WriteBuffer {
            edtl,
            buf,
            whole,
            received: imm,
            unsol_end,
            unsol_next: imm,
            unsol_sn: 0,
            outstanding: Vec::new(),
            next_r2t_offset: unsol_end,
            r2t_sn: 0,
        }
    }

    /// Whether every byte has arrived.
    pub fn complete(&self) -> bool {
        self.received == self.edtl
    }

    /// The next R2T to issue, if the limits allow one: `(offset, length)`.
    pub fn next_r2t(&self, max_outstanding: u32, max_burst: u32) -> Option<(u32, u32)> {
        if self.outstanding.len() as u32 >= max_outstanding.max(1)
            || self.next_r2t_offset >= self.edtl
        {
            return None;
        }
        Some((
            self.next_r2t_offset,
            max_burst.max(512).min(self.edtl - self.next_r2t_offset),
        ))
    }

    /// Records an issued R2T and returns its R2TSN.
    pub fn issue_r2t(&mut self, ttt: u32, offset: u32, len: u32) -> u32 {
        self.outstanding.push(Sequence {
            ttt,
            offset,
            len,
            received: 0,
            next_sn: 0,
        });
        self.next_r2t_offset = offset + len;
        let sn = self.r2t_sn;
        self.r2t_sn += 1;
        sn
    }

    /// R2Ts issued and not yet fully answered.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Checks and stores one Data-Out.
    pub fn accept(
        &mut self,
        ttt: u32,
        data_sn: u32,
        offset: u32,
        final_: bool,
        data: Bytes,
    ) -> Result<(), DataOutError> {
        let n = data.len() as u32;
        if ttt == RESERVED_TAG {
            if self.unsol_next >= self.unsol_end {
                return Err(DataOutError::Unsolicited);
            }
            if data_sn != self.unsol_sn {
                return Err(DataOutError::DataSn);
            }
            if offset != self.unsol_next {
                return Err(DataOutError::Offset);
            }
            if n > self.unsol_end - offset {
                return Err(DataOutError::Overrun);
            }
            if final_ && offset + n != self.unsol_end {
                return Err(DataOutError::ShortSequence);
            }
            self.unsol_sn += 1;
            self.unsol_next += n;
        } else {
            let i = self
                .outstanding
                .iter()
                .position(|s| s.ttt == ttt)
                .ok_or(DataOutError::UnknownTtt)?;
            let s = &mut self.outstanding[i];
            if data_sn != s.next_sn {
                return Err(DataOutError::DataSn);
            }
            if offset != s.offset + s.received {
                return Err(DataOutError::Offset);
            }
            if n > s.len - s.received {
                return Err(DataOutError::Overrun);
            }
            if final_ && s.received + n != s.len {
                return Err(DataOutError::ShortSequence);
            }
            s.next_sn += 1;
            s.received += n;
            if s.received == s.len {
                self.outstanding.remove(i);
            }
        }
        self.place(offset, &data);
        self.received += n;
        Ok(())
    }

    fn place(&mut self, offset: u32, data: &[u8]) {
        let off = offset as usize;
        if off == self.buf.len() {
            self.buf.extend_from_slice(data);
        } else {
            if self.buf.len() < off + data.len() {
                self.buf.resize(off + data.len(), 0);
            }
            self.buf[off..off + data.len()].copy_from_slice(data);
        }
    }

    /// Hands the collected data over (once complete).
    pub fn take(&mut self) -> Bytes {
        match self.whole.take() {
            Some(b) => b,
            None => std::mem::take(&mut self.buf).freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn immediate_only_is_zero_copy() {
        let d = Bytes::from(vec![7u8; 4096]);
        let mut w = WriteBuffer::new(4096, d.clone(), 4096);
        assert!(w.complete());
        let out = w.take();
        assert_eq!(out.as_ptr(), d.as_ptr());
    }

    #[test]
    fn immediate_unsolicited_then_r2t() {
        let mut w = WriteBuffer::new(10_000, Bytes::from(vec![1u8; 1000]), 3000);
        assert_eq!(w.next_r2t(4, 4096), Some((3000, 4096)));
        assert_eq!(w.issue_r2t(5, 3000, 4096), 0);
        assert_eq!(w.next_r2t(4, 4096), Some((7096, 2904)));
        assert_eq!(w.issue_r2t(6, 7096, 2904), 1);
        assert_eq!(w.next_r2t(4, 4096), None);
        w.accept(RESERVED_TAG, 0, 1000, false, Bytes::from(vec![2u8; 1000]))
            .unwrap();
        w.accept(RESERVED_TAG, 1, 2000, true, Bytes::from(vec![3u8; 1000]))
            .unwrap();
        assert_eq!(
            w.accept(RESERVED_TAG, 2, 3000, true, Bytes::from(vec![3u8; 10])),
            Err(DataOutError::Unsolicited)
        );
        w.accept(5, 0, 3000, false, Bytes::from(vec![4u8; 2048]))
            .unwrap();
        w.accept(5, 1, 5048, true, Bytes::from(vec![5u8; 2048]))
            .unwrap();
        w.accept(6, 0, 7096, true, Bytes::from(vec![6u8; 2904]))
            .unwrap();
        assert!(w.complete());
        let b = w.take();
        assert_eq!(b.len(), 10_000);
        assert_eq!(
            (b[0], b[1000], b[2000], b[3000], b[5048], b[7096], b[9999]),
            (1, 2, 3, 4, 5, 6, 6)
        );
    }

    #[test]
    fn sequence_errors() {
        let fresh = || {
            let mut w = WriteBuffer::new(8192, Bytes::new(), 0);
            w.issue_r2t(9, 0, 8192);
            w
        };
        assert_eq!(
            fresh().accept(9, 1, 0, false, Bytes::from(vec![0; 512])),
            Err(DataOutError::DataSn)
        );
        assert_eq!(
            fresh().accept(9, u32::MAX, 0, false, Bytes::from(vec![0; 512])),
            Err(DataOutError::DataSn)
        );
        assert_eq!(
            fresh().accept(9, 0, 512, false, Bytes::from(vec![0; 512])),
            Err(DataOutError::Offset)
        );
        assert_eq!(
            fresh().accept(8, 0, 0, false, Bytes::from(vec![0; 512])),
            Err(DataOutError::UnknownTtt)
        );
        assert_eq!(
            fresh().accept(9, 0, 0, false, Bytes::from(vec![0; 9000])),
            Err(DataOutError::Overrun)
        );
        assert_eq!(
            fresh().accept(9, 0, 0, true, Bytes::from(vec![0; 512])),
            Err(DataOutError::ShortSequence)
        );
        assert_eq!(
            fresh().accept(RESERVED_TAG, 0, 0, true, Bytes::from(vec![0; 512])),
            Err(DataOutError::Unsolicited)
        );
        let mut w = fresh();
        w.accept(9, 0, 0, false, Bytes::from(vec![0; 512])).unwrap();
        assert_eq!(
            w.accept(9, 0, 512, false, Bytes::from(vec![0; 512])),
            Err(DataOutError::DataSn)
        );
    }

    proptest! {
        /// Random Data-Out streams never panic and never complete with more
        /// or less than EDTL bytes.
        #[test]
        fn never_panics(edtl in 0u32..20000, imm in 0u32..5000, ops in proptest::collection::vec((0u32..4, 0u32..4, 0u32..20000, any::<bool>(), 0usize..5000), 0..20)) {
            let imm = imm.min(edtl);
            let mut w = WriteBuffer::new(edtl, Bytes::from(vec![0u8; imm as usize]), imm + 1000);
            while let Some((o, l)) = w.next_r2t(2, 4096) { w.issue_r2t(o / 512 + 1, o, l); }
            for (ttt, sn, off, fin, len) in ops {
                let ttt = if ttt == 0 { RESERVED_TAG } else { ttt };
                let _ = w.accept(ttt, sn, off, fin, Bytes::from(vec![0u8; len]));
            }
            if w.complete() { prop_assert_eq!(w.take().len(), edtl as usize); }
        }
    }
}
