//! Audit records of operator commands: `hsm-kms reconcile --fix` and the copies after
//! `hsm-kms hsm enroll` run as processes of their own and cannot append to the running
//! service's trail (one writer owns its hash chain). Their service events go instead, through
//! [`PendingRecords`], into the metadata store, durably and in order; the service moves them
//! into its trail ([`drain`]) within a second while it runs, or at its next start, and only
//! then deletes them. A crash between the two appends them again on the next pass (each
//! keeps its `eventID`): nothing recorded is lost.

use crate::kms::audit::AuditSink;
use crate::kms::service::store_blocking;
use crate::kms::KmsError;
use crate::store::MetadataStore;
use std::sync::Arc;

/// Most pending records moved into the trail in one group commit.
const BATCH: usize = 256;

/// An [`AuditSink`] keeping records in the metadata store until the service takes them.
pub struct PendingRecords {
    store: Arc<dyn MetadataStore>,
}

impl PendingRecords {
    /// A sink putting records into `store`.
    pub fn new(store: Arc<dyn MetadataStore>) -> PendingRecords {
        PendingRecords { store }
    }
}

#[async_trait::async_trait]
impl AuditSink for PendingRecords {
    fn healthy(&self) -> bool {
        true
    }

    async fn append(&self, records: Vec<Vec<u8>>) -> Result<(), KmsError> {
        store_blocking(&self.store, move |s| {
            records.iter().try_for_each(|r| s.put_pending_record(r))
        })
        .await
    }
}

/// Move every record waiting in `store` into `trail`, oldest first, deleting them once
/// durable there (dropping them unrecorded when `trail` keeps none: the trail is off).
/// Returns how many were moved.
pub async fn drain(
    store: &Arc<dyn MetadataStore>,
    trail: &dyn AuditSink,
) -> Result<usize, KmsError> {
    let mut moved = 0;
    loop {
        let batch = store_blocking(store, |s| s.pending_records(BATCH)).await?;
        let Some(&(last, _)) = batch.last() else {
            return Ok(moved);
        };
        let n = batch.len();
        if trail.keeps_records() {
            trail
                .append(batch.into_iter().map(|(_, r)| r).collect())
                .await?;
        }
        store_blocking(store, move |s| s.delete_pending_records(last)).await?;
        moved += n;
        if n < BATCH {
            return Ok(moved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_put_by_a_command_reach_the_trail_in_order_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn MetadataStore> =
            Arc::new(SqliteStore::open(&dir.path().join("kms.db")).unwrap());
        // What a command records while the service is stopped.
        let command = PendingRecords::new(store.clone());
        command
            .append(vec![br#"{"n":1}"#.to_vec(), br#"{"n":2}"#.to_vec()])
            .await
            .unwrap();
        command.append(vec![br#"{"n":3}"#.to_vec()]).await.unwrap();
        // The service's next start moves them into its trail, then deletes them.
        let trail = crate::audit::FileTrail::open(&dir.path().join("audit"), 1 << 20);
        assert_eq!(drain(&store, &trail).await.unwrap(), 3);
        assert!(store.pending_records(10).unwrap().is_empty());
        assert_eq!(drain(&store, &trail).await.unwrap(), 0, "moved once");
        trail.seal().await.unwrap();
        let files = crate::audit::trail_files(&dir.path().join("audit")).unwrap();
        let text = crate::audit::records_text(&files[0].1).unwrap();
        let ns: Vec<i64> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| v["event"]["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, [1, 2, 3]);
        assert_eq!(
            crate::audit::verify(&dir.path().join("audit"), None)
                .unwrap()
                .finding,
            None
        );
        // With the trail off they are dropped, not kept forever.
        command.append(vec![br#"{"n":4}"#.to_vec()]).await.unwrap();
        assert_eq!(
            drain(&store, &crate::kms::audit::DisabledSink)
                .await
                .unwrap(),
            1
        );
        assert!(store.pending_records(10).unwrap().is_empty());
    }
}
