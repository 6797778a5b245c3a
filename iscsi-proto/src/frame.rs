//! PDU framing on a byte stream: splitting received bytes into PDUs (with
//! digest checks and the negotiated size limit) and laying out PDUs to send
//! as a header block plus a payload that is never copied.

use bytes::{Buf, Bytes, BytesMut};

use crate::digest::{crc32c_of, data_digest, Digest};
use crate::pdu::{pad_len, Bhs, Framing, PduError, BHS_LEN};

/// A received PDU.
#[derive(Debug, Clone)]
pub struct InPdu {
    /// The raw header (for Reject, which echoes it).
    pub raw: [u8; BHS_LEN],
    /// The decoded header, or why it could not be decoded.
    pub bhs: Result<Bhs, PduError>,
    /// The AHS bytes.
    pub ahs: Bytes,
    /// The data segment (without padding).
    pub data: Bytes,
    /// Whether the data digest was wrong (the data must be discarded).
    pub data_digest_error: bool,
}

/// Framing errors after which the stream cannot be trusted: the connection
/// must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header digest did not match.
    #[error("header digest mismatch")]
    HeaderDigest,
    /// DataSegmentLength above the negotiated MaxRecvDataSegmentLength.
    #[error("data segment of {len} bytes over the limit of {limit}")]
    TooLong {
        /// Received length.
        len: usize,
        /// Negotiated limit.
        limit: usize,
        /// The offending header (for a Reject before closing).
        raw: Box<[u8; BHS_LEN]>,
    },
}

/// Splits a byte stream into PDUs.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Header digest in use.
    pub header_digest: Digest,
    /// Data digest in use.
    pub data_digest: Digest,
    /// Largest data segment accepted.
    pub max_data: usize,
}

impl Decoder {
    /// A decoder for the login phase (no digests, 8192-byte segments... or
    /// larger if the target accepts more).
    pub fn new(max_data: usize) -> Decoder {
        Decoder {
            header_digest: Digest::None,
            data_digest: Digest::None,
            max_data,
        }
    }

    /// How many bytes the next PDU needs in total, once its header is in
    /// `buf`; None if the header itself is incomplete.
    pub fn needed(&self, buf: &[u8]) -> Option<usize> {
        let raw: &[u8; BHS_LEN] = buf.get(..BHS_LEN)?.try_into().ok()?;
        let f = Framing::of(raw);
        let dd = if f.data_len > 0 {
            self.data_digest.len()
        } else {
            0
        };
        Some(BHS_LEN + f.ahs_len + self.header_digest.len() + f.data_len + pad_len(f.data_len) + dd)
    }

    /// Takes one PDU off the front of `buf` if it is complete.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<InPdu>, FrameError> {
        let Some(total) = self.needed(buf) else {
            return Ok(None);
        };
        let mut raw = [0u8; BHS_LEN];
        raw.copy_from_slice(&buf[..BHS_LEN]);
        let f = Framing::of(&raw);
        if f.data_len > self.max_data {
            return Err(FrameError::TooLong {
                len: f.data_len,
                limit: self.max_data,
                raw: Box::new(raw),
            });
        }
        if buf.len() < total {
            return Ok(None);
        }
        let hlen = BHS_LEN + f.ahs_len;
        if self.header_digest == Digest::Crc32c && crc32c_of(&[&buf[..hlen]]) != buf[hlen..hlen + 4]
        {
            return Err(FrameError::HeaderDigest);
        }
        let mut pdu = buf.split_to(total);
        pdu.advance(BHS_LEN);
        let ahs = pdu.split_to(f.ahs_len).freeze();
        pdu.advance(self.header_digest.len());
        let data = pdu.split_to(f.data_len).freeze();
        let mut data_digest_error = false;
        if f.data_len > 0 && self.data_digest == Digest::Crc32c {
            let pad = pad_len(f.data_len);
            let got = &pdu[pad..pad + 4];
            data_digest_error = data_digest(&data) != got;
        }
        Ok(Some(InPdu {
            raw,
            bhs: Bhs::decode(&raw),
            ahs,
            data,
            data_digest_error,
        }))
    }
}

/// A PDU ready to send: a small header block and a payload slice shared with
/// whoever produced it.
///
/// On the wire it is [`OutPdu::head`], then the data segment, then
/// [`OutPdu::tail`]. The data segment is [`OutPdu::data`], or, for a PDU laid
/// out with [`OutPdu::external`], bytes the sender supplies itself (for
/// example with `sendfile` from a page cache), so they are never copied
/// into memory here.
#[derive(Debug, Clone)]
pub struct OutPdu {
    head: [u8; BHS_LEN + 4],
    head_len: u8,
    /// The data segment (empty when the sender supplies it: see
    /// [`OutPdu::external_len`]).
    pub data: Bytes,
    /// Length of a data segment the sender supplies itself.
    external: usize,
    tail: [u8; 8],
    tail_len: u8,
}

impl OutPdu {
    /// Lays out `bhs` with `data`, computing digests as negotiated.
    pub fn new(bhs: &Bhs, data: Bytes, header_digest: Digest, data_digest: Digest) -> OutPdu {
        let mut p = OutPdu::layout(bhs, data.len(), header_digest);
        if !data.is_empty() && data_digest == Digest::Crc32c {
            p.tail[p.tail_len as usize..p.tail_len as usize + 4]
                .copy_from_slice(&data_digest_of(&data));
            p.tail_len += 4;
        }
        p.data = data;
        p
    }

