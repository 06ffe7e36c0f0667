//! The operator's reports (`hsm-kms keys …`, `credentials …`): read from the metadata store
//! the running service uses (a second SQLite connection: WAL and a busy timeout let it read
//! and write while the service writes), and for `keys show` from a scan of every HSM's
//! objects (`hsm::inspect`). Like `app`, this layer may name the store, the domain's
//! documents and the HSM layer; the command line (`src/cli`) only prints what it returns, as
//! a table or as JSON.

pub mod credentials;
pub mod keys;

use crate::store::StoreError;
use time::OffsetDateTime;

/// Why an operator command could not answer.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Store(#[from] StoreError),
    /// Nothing matches what the operator named.
    #[error("{0}")]
    NotFound(String),
    /// The operator's input is not valid.
    #[error("{0}")]
    Invalid(String),
    /// A stored document cannot be read by this binary.
    #[error("{0}")]
    Corrupt(String),
}

/// `t` as RFC 3339 (`2024-05-01T12:00:00.123Z`), the form of every date in the reports.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// A plain text table: a header row and rows, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(cell);
            if i + 1 < widths.len() {
                s.push_str(&" ".repeat(w.saturating_sub(cell.chars().count())));
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(&mut header.iter().copied());
    for r in rows {
        out.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_aligns_its_columns_and_trims_line_ends() {
        let t = table(
            &["A", "LONG HEADER", "C"],
            &[
                vec!["x".into(), "y".into(), "".into()],
                vec!["wide cell".into(), "z".into(), "w".into()],
            ],
        );
        assert_eq!(
            t,
            "A          LONG HEADER  C\nx          y\nwide cell  z            w\n"
        );
    }
}
