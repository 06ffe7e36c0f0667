//! `hsm-kms audit verify`: read every trail file in order and check the chain — each
//! record's `seq` one more than the previous one's, its `prev` the SHA-256 of the previous
//! line — and name the first record missing, altered or out of order by file and line.
//!
//! With `from` (an ISO 8601 date or time), records whose `eventTime` is earlier are
//! skipped and the first one at or after it anchors the chain, so older files may be
//! archived away. Without it the trail must start at record 0.
//!
//! Digest lines (see [`crate::kms::digest`]) are checked too: each one's `hash` must be
//! the SHA-256 of record `to_seq` as found, so a record rewritten (or records removed)
//! with the chain recomputed after it is caught at the first digest covering it; and
//! [`check_digests`] asks the HSMs whether each digest's MAC is theirs, so a digest made
//! up to match is caught too. Records after the last digest are reported as not yet
//! covered.
//!
//! Limits: records after the last digest (the tail since the last one; none after a
//! clean shutdown) can still be changed or cut off, together with any digest after them,
//! without a trace the trail itself shows; only the count of uncovered records says so.
//! A whole trail replaced by an older copy of itself also verifies.

use super::{line_hash, trail_files, written, GENESIS};
use crate::kms::digest::{Digest, DigestSigner};
use crate::kms::KmsError;
use base64::Engine;
use std::path::{Path, PathBuf};

/// Why a trail could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The folder or a file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file of the record.
    pub file: PathBuf,
    /// Its line, from 1.
    pub line: usize,
    /// What is wrong: `missing`, `altered`, `reordered` and the details.
    pub problem: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.problem)
    }
}

/// What [`verify`] found.
#[derive(Debug)]
pub struct VerifyReport {
    /// Trail files read.
    pub files: usize,
    /// Records checked.
    pub records: u64,
    /// The first problem, if any.
    pub finding: Option<Finding>,
    /// An incomplete last line (a write cut by a crash, never acknowledged), ignored.
    pub torn_tail: bool,
    /// The digests found in the part of the chain checked (their MACs are checked by
    /// [`check_digests`]).
    pub digests: Vec<DigestFound>,
    /// The last record covered by a digest.
    pub covered_to: Option<u64>,
    /// Event records after the last digest (or all, when there is none): not yet covered.
    pub uncovered: u64,
    /// Whether the MACs of the digests were checked with the HSMs.
    pub macs_checked: bool,
}

/// One digest line.
#[derive(Debug, Clone)]
pub struct DigestFound {
    /// Its file.
    pub file: PathBuf,
    /// Its line, from 1.
    pub line: usize,
    /// The digest.
    pub digest: Digest,
}

struct Line {
    file: usize,
    number: usize,
    bytes: Vec<u8>,
}

