//! Reading the trail newest first: the file adapter of [`AuditReader`] (`LookupEvents`).
//! Files are scanned from the newest; a file whose first record is not older than the
//! position asked for is skipped after reading its first line. Only the records of a file
//! are read (up to its zeroed space, [`super::written`]); a torn last line (a write in
//! progress or interrupted) is not a record and is never visited.

use super::{trail_files, written, FileTrail};
use crate::kms::lookup::AuditReader;
use crate::kms::KmsError;
use std::io::Read;
use std::path::Path;

/// The sequence number and the CloudTrail record text of one trail line
/// (`{"seq":N,"prev":"<64 hex>","event":{…}}`), as the writer formats it.
fn parse_line(line: &[u8]) -> Option<(u64, &str)> {
    let line = std::str::from_utf8(line).ok()?;
    let rest = line.strip_prefix("{\"seq\":")?;
    let (seq, rest) = rest.split_once(',')?;
    let seq = seq.parse::<u64>().ok()?;
    let rest = rest.strip_prefix("\"prev\":\"")?;
    let rest = rest.get(64..)?.strip_prefix("\",\"event\":")?;
    let event = rest.strip_suffix('}')?;
    Some((seq, event))
}

fn read_error(path: &Path, e: std::io::Error) -> KmsError {
    KmsError::Internal(format!("audit trail {}: {e}", path.display()))
}

/// The sequence number of a file's first record, if it has one.
fn first_seq(path: &Path) -> Result<Option<u64>, KmsError> {
    // A record is a few KiB at most: its first line ends within the first 64 KiB.
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .map_err(|e| read_error(path, e))?;
    let Some(end) = written(&head).0.iter().position(|b| *b == b'\n') else {
        return Ok(None);
    };
    Ok(head.get(..end).and_then(parse_line).map(|(s, _)| s))
}

impl AuditReader for FileTrail {
    fn scan(
        &self,
        before: Option<u64>,
        visit: &mut dyn FnMut(u64, &str) -> bool,
    ) -> Result<(), KmsError> {
        let files = trail_files(&self.dir).map_err(|e| read_error(&self.dir, e))?;
        for (_, path) in files.iter().rev() {
            if let Some(b) = before {
                if first_seq(path)?.is_some_and(|first| first >= b) {
                    continue;
                }
            }
            let data = std::fs::read(path).map_err(|e| read_error(path, e))?;
            let records = written(&data).0;
            let complete = records
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let lines = records.get(..complete).unwrap_or_default();
            for line in lines.split(|&b| b == b'\n').rev() {
                let Some((seq, event)) = parse_line(line) else {
                    continue;
                };
                if before.is_some_and(|b| seq >= b) {
                    continue;
                }
                if !visit(seq, event) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kms::audit::AuditSink;

    #[tokio::test]
    async fn records_are_read_newest_first_across_files_and_from_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let trail = FileTrail::open(dir.path(), 200);
        for i in 0..12 {
            let r = format!("{{\"n\":{i},\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}}");
            trail.append(vec![r.into_bytes()]).await.unwrap();
        }
        assert!(trail_files(dir.path()).unwrap().len() > 2);
        let mut seen = Vec::new();
        trail
            .scan(None, &mut |seq, ev| {
                let v: serde_json::Value = serde_json::from_str(ev).unwrap();
                assert_eq!(v["n"], seq);
                seen.push(seq);
                true
            })
            .unwrap();
        assert_eq!(seen, (0..12).rev().collect::<Vec<u64>>());
        let mut seen = Vec::new();
        trail
            .scan(Some(5), &mut |seq, _| {
                seen.push(seq);
                seen.len() < 3
            })
            .unwrap();
        assert_eq!(seen, vec![4, 3, 2]);
        assert_eq!(parse_line(b"{\"seq\":1,\"prev\":\"x\",\"event\":{}}"), None);
    }
}
