//! Errors of the HSM layer, and the ONE place that reads PKCS#11 return values.
//!
//! [`classify`] turns a failed call into an [`HsmError`] that keeps the return value (name
//! and code), the PKCS#11 function that returned it and the [`Operation`] being attempted.
//! The few return values that mean something specific for one operation (a GCM tag
//! mismatch, a ciphertext that does not decode, a peer point off the curve, a refused PIN)
//! become their own variants here, and the tolerated outcomes ("already initialized",
//! "already logged in", "signature invalid", "stale handle") are read by the small helpers
//! below: no other module matches a return value.
//!
//! Other layers see [`HsmError::retryable`] and the specific variants. The cluster's
//! failover and the workers' session handling use the internal `Fault`.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, Rv, RvError};

/// What the HSM layer was attempting when a PKCS#11 call failed; named in every error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Operation {
    /// Loading the PKCS#11 module and `C_Initialize`.
    LoadModule,
    /// Finding the token by label among the slots (`C_GetSlotList`, `C_GetTokenInfo`).
    FindToken,
    /// Opening a read-write session (`C_OpenSession`).
    OpenSession,
    /// Logging the user in (`C_Login`).
    Login,
    /// The find over the whole token (and attribute reads) that fills the handle cache when
    /// an instance opens.
    WarmHandleCache,
    /// Generating the per-HSM canary key of health probes.
    CreateCanary,
    /// A health probe (token info plus a GCM round trip with the canary key).
    Probe,
    /// Finding one object by class and `CKA_ID` (a handle-cache miss).
    FindObject,
    /// Drawing random bytes from the token (`C_GenerateRandom`).
    Random,
    /// AES-GCM encryption (`CKM_AES_GCM`).
    AesGcmEncrypt,
    /// AES-GCM decryption (`CKM_AES_GCM`), tag check included.
    AesGcmDecrypt,
    /// Secret key generation (`C_GenerateKey`).
    GenerateKey,
    /// Key pair generation (`C_GenerateKeyPair`).
    GenerateKeyPair,
    /// Reading the public attributes of a key pair (`C_GetAttributeValue`).
    ReadPublicKey,
    /// Reading the private attributes of a data key pair (session objects).
    ExportDataKeyPair,
    /// Wrapping a key under another (`C_WrapKey`).
    WrapKey,
    /// Unwrapping a key into the token (`C_UnwrapKey`).
    UnwrapKey,
    /// Creating a copied public key object (`C_CreateObject`).
    CreatePublicKey,
    /// Destroying an object (`C_DestroyObject`).
    DestroyObject,
    /// Signing with a private key (`C_Sign`).
    Sign,
    /// Verifying a signature with a public key object (`C_Verify`).
    Verify,
    /// Computing an HMAC with a secret key (`C_Sign` with a `CKM_SHA*_HMAC` mechanism).
    Hmac,
    /// RSA decryption with a private key (`C_Decrypt`, OAEP or raw RSA).
    RsaDecrypt,
    /// ECDH key agreement (`C_DeriveKey` with `CKM_ECDH1_DERIVE`).
    Ecdh,
    /// Transport of the cluster wrapping key to another HSM (RSA transport pair, OAEP wrap
    /// and unwrap).
    KeyTransport,
    /// Initializing a token and its user PIN (`C_InitToken`, `C_InitPIN`).
    InitToken,
    /// Logging the Security Officer in for the enrollment ceremony (`C_Login` as SO).
    SoLogin,
    /// Checking which custody protections a token enforces (refused wraps and unwraps).
    CustodyProbe,
    /// Computing a key copy's check value (AES-ECB of a zero block, or an HMAC).
    CheckValue,
    /// Unwrapping imported key material under an import wrapping key (`C_UnwrapKey`).
    ImportUnwrap,
    /// A row of `hsm-kms hsm check` (every return value kept as the token gave it).
    Check,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operation::LoadModule => "module loading",
            Operation::FindToken => "token lookup",
            Operation::OpenSession => "session opening",
            Operation::Login => "login",
            Operation::WarmHandleCache => "handle cache warm-up",
            Operation::CreateCanary => "canary key creation",
            Operation::Probe => "health probe",
            Operation::FindObject => "object lookup",
            Operation::Random => "random generation",
            Operation::AesGcmEncrypt => "AES-GCM encryption",
            Operation::AesGcmDecrypt => "AES-GCM decryption",
            Operation::GenerateKey => "key generation",
            Operation::GenerateKeyPair => "key pair generation",
            Operation::ReadPublicKey => "public key read",
            Operation::ExportDataKeyPair => "data key pair export",
            Operation::WrapKey => "key wrapping",
            Operation::UnwrapKey => "key unwrapping",
            Operation::CreatePublicKey => "public key creation",
            Operation::DestroyObject => "object destruction",
            Operation::Sign => "signing",
            Operation::Verify => "signature verification",
            Operation::Hmac => "HMAC",
            Operation::RsaDecrypt => "RSA decryption",
            Operation::Ecdh => "ECDH key agreement",
            Operation::KeyTransport => "key transport",
            Operation::InitToken => "token initialization",
            Operation::SoLogin => "SO login",
            Operation::CustodyProbe => "custody probe",
            Operation::CheckValue => "check value",
            Operation::ImportUnwrap => "import of key material",
            Operation::Check => "conformance check",
        })
    }
}

