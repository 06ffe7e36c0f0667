//! `hsm-kms audit verify`: read every trail file in order and check the chain — each
//! record's `seq` one more than the previous one's, its `prev` the SHA-256 of the previous
//! line — and name the first record missing, altered or out of order by file and line.
//!
//! With `from` (an ISO 8601 date or time), records whose `eventTime` is earlier are
//! skipped and the first one at or after it anchors the chain, so older files may be
//! archived away. Without it the trail must start at record 0.
//!
//! Limit: a change to the very last line, or its removal, leaves no later record to
//! contradict it; the signed digests of the issue's later part close that gap.

use super::{line_hash, trail_files, GENESIS};
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
        let text = std::fs::read(path).map_err(|e| err(path, e))?;
        let mut rest: &[u8] = &text;
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
    }
    let path_of = |l: &Line| files.get(l.file).map(|f| f.1.clone()).unwrap_or_default();
    let finding = |l: &Line, problem: String| Finding {
        file: path_of(l),
        line: l.number,
        problem,
    };
    let parsed: Vec<Option<(u64, String, String)>> =
        lines.iter().map(|l| parse(&l.bytes)).collect();
    let mut expected: Option<(u64, String)> = if from.is_none() {
        Some((0, GENESIS.to_string()))
    } else {
        None
    };
    let mut previous: Option<usize> = None;
    let mut records = 0;
    for (i, l) in lines.iter().enumerate() {
        let Some(Some((seq, prev, time))) = parsed.get(i) else {
            return Ok(report(
                &files,
                records,
                torn_tail,
                Some(finding(l, "altered: the line is not a trail record".into())),
            ));
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
                .any(|p| p.as_ref().is_some_and(|p| p.0 == want_seq));
            let problem = if later || *seq < want_seq {
                format!("reordered: record {seq} found where record {want_seq} belongs")
            } else {
                format!("missing: record {want_seq} (and up to {}) is not in the trail before this line", seq - 1)
            };
            return Ok(report(
                &files,
                records,
                torn_tail,
                Some(finding(l, problem)),
            ));
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
            return Ok(report(&files, records, torn_tail, Some(f)));
        }
        expected = Some((seq + 1, line_hash(&l.bytes)));
        previous = Some(i);
    }
    Ok(report(&files, records, torn_tail, None))
}

fn report(
    files: &[(u64, PathBuf)],
    records: u64,
    torn_tail: bool,
    finding: Option<Finding>,
) -> VerifyReport {
    VerifyReport {
        files: files.len(),
        records,
        finding,
        torn_tail,
    }
}

/// `seq`, `prev` and `event.eventTime` of a line.
fn parse(line: &[u8]) -> Option<(u64, String, String)> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let seq = v.get("seq")?.as_u64()?;
    let prev = v.get("prev")?.as_str()?.to_string();
    let time = v
        .get("event")?
        .get("eventTime")
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_string();
    Some((seq, prev, time))
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
                let t = std::fs::read_to_string(&p).unwrap();
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
}
