//! One TCP connection to a target at the edge (tokio): PDUs out and in
//! with the negotiated digests and segment limit, the login driven to its
//! end, and a raw side for tests that send what no initiator should.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use iscsi_proto::digest::{crc32c_of, data_digest, Digest};
use iscsi_proto::frame::{Decoder, InPdu, OutPdu};
use iscsi_proto::login::{InitiatorLogin, LoggedIn, LoginConfig, LoginProgress, LOGIN_SEGMENT};
use iscsi_proto::negotiate::Params;
use iscsi_proto::pdu::{pad_len, Bhs, Framing, BHS_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

use crate::keepalive::KeepaliveConfig;
use crate::Error;

/// How long an answer may take unless [`Connection::set_timeout`] says
/// otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One TCP connection to a target.
#[derive(Debug)]
pub struct Connection {
    reader: Reader,
    writer: Writer,
    timeout: Duration,
}

/// The receiving half of a connection: PDUs in, framed with the digests
/// and the segment limit in force.
///
/// Headers and small PDUs are read through a buffer; a data segment of
/// [`LAND_MIN`] or more that has not arrived with its header is read
/// straight into its own allocation, exactly its size, so that its bytes
/// are written once, by the kernel, and never moved after. While the PDUs
/// are small (4 KiB reads' data, statuses), each read takes up to
/// [`BATCH_READ`] at once, many PDUs a system call; after a segment landed,
/// the next header alone (as libiscsi reads), so that when a large segment
/// follows it too, none of its bytes passes through the buffer; a small
/// PDU's rest then comes in a read of up to [`HEAD_READ`].
#[derive(Debug)]
pub struct Reader {
    half: OwnedReadHalf,
    buf: BytesMut,
    decoder: Decoder,
    landing: Option<Landing>,
    /// The last PDU was a small one: read in batches.
    batch: bool,
}

/// At most this many bytes are read through [`Reader`]'s buffer at once
/// while a header is in but its PDU is not (after a landing).
const HEAD_READ: usize = 8 * 1024;

/// At most this many bytes are read through [`Reader`]'s buffer at once
/// while the PDUs are small.
const BATCH_READ: usize = 64 * 1024;

/// A data segment this long or longer lands in its own allocation; a
/// shorter one is read through the buffer with its header (landing it would
/// cost a system call for its rest and an allocation).
const LAND_MIN: usize = 16 * 1024;

/// A PDU whose header is in and whose data segment is landing in place.
#[derive(Debug)]
struct Landing {
    raw: [u8; BHS_LEN],
    ahs: Bytes,
    /// The data segment so far; its capacity is the segment's length.
    data: Vec<u8>,
    /// Padding and data digest after the segment.
    tail: usize,
}

/// The sending half of a connection: PDUs out, with the digests in force.
#[derive(Debug)]
pub struct Writer {
    half: OwnedWriteHalf,
    header_digest: Digest,
    data_digest: Digest,
}

impl Connection {
    /// Connects to a portal.
    pub async fn connect(addr: SocketAddr) -> Result<Connection, Error> {
        let stream = tokio::time::timeout(DEFAULT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout(DEFAULT_TIMEOUT))??;
        Ok(Connection::from_stream(stream))
    }

    /// Connects to a portal from the local address `src`.
    pub async fn connect_from(src: IpAddr, addr: SocketAddr) -> Result<Connection, Error> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(src, 0))?;
        let stream = tokio::time::timeout(DEFAULT_TIMEOUT, socket.connect(addr))
            .await
            .map_err(|_| Error::Timeout(DEFAULT_TIMEOUT))??;
        Ok(Connection::from_stream(stream))
    }

    /// A connection over a stream already connected.
    pub fn from_stream(stream: TcpStream) -> Connection {
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        Connection {
            reader: Reader {
                half: read,
                buf: BytesMut::with_capacity(HEAD_READ),
                decoder: Decoder::new(LOGIN_SEGMENT),
                landing: None,
                batch: false,
            },
            writer: Writer {
                half: write,
                header_digest: Digest::None,
                data_digest: Digest::None,
            },
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The two halves, for a reader task beside a writer.
    pub fn into_split(self) -> (Reader, Writer) {
        (self.reader, self.writer)
    }

    /// How long [`Connection::recv`] waits for a PDU.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The digests in use, both ways.
    pub fn digests(&self) -> (Digest, Digest) {
        (self.writer.header_digest, self.writer.data_digest)
    }

    /// Puts the negotiated digests and this side's segment limit in force.
    pub fn apply(&mut self, params: &Params) {
        self.writer.header_digest = params.header_digest;
        self.writer.data_digest = params.data_digest;
        let decoder = &mut self.reader.decoder;
        decoder.header_digest = params.header_digest;
        decoder.data_digest = params.data_digest;
        decoder.max_data = params.recv_data_segment_length as usize;
    }

    /// Ties the socket's own failure detection to the NOP-Out keepalive
    /// (`keepalive`): TCP_USER_TIMEOUT at the keepalive's bound (interval
    /// plus timeout), so that data the target does not acknowledge in that
    /// time ends the connection even while the keepalive's ping is stuck
    /// behind it in the send queue; TCP keepalive probes after the same
    /// silence; TCP_NODELAY. With pings off, only TCP_NODELAY.
    pub fn tune(&self, keepalive: KeepaliveConfig) -> std::io::Result<()> {
        let stream = self.writer.half.as_ref();
        stream.set_nodelay(true)?;
        if keepalive.interval.is_zero() {
            return Ok(());
        }
        let bound = keepalive.interval + keepalive.timeout;
        let sock = socket2::SockRef::from(stream);
        sock.set_tcp_user_timeout(Some(bound))?;
        let probes = socket2::TcpKeepalive::new()
            .with_time(keepalive.interval.max(Duration::from_secs(1)))
            .with_interval(keepalive.timeout.max(Duration::from_secs(1)))
            .with_retries(2);
        sock.set_tcp_keepalive(&probes)
    }

    /// The local and peer addresses.
    pub fn addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        let stream = self.writer.half.as_ref();
        Ok((stream.local_addr()?, stream.peer_addr()?))
    }

    /// Logs in with `cfg` and puts what was negotiated in force. On a
    /// failure the connection stays as the target left it (tests look at
    /// what it does next).
    pub async fn login(&mut self, cfg: LoginConfig) -> Result<LoggedIn, Error> {
        self.reader.decoder.max_data =
            LOGIN_SEGMENT.max(cfg.limits.max_recv_data_segment_length as usize);
        let mut login = InitiatorLogin::new(cfg)?;
        let mut pdu = login.start();
        loop {
            self.send(&Bhs::LoginRequest(pdu.bhs), &pdu.data).await?;
            let p = self.recv().await?;
            let Ok(Bhs::LoginResponse(r)) = p.bhs else {
                return Err(Error::Protocol(format!(
                    "{:?} where a Login Response belongs",
                    p.bhs
                )));
            };
            match login.receive(&r, &p.data)? {
                LoginProgress::Send(next) => pdu = next,
                LoginProgress::Done(session) => {
                    self.apply(&session.params);
                    return Ok(*session);
                }
            }
        }
    }

    /// Sends one PDU with the digests in force.
    pub async fn send(&mut self, bhs: &Bhs, data: &[u8]) -> Result<(), Error> {
        self.writer.send(bhs, data).await
    }

    /// Sends PDUs, in order, in as few writes as their size allows.
    pub async fn send_all(&mut self, pdus: Vec<(Bhs, Bytes)>) -> Result<(), Error> {
        self.writer.send_all(pdus).await
    }

    /// Sends bytes as they are: malformed PDUs, garbage, half a header.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.writer.send_raw(bytes).await
    }

    /// The next PDU; [`Error::Closed`] once the target closed the
    /// connection, [`Error::Timeout`] after the timeout without one.
    pub async fn recv(&mut self) -> Result<InPdu, Error> {
        tokio::time::timeout(self.timeout, self.reader.recv())
            .await
            .map_err(|_| Error::Timeout(self.timeout))?
    }
    /// Whether the target closes the connection within the timeout (what it
    /// sends until then is read and dropped).
    pub async fn closed(&mut self) -> bool {
        loop {
            match self.recv().await {
                Ok(_) => {}
                Err(Error::Closed | Error::Io(_)) => return true,
                Err(Error::Protocol(_)) => {
                    self.reader.buf.clear();
                    self.reader.landing = None;
                }
                Err(_) => return false,
            }
        }
    }

    /// Drops the connection with a TCP reset, as a crashing initiator or a
    /// broken network would.
    pub fn reset(self) {
        // Whole again, the socket closes with the reset alone (a write
        // half dropped on its own would send a FIN first).
        if let Ok(stream) = self.reader.half.reunite(self.writer.half) {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
    }
}

