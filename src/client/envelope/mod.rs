//! `hsm-kms envelope encrypt|decrypt`: envelope encryption of files of any size under a KMS
//! key, as the AWS Encryption SDK does it: KMS makes a fresh AES-256 data key
//! (`GenerateDataKey`), the file is encrypted here with it, and only the data key's KMS
//! ciphertext travels with the file ([`mod@format`] has the layout). Decryption asks KMS to
//! decrypt the data key (`Decrypt`, with the encryption context stored in the file, as the
//! Encryption SDKs pass it) and then the file.
//!
//! * Streamed in chunks (64 KiB by default): memory stays at two chunks whatever the size.
//! * The data key lives in zeroize-on-drop memory (the AES key schedule too) and is dropped
//!   as soon as the file is done.
//! * The output is written to a temporary file next to it and renamed only once every chunk
//!   has been written (encrypt) or authenticated (decrypt): a failed or interrupted decrypt
//!   never leaves plaintext under the output's name, and the temporary file is removed.
//! * Decrypt takes optional `--context` pairs: each must be in the file's encryption
//!   context with the same value (the AWS Encryption CLI's rule), else nothing is asked of
//!   KMS.

pub mod format;

use super::{Client, ClientError};
use crate::fsutil::AtomicFile;
use base64::Engine as _;
use format::{ChunkCipher, Header, TAG_LEN};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use zeroize::{Zeroize, Zeroizing};

/// What to encrypt, under which key, with which context.
#[derive(Debug, Clone)]
pub struct EncryptRequest {
    /// The KMS key (id, ARN, alias name or alias ARN).
    pub key_id: String,
    /// The file to encrypt.
    pub input: PathBuf,
    /// Where the envelope file goes.
    pub output: PathBuf,
    /// The encryption context (bound to the data key by KMS and stored in the header).
    pub context: BTreeMap<String, String>,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Replace an existing output file.
    pub force: bool,
}

/// What to decrypt, and what its encryption context must hold.
#[derive(Debug, Clone)]
pub struct DecryptRequest {
    /// The envelope file.
    pub input: PathBuf,
    /// Where the plaintext goes (mode 0600).
    pub output: PathBuf,
    /// Pairs the file's encryption context must hold (each with the same value).
    pub context: BTreeMap<String, String>,
    /// The KMS key the data key must be under (`KeyId` of Decrypt); any when `None`.
    pub key_id: Option<String>,
    /// Replace an existing output file.
    pub force: bool,
}

/// What a finished encrypt or decrypt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The KMS key's ARN, as KMS reported it.
    pub key_arn: String,
    /// Plaintext bytes.
    pub plaintext_bytes: u64,
    /// Chunks.
    pub chunks: u64,
}

/// `k=v` arguments as an encryption context; a key named twice or an empty key is refused.
pub fn parse_context(args: &[String]) -> Result<BTreeMap<String, String>, ClientError> {
    let mut out = BTreeMap::new();
    for a in args {
        let Some((k, v)) = a.split_once('=') else {
            return Err(ClientError::Config(format!(
                "--context {a:?}: expected KEY=VALUE"
            )));
        };
        if k.is_empty() {
            return Err(ClientError::Config(format!("--context {a:?}: empty key")));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ClientError::Config(format!(
                "--context: key {k:?} given twice"
            )));
        }
    }
    Ok(out)
}

fn refuse_existing(output: &Path, force: bool) -> Result<(), ClientError> {
    if !force && output.exists() {
        return Err(ClientError::Config(format!(
            "{} exists; pass --force to replace it",
            output.display()
        )));
    }
    Ok(())
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A data key and the other members of the answer that carried it.
type KeyAnswer = (Zeroizing<[u8; 32]>, Map<String, Value>);

/// The `Plaintext` (a 32-byte key) and the other members of a KMS answer; the copies of
/// the key this code makes are zeroized (the answer's body included). Buffers inside the
/// HTTP library are not: best effort.
fn data_key_answer(op: &str, body: bytes::Bytes) -> Result<KeyAnswer, ClientError> {
    let protocol = |m: &str| ClientError::Protocol {
        operation: op.to_string(),
        message: m.to_string(),
    };
    let mut body = Zeroizing::new(Vec::from(body));
    let parsed = serde_json::from_slice::<Map<String, Value>>(&body);
    body.zeroize();
    let mut members = parsed.map_err(|e| protocol(&e.to_string()))?;
    let encoded = match members.remove("Plaintext") {
        Some(Value::String(s)) => Zeroizing::new(s),
        _ => return Err(protocol("no Plaintext")),
    };
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|_| protocol("Plaintext is not base64"))?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    if decoded.len() != key.len() {
        return Err(protocol("the data key is not 32 bytes"));
    }
    key.copy_from_slice(&decoded);
    Ok((key, members))
}