/// Where a failure lies, and so what the cluster and the worker do next (internal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// The HSM (or our connection to it) is broken: mark it suspect, fail over, re-initialize.
    Device,
    /// This session is unusable: discard it and open a new one; retry elsewhere.
    Session,
    /// This key's handle is stale or the key is missing on this HSM: re-find once, then fail over.
    Key,
    /// The request itself is bad (tag mismatch, bad parameters, unsupported mechanism): no retry.
    Request,
    /// The HSM is busy, not broken (its key generation lane is full or a generation outran
    /// its deadline): another HSM or a later retry may succeed, but the HSM is never made
    /// suspect for it.
    Capacity,
}

/// Errors of the HSM layer. Messages name the HSM, the failing PKCS#11 function, its return
/// value and the operation, but never key material or PINs.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum HsmError {
    /// A PKCS#11 call failed with a return value that has no more specific meaning here.
    #[error("{hsm}: {function} failed with {name} (0x{rv:X}) during {operation}")]
    Pkcs11 {
        /// Name of the HSM whose token returned `rv`.
        hsm: String,
        /// `C_…` name of the function that returned `rv`.
        function: String,
        /// What the layer was attempting.
        operation: Operation,
        /// The `CK_RV` return value.
        rv: u64,
        /// `CKR_…` name of `rv`.
        name: String,
    },
    /// A job did not return within its deadline (the HSM is then suspect).
    #[error("{hsm}: call exceeded its deadline of {ms} ms")]
    Timeout {
        /// Name of the HSM that did not answer in time.
        hsm: String,
        /// The deadline, in milliseconds.
        ms: u64,
    },
    /// `C_Login` refused the user PIN (incorrect, locked, expired): never retried.
    #[error("{hsm}: the token refused the user PIN ({name}); {function} returned 0x{rv:X}")]
    LoginRefused {
        /// Name of the HSM whose token refused the PIN.
        hsm: String,
        /// `C_…` name of the function that refused it.
        function: String,
        /// The `CK_RV` return value (`CKR_PIN_…`).
        rv: u64,
        /// `CKR_…` name of `rv`.
        name: String,
    },
    /// The HSM is down or being re-initialized: no job runs on it.
    #[error("{hsm}: HSM is down")]
    NodeDown {
        /// Name of the HSM that is down.
        hsm: String,
    },
    /// The HSM's bounded job queue is full; another HSM may take the job.
    #[error("{hsm}: job queue full")]
    Busy {
        /// Name of the HSM whose queue is full.
        hsm: String,
    },
    /// The HSM's key generation lane is full (its generation workers are busy and its
    /// bounded queue is full): a later retry may succeed. Not a sign of a broken HSM.
    #[error("{hsm}: key generation lane full")]
    KeygenBusy {
        /// Name of the HSM whose key generation lane is full.
        hsm: String,
    },
    /// A key generation did not return within the key generation deadline. Not a sign of a
    /// broken HSM (generation time varies widely); a dead HSM is found by its probes.
    #[error("{hsm}: key generation exceeded its deadline of {ms} ms")]
    KeygenTimeout {
        /// Name of the HSM whose key generation lane did not answer in time.
        hsm: String,
        /// The deadline, in milliseconds.
        ms: u64,
    },
    /// No object of the expected class has this `CKA_ID` on the token.
    #[error("{hsm}: key object {object} is missing from the token")]
    KeyMissing {
        /// Name of the HSM that lacks the object.
        hsm: String,
        /// The object's `CKA_ID`, hex-encoded.
        object: String,
    },
    /// Fewer usable HSMs than the operation needs (e.g. `min_copies` for a new key).
    #[error("fewer than {needed} HSMs hold a healthy copy ({healthy} usable)")]
    NotEnoughHsms {
        /// Usable HSMs found.
        healthy: usize,
        /// HSMs the operation needs.
        needed: usize,
    },
    /// The ciphertext does not decrypt under the key (GCM tag mismatch, or an RSA
    /// ciphertext that does not decode): the request is bad, not the HSM.
    #[error("ciphertext failed authentication")]
    InvalidCiphertext,
    /// The token refused caller-supplied input (e.g. a peer public key that is not a point
    /// of the curve): the request is bad, not the HSM.
    #[error("{0}")]
    InvalidInput(String),
    /// Paranoid mode: another HSM did not confirm an answer, which was therefore not sent
    /// (retryable: the copy at fault is re-verified and quarantined if it drifted).
    #[error("{0}")]
    Unconfirmed(String),
    /// The HSMs' copies of a key disagree and no recorded check value tells which is right
    /// (a drift finding for an operator; retrying does not help).
    #[error("{0}")]
    CopiesDisagree(String),
    /// Imported key material unwrapped but does not fit its key (length, type or size).
    #[error("{0}")]
    WrongKeyMaterial(String),
    /// The token does not offer a mechanism the operation needs.
    #[error("{hsm}: mechanism {mechanism} is not offered by the token")]
    Unsupported {
        /// Name of the HSM whose token lacks the mechanism.
        hsm: String,
        /// `CKM_…` name of the missing mechanism.
        mechanism: String,
    },
    /// The HSM could not be set up: module, token, PIN file or cluster configuration.
    #[error("{hsm}: {message}")]
    Setup {
        /// Name of the HSM (or `cluster`) being set up.
        hsm: String,
        /// What went wrong.
        message: String,
    },
    /// A failure of the layer itself (thread spawn, unexpected token data, failed proof).
    #[error("{0}")]
    Internal(String),
}

