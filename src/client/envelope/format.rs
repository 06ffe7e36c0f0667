//! The envelope file format, version 1: a header that names the data key, then the file in
//! fixed-size chunks of AES-256-GCM under that data key. All integers are big-endian.
//!
//! ```text
//! offset   size  field
//! 0        4     magic "HKEV" (48 4B 45 56)
//! 4        1     version = 1
//! 5        2     L: length of the encrypted data key (1..=6144)
//! 7        L     encrypted data key: KMS GenerateDataKey's CiphertextBlob (AES_256)
//! 7+L      2     N: encryption context pairs (0..=256)
//!          …     N × { u16 key length (≥ 1), key, u16 value length, value } (UTF-8),
//!                keys in strictly ascending byte order (canonical, no duplicates)
//!          4     C: chunk size, plaintext bytes per chunk (1024..=1048576)
//!          8     nonce prefix (random per file)
//! ─── end of header (at most 65536 bytes); H = SHA-256(all header bytes) ───
//!          …     chunk 0, chunk 1, …, chunk n−1 (n ≥ 1), each ciphertext ‖ 16-byte tag
//! ```
//!
//! Chunk `i` is AES-256-GCM of plaintext bytes `i·C .. (i+1)·C` with
//! `nonce = prefix ‖ u32(i)` and `AAD = H ‖ u32(i) ‖ last` (`last` = 1 for the final chunk,
//! else 0). Every chunk but the last holds exactly C plaintext bytes; the last holds 1..=C
//! (0 only for an empty file, which is one empty final chunk). So:
//! * any change to the header changes H, and every chunk fails (the encryption context and
//!   the encrypted data key are checked by KMS Decrypt too);
//! * a changed, dropped, duplicated or reordered chunk fails: its index is in the nonce and
//!   the AAD;
//! * truncation at a chunk boundary fails: the chunk now last was sealed with `last` = 0;
//!   appending fails: the real last chunk was sealed with `last` = 1 and is no longer last.
//!
//! The data key is unique per file and the nonce prefix random, so no nonce repeats under a
//! key. [`Header::read`] reads exactly the header from a stream, bounded at every length, and
//! never panics (property-tested); the chunks are sealed and opened by [`ChunkCipher`], in
//! place, so a reader or writer holds two chunks at most whatever the file's size.

use super::super::ClientError;
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// The first four bytes of every envelope file.
pub const MAGIC: [u8; 4] = *b"HKEV";
/// The only version this code reads or writes.
pub const VERSION: u8 = 1;
/// Bytes of the nonce prefix.
pub const PREFIX_LEN: usize = 8;
/// Bytes of a GCM tag.
pub const TAG_LEN: usize = 16;
/// Longest encrypted data key (AWS's `CiphertextBlob` limit).
pub const MAX_EDK_LEN: usize = 6144;
/// Most encryption context pairs.
pub const MAX_CONTEXT_PAIRS: usize = 256;
/// Smallest chunk size.
pub const MIN_CHUNK_SIZE: u32 = 1024;
/// Largest chunk size (bounds a reader's memory whatever the header says).
pub const MAX_CHUNK_SIZE: u32 = 1024 * 1024;
/// The default chunk size: 64 KiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Longest header.
pub const MAX_HEADER_LEN: usize = 65536;

/// An envelope file's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// KMS `GenerateDataKey`'s `CiphertextBlob`: the data key under the KMS key.
    pub encrypted_data_key: Vec<u8>,
    /// The encryption context the data key was generated with (and Decrypt must name).
    pub context: BTreeMap<String, String>,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// The first 8 bytes of every chunk's nonce.
    pub nonce_prefix: [u8; PREFIX_LEN],
}

fn format(msg: impl Into<String>) -> ClientError {
    ClientError::Format(msg.into())
}

fn u16_len(n: usize, what: &str) -> Result<[u8; 2], ClientError> {
    u16::try_from(n)
        .map(u16::to_be_bytes)
        .map_err(|_| format(format!("{what} is longer than 65535 bytes")))
}