fn string_member(op: &str, m: &Map<String, Value>, name: &str) -> Result<String, ClientError> {
    m.get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ClientError::Protocol {
            operation: op.to_string(),
            message: format!("no {name}"),
        })
}

fn context_json(c: &BTreeMap<String, String>) -> Value {
    Value::Object(
        c.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// Encrypts `req.input` into `req.output` under a new data key from KMS. `cancel` (set on
/// Ctrl-C) stops it between chunks with [`ClientError::Interrupted`].
pub async fn encrypt(
    client: &Arc<Client>,
    req: &EncryptRequest,
    cancel: Arc<AtomicBool>,
) -> Result<Summary, ClientError> {
    refuse_existing(&req.output, req.force)?;
    if !(format::MIN_CHUNK_SIZE..=format::MAX_CHUNK_SIZE).contains(&req.chunk_size) {
        return Err(ClientError::Config(format!(
            "--chunk-size {} outside {}..={}",
            req.chunk_size,
            format::MIN_CHUNK_SIZE,
            format::MAX_CHUNK_SIZE
        )));
    }
    let input = std::fs::File::open(&req.input).map_err(ClientError::io(&req.input))?;
    let mut gdk = Map::new();
    gdk.insert("KeyId".into(), Value::String(req.key_id.clone()));
    gdk.insert("KeySpec".into(), Value::String("AES_256".into()));
    if !req.context.is_empty() {
        gdk.insert("EncryptionContext".into(), context_json(&req.context));
    }
    let gdk = Value::Object(gdk);
    let op = "GenerateDataKey";
    let body = client.connect().await?.call(op, &gdk).await?;
    let (data_key, rest) = data_key_answer(op, body)?;
    let edk = base64::engine::general_purpose::STANDARD
        .decode(string_member(op, &rest, "CiphertextBlob")?)
        .map_err(|_| ClientError::Protocol {
            operation: op.into(),
            message: "CiphertextBlob is not base64".into(),
        })?;
    let key_arn = string_member(op, &rest, "KeyId")?;
    let header = Header {
        encrypted_data_key: edk,
        context: req.context.clone(),
        chunk_size: req.chunk_size,
        nonce_prefix: rand::random(),
    };
    let raw = header.encode()?;
    let output = req.output.clone();
    let in_path = req.input.clone();
    let (plaintext_bytes, chunks) = tokio::task::spawn_blocking(move || {
        let cipher = ChunkCipher::new(&data_key, &raw, header.nonce_prefix);
        drop(data_key);
        let mut out = AtomicFile::create(&output, 0o666).map_err(ClientError::io(&output))?;
        out.write_all(&raw).map_err(ClientError::io(&output))?;
        let counts = seal_stream(
            &cipher,
            header.chunk_size,
            &mut Source(input, &in_path),
            &mut Sink(&mut out, &output),
            &cancel,
        )?;
        out.commit().map_err(ClientError::io(&output))?;
        Ok::<_, ClientError>(counts)
    })
    .await
    .map_err(|e| ClientError::Config(format!("the encryption task failed: {e}")))??;
    Ok(Summary {
        key_arn,
        plaintext_bytes,
        chunks,
    })
}

/// Decrypts the envelope file `req.input` into `req.output`. `cancel` (set on Ctrl-C) stops
/// it between chunks with [`ClientError::Interrupted`]; any failure leaves no output file.
pub async fn decrypt(
    client: &Arc<Client>,
    req: &DecryptRequest,
    cancel: Arc<AtomicBool>,
) -> Result<Summary, ClientError> {
    refuse_existing(&req.output, req.force)?;
    let mut input = std::fs::File::open(&req.input).map_err(ClientError::io(&req.input))?;
    let (header, raw) = Header::read(&mut input, &req.input)?;
    for (k, v) in &req.context {
        match header.context.get(k) {
            Some(have) if have == v => {}
            Some(_) => {
                return Err(ClientError::ContextMismatch(format!(
                    "the file's encryption context has another value for {k:?}"
                )))
            }
            None => {
                return Err(ClientError::ContextMismatch(format!(
                    "the file's encryption context has no key {k:?}"
                )))
            }
        }
    }
    let mut dec = Map::new();
    dec.insert(
        "CiphertextBlob".into(),
        Value::String(b64(&header.encrypted_data_key)),
    );
    if !header.context.is_empty() {
        dec.insert("EncryptionContext".into(), context_json(&header.context));
    }
    if let Some(k) = &req.key_id {
        dec.insert("KeyId".into(), Value::String(k.clone()));
    }
    let dec = Value::Object(dec);
    let op = "Decrypt";
    let body = client.connect().await?.call(op, &dec).await?;
    let (data_key, rest) = data_key_answer(op, body)?;
    let key_arn = string_member(op, &rest, "KeyId")?;
    let output = req.output.clone();
    let in_path = req.input.clone();
    let (plaintext_bytes, chunks) = tokio::task::spawn_blocking(move || {
        let cipher = ChunkCipher::new(&data_key, &raw, header.nonce_prefix);
        drop(data_key);
        let mut out = AtomicFile::create(&output, 0o600).map_err(ClientError::io(&output))?;
        let counts = open_stream(
            &cipher,
            header.chunk_size,
            &mut Source(input, &in_path),
            &mut Sink(&mut out, &output),
            &cancel,
        )?;
        out.commit().map_err(ClientError::io(&output))?;
        Ok::<_, ClientError>(counts)
    })
    .await
    .map_err(|e| ClientError::Config(format!("the decryption task failed: {e}")))??;
    Ok(Summary {
        key_arn,
        plaintext_bytes,
        chunks,
    })
}

/// A reader whose errors name its file.
pub struct Source<'a, R: Read>(pub R, pub &'a Path);

/// A writer whose errors name its file.
pub struct Sink<'a, W: Write>(pub W, pub &'a Path);