impl HsmError {
    /// Where the failure lies (failover and session decisions).
    pub(super) fn fault(&self) -> Fault {
        match self {
            HsmError::Pkcs11 { rv, .. } => match Rv::from(*rv) {
                Rv::Error(e) => fault_of(e),
                Rv::Ok => Fault::Device,
            },
            HsmError::Timeout { .. } | HsmError::NodeDown { .. } | HsmError::Busy { .. } => {
                Fault::Device
            }
            HsmError::KeygenBusy { .. } | HsmError::KeygenTimeout { .. } => Fault::Capacity,
            HsmError::KeyMissing { .. } => Fault::Key,
            HsmError::LoginRefused { .. } => Fault::Device,
            HsmError::NotEnoughHsms { .. } | HsmError::Setup { .. } | HsmError::Internal(_) => {
                Fault::Device
            }
            HsmError::InvalidCiphertext
            | HsmError::InvalidInput(_)
            | HsmError::WrongKeyMaterial(_)
            | HsmError::Unsupported { .. }
            | HsmError::CopiesDisagree(_)
            | HsmError::Unconfirmed(_) => Fault::Request,
        }
    }

    /// True when another HSM, or a later retry, may succeed where this attempt failed;
    /// false when the request itself is at fault.
    pub fn retryable(&self) -> bool {
        self.fault() != Fault::Request
    }

    /// The raw PKCS#11 return value, if any.
    pub fn rv(&self) -> Option<u64> {
        match self {
            HsmError::Pkcs11 { rv, .. } | HsmError::LoginRefused { rv, .. } => Some(*rv),
            _ => None,
        }
    }