/// A data segment this long or longer is sent from its own buffer rather
/// than copied into the gathered one.
const SEND_IN_PLACE: usize = 16 * 1024;

/// Most buffers handed to one vectored write (well under `IOV_MAX`).
const MAX_IOV: usize = 64;

impl Reader {
    /// The next PDU (cancel-safe: a PDU half read stays buffered);
    /// [`Error::Closed`] once the target closed the connection.
    pub async fn recv(&mut self) -> Result<InPdu, Error> {
        loop {
            if let Some(landing) = &mut self.landing {
                if landing.data.len() < landing.data.capacity() {
                    // Into the spare capacity: no byte is zeroed first.
                    if self.half.read_buf(&mut landing.data).await? == 0 {
                        return Err(Error::Closed);
                    }
                    continue;
                }
                if self.buf.len() >= landing.tail {
                    self.batch = false;
                    return Ok(self.landed());
                }
            } else {
                match self.decoder.decode(&mut self.buf) {
                    Ok(Some(p)) => {
                        self.batch = true;
                        return Ok(p);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(Error::Protocol(format!("framing: {e}"))),
                }
                if self.land()? {
                    continue;
                }
            }
            let head = BHS_LEN + self.decoder.header_digest.len();
            let most = if self.batch && self.landing.is_none() {
                BATCH_READ
            } else if self.landing.is_none() && self.buf.len() < head {
                // After a landing, the next header alone: if its segment
                // lands too, all of it goes straight into place.
                head - self.buf.len()
            } else {
                HEAD_READ
            };
            self.buf.reserve(most);
            if self.half.read_buf(&mut (&mut self.buf).limit(most)).await? == 0 {
                return Err(Error::Closed);
            }
        }
    }

    /// Once a header of a segment of [`LAND_MIN`] or more is in the buffer
    /// but not its whole PDU: takes the header off, gives the data segment
    /// its own allocation with what of it is buffered already, and lands
    /// the rest there.
    fn land(&mut self) -> Result<bool, Error> {
        let Some(raw) = self.buf.get(..BHS_LEN) else {
            return Ok(false);
        };
        let raw: [u8; BHS_LEN] = raw.try_into().expect("BHS_LEN bytes");
        let f = Framing::of(&raw);
        if f.data_len < LAND_MIN {
            return Ok(false);
        }
        let hlen = BHS_LEN + f.ahs_len;
        let hd = self.decoder.header_digest.len();
        if self.buf.len() < hlen + hd {
            return Ok(false);
        }
        // (The decoder has refused a segment over the limit already.)
        if self.decoder.header_digest == Digest::Crc32c
            && crc32c_of(&[&self.buf[..hlen]]) != self.buf[hlen..hlen + hd]
        {
            return Err(Error::Protocol("framing: header digest mismatch".into()));
        }
        // The AHS copied out (rarely any), not split off: a part split off
        // would share the buffer while the PDU lives, and the next read
        // would then reserve a new one.
        let ahs = if f.ahs_len == 0 {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&self.buf[BHS_LEN..hlen])
        };
        self.buf.advance(hlen + hd);
        let mut data = Vec::with_capacity(f.data_len);
        let buffered = self.buf.len().min(f.data_len);
        data.extend_from_slice(&self.buf[..buffered]);
        self.buf.advance(buffered);
        self.landing = Some(Landing {
            raw,
            ahs,
            data,
            tail: pad_len(f.data_len) + self.decoder.data_digest.len(),
        });
        Ok(true)
    }

