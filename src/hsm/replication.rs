//! Replication of keys across the cluster, one path for every key family: generate on the
//! healthiest HSM (key pairs: in the key generation lane of the healthy HSM with the fewest
//! generations in flight, the next one if that lane is full), export (wrap under the cluster
//! wrapping key, plus a proof), install on every other usable HSM (unwrap, then reproduce
//! the proof), and on any failure destroy every copy made. Also the re-sync of keys that an
//! HSM lacks (it was down or new when they were created). The per-family steps live in
//! `aes`, `keypair` and `hmac`.

use super::command::{Command, Transfer};
use super::error::HsmError;
use super::health;
use super::kinds::{holding_object, KeyKind};
use super::needs::{self, Support};
use super::worker::Pool;
use std::sync::Arc;
use std::time::Duration;

/// What the HSM of `pool` offers for keys of `kind` (`needs::support` of what its token
/// offered at connect); an HSM whose token has not been opened yet is taken as able (it is
/// checked again when it opens).
pub(super) fn support_on(pool: &Pool, kind: KeyKind) -> Support {
    match pool.facts() {
        Some(f) => needs::support(f.offered, kind),
        None => Support::Native,
    }
}

/// Whether the HSM of `pool` can hold keys of `kind` (natively or by a fallback).
fn can_hold(pool: &Pool, kind: KeyKind) -> bool {
    !matches!(support_on(pool, kind), Support::Missing(_))
}

/// The HSMs of a cluster as replication sees them.
pub(super) struct Replicator<'a> {
    pub(super) hsms: &'a [Pool],
    /// HSMs that must hold a new key before it is acknowledged (at least 2).
    pub(super) min_copies: usize,
    /// Deadline of each generation, export, install and destruction step.
    pub(super) timeout: Duration,
}