impl Header {
    /// The header's bytes; fails for a header outside the format's limits.
    pub fn encode(&self) -> Result<Vec<u8>, ClientError> {
        if self.encrypted_data_key.is_empty() || self.encrypted_data_key.len() > MAX_EDK_LEN {
            return Err(format("encrypted data key length out of range"));
        }
        if self.context.len() > MAX_CONTEXT_PAIRS {
            return Err(format(format!(
                "more than {MAX_CONTEXT_PAIRS} encryption context pairs"
            )));
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(format(format!(
                "chunk size {} outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                self.chunk_size
            )));
        }
        let mut out = Vec::with_capacity(64 + self.encrypted_data_key.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&u16_len(self.encrypted_data_key.len(), "data key")?);
        out.extend_from_slice(&self.encrypted_data_key);
        out.extend_from_slice(&u16_len(self.context.len(), "context")?);
        for (k, v) in &self.context {
            if k.is_empty() {
                return Err(format("an encryption context key is empty"));
            }
            out.extend_from_slice(&u16_len(k.len(), "a context key")?);
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&u16_len(v.len(), "a context value")?);
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&self.nonce_prefix);
        if out.len() > MAX_HEADER_LEN {
            return Err(format(format!("header longer than {MAX_HEADER_LEN} bytes")));
        }
        Ok(out)
    }

    /// Reads exactly one header from `r` (the file `path`, for messages): the header and
    /// its raw bytes. A stream that ends early or holds anything but a well-formed version 1
    /// header is [`ClientError::Format`].
    pub fn read(r: &mut impl Read, path: &Path) -> Result<(Header, Vec<u8>), ClientError> {
        let mut rd = Reader {
            r,
            raw: Vec::with_capacity(256),
            path,
        };
        let magic: [u8; 4] = rd.array("magic")?;
        if magic != MAGIC {
            return Err(format("no envelope magic (HKEV) at the start"));
        }
        let [version] = rd.array::<1>("version")?;
        if version != VERSION {
            return Err(format(format!(
                "format version {version} (this tool reads version {VERSION})"
            )));
        }
        let edk_len = rd.u16("data key length")?;
        if edk_len == 0 || edk_len > MAX_EDK_LEN {
            return Err(format(format!(
                "encrypted data key length {edk_len} outside 1..={MAX_EDK_LEN}"
            )));
        }
        let encrypted_data_key = rd.bytes(edk_len, "encrypted data key")?;
        let pairs = rd.u16("context length")?;
        if pairs > MAX_CONTEXT_PAIRS {
            return Err(format(format!(
                "{pairs} encryption context pairs (at most {MAX_CONTEXT_PAIRS})"
            )));
        }
        let mut context = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..pairs {
            let k = rd.string("context key")?;
            let v = rd.string("context value")?;
            if k.is_empty() {
                return Err(format("an encryption context key is empty"));
            }
            if last.as_ref().is_some_and(|l| l.as_bytes() >= k.as_bytes()) {
                return Err(format("encryption context keys out of order or repeated"));
            }
            last = Some(k.clone());
            context.insert(k, v);
        }
        let chunk_size = u32::from_be_bytes(rd.array("chunk size")?);
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(format(format!(
                "chunk size {chunk_size} outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"
            )));
        }
        let nonce_prefix = rd.array("nonce prefix")?;
        Ok((
            Header {
                encrypted_data_key,
                context,
                chunk_size,
                nonce_prefix,
            },
            rd.raw,
        ))
    }
}

/// Reads header fields, keeping the raw bytes and never past [`MAX_HEADER_LEN`].
struct Reader<'a, R: Read> {
    r: &'a mut R,
    raw: Vec<u8>,
    path: &'a Path,
}

impl<R: Read> Reader<'_, R> {
    fn bytes(&mut self, n: usize, what: &str) -> Result<Vec<u8>, ClientError> {
        if self.raw.len() + n > MAX_HEADER_LEN {
            return Err(format(format!("header longer than {MAX_HEADER_LEN} bytes")));
        }
        let mut v = vec![0u8; n];
        self.r.read_exact(&mut v).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format(format!("the file ends inside the header ({what})"))
            } else {
                ClientError::Io {
                    path: self.path.to_path_buf(),
                    source: e,
                }
            }
        })?;
        self.raw.extend_from_slice(&v);
        Ok(v)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ClientError> {
        self.bytes(N, what)?
            .try_into()
            .map_err(|_| format(format!("{what}: short read")))
    }

    fn u16(&mut self, what: &str) -> Result<usize, ClientError> {
        Ok(usize::from(u16::from_be_bytes(self.array(what)?)))
    }

    fn string(&mut self, what: &str) -> Result<String, ClientError> {
        let n = self.u16(what)?;
        String::from_utf8(self.bytes(n, what)?).map_err(|_| format(format!("{what} is not UTF-8")))
    }
}

