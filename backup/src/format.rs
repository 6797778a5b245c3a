//! The on-store format: chunk blobs, the per-backup index and manifest, and
//! where each lives. Pure functions; no I/O. The README's "Backup format"
//! section describes the same bytes for readers without opie.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Magic at the start of every chunk blob.
pub const BLOB_MAGIC: &[u8; 4] = b"OPCK";
/// Version of the blob and index format written by this code.
pub const FORMAT_VERSION: u32 = 1;
/// Length of a blob's header: magic, version, codec, crc32c.
pub const BLOB_HEADER: usize = 10;
/// Default chunk size: 4 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;
/// The index line that stands for an all-zero chunk (no object is stored).
pub const ZERO_MARKER: &str = "zero";
/// zstd level used for chunk bodies.
const ZSTD_LEVEL: i32 = 1;

/// SHA-256 of a chunk's plaintext: its name in the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkDigest(pub [u8; 32]);

impl ChunkDigest {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        ChunkDigest(Sha256::digest(data).into())
    }

    /// Lower-case hex, as used in the index and object names.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        let mut d = [0u8; 32];
        hex::decode_to_slice(s, &mut d).ok()?;
        Some(ChunkDigest(d))
    }

    /// The chunk's object path: `chunks/<first two hex digits>/<all 64>`.
    pub fn path(&self) -> String {
        let h = self.hex();
        format!("chunks/{}/{}", &h[..2], h)
    }
}

impl std::fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.hex())
    }
}

/// How a blob's body is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// The body is the plaintext.
    Raw = 0,
    /// The body is one zstd frame of the plaintext.
    Zstd = 1,
}

/// Why a blob could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// Too short, wrong magic or unknown version/codec.
    #[error("bad header: {0}")]
    BadHeader(String),
    /// The crc32c over the body does not match the header.
    #[error("crc32c mismatch")]
    BadChecksum,
    /// The zstd body does not decompress.
    #[error("zstd: {0}")]
    Zstd(String),
}

/// Encodes a chunk's plaintext as a blob: header + zstd body, or the raw
/// plaintext when compression does not make it smaller.
pub fn encode_blob(plain: &[u8]) -> Vec<u8> {
    let compressed = if looks_compressible(plain) {
        zstd::bulk::compress(plain, ZSTD_LEVEL).ok()
    } else {
        None
    };
    let (codec, body): (Codec, &[u8]) = match &compressed {
        Some(c) if c.len() < plain.len() => (Codec::Zstd, c),
        _ => (Codec::Raw, plain),
    };
    let mut out = Vec::with_capacity(BLOB_HEADER + body.len());
    out.extend_from_slice(BLOB_MAGIC);
    out.push(FORMAT_VERSION as u8);
    out.push(codec as u8);
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Bytes of each of the three samples [`looks_compressible`] tries.
const PROBE: usize = 32 << 10;

/// Whether compressing `plain` is worth trying: a chunk of more than three
/// samples is tried only if its first, middle and last [`PROBE`] bytes
/// compress by at least 3% together (random data, already compressed or
/// encrypted, would pay a whole zstd pass for nothing; a chunk that fails
/// the probe is stored raw, which the format allows for any chunk).
fn looks_compressible(plain: &[u8]) -> bool {
    if plain.len() <= 3 * PROBE {
        return true;
    }
    let mid = plain.len() / 2 - PROBE / 2;
    let mut packed = 0;
    for at in [0, mid, plain.len() - PROBE] {
        match zstd::bulk::compress(&plain[at..at + PROBE], ZSTD_LEVEL) {
            Ok(c) => packed += c.len(),
            Err(_) => return true,
        }
    }
    packed * 100 < 3 * PROBE * 97
}

/// Decodes a blob to the chunk's plaintext, checking header and crc32c.
/// `max_len` bounds the decompressed size (the chunk size).
pub fn decode_blob(blob: &[u8], max_len: usize) -> Result<Vec<u8>, BlobError> {
    if blob.len() < BLOB_HEADER {
        return Err(BlobError::BadHeader(format!("{} bytes", blob.len())));
    }
    if &blob[..4] != BLOB_MAGIC {
        return Err(BlobError::BadHeader("magic".into()));
    }
    if u32::from(blob[4]) != FORMAT_VERSION {
        return Err(BlobError::BadHeader(format!("version {}", blob[4])));
    }
    let crc = u32::from_le_bytes(blob[6..10].try_into().expect("4 bytes"));
    let body = &blob[BLOB_HEADER..];
    if crc32c::crc32c(body) != crc {
        return Err(BlobError::BadChecksum);
    }
    match blob[5] {
        0 => Ok(body.to_vec()),
        1 => zstd::bulk::decompress(body, max_len).map_err(|e| BlobError::Zstd(e.to_string())),
        c => Err(BlobError::BadHeader(format!("codec {c}"))),
    }
}

/// One entry of a backup's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkRef {
    /// The chunk is all zeroes; no object is stored.
    Zero,
    /// The chunk is stored under this digest.
    Stored(ChunkDigest),
}