impl Replicator<'_> {
    /// Generate a key of `kind` on the first usable HSM that can hold it, then copy it to
    /// every other usable HSM that can (an HSM whose token lacks what the kind needs is
    /// left out, see `needs`); at least `min_copies` must hold it, and any failure destroys
    /// every copy.
    pub(super) async fn create(
        &self,
        id: &[u8],
        label: &str,
        kind: KeyKind,
    ) -> Result<Arc<Transfer>, HsmError> {
        let targets = self.targets(kind);
        let needed = self.min_copies.max(2);
        if targets.len() < needed {
            return Err(HsmError::NotEnoughHsms {
                healthy: targets.len(),
                needed,
            });
        }
        let (id, label) = (id.to_vec(), label.to_string());
        let make = || Command::Create {
            id: id.clone(),
            label: label.clone(),
            kind,
        };
        let (primary, made) = match kind {
            KeyKind::Pair(..) => self.generate_in_keygen_lane(kind, make).await?,
            KeyKind::Aes | KeyKind::Hmac(_) => {
                let Some(&primary) = targets.first() else {
                    return Err(HsmError::NotEnoughHsms { healthy: 0, needed });
                };
                (primary, primary.call(self.timeout, make()).await)
            }
        };
        let transfer = match made {
            Ok(p) => Arc::new(p),
            Err(e) => {
                self.destroy_on(&[primary], &id).await;
                return Err(e);
            }
        };
        self.copy_to_others(&targets, primary, &id, &label, kind, transfer)
            .await
    }

    /// Make a key with the command `make` builds (an import: unwrap and export) on the first
    /// usable HSM that can (one that lacks the import wrapping key, or fails as a device
    /// does, is skipped), then copy it to every other usable HSM as [`Replicator::create`]
    /// does. A failure the request itself causes (undecryptable or unfitting material) is
    /// answered at once, with nothing left behind.
    pub(super) async fn create_by(
        &self,
        id: &[u8],
        label: &str,
        kind: KeyKind,
        make: impl Fn() -> Command,
    ) -> Result<Arc<Transfer>, HsmError> {
        let targets = self.targets(kind);
        let needed = self.min_copies.max(2);
        if targets.len() < needed {
            return Err(HsmError::NotEnoughHsms {
                healthy: targets.len(),
                needed,
            });
        }
        let mut last = None;
        for &pool in &targets {
            match pool.call::<Transfer>(self.timeout, make()).await {
                Ok(t) => {
                    return self
                        .copy_to_others(&targets, pool, id, label, kind, Arc::new(t))
                        .await
                }
                Err(e) => {
                    self.destroy_on(&[pool], id).await;
                    if !e.retryable() {
                        return Err(e);
                    }
                    tracing::warn!(hsm = %pool.node().name(), error = %e, "could not make the key on this HSM; trying the next");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(HsmError::NotEnoughHsms { healthy: 0, needed }))
    }

    /// Copy the key `transfer` (made on `primary`) into every other HSM of `targets`. An
    /// HSM that fails as a device does (it hangs past the deadline, its module or host
    /// died: a retryable error) is left out, as if it had been down: re-sync copies the key
    /// to it once it serves again. Fewer than `min_copies` holders, or any other failure,
    /// destroys every copy made, the primary's included.
    async fn copy_to_others(
        &self,
        targets: &[&Pool],
        primary: &Pool,
        id: &[u8],
        label: &str,
        kind: KeyKind,
        transfer: Arc<Transfer>,
    ) -> Result<Arc<Transfer>, HsmError> {
        let (id, label) = (id.to_vec(), label.to_string());
        let needed = self.min_copies.max(2);
        let mut holders = vec![primary];
        let mut skipped = None;
        let others = targets
            .iter()
            .filter(|p| !Arc::ptr_eq(p.node(), primary.node()));
        for &pool in others {
            match self
                .install_on(pool, &id, &label, kind, transfer.as_ref().clone())
                .await
            {
                Ok(()) => holders.push(pool),
                Err(e) if e.retryable() => {
                    tracing::warn!(hsm = %pool.node().name(), error = %e, "could not copy the new key to this HSM; re-sync will");
                    skipped = Some(e);
                }
                Err(e) => {
                    tracing::error!(hsm = %pool.node().name(), error = %e, "replication failed; destroying every copy");
                    holders.push(pool);
                    self.destroy_on(&holders, &id).await;
                    return Err(e);
                }
            }
        }
        if holders.len() < needed {
            tracing::error!(
                copies = holders.len(),
                needed,
                "too few HSMs took the new key; destroying every copy"
            );
            self.destroy_on(&holders, &id).await;
            return Err(skipped.unwrap_or(HsmError::NotEnoughHsms {
                healthy: holders.len(),
                needed,
            }));
        }
        Ok(transfer)
    }

    /// Run the command `make` builds (generate and export a key pair) in the key generation lane of the first
    /// HSM of [`health::keygen_order`] whose lane takes it; returns that HSM and the
    /// outcome. Every lane full: [`HsmError::KeygenBusy`], with nothing generated anywhere.
    async fn generate_in_keygen_lane(
        &self,
        kind: KeyKind,
        make: impl Fn() -> Command,
    ) -> Result<(&Pool, Result<Transfer, HsmError>), HsmError> {
        let mut busy = None;
        let able = health::keygen_order(self.hsms)
            .into_iter()
            .filter(|p| can_hold(p, kind));
        for pool in able {
            match pool.keygen(make()).await {
                Err(e @ HsmError::KeygenBusy { .. }) => busy = Some(e),
                made => return Ok((pool, made)),
            }
        }
        Err(busy.unwrap_or(HsmError::NotEnoughHsms {
            healthy: 0,
            needed: self.min_copies.max(2),
        }))
    }

    /// The usable HSMs that can hold keys of `kind`, healthy first.
    fn targets(&self, kind: KeyKind) -> Vec<&Pool> {
        health::usable(self.hsms)
            .into_iter()
            .filter(|p| can_hold(p, kind))
            .collect()
    }

    /// Install a copy of the key (`transfer`) on the HSM served by `pool`.
    async fn install_on(
        &self,
        pool: &Pool,
        id: &[u8],
        label: &str,
        kind: KeyKind,
        transfer: Transfer,
    ) -> Result<(), HsmError> {
        let cmd = Command::Install {
            id: id.to_vec(),
            label: label.to_string(),
            kind,
            transfer,
        };
        pool.call(self.timeout, cmd).await
    }

    /// Copy keys that some usable HSM lacks from an HSM that holds them. Returns how many
    /// copies were made.
    pub(super) async fn resync(
        &self,
        keys: &[(Vec<u8>, String, KeyKind)],
    ) -> Result<usize, HsmError> {
        let mut copies = 0;
        for (id, label, kind) in keys {
            let object = holding_object(*kind);
            let mut holders = Vec::new();
            let mut lacking = Vec::new();
            for pool in self.targets(*kind) {
                let cmd = Command::Holds {
                    kind: object,
                    id: id.clone(),
                };
                if pool.call::<bool>(self.timeout, cmd).await? {
                    holders.push(pool);
                } else {
                    lacking.push(pool);
                }
            }
            let Some(&src) = holders.first() else {
                continue;
            };
            for dst in lacking {
                let cmd = Command::Export {
                    id: id.clone(),
                    kind: *kind,
                };
                let transfer = src.call(self.timeout, cmd).await?;
                self.install_on(dst, id, label, *kind, transfer).await?;
                tracing::info!(hsm = %dst.node().name(), object = %hex::encode(id), "re-synced a missing key");
                copies += 1;
            }
        }
        Ok(copies)
    }

    /// Best-effort destruction of every object with this `CKA_ID` on the HSMs `hsms`.
    async fn destroy_on(&self, hsms: &[&Pool], id: &[u8]) {
        for pool in hsms {
            let cmd = Command::DestroyAll { id: id.to_vec() };
            let _ = pool.call::<bool>(self.timeout, cmd).await;
        }
    }
}