    /// The PDU whose data segment has landed, with its tail in the buffer;
    /// its data digest computed over the bytes where they landed.
    fn landed(&mut self) -> InPdu {
        let l = self.landing.take().expect("a landing");
        let tail = self.buf.split_to(l.tail);
        let data_digest_error = self.decoder.data_digest == Digest::Crc32c
            && data_digest(&l.data) != tail[tail.len() - 4..];
        InPdu {
            raw: l.raw,
            bhs: Bhs::decode(&l.raw),
            ahs: l.ahs,
            // Its length is its capacity: the allocation passes on whole.
            data: Bytes::from(l.data),
            data_digest_error,
        }
    }
}

impl Writer {
    /// Sends one PDU with the digests in force.
    pub async fn send(&mut self, bhs: &Bhs, data: &[u8]) -> Result<(), Error> {
        let pdu = OutPdu::new(
            bhs,
            Bytes::copy_from_slice(data),
            self.header_digest,
            self.data_digest,
        );
        self.send_raw(&pdu.to_vec()).await
    }

    /// Sends PDUs, in order, in as few writes as their size allows.
    pub async fn send_all(&mut self, pdus: Vec<(Bhs, Bytes)>) -> Result<(), Error> {
        // Headers, digests and small segments are gathered into one buffer;
        // a large data segment goes from where it lies (one writev, no copy:
        // the copy of every 1 MiB write was a sixth of the head's CPU).
        let mut parts: Vec<Bytes> = Vec::new();
        let mut small = BytesMut::new();
        for (bhs, data) in pdus {
            let pdu = OutPdu::new(&bhs, data, self.header_digest, self.data_digest);
            small.extend_from_slice(pdu.head());
            if pdu.data.len() >= SEND_IN_PLACE {
                parts.push(small.split().freeze());
                parts.push(pdu.data.clone());
            } else {
                small.extend_from_slice(&pdu.data);
            }
            small.extend_from_slice(pdu.tail());
        }
        parts.push(small.freeze());
        parts.retain(|p| !p.is_empty());
        self.send_parts(&parts).await
    }