    /// Lays out `bhs` for a data segment of `len` bytes that the sender
    /// supplies itself between [`OutPdu::head`] and [`OutPdu::tail`]. There
    /// is no data digest: computing one needs the bytes, so a sender that
    /// negotiated DataDigest passes them to [`OutPdu::new`] instead.
    pub fn external(bhs: &Bhs, len: usize, header_digest: Digest) -> OutPdu {
        let mut p = OutPdu::layout(bhs, len, header_digest);
        p.external = len;
        p
    }

    /// Header, header digest and padding for `data_len` bytes of data.
    fn layout(bhs: &Bhs, data_len: usize, header_digest: Digest) -> OutPdu {
        let mut head = [0u8; BHS_LEN + 4];
        let mut b = [0u8; BHS_LEN];
        bhs.encode(
            Framing {
                ahs_len: 0,
                data_len,
            },
            &mut b,
        );
        head[..BHS_LEN].copy_from_slice(&b);
        let mut head_len = BHS_LEN;
        if header_digest == Digest::Crc32c {
            head[BHS_LEN..].copy_from_slice(&crc32c_of(&[&b]));
            head_len += 4;
        }
        OutPdu {
            head,
            head_len: head_len as u8,
            data: Bytes::new(),
            external: 0,
            tail: [0u8; 8],
            tail_len: pad_len(data_len) as u8,
        }
    }

    /// Length of the data segment (in memory or supplied by the sender).
    pub fn data_len(&self) -> usize {
        self.data.len() + self.external
    }

    /// Length of the data segment the sender supplies itself (0 unless
    /// laid out with [`OutPdu::external`]).
    pub fn external_len(&self) -> usize {
        self.external
    }

    /// The header bytes (BHS and header digest).
    pub fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    /// The bytes after the data (padding and data digest).
    pub fn tail(&self) -> &[u8] {
        &self.tail[..usize::from(self.tail_len)]
    }

    /// Total bytes on the wire.
    pub fn wire_len(&self) -> usize {
        self.head().len() + self.data_len() + self.tail().len()
    }

    /// The whole PDU in one buffer (tests and small PDUs). A data segment
    /// the sender supplies itself ([`OutPdu::external`]) is not in it.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.wire_len());
        v.extend_from_slice(self.head());
        v.extend_from_slice(&self.data);
        v.extend_from_slice(self.tail());
        v
    }
}

fn data_digest_of(data: &[u8]) -> [u8; 4] {
    data_digest(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{NopOut, ScsiCommand};
    use proptest::prelude::*;

    fn dec(h: Digest, d: Digest) -> Decoder {
        Decoder {
            header_digest: h,
            data_digest: d,
            max_data: 8192,
        }
    }

    #[test]
    fn round_trip_with_digests() {
        for (h, d) in [
            (Digest::None, Digest::None),
            (Digest::Crc32c, Digest::Crc32c),
            (Digest::Crc32c, Digest::None),
        ] {
            let bhs = Bhs::NopOut(NopOut {
                immediate: true,
                itt: 5,
                ttt: u32::MAX,
                ..Default::default()
            });
            let out = OutPdu::new(&bhs, Bytes::from_static(b"hello"), h, d);
            let mut buf = BytesMut::from(&out.to_vec()[..]);
            buf.extend_from_slice(&out.to_vec());
            for _ in 0..2 {
                let p = dec(h, d).decode(&mut buf).unwrap().unwrap();
                assert_eq!(p.bhs.unwrap(), bhs);
                assert_eq!(&p.data[..], b"hello");
                assert!(!p.data_digest_error);
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn digest_errors() {
        let bhs = Bhs::ScsiCommand(ScsiCommand {
            itt: 1,
            ..Default::default()
        });
        let out = OutPdu::new(
            &bhs,
            Bytes::from_static(b"data"),
            Digest::Crc32c,
            Digest::Crc32c,
        );
        let mut v = out.to_vec();
        v[20] ^= 1;
        assert_eq!(
            dec(Digest::Crc32c, Digest::Crc32c)
                .decode(&mut BytesMut::from(&v[..]))
                .unwrap_err(),
            FrameError::HeaderDigest
        );
        let mut v = out.to_vec();
        let n = v.len();
        v[n - 1] ^= 1;
        let p = dec(Digest::Crc32c, Digest::Crc32c)
            .decode(&mut BytesMut::from(&v[..]))
            .unwrap()
            .unwrap();
        assert!(p.data_digest_error);
    }

    #[test]
    fn too_long_is_refused_before_the_data_arrives() {
        let bhs = Bhs::NopOut(NopOut::default());
        let out = OutPdu::new(
            &bhs,
            Bytes::from(vec![0u8; 9000]),
            Digest::None,
            Digest::None,
        );
        let mut buf = BytesMut::from(out.head());
        assert!(matches!(
            dec(Digest::None, Digest::None).decode(&mut buf),
            Err(FrameError::TooLong { len: 9000, .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300), hd in any::<bool>(), dd in any::<bool>()) {
            let d = dec(if hd { Digest::Crc32c } else { Digest::None }, if dd { Digest::Crc32c } else { Digest::None });
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = d.decode(&mut buf) {}
        }
    }
}
