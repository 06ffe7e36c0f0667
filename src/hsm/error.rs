//! Errors of the HSM layer and the ONE function that classifies PKCS#11 return values
//! (`classify`) into the action the cluster takes: fail over and reconnect (device),
//! drop the session (session), re-find the key (key), or give up without retry (request).

use cryptoki::error::{Error as CkError, RvError};

/// What a failure says about where the fault lies, and so what the cluster does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The HSM (or our connection to it) is broken: mark it down, fail over, re-initialize.
    Device,
    /// This session is unusable: discard it and open a new one; retry elsewhere.
    Session,
    /// This key's handle is stale or the key is missing on this HSM: re-find once, then fail over.
    Key,
    /// The request itself is bad (tag mismatch, bad parameters, unsupported mechanism): no retry.
    Request,
}

/// Errors of the HSM layer. Messages name the HSM and the failing PKCS#11 function but never
/// key material or PINs.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error("{hsm}: {function} failed with {name} (0x{rv:X})")]
    Pkcs11 {
        hsm: String,
        function: String,
        rv: u64,
        name: String,
        class: FailureClass,
    },
    #[error("{hsm}: call exceeded its deadline of {ms} ms")]
    Timeout { hsm: String, ms: u64 },
    #[error("{hsm}: the token refused the user PIN ({reason})")]
    LoginRefused { hsm: String, reason: String },
    #[error("{hsm}: HSM is down")]
    NodeDown { hsm: String },
    #[error("{hsm}: job queue full")]
    Busy { hsm: String },
    #[error("{hsm}: key object {object} is missing from the token")]
    KeyMissing { hsm: String, object: String },
    #[error("only {healthy} HSM(s) healthy; {needed} needed")]
    NotEnoughHsms { healthy: usize, needed: usize },
    #[error("ciphertext failed authentication")]
    InvalidCiphertext,
    /// The token refused caller-supplied input (e.g. a peer public key that is not a point
    /// of the curve): the request is bad, not the HSM.
    #[error("{0}")]
    InvalidInput(String),
    #[error("{hsm}: mechanism {mechanism} is not offered by the token")]
    Unsupported { hsm: String, mechanism: String },
    #[error("{hsm}: {message}")]
    Setup { hsm: String, message: String },
    #[error("{0}")]
    Internal(String),
}

impl HsmError {
    /// The failure class used for failover decisions.
    pub fn class(&self) -> FailureClass {
        match self {
            HsmError::Pkcs11 { class, .. } => *class,
            HsmError::Timeout { .. } | HsmError::NodeDown { .. } | HsmError::Busy { .. } => {
                FailureClass::Device
            }
            HsmError::KeyMissing { .. } => FailureClass::Key,
            HsmError::LoginRefused { .. } => FailureClass::Device,
            HsmError::NotEnoughHsms { .. } | HsmError::Setup { .. } | HsmError::Internal(_) => {
                FailureClass::Device
            }
            HsmError::InvalidCiphertext
            | HsmError::InvalidInput(_)
            | HsmError::Unsupported { .. } => FailureClass::Request,
        }
    }

    /// True when another HSM may succeed where this one failed.
    pub fn retry_elsewhere(&self) -> bool {
        self.class() != FailureClass::Request
    }

    /// The raw PKCS#11 return value, if any.
    pub fn rv(&self) -> Option<u64> {
        match self {
            HsmError::Pkcs11 { rv, .. } => Some(*rv),
            _ => None,
        }
    }

    /// Wrap a cryptoki error from `hsm`.
    pub fn from_ck(hsm: &str, e: CkError) -> HsmError {
        match e {
            CkError::Pkcs11(rv, function) => {
                let code = rv_code(rv);
                HsmError::Pkcs11 {
                    hsm: hsm.to_string(),
                    function: format!("C_{function:?}"),
                    rv: code,
                    name: rv_name(rv),
                    class: classify(rv),
                }
            }
            CkError::LibraryLoading(e) => HsmError::Setup {
                hsm: hsm.to_string(),
                message: format!("cannot load the PKCS#11 module: {e}"),
            },
            other => HsmError::Internal(format!("{hsm}: {other}")),
        }
    }
}

/// THE classification of PKCS#11 return values (hsm-facts.md §8.i.5).
pub fn classify(rv: RvError) -> FailureClass {
    use RvError::*;
    match rv {
        // The token or the link to it is broken.
        DeviceError
        | DeviceRemoved
        | DeviceMemory
        | TokenNotPresent
        | TokenNotRecognized
        | CryptokiNotInitialized
        | GeneralError
        | HostMemory
        | SlotIdInvalid
        | UserNotLoggedIn
        | FunctionFailed
        | CantLock => FailureClass::Device,
        // This session is dead; others may be fine.
        SessionHandleInvalid
        | SessionClosed
        | SessionCount
        | OperationActive
        | OperationNotInitialized => FailureClass::Session,
        // This key handle is stale (re-find) or the object is not there.
        ObjectHandleInvalid | KeyHandleInvalid => FailureClass::Key,
        // Everything else is about the request: bad tag, parameters, mechanism, usage.
        _ => FailureClass::Request,
    }
}

/// "KeyNotWrappable" → "CKR_KEY_NOT_WRAPPABLE".
pub fn rv_name(rv: RvError) -> String {
    if let RvError::UnknownErrorCode(c) = rv {
        return format!("CKR_VENDOR_0x{c:X}");
    }
    let dbg = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, ch) in dbg.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

/// Numeric CK_RV of an `RvError` (error path only; searched through cryptoki's own mapping).
pub fn rv_code(rv: RvError) -> u64 {
    use cryptoki::error::Rv;
    if let RvError::UnknownErrorCode(c) = rv {
        return c;
    }
    (0u64..0x400)
        .chain([0x8000_0000u64])
        .find(|c| Rv::from(*c) == Rv::Error(rv))
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_table() {
        assert_eq!(classify(RvError::DeviceError), FailureClass::Device);
        assert_eq!(
            classify(RvError::CryptokiNotInitialized),
            FailureClass::Device
        );
        assert_eq!(
            classify(RvError::SessionHandleInvalid),
            FailureClass::Session
        );
        assert_eq!(classify(RvError::ObjectHandleInvalid), FailureClass::Key);
        assert_eq!(
            classify(RvError::EncryptedDataInvalid),
            FailureClass::Request
        );
        assert_eq!(classify(RvError::MechanismInvalid), FailureClass::Request);
    }

    #[test]
    fn codes_and_names() {
        assert_eq!(rv_code(RvError::DeviceError), 0x30);
        assert_eq!(rv_code(RvError::ObjectHandleInvalid), 0x82);
        assert_eq!(rv_name(RvError::KeyNotWrappable), "CKR_KEY_NOT_WRAPPABLE");
        let e = HsmError::from_ck(
            "hsm-a",
            CkError::Pkcs11(RvError::DeviceError, cryptoki::context::Function::Encrypt),
        );
        assert_eq!(
            e.to_string(),
            "hsm-a: C_Encrypt failed with CKR_DEVICE_ERROR (0x30)"
        );
        assert!(e.retry_elsewhere());
    }
}
