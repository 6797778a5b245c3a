//! A PDU on its way to the socket as the target sends it: the framed header
//! and in-memory data of an [`OutPdu`], and a data segment that may stay in
//! a backing file's page cache until the socket takes it (`sendfile`).

use blockdev::FileSlice;
use bytes::Bytes;
use iscsi_proto::digest::Digest;
use iscsi_proto::frame::OutPdu;
use iscsi_proto::pdu::Bhs;

/// One PDU to send: [`Outgoing::pdu`] on the wire, with [`Outgoing::file`]
/// as its data segment when it has one.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Header, in-memory data and tail.
    pub pdu: OutPdu,
    /// The data segment as a range of a cached file (the PDU was laid out
    /// for it with [`OutPdu::external`]).
    pub file: Option<FileSlice>,
}

impl From<OutPdu> for Outgoing {
    fn from(pdu: OutPdu) -> Outgoing {
        Outgoing { pdu, file: None }
    }
}

impl Outgoing {
    /// Lays out `bhs` with `data`, computing digests as negotiated.
    pub fn new(bhs: &Bhs, data: Bytes, header_digest: Digest, data_digest: Digest) -> Outgoing {
        OutPdu::new(bhs, data, header_digest, data_digest).into()
    }

    /// Lays out `bhs` with a data segment that stays in a file until the
    /// socket takes it. With a data digest the bytes must be read to compute
    /// it, so the segment is read into memory instead (the session asks for
    /// file data only without data digests).
    pub fn with_file(
        bhs: &Bhs,
        file: FileSlice,
        header_digest: Digest,
        data_digest: Digest,
    ) -> std::io::Result<Outgoing> {
        if data_digest == Digest::Crc32c {
            return Ok(Outgoing::new(
                bhs,
                file.to_bytes()?,
                header_digest,
                data_digest,
            ));
        }
        let pdu = OutPdu::external(bhs, file.len(), header_digest);
        let file = (!file.is_empty()).then_some(file);
        Ok(Outgoing { pdu, file })
    }

    /// Total bytes on the wire.
    pub fn wire_len(&self) -> usize {
        self.pdu.wire_len()
    }

    /// The whole PDU in one buffer (tests and small PDUs); file data is read.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.wire_len());
        v.extend_from_slice(self.pdu.head());
        v.extend_from_slice(&self.pdu.data);
        if let Some(f) = &self.file {
            match f.to_bytes() {
                Ok(b) => v.extend_from_slice(&b),
                Err(e) => tracing::error!(error = %e, "cannot read file data of a PDU"),
            }
        }
        v.extend_from_slice(self.pdu.tail());
        v
    }
}