/// A backup's index: one entry per chunk, in volume order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Index {
    /// The entries; entry `i` holds volume bytes `i * chunk_size ..`.
    pub chunks: Vec<ChunkRef>,
}

impl Index {
    /// The index as stored: one line per chunk, 64 hex digits or `zero`, each ending in `\n`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::with_capacity(self.chunks.len() * 65);
        for c in &self.chunks {
            match c {
                ChunkRef::Zero => out.push_str(ZERO_MARKER),
                ChunkRef::Stored(d) => out.push_str(&d.hex()),
            }
            out.push('\n');
        }
        out.into_bytes()
    }

    /// Parses [`Index::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        let mut chunks = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line == ZERO_MARKER {
                chunks.push(ChunkRef::Zero);
            } else {
                let d =
                    ChunkDigest::parse(line).ok_or_else(|| format!("line {}: {line:?}", i + 1))?;
                chunks.push(ChunkRef::Stored(d));
            }
        }
        Ok(Index { chunks })
    }

    /// Digests of the stored chunks (with repeats).
    pub fn stored(&self) -> impl Iterator<Item = ChunkDigest> + '_ {
        self.chunks.iter().filter_map(|c| match c {
            ChunkRef::Stored(d) => Some(*d),
            ChunkRef::Zero => None,
        })
    }
}

/// SHA-256 of the encoded index, in hex (recorded in the manifest).
pub fn index_digest(encoded: &[u8]) -> String {
    hex::encode(Sha256::digest(encoded))
}

/// The identity of the volume a backup was taken of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeIdentity {
    /// The device's 128-bit uuid in hex.
    pub uuid: String,
    /// Its NAA-6 designator in hex (what initiators show).
    pub naa: String,
    /// Its serial number.
    pub serial: String,
}

impl From<&blockdev::DeviceIdentity> for VolumeIdentity {
    fn from(id: &blockdev::DeviceIdentity) -> Self {
        VolumeIdentity {
            uuid: id.to_string(),
            naa: hex::encode(id.naa6()),
            serial: id.serial.clone(),
        }
    }
}

/// A backup's manifest, `manifest.json`: written last, so a backup exists
/// exactly when its manifest does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// The backup's id (its directory name).
    pub id: String,
    /// The volume name (the directory under `backups/`).
    pub volume: String,
    /// Identity of the source device.
    pub identity: VolumeIdentity,
    /// Size of the volume in bytes; the last chunk may be shorter than `chunk_size`.
    pub size: u64,
    /// Chunk size in bytes (a power of two).
    pub chunk_size: u32,
    /// Creation time, seconds since the Unix epoch (UTC).
    pub created: u64,
    /// The backup this one was taken incrementally against, if any.
    pub parent: Option<String>,
    /// SHA-256 (hex) of the stored index.
    pub index_sha256: String,
    /// Number of chunks in the index.
    pub chunks: u64,
    /// How many of them are all-zero.
    pub zero_chunks: u64,
    /// How many chunks this run read from the source.
    pub chunks_read: u64,
    /// How many objects this run created in the store (the rest already existed).
    pub chunks_uploaded: u64,
}