    /// Wrap a cryptoki error from `hsm` met during `operation`.
    pub(super) fn from_ck(hsm: &str, operation: Operation, e: CkError) -> HsmError {
        match e {
            CkError::Pkcs11(rv, function) => classify(hsm, function, rv, operation),
            CkError::LibraryLoading(e) => HsmError::Setup {
                hsm: hsm.to_string(),
                message: format!("cannot load the PKCS#11 module: {e}"),
            },
            other => HsmError::Internal(format!("{hsm}: {other} during {operation}")),
        }
    }
}

/// THE classification of PKCS#11 return values (hsm-facts.md §8.i.5): the error that a
/// failed `function` returning `rv` during `operation` on `hsm` stands for.
pub fn classify(hsm: &str, function: Function, rv: RvError, operation: Operation) -> HsmError {
    use Function as F;
    use Operation as Op;
    use RvError::*;
    let function_name = format!("C_{function:?}");
    let (code, name) = (rv_code(rv), rv_name(rv));
    let specific = match (operation, function, rv) {
        (Op::Login, F::Login, PinIncorrect | PinLocked | PinExpired | PinInvalid | PinLenRange) => {
            return HsmError::LoginRefused {
                hsm: hsm.to_string(),
                function: function_name,
                rv: code,
                name,
            }
        }
        (Op::SoLogin, F::Login, PinIncorrect | PinLocked | PinExpired | PinInvalid | PinLenRange) => {
            return HsmError::Setup {
                hsm: hsm.to_string(),
                message: format!("the token refused the SO PIN ({name}); {function_name} returned 0x{code:X}"),
            }
        }
        (
            Op::AesGcmDecrypt,
            F::DecryptInit | F::Decrypt,
            EncryptedDataInvalid | EncryptedDataLenRange | DataInvalid | DataLenRange,
        )
        // SoftHSM 2.6.1 reports a GCM tag mismatch as CKR_GENERAL_ERROR from C_Decrypt
        // (after C_DecryptInit succeeded). A broken token fails C_DecryptInit first, so
        // this is the ciphertext, not the device: it must not mark the HSM down.
        | (Op::AesGcmDecrypt, F::Decrypt, GeneralError | FunctionFailed)
        // An RSA ciphertext that does not decode (or is ≥ n) is the caller's fault, never
        // the device's: SoftHSM reports some of these as CKR_GENERAL_ERROR from C_Decrypt.
        | (
            Op::RsaDecrypt,
            F::Decrypt,
            EncryptedDataInvalid | EncryptedDataLenRange | DataInvalid | DataLenRange
            | GeneralError | FunctionFailed,
        )
        | (Op::RsaDecrypt, F::DecryptInit, EncryptedDataInvalid)
        // Imported material that does not unwrap (a wrong wrapping key or algorithm, a
        // corrupt blob) is the caller's: SoftHSM reports OAEP and RFC 5649 integrity
        // failures as CKR_GENERAL_ERROR or CKR_FUNCTION_FAILED from C_UnwrapKey.
        | (
            Op::ImportUnwrap,
            F::UnwrapKey,
            EncryptedDataInvalid | EncryptedDataLenRange | WrappedKeyInvalid
            | WrappedKeyLenRange | DataInvalid | DataLenRange | GeneralError | FunctionFailed,
        ) => HsmError::InvalidCiphertext,
        // Material that unwraps but is not a key of the template's type and size.
        (
            Op::ImportUnwrap,
            F::UnwrapKey,
            TemplateInconsistent | AttributeValueInvalid | KeySizeRange,
        ) => HsmError::WrongKeyMaterial(
            "The key material is not a key of this key's type and size.".into(),
        ),
        // C_DeriveKey refusing the peer's point (SoftHSM: CKR_GENERAL_ERROR for a point off
        // the curve) is the caller's input, not the device.
        (
            Op::Ecdh,
            F::DeriveKey,
            ArgumentsBad | MechanismParamInvalid | DomainParamsInvalid | GeneralError
            | FunctionFailed,
        ) => HsmError::InvalidInput(
            "The public key is not a valid point on the key's curve.".into(),
        ),
        _ => {
            return HsmError::Pkcs11 {
                hsm: hsm.to_string(),
                function: function_name,
                operation,
                rv: code,
                name,
            }
        }
    };
    tracing::debug!(
        hsm,
        function = %function_name,
        rv = %format_args!("{name} (0x{code:X})"),
        %operation,
        error = %specific,
        "PKCS#11 return value read as a request fault"
    );
    specific
}

