//! API credentials at rest: secrets are sealed (AES-GCM) under an HSM key that is replicated
//! like every KMS key; only the sealed form reaches the metadata store. The first start
//! creates one credential for the configured account.

use super::error::KmsError;
use super::vault::{KeyKind, KeyVault, ObjectId, IV_LEN};
use crate::auth::Credential;
use crate::store::{CredentialRow, MetadataStore};
use rand::Rng;
use std::sync::Arc;
use zeroize::Zeroizing;

/// `CKA_ID` of the HSM key that seals credential secrets.
pub const SEALING_KEY_ID: &str = "hsm-kms/credential-sealing-key";

fn sealing_key() -> ObjectId {
    ObjectId::new(SEALING_KEY_ID)
}
const SEALING_SETTING: &str = "credential_sealing_key";

async fn ensure_sealing_key(
    vault: &dyn KeyVault,
    store: &Arc<dyn MetadataStore>,
) -> Result<(), KmsError> {
    if store.get_setting(SEALING_SETTING)?.is_some() {
        return Ok(());
    }
    vault
        .create_key(
            &sealing_key(),
            "hsm-kms credential sealing key",
            KeyKind::Aes,
        )
        .await?;
    store.put_setting(SEALING_SETTING, b"v1")?;
    Ok(())
}

fn random_string(alphabet: &[u8], len: usize, seed: &[u8]) -> Result<String, KmsError> {
    let no_input = || KmsError::Internal("credential generation: no alphabet or no seed".into());
    if alphabet.is_empty() || seed.is_empty() {
        return Err(no_input());
    }
    // Characters drawn from HSM randomness (seed, repeated as needed), mixed with the OS
    // generator.
    let mut rng = rand::rngs::OsRng;
    seed.iter()
        .cycle()
        .take(len)
        .map(|&s| {
            let r = s as usize ^ rng.gen::<u8>() as usize;
            alphabet
                .get(r % alphabet.len())
                .map(|&c| c as char)
                .ok_or_else(no_input)
        })
        .collect()
}

/// Unseal every stored credential; on first start create one for `account_id`.
/// Returns all credentials and, if one was just created, that one.
pub async fn load_or_create(
    vault: &dyn KeyVault,
    store: &Arc<dyn MetadataStore>,
    account_id: &str,
    now: time::OffsetDateTime,
) -> Result<(Vec<Credential>, Option<Credential>), KmsError> {
    ensure_sealing_key(vault, store).await?;
    let mut out = Vec::new();
    for row in store.credentials()? {
        let (iv, ct) = match row.sealed_secret.split_first_chunk::<IV_LEN>() {
            Some((iv, ct)) if !ct.is_empty() => (iv, ct),
            _ => {
                return Err(KmsError::Internal(format!(
                    "credential {} is malformed",
                    row.access_key_id
                )))
            }
        };
        let secret = vault
            .decrypt(
                &sealing_key(),
                *iv,
                row.access_key_id.as_bytes().to_vec(),
                ct.to_vec(),
            )
            .await?;
        let secret = String::from_utf8(secret.to_vec())
            .map_err(|_| KmsError::Internal("credential secret is not UTF-8".into()))?;
        out.push(Credential::new(
            row.access_key_id,
            secret,
            row.account_id,
            row.principal_arn,
        ));
    }
    if !out.is_empty() {
        return Ok((out, None));
    }
    let seed = vault.random(64).await?;
    let (akid_seed, secret_seed) = seed
        .split_at_checked(32)
        .ok_or_else(|| KmsError::Internal("the HSM returned too little randomness".into()))?;
    let akid = format!(
        "AKIA{}",
        random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16, akid_seed)?
    );
    let secret = Zeroizing::new(random_string(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        40,
        secret_seed,
    )?);
    let principal_arn = format!("arn:aws:iam::{account_id}:user/hsm-kms-admin");
    let (iv, ct) = vault
        .encrypt(
            &sealing_key(),
            akid.as_bytes().to_vec(),
            Zeroizing::new(secret.as_bytes().to_vec()),
        )
        .await?;
    let mut sealed = iv.to_vec();
    sealed.extend_from_slice(&ct);
    store.put_credential(&CredentialRow {
        access_key_id: akid.clone(),
        account_id: account_id.to_string(),
        principal_arn: principal_arn.clone(),
        sealed_secret: sealed,
        created_at: now,
    })?;
    let c = Credential::new(
        akid,
        (*secret).clone(),
        account_id.to_string(),
        principal_arn,
    );
    Ok((vec![c.clone()], Some(c)))
}