/// Check the trail in `dir`, from the first record whose `eventTime` is at or after
/// `from` when given.
pub fn verify(dir: &Path, from: Option<&str>) -> Result<VerifyReport, VerifyError> {
    let err = |p: &Path, source| VerifyError::Io {
        path: p.display().to_string(),
        source,
    };
    let files = trail_files(dir).map_err(|e| err(dir, e))?;
    let mut lines = Vec::new();
    let mut torn_tail = false;
    for (i, (_, path)) in files.iter().enumerate() {
        let data = std::fs::read(path).map_err(|e| err(path, e))?;
        // The records end at the zeroed space a writer keeps ready. Anything but zeros after
        // it: in the last file, what a write interrupted by a power loss left (never
        // acknowledged; cut when the service opens the trail); in an earlier file, which
        // its writer cut after its records before starting the next, an edit.
        let (text, after) = written(&data);
        let after_end = after.iter().any(|b| *b != 0);
        if after_end && i + 1 == files.len() {
            torn_tail = true;
        }
        let mut rest: &[u8] = text;
        let mut number = 0;
        while !rest.is_empty() {
            number += 1;
            match rest.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    lines.push(Line {
                        file: i,
                        number,
                        bytes: rest.get(..end).unwrap_or_default().to_vec(),
                    });
                    rest = rest.get(end + 1..).unwrap_or_default();
                }
                None => {
                    if i + 1 == files.len() {
                        torn_tail = true;
                    } else {
                        lines.push(Line {
                            file: i,
                            number,
                            bytes: rest.to_vec(),
                        });
                    }
                    rest = &[];
                }
            }
        }
        if after_end && i + 1 < files.len() {
            lines.push(Line {
                file: i,
                number: number + 1,
                bytes: after.to_vec(),
            });
        }
    }
    let path_of = |l: &Line| files.get(l.file).map(|f| f.1.clone()).unwrap_or_default();
    let finding = |l: &Line, problem: String| Finding {
        file: path_of(l),
        line: l.number,
        problem,
    };
    let parsed: Vec<Option<Parsed>> = lines.iter().map(|l| parse(&l.bytes)).collect();
    let mut digests = Vec::new();
    let mut covered_to = None;
    let mut uncovered = 0;
    let mut first: Option<usize> = None;
    let mut expected: Option<(u64, String)> = if from.is_none() {
        Some((0, GENESIS.to_string()))
    } else {
        None
    };
    let mut previous: Option<usize> = None;
    let mut records = 0;
    macro_rules! done {
        ($finding:expr) => {
            return Ok(VerifyReport {
                files: files.len(),
                records,
                finding: $finding,
                torn_tail,
                digests,
                covered_to,
                uncovered,
                macs_checked: false,
            })
        };
    }
    for (i, l) in lines.iter().enumerate() {
        let Some(Some(Parsed {
            seq,
            prev,
            time,
            digest,
        })) = parsed.get(i)
        else {
            done!(Some(finding(
                l,
                "altered: the line is not a trail record".into()
            )));
        };
        if expected.is_none() {
            if from.is_some_and(|f| time.as_str() < f) {
                continue;
            }
            expected = Some((*seq, prev.clone()));
        }
        let Some((want_seq, want_prev)) = expected.take() else {
            continue;
        };
        records += 1;
        if *seq != want_seq {
            let later = parsed
                .iter()
                .skip(i + 1)
                .any(|p| p.as_ref().is_some_and(|p| p.seq == want_seq));
            let problem = if later || *seq < want_seq {
                format!("reordered: record {seq} found where record {want_seq} belongs")
            } else {
                format!("missing: record {want_seq} (and up to {}) is not in the trail before this line", seq - 1)
            };
            done!(Some(finding(l, problem)));
        }
        if *prev != want_prev {
            let f = match previous.and_then(|p| lines.get(p)) {
                Some(p) => finding(
                    p,
                    format!(
                        "altered: its SHA-256 does not match the prev of the next record ({}:{})",
                        path_of(l).display(),
                        l.number
                    ),
                ),
                None => finding(
                    l,
                    "altered: the first record's prev is not the genesis hash".into(),
                ),
            };
            done!(Some(f));
        }
        let first_i = *first.get_or_insert(i);
        match digest {
            None => uncovered += 1,
            Some(d) => {
                // Record `to_seq`, as found: in the checked part, `seq - to_seq` lines back.
                let back = seq.checked_sub(d.to_seq).filter(|b| *b > 0);
                let target = back
                    .and_then(|b| usize::try_from(b).ok())
                    .and_then(|b| i.checked_sub(b))
                    .filter(|j| *j >= first_i);
                if back.is_none() || d.from_seq > d.to_seq {
                    done!(Some(finding(
                        l,
                        format!(
                            "altered: a digest of records {}..{} cannot stand at record {seq}",
                            d.from_seq, d.to_seq
                        )
                    )));
                }
                if let Some(j) = target {
                    let (Some(t), Some(Some(tp))) = (lines.get(j), parsed.get(j)) else {
                        continue;
                    };
                    if tp.seq != d.to_seq || line_hash(&t.bytes) != d.hash {
                        done!(Some(finding(
                            l,
                            format!(
                                "altered: this digest of records {}..{} does not match record {} ({}:{}): a record up to it was changed, added or removed",
                                d.from_seq,
                                d.to_seq,
                                d.to_seq,
                                path_of(t).display(),
                                t.number
                            )
                        )));
                    }
                    // Event records between the digested one and this line stay uncovered.
                    uncovered = parsed
                        .get(j + 1..i)
                        .unwrap_or_default()
                        .iter()
                        .filter(|p| p.as_ref().is_some_and(|p| p.digest.is_none()))
                        .count() as u64;
                } else {
                    // Its range starts before the checked part (`from`): the chain from
                    // there still ties it to this record.
                    uncovered = 0;
                }
                covered_to = Some(covered_to.map_or(d.to_seq, |c: u64| c.max(d.to_seq)));
                digests.push(DigestFound {
                    file: path_of(l),
                    line: l.number,
                    digest: d.clone(),
                });
            }
        }
        expected = Some((seq + 1, line_hash(&l.bytes)));
        previous = Some(i);
    }
    done!(None)
}