impl<R: Read> Source<'_, R> {
    /// Fills `buf` with up to `want` bytes: fewer only at the end of the stream.
    fn fill(&mut self, buf: &mut Vec<u8>, want: usize) -> Result<(), ClientError> {
        buf.clear();
        buf.resize(want, 0);
        let mut got = 0;
        while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
            match self.0.read(rest) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ClientError::io(self.1)(e)),
            }
        }
        buf.truncate(got);
        Ok(())
    }
}

impl<W: Write> Sink<'_, W> {
    fn put(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.0.write_all(data).map_err(ClientError::io(self.1))
    }
}

/// Seals everything `input` holds into `output` as chunks of `chunk_size` plaintext bytes;
/// (plaintext bytes, chunks).
pub fn seal_stream<R: Read, W: Write>(
    cipher: &ChunkCipher,
    chunk_size: u32,
    input: &mut Source<'_, R>,
    output: &mut Sink<'_, W>,
    cancel: &AtomicBool,
) -> Result<(u64, u64), ClientError> {
    let size = chunk_size as usize;
    let mut cur = Zeroizing::new(Vec::with_capacity(size + TAG_LEN));
    let mut next = Zeroizing::new(Vec::with_capacity(size + TAG_LEN));
    input.fill(&mut cur, size)?;
    let (mut index, mut bytes) = (0u32, 0u64);
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(ClientError::Interrupted);
        }
        if cur.len() == size {
            input.fill(&mut next, size)?;
        } else {
            next.clear();
        }
        let last = next.is_empty();
        bytes += cur.len() as u64;
        cipher.seal(index, last, &mut cur)?;
        output.put(&cur)?;
        if last {
            return Ok((bytes, u64::from(index) + 1));
        }
        index = index.checked_add(1).ok_or_else(|| {
            ClientError::Config("the file has more chunks than the format counts".into())
        })?;
        std::mem::swap(&mut cur, &mut next);
    }
}