    /// Writes `parts` in order with vectored writes, resuming after short ones.
    async fn send_parts(&mut self, parts: &[Bytes]) -> Result<(), Error> {
        let (mut at, mut off) = (0usize, 0usize);
        while at < parts.len() {
            let end = parts.len().min(at + MAX_IOV);
            let mut iov = Vec::with_capacity(end - at);
            iov.push(std::io::IoSlice::new(&parts[at][off..]));
            iov.extend(parts[at + 1..end].iter().map(|p| std::io::IoSlice::new(p)));
            let mut n = self.half.write_vectored(&iov).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
            while n > 0 {
                let left = parts[at].len() - off;
                if n < left {
                    off += n;
                    break;
                }
                n -= left;
                at += 1;
                off = 0;
            }
        }
        Ok(())
    }

    /// Sends bytes as they are: malformed PDUs, garbage, half a header.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        Ok(self.half.write_all(bytes).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iscsi_proto::pdu::RESERVED_TAG;

    /// A NOP-In carrying `data`, framed with CRC32C digests both ways.
    fn nop_in(ttt: u32, data: Vec<u8>) -> Vec<u8> {
        let bhs = Bhs::NopIn(iscsi_proto::pdu::NopIn {
            lun: 0,
            itt: RESERVED_TAG,
            ttt,
            sns: Default::default(),
        });
        OutPdu::new(&bhs, Bytes::from(data), Digest::Crc32c, Digest::Crc32c).to_vec()
    }

