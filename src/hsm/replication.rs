//! Replication of keys across the cluster, one path for every key family: generate on the
//! healthiest HSM (key pairs: in the key generation lane of the healthy HSM with the fewest
//! generations in flight, the next one if that lane is full), export (wrap under the cluster
//! wrapping key, plus a proof), install on every other usable HSM (unwrap, then reproduce
//! the proof), and on any failure destroy every copy made. Also the re-sync of keys that an
//! HSM lacks (it was down or new when they were created). The per-family steps live in
//! `aes`, `keypair` and `hmac`.

use super::aes::{self, AesTransfer};
use super::error::HsmError;
use super::handles::ObjectKind;
use super::health;
use super::hmac::{self, HmacTransfer};
use super::job::WorkerCtx;
use super::keypair::{self, PairTransfer};
use super::kinds::KeyKind;
use super::worker::Pool;
use std::sync::Arc;
use std::time::Duration;

/// What one HSM sends to another to copy a key.
pub(super) enum Transfer {
    Aes(AesTransfer),
    Pair(PairTransfer),
    Hmac(HmacTransfer),
}

fn export(ctx: &mut WorkerCtx<'_>, id: &[u8], kind: KeyKind) -> Result<Transfer, HsmError> {
    match kind {
        KeyKind::Aes => aes::export(ctx, id).map(Transfer::Aes),
        KeyKind::Pair(spec, usage) => keypair::export(ctx, id, spec, usage).map(Transfer::Pair),
        KeyKind::Hmac(len) => hmac::export(ctx, id, len).map(Transfer::Hmac),
    }
}

fn install(
    ctx: &mut WorkerCtx<'_>,
    id: &[u8],
    label: &str,
    kind: KeyKind,
    transfer: &Transfer,
) -> Result<(), HsmError> {
    match (kind, transfer) {
        (KeyKind::Aes, Transfer::Aes(tr)) => aes::install(ctx, id, label, tr),
        (KeyKind::Pair(spec, usage), Transfer::Pair(tr)) => {
            keypair::install(ctx, id, label, spec, usage, tr)
        }
        (KeyKind::Hmac(len), Transfer::Hmac(tr)) => hmac::install(ctx, id, label, len, tr),
        _ => Err(HsmError::Internal("key kind mismatch".into())),
    }
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
    /// Generate with `generate` on the first usable HSM, then copy to every other usable
    /// HSM; at least `min_copies` must hold it, and any failure destroys every copy.
    pub(super) async fn create(
        &self,
        id: &[u8],
        label: &str,
        kind: KeyKind,
        generate: impl Fn(&mut WorkerCtx<'_>) -> Result<(), HsmError> + Send + Sync + 'static,
    ) -> Result<Arc<Transfer>, HsmError> {
        let targets = health::usable(self.hsms);
        let needed = self.min_copies.max(2);
        if targets.len() < needed {
            return Err(HsmError::NotEnoughHsms {
                healthy: targets.len(),
                needed,
            });
        }
        let (id, label) = (id.to_vec(), label.to_string());
        let i2 = id.clone();
        let make = Arc::new(move |ctx: &mut WorkerCtx<'_>| {
            generate(ctx)?;
            export(ctx, &i2, kind)
        });
        let (primary, made) = match kind {
            KeyKind::Pair(..) => self.generate_in_keygen_lane(make).await?,
            KeyKind::Aes | KeyKind::Hmac(_) => {
                let Some(&primary) = targets.first() else {
                    return Err(HsmError::NotEnoughHsms { healthy: 0, needed });
                };
                (
                    primary,
                    primary.call(self.timeout, move |ctx| make(ctx)).await,
                )
            }
        };
        let transfer = match made {
            Ok(p) => Arc::new(p),
            Err(e) => {
                self.destroy_on(&[primary], &id).await;
                return Err(e);
            }
        };
        let mut holders = vec![primary];
        let others = targets
            .iter()
            .filter(|p| !Arc::ptr_eq(p.node(), primary.node()));
        for &pool in others {
            holders.push(pool);
            if let Err(e) = self
                .install_on(pool, &id, &label, kind, transfer.clone())
                .await
            {
                tracing::error!(hsm = %pool.node().name(), error = %e, "replication failed; destroying every copy");
                self.destroy_on(&holders, &id).await;
                return Err(e);
            }
        }
        Ok(transfer)
    }

    /// Run `make` (generate and export a key pair) in the key generation lane of the first
    /// HSM of [`health::keygen_order`] whose lane takes it; returns that HSM and the
    /// outcome. Every lane full: [`HsmError::KeygenBusy`], with nothing generated anywhere.
    async fn generate_in_keygen_lane(
        &self,
        make: Arc<
            impl Fn(&mut WorkerCtx<'_>) -> Result<Transfer, HsmError> + Send + Sync + 'static,
        >,
    ) -> Result<(&Pool, Result<Transfer, HsmError>), HsmError> {
        let mut busy = None;
        for pool in health::keygen_order(self.hsms) {
            let m = make.clone();
            match pool.keygen(move |ctx| m(ctx)).await {
                Err(e @ HsmError::KeygenBusy { .. }) => busy = Some(e),
                made => return Ok((pool, made)),
            }
        }
        Err(busy.unwrap_or(HsmError::NotEnoughHsms {
            healthy: 0,
            needed: self.min_copies.max(2),
        }))
    }

    /// Install a copy of the key (`transfer`) on the HSM served by `pool`.
    async fn install_on(
        &self,
        pool: &Pool,
        id: &[u8],
        label: &str,
        kind: KeyKind,
        transfer: Arc<Transfer>,
    ) -> Result<(), HsmError> {
        let (id, label) = (id.to_vec(), label.to_string());
        pool.call(self.timeout, move |ctx| {
            install(ctx, &id, &label, kind, &transfer)
        })
        .await
    }

    /// Copy keys that some usable HSM lacks from an HSM that holds them. Returns how many
    /// copies were made.
    pub(super) async fn resync(
        &self,
        keys: &[(Vec<u8>, String, KeyKind)],
    ) -> Result<usize, HsmError> {
        let mut copies = 0;
        for (id, label, kind) in keys {
            let object = match kind {
                KeyKind::Pair(..) => ObjectKind::Private,
                KeyKind::Aes | KeyKind::Hmac(_) => ObjectKind::Secret,
            };
            let usable = health::usable(self.hsms);
            let holds = |p: &Pool| p.node().has_object(object, id);
            let Some(&src) = usable.iter().find(|p| holds(p)) else {
                continue;
            };
            for &dst in &usable {
                if holds(dst) {
                    continue;
                }
                let (i2, k2) = (id.clone(), *kind);
                let transfer = src
                    .call(self.timeout, move |ctx| export(ctx, &i2, k2))
                    .await?;
                self.install_on(dst, id, label, *kind, Arc::new(transfer))
                    .await?;
                tracing::info!(hsm = %dst.node().name(), object = %hex::encode(id), "re-synced a missing key");
                copies += 1;
            }
        }
        Ok(copies)
    }

    /// Best-effort destruction of every object with this `CKA_ID` on the HSMs `hsms`.
    async fn destroy_on(&self, hsms: &[&Pool], id: &[u8]) {
        for pool in hsms {
            let id = id.to_vec();
            let _ = pool
                .call(self.timeout, move |ctx| ctx.destroy_all(&id))
                .await;
        }
    }
}