/// Check the MAC of every digest before the report's finding (all when none) with
/// `signer` (the HSMs): the first digest whose MAC is not the key's becomes the finding.
pub async fn check_digests(
    report: &mut VerifyReport,
    signer: &dyn DigestSigner,
) -> Result<(), KmsError> {
    for found in &report.digests {
        if let Some(f) = &report.finding {
            if (&found.file, found.line) >= (&f.file, f.line) {
                break;
            }
        }
        let d = &found.digest;
        let mac = base64::engine::general_purpose::STANDARD.decode(&d.signature);
        let ok = match mac {
            Ok(mac) if d.key == signer.key() => signer.verify(d.canonical(), &mac).await?,
            _ => false,
        };
        if !ok {
            report.finding = Some(Finding {
                file: found.file.clone(),
                line: found.line,
                problem: format!(
                    "forged: the signature of this digest of records {}..{} is not the HSMs' ({})",
                    d.from_seq,
                    d.to_seq,
                    signer.key()
                ),
            });
            return Ok(());
        }
    }
    report.macs_checked = true;
    Ok(())
}

/// What [`verify`] reads of a line.
struct Parsed {
    seq: u64,
    prev: String,
    /// `event.eventTime` (empty for a digest).
    time: String,
    /// The digest of a digest line.
    digest: Option<Digest>,
}

