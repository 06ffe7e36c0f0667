//! Which custody protections a token really enforces, probed at connect with the user PIN
//! (what an insider holding that PIN could try), on throw-away session keys only:
//!
//! * a wrap-with-trusted key cannot be wrapped under a key the user made;
//! * the cluster wrapping key is `CKA_TRUSTED` (made by the SO in the ceremony) and can be
//!   neither copied nor modified (so no untemplated twin of it can exist);
//! * an unwrap under the cluster wrapping key that asks for a readable key is refused (its
//!   `CKA_UNWRAP_TEMPLATE` holds).
//!
//! The result is logged at start (a warning names every protection a token lacks) and shown
//! in each HSM's health detail: never a silent downgrade.

use super::error::{HsmError, Operation};
use super::handles::{ObjectKind, CWK_ID};
use super::job::WorkerCtx;
use super::kinds::Protections;
use super::mechanisms;
use super::templates;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType};

/// Probe the token behind `ctx` (a user session of an enrolled HSM).
pub(super) fn probe(ctx: &mut WorkerCtx<'_>) -> Result<Protections, HsmError> {
    let cwk = ctx.handle(ObjectKind::Secret, CWK_ID)?;
    let attrs = ctx
        .session()
        .get_attributes(
            cwk,
            &[
                AttributeType::Trusted,
                AttributeType::Copyable,
                AttributeType::Modifiable,
            ],
        )
        .map_err(|e| ctx.err(Operation::CustodyProbe, e))?;
    let trusted_wrapping_key = attrs.contains(&Attribute::Trusted(true));
    let wrapping_key_locked = attrs.contains(&Attribute::Copyable(false))
        && attrs.contains(&Attribute::Modifiable(false));
    let s = ctx.session();
    let protected = s
        .generate_key(&Mechanism::AesKeyGen, &templates::probe_protected_key())
        .map_err(|e| ctx.err(Operation::CustodyProbe, e))?;
    let s = ctx.session();
    let own = s.generate_key(&Mechanism::AesKeyGen, &templates::probe_wrapping_key());
    let wrap_with_trusted = match own {
        Ok(own) => {
            let refused = s.wrap_key(&mechanisms::key_wrap(), own, protected).is_err();
            let _ = s.destroy_object(own);
            refused
        }
        // A token that cannot even make the key has refused the attack.
        Err(_) => true,
    };
    let unwrap_template = match s.wrap_key(&mechanisms::key_wrap(), cwk, protected) {
        Ok(blob) => {
            match s.unwrap_key(
                &mechanisms::key_wrap(),
                cwk,
                &blob,
                &templates::weak_unwrap(),
            ) {
                Ok(readable) => {
                    let _ = s.destroy_object(readable);
                    false
                }
                Err(_) => true,
            }
        }
        Err(_) => false,
    };
    let _ = s.destroy_object(protected);
    Ok(Protections {
        wrap_with_trusted,
        trusted_wrapping_key,
        wrapping_key_locked,
        unwrap_template,
    })
}