/// The fault table: where a return value puts the blame.
fn fault_of(rv: RvError) -> Fault {
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
        | CantLock => Fault::Device,
        // This session is dead; others may be fine.
        SessionHandleInvalid
        | SessionClosed
        | SessionCount
        | OperationActive
        | OperationNotInitialized => Fault::Session,
        // This key handle is stale (re-find) or the object is not there.
        ObjectHandleInvalid | KeyHandleInvalid => Fault::Key,
        // Everything else is about the request: bad tag, parameters, mechanism, usage.
        _ => Fault::Request,
    }
}

/// A stale object handle (`CKR_OBJECT_HANDLE_INVALID`, `CKR_KEY_HANDLE_INVALID`): the
/// caller re-finds the object once and retries.
pub(super) fn is_stale_handle(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _)
    )
}

/// `C_Initialize`'s outcome: already initialized in this process counts as success.
pub(super) fn ok_if_already_initialized(r: Result<(), CkError>) -> Result<(), CkError> {
    match r {
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        r => r,
    }
}

/// Whether an attribute read failed because of that one object (a half-written or damaged
/// object file: SoftHSM2 answers `CKR_ATTRIBUTE_VALUE_INVALID` for the class of a truncated
/// one), not because of the token: such an object is skipped and reported, never fatal.
pub(super) fn is_unreadable_object(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::AttributeValueInvalid
                | RvError::AttributeTypeInvalid
                | RvError::ObjectHandleInvalid
                | RvError::DataInvalid,
            _
        )
    )
}

/// `C_Login`'s outcome: already logged in (another session of this login) counts as success.
pub(super) fn ok_if_already_logged_in(r: Result<(), CkError>) -> Result<(), CkError> {
    match r {
        Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        r => r,
    }
}

/// `C_Verify`'s verdict: a wrong or malformed signature is `Ok(false)`, not an error.
pub(super) fn verdict(r: Result<(), CkError>) -> Result<bool, CkError> {
    match r {
        Ok(()) => Ok(true),
        Err(CkError::Pkcs11(
            RvError::SignatureInvalid | RvError::SignatureLenRange | RvError::DataLenRange,
            _,
        )) => Ok(false),
        Err(e) => Err(e),
    }
}