/// `seq`, `prev`, `event.eventTime` or the digest of a line; `None` when it is neither
/// an event nor a digest line.
fn parse(line: &[u8]) -> Option<Parsed> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let seq = v.get("seq")?.as_u64()?;
    let prev = v.get("prev")?.as_str()?.to_string();
    if let Some(d) = v.get("digest") {
        let digest: Digest = serde_json::from_value(d.clone()).ok()?;
        return Some(Parsed {
            seq,
            prev,
            time: String::new(),
            digest: Some(digest),
        });
    }
    let time = v
        .get("event")?
        .get("eventTime")
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_string();
    Some(Parsed {
        seq,
        prev,
        time,
        digest: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::super::FileTrail;
    use super::*;
    use crate::kms::audit::AuditSink;

    async fn trail(dir: &Path, n: usize, max: u64) {
        let t = FileTrail::open(dir, max);
        assert!(t.healthy());
        for i in 0..n {
            let day = 10 + i / 4;
            let rec = format!(r#"{{"eventTime":"2024-05-{day}T00:00:00Z","n":{i}}}"#);
            t.append(vec![rec.into_bytes()]).await.unwrap();
        }
    }

    fn all_lines(dir: &Path) -> Vec<(PathBuf, Vec<String>)> {
        trail_files(dir)
            .unwrap()
            .into_iter()
            .map(|(_, p)| {
                let t = crate::audit::records_text(&p).unwrap();
                (p, t.lines().map(str::to_string).collect())
            })
            .collect()
    }

    fn rewrite(path: &Path, lines: &[String]) {
        let mut s = lines.join("\n");
        s.push('\n');
        std::fs::write(path, s).unwrap();
    }

    #[tokio::test]
    async fn an_intact_trail_across_files_and_restarts_verifies() {
        let d = tempfile::tempdir().unwrap();
        trail(d.path(), 5, 300).await;
        // A restart continues the chain.
        trail(d.path(), 5, 300).await;
        let files = all_lines(d.path());
        assert!(files.len() > 2, "rotation by size: {}", files.len());
        let r = verify(d.path(), None).unwrap();
        assert_eq!(r.finding, None);
        assert_eq!(r.records, 10);
        // From a date: earlier files may be gone.
        std::fs::remove_file(&files[0].0).unwrap();
        assert!(verify(d.path(), None).unwrap().finding.is_some());
        let r = verify(d.path(), Some("2024-05-11")).unwrap();
        assert_eq!(r.finding, None, "{:?}", r.finding);
        assert!(r.records < 10);
    }

    #[tokio::test]
    async fn an_edited_deleted_or_swapped_line_is_named() {
        for case in ["edit", "delete", "swap", "garbage"] {
            let d = tempfile::tempdir().unwrap();
            trail(d.path(), 12, 1 << 20).await;
            let (path, mut lines) = all_lines(d.path()).remove(0);
            match case {
                "edit" => lines[4] = lines[4].replace("\"n\":4", "\"n\":5"),
                "delete" => {
                    lines.remove(4);
                }
                "swap" => lines.swap(4, 5),
                _ => lines[4] = "not json".into(),
            }
            rewrite(&path, &lines);
            let f = verify(d.path(), None).unwrap().finding.expect(case);
            assert_eq!(f.file, path, "{case}");
            assert_eq!(f.line, 5, "{case}: {f}");
            let word = match case {
                "edit" | "garbage" => "altered",
                "delete" => "missing",
                _ => "reordered",
            };
            assert!(f.problem.starts_with(word), "{case}: {f}");
        }
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_on_open_and_the_chain_continues() {
        let d = tempfile::tempdir().unwrap();
        trail(d.path(), 3, 1 << 20).await;
        let (path, _) = all_lines(d.path()).remove(0);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"seq\":3,\"prev\":\"ab").unwrap();
        assert!(verify(d.path(), None).unwrap().torn_tail);
        trail(d.path(), 2, 1 << 20).await;
        let r = verify(d.path(), None).unwrap();
        assert_eq!(r.finding, None);
        assert_eq!(r.records, 5);
        assert!(!r.torn_tail);
    }

    #[tokio::test]
    async fn an_unusable_folder_is_unhealthy_and_refuses_writes() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("not-a-folder");
        std::fs::write(&file, b"x").unwrap();
        let t = FileTrail::open(&file, 1 << 20);
        assert!(!t.healthy());
        assert!(t.append(vec![b"{}".to_vec()]).await.is_err());
        // The folder becomes usable: a probe finds it so.
        std::fs::remove_file(&file).unwrap();
        let mut ok = false;
        for _ in 0..50 {
            if t.healthy() {
                ok = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(ok, "the probe never found the folder usable");
        t.append(vec![b"{}".to_vec()]).await.unwrap();
    }

    #[tokio::test]
    async fn zeroed_space_is_kept_ahead_while_open_and_cut_when_the_trail_ends() {
        let d = tempfile::tempdir().unwrap();
        let t = FileTrail::open(d.path(), 1 << 30);
        for i in 0..3 {
            t.append(vec![format!(r#"{{"n":{i}}}"#).into_bytes()])
                .await
                .unwrap();
        }
        let (_, path) = trail_files(d.path()).unwrap().remove(0);
        let data = std::fs::read(&path).unwrap();
        let (records, after) = written(&data);
        assert_eq!(records.iter().filter(|b| **b == b'\n').count(), 3);
        assert!(
            after.len() as u64 >= super::super::AHEAD / 2,
            "{}",
            after.len()
        );
        assert!(after.iter().all(|b| *b == 0));
        // Readable while open: verify and the reader stop at the zeros.
        let r = verify(d.path(), None).unwrap();
        assert_eq!((r.finding, r.records, r.torn_tail), (None, 3, false));
        drop(t);
        let data = std::fs::read(&path).unwrap();
        assert_eq!(
            written(&data).1,
            b"",
            "the zeros are cut when the trail ends"
        );
        assert_eq!(data.last(), Some(&b'\n'));
    }

    #[tokio::test]
    async fn what_a_power_loss_leaves_after_the_zeros_is_cut_on_open() {
        let d = tempfile::tempdir().unwrap();
        trail(d.path(), 3, 1 << 20).await;
        let (_, path) = trail_files(d.path()).unwrap().remove(0);
        // Records, a gap of zeros (a page never written back), then part of a later page.
        let mut data = std::fs::read(&path).unwrap();
        data.extend_from_slice(&[0u8; 4096]);
        data.extend_from_slice(b"\"n\":7}}\n{\"seq\":4,\"prev\":\"ab");
        std::fs::write(&path, &data).unwrap();
        let r = verify(d.path(), None).unwrap();
        assert_eq!((r.finding, r.records, r.torn_tail), (None, 3, true));
        trail(d.path(), 2, 1 << 20).await;
        let r = verify(d.path(), None).unwrap();
        assert_eq!((r.finding, r.records, r.torn_tail), (None, 5, false));
    }

    #[tokio::test]
    async fn bytes_after_the_zeros_of_an_earlier_file_are_an_alteration() {
        let d = tempfile::tempdir().unwrap();
        trail(d.path(), 6, 300).await;
        let files = trail_files(d.path()).unwrap();
        assert!(files.len() > 2);
        let path = &files[0].1;
        let mut data = std::fs::read(path).unwrap();
        let lines = data.iter().filter(|b| **b == b'\n').count();
        data.extend_from_slice(&[0u8; 16]);
        data.extend_from_slice(b"{\"hidden\":1}\n");
        std::fs::write(path, &data).unwrap();
        let f = verify(d.path(), None).unwrap().finding.expect("caught");
        assert_eq!((&f.file, f.line), (path, lines + 1), "{f}");
        assert!(f.problem.starts_with("altered"), "{f}");
    }
}

#[cfg(test)]
mod digest_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::super::{DigestOptions, FileTrail};
    use super::*;
    use crate::kms::audit::AuditSink;
    use crate::kms::digest::{ensure_digest_key, HsmDigestKey};
    use crate::kms::vault::fake::FakeVault;
    use crate::kms::vault::KeyVault;
    use std::sync::Arc;

    async fn signer() -> Arc<HsmDigestKey> {
        let vault: Arc<dyn KeyVault> = Arc::new(FakeVault::new(2));
        let store: Arc<dyn crate::store::MetadataStore> =
            Arc::new(crate::store::SqliteStore::open_in_memory().unwrap());
        ensure_digest_key(vault.as_ref(), &store).await.unwrap();
        Arc::new(HsmDigestKey::new(vault))
    }

    /// 25 records, a digest asked for every 10 records, sealed. A digest is signed while
    /// later records are written and goes in with the batch after it, so the records a
    /// digest covers depend on how fast the HSM signs: records 0..=9, then 10..=19 or more.
    async fn trail(dir: &Path, key: Arc<HsmDigestKey>) {
        let t = FileTrail::open_with_digests(
            dir,
            1 << 20,
            Some(DigestOptions {
                signer: key,
                every_records: 10,
                every: std::time::Duration::from_secs(3600),
            }),
        );
        for i in 0..25 {
            let rec = format!(r#"{{"eventTime":"2024-05-10T00:00:00Z","n":{i}}}"#);
            t.append(vec![rec.into_bytes()]).await.unwrap();
        }
        t.seal().await.unwrap();
    }

    fn lines(dir: &Path) -> (PathBuf, Vec<serde_json::Value>) {
        let (_, p) = trail_files(dir).unwrap().remove(0);
        let text = crate::audit::records_text(&p).unwrap();
        let v = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (p, v)
    }

    /// Write `values` back, recomputing every `seq` and `prev` as an attacker without the
    /// HSM key can.
    fn rechain(path: &Path, values: &mut [serde_json::Value]) {
        let mut prev = GENESIS.to_string();
        let mut out = String::new();
        for (seq, v) in values.iter_mut().enumerate() {
            // (A digest's members in the writer's order.)
            let (kind, body) = match v.get("digest") {
                Some(d) => (
                    "digest",
                    serde_json::to_string(&serde_json::from_value::<Digest>(d.clone()).unwrap())
                        .unwrap(),
                ),
                None => ("event", serde_json::to_string(&v["event"]).unwrap()),
            };
            let line = format!("{{\"seq\":{seq},\"prev\":\"{prev}\",\"{kind}\":{body}}}");
            prev = line_hash(line.as_bytes());
            *v = serde_json::from_str(&line).unwrap();
            out.push_str(&line);
            out.push('\n');
        }
        std::fs::write(path, out).unwrap();
    }

    /// The indexes of the digest lines (written with the batch after they are signed, so
    /// not at a fixed place).
    fn digest_at(v: &[serde_json::Value]) -> Vec<usize> {
        (0..v.len())
            .filter(|i| v[*i].get("digest").is_some())
            .collect()
    }

    async fn check(dir: &Path, key: &HsmDigestKey) -> VerifyReport {
        let mut r = verify(dir, None).unwrap();
        check_digests(&mut r, key).await.unwrap();
        r
    }

    #[tokio::test]
    async fn a_digested_trail_verifies_and_its_tail_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let key = signer().await;
        trail(d.path(), key.clone()).await;
        let (_, v) = lines(d.path());
        let digests: Vec<_> = v.iter().filter_map(|l| l.get("digest")).collect();
        // After records 9 and 19 and at seal; 2 when the first signature came back
        // only after record 19 (then the second covers 10..=24 and seal has nothing left).
        assert!((2..=3).contains(&digests.len()), "{}", digests.len());
        assert_eq!(digests[0]["from_seq"], 0);
        assert_eq!(digests[0]["to_seq"], 9);
        assert_eq!(digests[0]["key"], "hsm-kms/audit-digest-key");
        let r = check(d.path(), &key).await;
        assert_eq!(r.finding, None);
        assert!(r.macs_checked);
        assert_eq!(r.digests.len(), digests.len());
        assert_eq!(r.uncovered, 0, "sealed: nothing after the last digest");
        let first_run = r.digests.len();
        // A restart continues the chain and the digests.
        trail(d.path(), key.clone()).await;
        let r = check(d.path(), &key).await;
        assert_eq!((r.finding, r.uncovered), (None, 0));
        assert!(
            (first_run + 2..=first_run + 3).contains(&r.digests.len()),
            "{first_run} then {}",
            r.digests.len()
        );
        // Every line is covered once: each digest starts where the one before ended,
        // across the restart too.
        assert_eq!(r.digests[0].digest.from_seq, 0);
        for w in r.digests.windows(2) {
            assert_eq!(w[1].digest.from_seq, w[0].digest.to_seq + 1, "{w:?}");
        }
    }

    #[tokio::test]
    async fn a_digest_comes_on_time_and_a_failing_hsm_fails_no_record() {
        let d = tempfile::tempdir().unwrap();
        let key = signer().await;
        let t = FileTrail::open_with_digests(
            d.path(),
            1 << 20,
            Some(DigestOptions {
                signer: key.clone(),
                every_records: 1000,
                every: std::time::Duration::from_millis(200),
            }),
        );
        for i in 0..3 {
            t.append(vec![format!(r#"{{"n":{i}}}"#).into_bytes()])
                .await
                .unwrap();
        }
        // No batch comes after: the writer writes the digest on its own.
        let mut found = false;
        for _ in 0..40 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if !digest_at(&lines(d.path()).1).is_empty() {
                found = true;
                break;
            }
        }
        assert!(found, "no digest after the period");
        let r = check(d.path(), &key).await;
        assert_eq!((r.finding, r.uncovered), (None, 0));

        // The HSMs refuse MACs (no digest key there): records are still written, seal
        // says why there is no digest, and verify reports them as not covered.
        let d = tempfile::tempdir().unwrap();
        let vault: Arc<dyn KeyVault> = Arc::new(FakeVault::new(2));
        let t = FileTrail::open_with_digests(
            d.path(),
            1 << 20,
            Some(DigestOptions {
                signer: Arc::new(HsmDigestKey::new(vault)),
                every_records: 2,
                every: std::time::Duration::from_secs(3600),
            }),
        );
        for i in 0..5 {
            t.append(vec![format!(r#"{{"n":{i}}}"#).into_bytes()])
                .await
                .unwrap();
        }
        assert!(t.healthy());
        assert!(t.seal().await.is_err());
        let r = verify(d.path(), None).unwrap();
        assert_eq!((r.finding, r.digests.len(), r.uncovered), (None, 0, 5));
    }

    #[tokio::test]
    async fn a_rewritten_record_with_a_recomputed_chain_fails_at_the_digest() {
        let d = tempfile::tempdir().unwrap();
        let key = signer().await;
        trail(d.path(), key.clone()).await;
        let (path, mut v) = lines(d.path());
        let first = digest_at(&v)[0];
        v[4]["event"]["n"] = 400.into();
        rechain(&path, &mut v);
        // The chain alone is now consistent...
        let r = check(d.path(), &key).await;
        let f = r.finding.expect("caught");
        // ...but the first digest (covering records 0..9) no longer matches.
        assert_eq!(f.line, first + 1, "{f}");
        assert!(f.problem.starts_with("altered: this digest"), "{f}");

        // Making the digest match needs a new MAC: without the key, it is forged.
        let hash = line_hash(
            crate::audit::records_text(&path)
                .unwrap()
                .lines()
                .nth(9)
                .unwrap()
                .as_bytes(),
        );
        v[first]["digest"]["hash"] = hash.into();
        rechain(&path, &mut v);
        let r = check(d.path(), &key).await;
        let f = r.finding.expect("caught");
        assert_eq!(f.line, first + 1, "{f}");
        assert!(f.problem.starts_with("forged"), "{f}");
    }

    #[tokio::test]
    async fn digested_records_cut_off_or_a_forged_digest_are_caught() {
        let key = signer().await;
        // Records 5..7 removed, the chain recomputed: the first digest no longer matches.
        let d = tempfile::tempdir().unwrap();
        trail(d.path(), key.clone()).await;
        let (path, mut v) = lines(d.path());
        v.drain(5..8);
        rechain(&path, &mut v);
        let f = check(d.path(), &key).await.finding.expect("caught");
        assert!(
            f.problem.starts_with("altered: this digest")
                || f.problem.starts_with("altered: a digest"),
            "{f}"
        );

        // The tail cut after a digest (with the later digests): not silent, the records
        // after the last digest left are reported as not covered.
        let d = tempfile::tempdir().unwrap();
        trail(d.path(), key.clone()).await;
        let (path, v) = lines(d.path());
        let second = digest_at(&v)[1];
        let text = crate::audit::records_text(&path).unwrap();
        let kept: Vec<&str> = text.lines().take(second).collect();
        std::fs::write(&path, kept.join("\n") + "\n").unwrap();
        let r = check(d.path(), &key).await;
        assert_eq!(r.finding, None);
        assert_eq!(r.covered_to, Some(9));
        // Every event after record 9 is left uncovered (the line count less the digest).
        assert_eq!(r.uncovered as usize, second - 10 - 1);
        assert!(r.uncovered > 0);

        // The last digest's MAC changed (one bit): a later digest would catch any digest
        // line changed; the last one only its MAC can.
        let d = tempfile::tempdir().unwrap();
        trail(d.path(), key.clone()).await;
        let (path, mut v) = lines(d.path());
        let last = *digest_at(&v).last().unwrap();
        let sig = v[last]["digest"]["signature"].as_str().unwrap().to_string();
        let mut mac = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .unwrap();
        mac[0] ^= 1;
        v[last]["digest"]["signature"] =
            base64::engine::general_purpose::STANDARD.encode(mac).into();
        rechain(&path, &mut v);
        let r = verify(d.path(), None).unwrap();
        assert_eq!(r.finding, None, "the chain and ranges alone pass");
        let f = check(d.path(), &key).await.finding.expect("caught");
        assert_eq!(f.line, last + 1, "{f}");
        assert!(f.problem.starts_with("forged"), "{f}");
    }
}