impl Manifest {
    /// Volume byte range of chunk `i`.
    pub fn chunk_range(&self, i: u64) -> std::ops::Range<u64> {
        let start = i * u64::from(self.chunk_size);
        start..(start + u64::from(self.chunk_size)).min(self.size)
    }
}

/// Directory of one backup: `backups/<volume>/<id>`.
pub fn backup_dir(volume: &str, id: &str) -> String {
    format!("backups/{volume}/{id}")
}

/// Path of a backup's index.
pub fn index_path(volume: &str, id: &str) -> String {
    format!("{}/index", backup_dir(volume, id))
}

/// Path of a backup's manifest.
pub fn manifest_path(volume: &str, id: &str) -> String {
    format!("{}/manifest.json", backup_dir(volume, id))
}

/// Path of the in-progress marker a run writes at its start and removes when its manifest is written.
pub fn running_path(volume: &str, id: &str) -> String {
    format!("{}/running", backup_dir(volume, id))
}

/// Whether `name` may be used as a volume name or backup id (one path segment).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn blob_round_trips(data in proptest::collection::vec(any::<u8>(), 0..20000), zeros in 0usize..20000) {
            let mut plain = data;
            plain.extend(std::iter::repeat_n(0u8, zeros));
            let blob = encode_blob(&plain);
            prop_assert_eq!(decode_blob(&blob, plain.len().max(1)).unwrap(), plain);
        }

        #[test]
        fn blob_bit_flip_is_detected(data in proptest::collection::vec(any::<u8>(), 1..5000), pos in any::<usize>(), bit in 0u8..8) {
            let mut blob = encode_blob(&data);
            let p = pos % blob.len();
            blob[p] ^= 1 << bit;
            prop_assert!(decode_blob(&blob, data.len()) != Ok(data));
        }

        #[test]
        fn index_round_trips(entries in proptest::collection::vec(proptest::option::of(any::<[u8; 32]>()), 0..200)) {
            let idx = Index { chunks: entries.into_iter().map(|e| match e {
                None => ChunkRef::Zero,
                Some(d) => ChunkRef::Stored(ChunkDigest(d)),
            }).collect() };
            prop_assert_eq!(Index::decode(&idx.encode()).unwrap(), idx);
        }
    }

    #[test]
    fn compressible_chunk_is_stored_compressed_random_raw() {
        let plain = vec![7u8; 65536];
        let blob = encode_blob(&plain);
        assert_eq!(blob[5], Codec::Zstd as u8);
        assert!(blob.len() < 1000);
        let random: Vec<u8> = (0..2048u32)
            .flat_map(|i| ChunkDigest::of(&i.to_le_bytes()).0)
            .collect();
        let blob = encode_blob(&random);
        assert_eq!(blob[5], Codec::Raw as u8);
        assert_eq!(&blob[BLOB_HEADER..], &random[..]);
    }

    #[test]
    fn a_chunk_whose_samples_do_not_compress_is_stored_raw_unprobed_small_ones_tried() {
        let random: Vec<u8> = (0..32768u32)
            .flat_map(|i| ChunkDigest::of(&i.to_le_bytes()).0)
            .collect(); // 1 MiB
        assert!(!looks_compressible(&random));
        let blob = encode_blob(&random);
        assert_eq!(blob[5], Codec::Raw as u8);
        assert_eq!(decode_blob(&blob, random.len()).unwrap(), random);
        // Text in the samples: compressed.
        let mut mixed = random.clone();
        for at in [0, mixed.len() / 2 - PROBE / 2, mixed.len() - PROBE] {
            mixed[at..at + PROBE].fill(b'x');
        }
        assert!(looks_compressible(&mixed));
        assert_eq!(encode_blob(&mixed)[5], Codec::Zstd as u8);
        assert!(looks_compressible(&random[..3 * PROBE]));
    }

    #[test]
    fn chunk_path_fans_out_by_first_byte() {
        let d = ChunkDigest::of(b"abc");
        assert_eq!(d.path(), format!("chunks/ba/{}", d.hex()));
    }
}