/// "KeyNotWrappable" → "CKR_KEY_NOT_WRAPPABLE".
fn rv_name(rv: RvError) -> String {
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
fn rv_code(rv: RvError) -> u64 {
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

    fn fault(f: Function, rv: RvError, op: Operation) -> Fault {
        classify("hsm-a", f, rv, op).fault()
    }

    #[test]
    fn faults_follow_the_table() {
        let op = Operation::AesGcmEncrypt;
        assert_eq!(
            fault(Function::Encrypt, RvError::DeviceError, op),
            Fault::Device
        );
        assert_eq!(
            fault(Function::Encrypt, RvError::CryptokiNotInitialized, op),
            Fault::Device
        );
        assert_eq!(
            fault(Function::Encrypt, RvError::SessionHandleInvalid, op),
            Fault::Session
        );
        assert_eq!(
            fault(Function::Encrypt, RvError::ObjectHandleInvalid, op),
            Fault::Key
        );
        assert_eq!(
            fault(Function::Encrypt, RvError::EncryptedDataInvalid, op),
            Fault::Request
        );
        assert_eq!(
            fault(Function::EncryptInit, RvError::MechanismInvalid, op),
            Fault::Request
        );
    }

    #[test]
    fn codes_names_function_and_operation_are_kept() {
        assert_eq!(rv_code(RvError::DeviceError), 0x30);
        assert_eq!(rv_code(RvError::ObjectHandleInvalid), 0x82);
        assert_eq!(rv_name(RvError::KeyNotWrappable), "CKR_KEY_NOT_WRAPPABLE");
        let e = HsmError::from_ck(
            "hsm-a",
            Operation::AesGcmEncrypt,
            CkError::Pkcs11(RvError::DeviceError, Function::Encrypt),
        );
        assert_eq!(
            e.to_string(),
            "hsm-a: C_Encrypt failed with CKR_DEVICE_ERROR (0x30) during AES-GCM encryption"
        );
        assert_eq!(e.rv(), Some(0x30));
        assert!(e.retryable());
    }

    #[test]
    fn operation_specific_return_values() {
        // A GCM tag mismatch (0x40, or SoftHSM's CKR_GENERAL_ERROR from C_Decrypt).
        for (f, rv) in [
            (Function::Decrypt, RvError::EncryptedDataInvalid),
            (Function::Decrypt, RvError::GeneralError),
            (Function::DecryptInit, RvError::DataLenRange),
        ] {
            let e = classify("a", f, rv, Operation::AesGcmDecrypt);
            assert!(matches!(e, HsmError::InvalidCiphertext), "{e}");
            assert!(!e.retryable());
        }
        // CKR_GENERAL_ERROR from C_DecryptInit is the device, not the ciphertext.
        let e = classify(
            "a",
            Function::DecryptInit,
            RvError::GeneralError,
            Operation::AesGcmDecrypt,
        );
        assert_eq!(e.fault(), Fault::Device);
        // The same return value elsewhere is the device too.
        let e = classify(
            "a",
            Function::Encrypt,
            RvError::GeneralError,
            Operation::AesGcmEncrypt,
        );
        assert_eq!(e.fault(), Fault::Device);
        // RSA: a ciphertext that does not decode.
        let e = classify(
            "a",
            Function::Decrypt,
            RvError::FunctionFailed,
            Operation::RsaDecrypt,
        );
        assert!(matches!(e, HsmError::InvalidCiphertext), "{e}");
        // ECDH: CKR_MECHANISM_PARAM_INVALID (0x71) and friends mean a bad peer point.
        let e = classify(
            "a",
            Function::DeriveKey,
            RvError::MechanismParamInvalid,
            Operation::Ecdh,
        );
        assert!(matches!(e, HsmError::InvalidInput(_)), "{e}");
        // A refused PIN.
        let e = classify(
            "b",
            Function::Login,
            RvError::PinIncorrect,
            Operation::Login,
        );
        assert!(
            e.to_string()
                .starts_with("b: the token refused the user PIN (CKR_PIN_INCORRECT)"),
            "{e}"
        );
    }

    #[test]
    fn a_full_or_slow_key_generation_lane_is_capacity_not_a_device_fault() {
        for e in [
            HsmError::KeygenBusy { hsm: "a".into() },
            HsmError::KeygenTimeout {
                hsm: "a".into(),
                ms: 60_000,
            },
        ] {
            assert_eq!(e.fault(), Fault::Capacity, "{e}");
            assert!(e.retryable(), "{e}");
        }
        // The crypto lane's overrun stays a device fault (the HSM is made suspect).
        let e = HsmError::Timeout {
            hsm: "a".into(),
            ms: 2000,
        };
        assert_eq!(e.fault(), Fault::Device);
    }

    #[test]
    fn tolerated_outcomes() {
        let stale = CkError::Pkcs11(RvError::KeyHandleInvalid, Function::Sign);
        assert!(is_stale_handle(&stale));
        assert!(!is_stale_handle(&CkError::Pkcs11(
            RvError::DeviceError,
            Function::Sign
        )));
        assert!(ok_if_already_initialized(Err(CkError::Pkcs11(
            RvError::CryptokiAlreadyInitialized,
            Function::Initialize
        )))
        .is_ok());
        assert!(ok_if_already_logged_in(Err(CkError::Pkcs11(
            RvError::UserAlreadyLoggedIn,
            Function::Login
        )))
        .is_ok());
        assert!(!verdict(Err(CkError::Pkcs11(
            RvError::SignatureInvalid,
            Function::Verify
        )))
        .unwrap());
        assert!(verdict(Err(CkError::Pkcs11(RvError::DeviceError, Function::Verify))).is_err());
    }
}
