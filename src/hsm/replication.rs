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
use super::integrity::CHECK_LEN;
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

/// A new key, copied into the HSMs: its transfer (a key pair's public half…) and the check
/// value of its copies.
pub(super) struct Created {
    pub(super) transfer: Arc<Transfer>,
    /// `None` when it could not be read and no other HSM had begun making the key.
    pub(super) check: Option<[u8; CHECK_LEN]>,
}

impl Created {
    /// The SubjectPublicKeyInfo DER of a new key pair (an error for a secret key).
    pub(super) fn spki(&self) -> Result<Vec<u8>, HsmError> {
        match &*self.transfer {
            Transfer::Pair(tr) => tr.public().spki(),
            _ => Err(HsmError::Internal("key pair expected".into())),
        }
    }
}

/// A new key made on one HSM, before it is copied to the others.
struct Made<'p> {
    primary: &'p Pool,
    transfer: Arc<Transfer>,
    /// HSMs that failed to make it before `primary` did.
    failed: Failed<'p>,
}

/// HSMs that failed as a device does while a new key was being made (left out of its
/// copies, for re-sync), and the last of their failures.
#[derive(Default)]
struct Failed<'p> {
    pools: Vec<&'p Pool>,
    last: Option<HsmError>,
}

impl<'p> Failed<'p> {
    fn add(&mut self, pool: &'p Pool, e: HsmError) {
        self.pools.push(pool);
        self.last = Some(e);
    }
}