/// Opens the chunks `input` holds (after the header) into `output`, authenticating each
/// before writing it; (plaintext bytes, chunks).
pub fn open_stream<R: Read, W: Write>(
    cipher: &ChunkCipher,
    chunk_size: u32,
    input: &mut Source<'_, R>,
    output: &mut Sink<'_, W>,
    cancel: &AtomicBool,
) -> Result<(u64, u64), ClientError> {
    let full = chunk_size as usize + TAG_LEN;
    let mut cur = Zeroizing::new(Vec::with_capacity(full));
    let mut next = Zeroizing::new(Vec::with_capacity(full));
    input.fill(&mut cur, full)?;
    let (mut index, mut bytes) = (0u32, 0u64);
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(ClientError::Interrupted);
        }
        if cur.len() < TAG_LEN {
            return Err(ClientError::Format(format!(
                "the file ends inside chunk {index} (truncated)"
            )));
        }
        if cur.len() == full {
            input.fill(&mut next, full)?;
        } else {
            next.clear();
        }
        let last = next.is_empty();
        cipher.open(index, last, &mut cur)?;
        bytes += cur.len() as u64;
        output.put(&cur)?;
        if last {
            return Ok((bytes, u64::from(index) + 1));
        }
        index = index
            .checked_add(1)
            .ok_or_else(|| ClientError::Format("more chunks than the format counts".into()))?;
        std::mem::swap(&mut cur, &mut next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u32 = 1024;

    fn header() -> (Header, Vec<u8>) {
        let h = Header {
            encrypted_data_key: vec![1, 2, 3],
            context: parse_context(&["a=1".into()]).unwrap(),
            chunk_size: C,
            nonce_prefix: [9; 8],
        };
        let raw = h.encode().unwrap();
        (h, raw)
    }

    fn seal(data: &[u8]) -> Vec<u8> {
        let (h, raw) = header();
        let c = ChunkCipher::new(&[5; 32], &raw, h.nonce_prefix);
        let mut out = Vec::new();
        let counts = seal_stream(
            &c,
            C,
            &mut Source(data, Path::new("in")),
            &mut Sink(&mut out, Path::new("out")),
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(counts.0, data.len() as u64);
        out
    }

    fn open(sealed: &[u8]) -> Result<Vec<u8>, ClientError> {
        let (h, raw) = header();
        let c = ChunkCipher::new(&[5; 32], &raw, h.nonce_prefix);
        let mut out = Vec::new();
        open_stream(
            &c,
            C,
            &mut Source(sealed, Path::new("in")),
            &mut Sink(&mut out, Path::new("out")),
            &AtomicBool::new(false),
        )?;
        Ok(out)
    }

    #[test]
    fn streams_round_trip_at_every_boundary() {
        let c = C as usize;
        for len in [0, 1, c - 1, c, c + 1, 2 * c, 3 * c + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let sealed = seal(&data);
            let chunks = len.div_ceil(c).max(1);
            assert_eq!(sealed.len(), len + chunks * TAG_LEN, "{len}");
            assert_eq!(open(&sealed).unwrap(), data, "{len}");
        }
    }

    /// Every single-bit change anywhere, truncation at every chunk boundary (and inside a
    /// chunk), a dropped, duplicated, swapped or appended chunk: all refused.
    #[test]
    fn every_change_is_refused() {
        let c = C as usize + TAG_LEN;
        let data: Vec<u8> = (0..3 * C as usize + 100).map(|i| i as u8).collect();
        let sealed = seal(&data);
        assert_eq!(sealed.len(), 3 * c + 100 + TAG_LEN);
        for i in 0..sealed.len() {
            let mut m = sealed.clone();
            m[i] ^= 0x01 << (i % 8);
            assert!(open(&m).is_err(), "flip at {i}");
        }
        let chunk = |k: usize| &sealed[k * c..((k + 1) * c).min(sealed.len())];
        let bad: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("cut after chunk 1", sealed[..c].to_vec()),
            ("cut after chunk 2", sealed[..2 * c].to_vec()),
            ("cut after chunk 3", sealed[..3 * c].to_vec()),
            (
                "cut inside the last chunk",
                sealed[..sealed.len() - 1].to_vec(),
            ),
            ("cut inside chunk 2", sealed[..c + 5].to_vec()),
            ("chunk 1 dropped", [chunk(0), chunk(2), chunk(3)].concat()),
            (
                "chunk 0 duplicated",
                [chunk(0), chunk(0), chunk(1), chunk(2), chunk(3)].concat(),
            ),
            (
                "chunks 1 and 2 swapped",
                [chunk(0), chunk(2), chunk(1), chunk(3)].concat(),
            ),
            ("a chunk appended", [&sealed[..], chunk(1)].concat()),
            ("the last chunk repeated", [&sealed[..], chunk(3)].concat()),
            ("a byte appended", [&sealed[..], &[0][..]].concat()),
        ];
        for (what, m) in bad {
            assert!(open(&m).is_err(), "{what}");
        }
    }

    #[test]
    fn a_header_change_fails_every_chunk_even_if_kms_would_not_notice() {
        let data = vec![7u8; 2 * C as usize];
        let sealed = seal(&data);
        let (mut h, _) = header();
        h.context.insert("b".into(), "2".into());
        let raw = h.encode().unwrap();
        let c = ChunkCipher::new(&[5; 32], &raw, h.nonce_prefix);
        let mut out = Vec::new();
        let e = open_stream(
            &c,
            C,
            &mut Source(&sealed[..], Path::new("in")),
            &mut Sink(&mut out, Path::new("out")),
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(matches!(e, ClientError::Authentication { chunk: 0 }), "{e}");
        assert!(out.is_empty());
    }

    #[test]
    fn cancel_stops_between_chunks() {
        let (h, raw) = header();
        let c = ChunkCipher::new(&[5; 32], &raw, h.nonce_prefix);
        let r = seal_stream(
            &c,
            C,
            &mut Source(&[0u8; 5000][..], Path::new("in")),
            &mut Sink(Vec::new(), Path::new("out")),
            &AtomicBool::new(true),
        );
        assert!(matches!(r, Err(ClientError::Interrupted)));
    }

    #[test]
    fn contexts_parse() {
        let c = parse_context(&["a=1".into(), "b=x=y".into(), "c=".into()]).unwrap();
        assert_eq!(c.get("b").map(String::as_str), Some("x=y"));
        assert_eq!(c.get("c").map(String::as_str), Some(""));
        for bad in [&["a"][..], &["=1"], &["a=1", "a=2"]] {
            let args: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            assert!(parse_context(&args).is_err(), "{bad:?}");
        }
    }
}