/// Seals and opens the chunks of one file, in place.
pub struct ChunkCipher {
    aead: Aes256Gcm,
    header_hash: [u8; 32],
    prefix: [u8; PREFIX_LEN],
}

impl ChunkCipher {
    /// The chunk cipher of the file whose header bytes are `header_raw`, under `data_key`
    /// (copied into the cipher's key schedule, which is zeroized on drop).
    pub fn new(data_key: &[u8; 32], header_raw: &[u8], prefix: [u8; PREFIX_LEN]) -> ChunkCipher {
        ChunkCipher {
            aead: Aes256Gcm::new(data_key.into()),
            header_hash: Sha256::digest(header_raw).into(),
            prefix,
        }
    }

    fn nonce_and_aad(&self, index: u32, last: bool) -> ([u8; 12], [u8; 37]) {
        let mut nonce = [0u8; 12];
        let mut aad = [0u8; 37];
        let i = index.to_be_bytes();
        for (d, s) in nonce.iter_mut().zip(self.prefix.iter().chain(&i)) {
            *d = *s;
        }
        for (d, s) in aad
            .iter_mut()
            .zip(self.header_hash.iter().chain(&i).chain(&[u8::from(last)]))
        {
            *d = *s;
        }
        (nonce, aad)
    }

    /// Chunk `index`'s plaintext in `buf` becomes its ciphertext ‖ tag.
    pub fn seal(&self, index: u32, last: bool, buf: &mut Vec<u8>) -> Result<(), ClientError> {
        let (nonce, aad) = self.nonce_and_aad(index, last);
        self.aead
            .encrypt_in_place(&aes_gcm::Nonce::<U12>::from(nonce), &aad, buf)
            .map_err(|_| format("a chunk cannot be sealed"))
    }