impl Replicator<'_> {
    /// Generate a key of `kind` on the first usable HSM that can hold it (key pairs: in
    /// the first key generation lane that takes it), then copy it to every other usable
    /// HSM that can (an HSM whose token lacks what the kind needs is left out, see
    /// `needs`); at least `min_copies` must hold it, and any failure destroys every copy.
    ///
    /// An HSM that fails the generation as a device does (it hung and was cut off, its
    /// module or host died) is skipped: the key is made on the next one. That HSM may still
    /// finish its generation later and then hold a *different* key under the same `id`; so
    /// the answer carries the check value of the copy that was kept, read from the HSM that
    /// made it, for the caller to record with the key: every copy is verified against it at
    /// first use and a different one is quarantined, never used (see `integrity`). After such
    /// a failover, a check value that cannot be read fails the creation, every copy
    /// destroyed.
    pub(super) async fn create(
        &self,
        id: &[u8],
        label: &str,
        kind: KeyKind,
    ) -> Result<Created, HsmError> {
        let make = || Command::Create {
            id: id.to_vec(),
            label: label.to_string(),
            kind,
        };
        let targets = self.enough_targets(kind)?;
        let made = match kind {
            KeyKind::Pair(..) => self.generate_in_keygen_lane(kind, id, make).await?,
            KeyKind::Aes | KeyKind::Hmac(_) => self.make_on_first(&targets, id, make).await?,
        };
        let primary = made.primary;
        let failed_over = !made.failed.pools.is_empty();
        let transfer = self.copy_to_others(&targets, made, id, label, kind).await?;
        let check = Command::CheckValue {
            id: id.to_vec(),
            kind,
        };
        let read = primary
            .call::<Option<[u8; CHECK_LEN]>>(self.timeout, check)
            .await;
        match read {
            Ok(Some(check)) => Ok(Created {
                transfer,
                check: Some(check),
            }),
            // No HSM gave up on this key: every copy is the primary's (as before check
            // values were read at creation); the background pass records one later.
            Ok(None) | Err(_) if !failed_over => {
                if let Err(e) = read {
                    tracing::warn!(hsm = %primary.node().name(), error = %e, "the new key's check value could not be read; the background pass will record it");
                }
                Ok(Created {
                    transfer,
                    check: None,
                })
            }
            // A copy made elsewhere could not be told from this one: undo.
            other => {
                let e = match other {
                    Err(e) => e,
                    _ => HsmError::Internal(format!(
                        "{}: the new key has no check value",
                        primary.node().name()
                    )),
                };
                tracing::error!(hsm = %primary.node().name(), error = %e, "the new key's check value could not be read after a failover; destroying every copy");
                self.destroy_on(&targets, id).await;
                Err(e)
            }
        }
    }

    /// Make a key with the command `make` builds (an import: unwrap and export) on the
    /// first usable HSM that can (one that lacks the import wrapping key, or fails as a
    /// device does, is skipped), then copy it to every other usable HSM as
    /// [`Replicator::create`] does. A failure the request itself causes (undecryptable or
    /// unfitting material) is answered at once, with nothing left behind.
    pub(super) async fn create_by(
        &self,
        id: &[u8],
        label: &str,
        kind: KeyKind,
        make: impl Fn() -> Command,
    ) -> Result<Arc<Transfer>, HsmError> {
        let targets = self.enough_targets(kind)?;
        let made = self.make_on_first(&targets, id, make).await?;
        self.copy_to_others(&targets, made, id, label, kind).await
    }

    /// Run the command `make` builds (a generation or an import, answering the key's
    /// transfer) on the first HSM of `targets` that does it. One that fails as a device does
    /// is skipped (what it may have made of key `id` destroyed); any other failure is
    /// answered at once.
    async fn make_on_first<'p>(
        &self,
        targets: &[&'p Pool],
        id: &[u8],
        make: impl Fn() -> Command,
    ) -> Result<Made<'p>, HsmError> {
        let mut failed = Failed::default();
        for &pool in targets {
            let r = pool.call::<Transfer>(self.timeout, make()).await;
            if let Some(done) = self.attempted(pool, id, r, &mut failed).await {
                return done;
            }
        }
        Err(failed.last.unwrap_or(HsmError::NotEnoughHsms {
            healthy: 0,
            needed: self.needed(),
        }))
    }

    /// What one attempt to make key `id` on `pool` came to: the key made there, or a
    /// failure to answer at once (`Some`); or `None`: the HSM failed as a device does, what
    /// it may have made of `id` is destroyed, it is noted in `failed` and the next is tried.
    async fn attempted<'p>(
        &self,
        pool: &'p Pool,
        id: &[u8],
        r: Result<Transfer, HsmError>,
        failed: &mut Failed<'p>,
    ) -> Option<Result<Made<'p>, HsmError>> {
        match r {
            Ok(t) => Some(Ok(Made {
                primary: pool,
                transfer: Arc::new(t),
                failed: std::mem::take(failed),
            })),
            Err(e) => {
                self.destroy_on(&[pool], id).await;
                if !e.retryable() {
                    return Some(Err(e));
                }
                tracing::warn!(hsm = %pool.node().name(), error = %e, "could not make the key on this HSM; trying the next");
                failed.add(pool, e);
                None
            }
        }
    }

    /// HSMs that must hold a new key: `min_copies`, at least 2.
    fn needed(&self) -> usize {
        self.min_copies.max(2)
    }

    /// [`Replicator::targets`], when there are enough of them to hold a new key.
    fn enough_targets(&self, kind: KeyKind) -> Result<Vec<&Pool>, HsmError> {
        let targets = self.targets(kind);
        if targets.len() < self.needed() {
            return Err(HsmError::NotEnoughHsms {
                healthy: targets.len(),
                needed: self.needed(),
            });
        }
        Ok(targets)
    }

    /// Copy the key `made` on one HSM into every other HSM of `targets`, except those that
    /// failed to make it. An HSM that fails as a device does (it hangs past the deadline,
    /// its module or host died: a retryable error) is left out, as if it had been down:
    /// re-sync copies the key to it once it serves again. Fewer than `min_copies` holders,
    /// or any other failure, destroys every copy made, the primary's included.
    async fn copy_to_others(
        &self,
        targets: &[&Pool],
        made: Made<'_>,
        id: &[u8],
        label: &str,
        kind: KeyKind,
    ) -> Result<Arc<Transfer>, HsmError> {
        let Made {
            primary,
            transfer,
            failed: Failed {
                pools: failed,
                last,
            },
        } = made;
        let needed = self.needed();
        let mut holders = vec![primary];
        let others = targets.iter().filter(|p| {
            !Arc::ptr_eq(p.node(), primary.node())
                && !failed.iter().any(|f| Arc::ptr_eq(f.node(), p.node()))
        });
        let mut skipped = last;
        for &pool in others {
            match self
                .install_on(pool, id, label, kind, transfer.as_ref().clone())
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
                    self.destroy_on(&holders, id).await;
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
            self.destroy_on(&holders, id).await;
            return Err(skipped.unwrap_or(HsmError::NotEnoughHsms {
                healthy: holders.len(),
                needed,
            }));
        }
        Ok(transfer)
    }

    /// Run the command `make` builds (generate and export a key pair) in the key generation
    /// lane of the first HSM of [`health::keygen_order`] whose lane takes it. An HSM that
    /// fails it as a device does is skipped (what it may have made of key `id` destroyed),
    /// as is a full lane. Every lane full: [`HsmError::KeygenBusy`], with nothing generated
    /// anywhere.
    async fn generate_in_keygen_lane(
        &self,
        kind: KeyKind,
        id: &[u8],
        make: impl Fn() -> Command,
    ) -> Result<Made<'_>, HsmError> {
        let mut busy = None;
        let mut failed = Failed::default();
        let able = health::keygen_order(self.hsms)
            .into_iter()
            .filter(|p| can_hold(p, kind));
        for pool in able {
            match pool.keygen::<Transfer>(make()).await {
                Err(e @ HsmError::KeygenBusy { .. }) => busy = Some(e),
                r => {
                    if let Some(done) = self.attempted(pool, id, r, &mut failed).await {
                        return done;
                    }
                }
            }
        }
        Err(busy.or(failed.last).unwrap_or(HsmError::NotEnoughHsms {
            healthy: 0,
            needed: self.needed(),
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