    /// A connection with CRC32C digests in force, and its listener.
    async fn digested() -> (Connection, tokio::net::TcpListener) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut conn = Connection::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        conn.apply(&Params {
            header_digest: Digest::Crc32c,
            data_digest: Digest::Crc32c,
            recv_data_segment_length: 1 << 20,
            ..Params::default()
        });
        (conn, listener)
    }

    #[tokio::test]
    async fn send_all_puts_every_byte_in_order_through_short_writes() {
        let (mut conn, listener) = digested().await;
        // Large segments (sent in place), small ones (gathered) and empty
        // ones, more buffers than one vectored write takes, 6 MiB in all:
        // far more than the socket buffers, so writes come back short.
        let pdus: Vec<(Bhs, Bytes)> = (0..150u32)
            .map(|i| {
                let len = match i % 3 {
                    0 => 100_000 + i as usize,
                    1 => 17,
                    _ => 0,
                };
                let data: Vec<u8> = (0..len).map(|b| (b as u32 * 31 + i) as u8).collect();
                let bhs = Bhs::NopIn(iscsi_proto::pdu::NopIn {
                    lun: 0,
                    itt: RESERVED_TAG,
                    ttt: i,
                    sns: Default::default(),
                });
                (bhs, Bytes::from(data))
            })
            .collect();
        let want: Vec<u8> = pdus
            .iter()
            .flat_map(|(b, d)| OutPdu::new(b, d.clone(), Digest::Crc32c, Digest::Crc32c).to_vec())
            .collect();
        let (mut target, _) = listener.accept().await.unwrap();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut piece = vec![0u8; 7_777];
            loop {
                let n = target.read(&mut piece).await.unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&piece[..n]);
                tokio::task::yield_now().await;
            }
        });
        conn.send_all(pdus).await.unwrap();
        drop(conn);
        assert!(reader.await.unwrap() == want, "the stream differs");
    }

    #[tokio::test]
    async fn segments_land_whole_however_the_stream_is_cut() {
        let (mut conn, listener) = digested().await;
        let big: Vec<u8> = (0..70_001u32).map(|i| (i * 7) as u8).collect();
        let mut wire = nop_in(1, big.clone());
        wire.extend(nop_in(2, b"small".to_vec()));
        let mut bad = nop_in(3, vec![9; 20_000]);
        let at = bad.len() - 5; // in the data, before the 3 bytes of padding
        bad[at] ^= 1;
        wire.extend(bad);
        wire.extend(nop_in(4, Vec::new()));
        let (mut target, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            // Awkward pieces: across headers, segments, padding, digests.
            for piece in wire.chunks(4093) {
                target.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            target.flush().await.unwrap();
            std::future::pending::<()>().await;
        });
        let ttt = |p: &InPdu| match p.bhs {
            Ok(Bhs::NopIn(n)) => n.ttt,
            _ => panic!("{:?}", p.bhs),
        };
        let p = conn.recv().await.unwrap();
        assert_eq!(
            (ttt(&p), &p.data[..], p.data_digest_error),
            (1, &big[..], false)
        );
        let p = conn.recv().await.unwrap();
        assert_eq!(
            (ttt(&p), &p.data[..], p.data_digest_error),
            (2, &b"small"[..], false)
        );
        let p = conn.recv().await.unwrap();
        assert_eq!(
            (ttt(&p), p.data.len(), p.data_digest_error),
            (3, 20_000, true)
        );
        let p = conn.recv().await.unwrap();
        assert_eq!((ttt(&p), p.data.len()), (4, 0));
    }

    #[tokio::test]
    async fn small_pdus_read_in_batches_and_a_large_one_among_them_arrive_whole() {
        let (mut conn, listener) = digested().await;
        // Small PDUs first (the reader reads them in batches), then a
        // segment larger than a batch whose start comes in the same read,
        // then small ones again, all written at once.
        let big: Vec<u8> = (0..200_003u32).map(|i| (i * 13) as u8).collect();
        let small = |i: u32| vec![i as u8; 4096 + i as usize];
        let mut wire = Vec::new();
        for i in 0..20 {
            wire.extend(nop_in(i, small(i)));
        }
        wire.extend(nop_in(100, big.clone()));
        for i in 20..40 {
            wire.extend(nop_in(i, small(i)));
        }
        let (mut target, _) = listener.accept().await.unwrap();
        target.write_all(&wire).await.unwrap();
        let ttt = |p: &InPdu| match p.bhs {
            Ok(Bhs::NopIn(n)) => n.ttt,
            _ => panic!("{:?}", p.bhs),
        };
        for i in (0..20).chain([100]).chain(20..40) {
            let p = conn.recv().await.unwrap();
            let want = if i == 100 { big.clone() } else { small(i) };
            assert_eq!((ttt(&p), p.data_digest_error), (i, false));
            assert!(p.data[..] == want[..], "the data of PDU {i}");
        }
    }

    #[tokio::test]
    async fn a_landing_header_with_a_wrong_digest_ends_the_connection() {
        let (mut conn, listener) = digested().await;
        let mut wire = nop_in(1, vec![1; 50_000]);
        wire[BHS_LEN] ^= 1;
        let (mut target, _) = listener.accept().await.unwrap();
        // Only the header and a little data: the segment must land.
        target.write_all(&wire[..BHS_LEN + 4 + 100]).await.unwrap();
        let e = conn.recv().await.unwrap_err();
        assert!(
            matches!(e, Error::Protocol(ref m) if m.contains("header digest")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn the_socket_gives_up_at_the_keepalive_bound() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let conn = Connection::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let keepalive = KeepaliveConfig {
            interval: Duration::from_millis(700),
            timeout: Duration::from_millis(400),
        };
        conn.tune(keepalive).unwrap();
        let stream = conn.writer.half.as_ref();
        let sock = socket2::SockRef::from(stream);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(1100))
        );
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(1));
        assert!(sock.tcp_nodelay().unwrap());
    }
}