    /// Chunk `index`'s ciphertext ‖ tag in `buf` becomes its plaintext; a tag that does not
    /// verify is [`ClientError::Authentication`] (and `buf` is then cleared).
    pub fn open(&self, index: u32, last: bool, buf: &mut Vec<u8>) -> Result<(), ClientError> {
        let (nonce, aad) = self.nonce_and_aad(index, last);
        self.aead
            .decrypt_in_place(&aes_gcm::Nonce::<U12>::from(nonce), &aad, buf)
            .map_err(|_| {
                buf.clear();
                ClientError::Authentication {
                    chunk: u64::from(index),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> Header {
        Header {
            encrypted_data_key: vec![0xED; 117],
            context: [("purpose", "backup"), ("team", "ops")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            nonce_prefix: *b"prefix!!",
        }
    }

    fn decode(bytes: &[u8]) -> Result<(Header, usize), ClientError> {
        let mut r = bytes;
        let (h, raw) = Header::read(&mut r, Path::new("test"))?;
        Ok((h, raw.len()))
    }

    #[test]
    fn layout() {
        let b = sample().encode().unwrap();
        assert_eq!(&b[..5], b"HKEV\x01");
        assert_eq!(&b[5..7], &[0, 117]);
        assert_eq!(&b[124..126], &[0, 2]);
        assert_eq!(&b[126..128], &[0, 7]);
        assert_eq!(&b[128..135], b"purpose");
        let tail = &b[b.len() - 12..];
        assert_eq!(&tail[..4], &DEFAULT_CHUNK_SIZE.to_be_bytes());
        assert_eq!(&tail[4..], b"prefix!!");
        // A stream holds the header and then chunks: exactly the header is read.
        let mut with_chunks = b.clone();
        with_chunks.extend_from_slice(&[0xCC; 40]);
        assert_eq!(decode(&with_chunks).unwrap(), (sample(), b.len()));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let good = sample().encode().unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"HKEW".to_vec(), "magic"),
            ([&b"HKEV\x02"[..], &good[5..]].concat(), "version 2"),
            (good[..good.len() - 1].to_vec(), "ends inside the header"),
            ([&good[..5], &[0, 0], &good[7..]].concat(), "length 0"),
            ([&good[..5], &[0xFF, 0xFF]].concat(), "outside 1..=6144"),
        ];
        for (bytes, want) in cases {
            let e = decode(&bytes).unwrap_err();
            assert!(
                matches!(&e, ClientError::Format(m) if m.contains(want)),
                "{want}: {e}"
            );
        }
        // Keys must be ascending, and the chunk size in range.
        let mut h = sample();
        h.chunk_size = 512;
        assert!(h.encode().is_err());
        let mut b = good.clone();
        let ck = b.len() - 12;
        b[ck..ck + 4].copy_from_slice(&(MAX_CHUNK_SIZE + 1).to_be_bytes());
        assert!(decode(&b).unwrap_err().to_string().contains("chunk size"));
        let mut b = good;
        b[128..135].copy_from_slice(b"zzzzzzz"); // "zzzzzzz" > "team"
        assert!(decode(&b).unwrap_err().to_string().contains("order"));
    }

    #[test]
    fn chunks_bind_index_finality_and_header() {
        let h = sample();
        let raw = h.encode().unwrap();
        let key = [7u8; 32];
        let c = ChunkCipher::new(&key, &raw, h.nonce_prefix);
        let mut buf = b"hello".to_vec();
        c.seal(3, false, &mut buf).unwrap();
        let sealed = buf.clone();
        assert_eq!(sealed.len(), 5 + TAG_LEN);
        c.open(3, false, &mut buf).unwrap();
        assert_eq!(buf, b"hello");
        for (index, last) in [(2, false), (4, false), (3, true)] {
            let mut b = sealed.clone();
            assert!(matches!(
                c.open(index, last, &mut b),
                Err(ClientError::Authentication { chunk }) if chunk == u64::from(index)
            ));
            assert!(b.is_empty());
        }
        let mut other_header = raw.clone();
        other_header[10] ^= 1;
        let mut b = sealed.clone();
        assert!(ChunkCipher::new(&key, &other_header, h.nonce_prefix)
            .open(3, false, &mut b)
            .is_err());
        let mut b = sealed;
        assert!(ChunkCipher::new(&[8u8; 32], &raw, h.nonce_prefix)
            .open(3, false, &mut b)
            .is_err());
    }

    fn arb_header() -> impl Strategy<Value = Header> {
        (
            proptest::collection::vec(any::<u8>(), 1..300),
            proptest::collection::btree_map("[a-zA-Z0-9:/_é-]{1,12}", "[ -~é]{0,20}", 0..6),
            MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE,
            any::<[u8; PREFIX_LEN]>(),
        )
            .prop_map(
                |(encrypted_data_key, context, chunk_size, nonce_prefix)| Header {
                    encrypted_data_key,
                    context,
                    chunk_size,
                    nonce_prefix,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any header round-trips, and the encoding is canonical: any one changed byte
        /// either fails to decode or decodes to another header.
        #[test]
        fn headers_round_trip_canonically(
            h in arb_header(),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let b = h.encode().unwrap();
            prop_assert_eq!(decode(&b).unwrap(), (h.clone(), b.len()));
            let mut m = b.clone();
            m[at.index(b.len())] ^= 1 << bit;
            if let Ok((other, _)) = decode(&m) {
                prop_assert_ne!(other, h);
            }
        }

        /// Arbitrary bytes (half of them behind a valid magic and version) never panic the
        /// reader, and what it accepts re-encodes to the bytes it read.
        #[test]
        fn reading_never_panics(
            tail in proptest::collection::vec(any::<u8>(), 0..400),
            prefixed in any::<bool>(),
        ) {
            let bytes = if prefixed { [&b"HKEV\x01"[..], &tail[..]].concat() } else { tail };
            let mut r = &bytes[..];
            if let Ok((h, raw)) = Header::read(&mut r, Path::new("fuzz")) {
                prop_assert_eq!(h.encode().unwrap(), raw.clone());
                prop_assert_eq!(&bytes[..raw.len()], &raw[..]);
            }
        }
    }
}
