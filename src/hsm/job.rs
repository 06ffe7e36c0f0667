//! What a job sees on a worker thread ([`WorkerCtx`]): the worker's session, the token's
//! capabilities, this instance's handle cache (a miss is filled by one find by `CKA_ID`; a
//! stale handle is re-found once and the call retried once), and error conversion that
//! records what a failure says about the HSM: a device fault makes it suspect, a session
//! fault quarantines the worker's session. Also the operations every key family shares:
//! random bytes and destruction of objects by `CKA_ID`.

use super::capabilities::Caps;
use super::error::{self, Fault, HsmError, Operation};
use super::handles::ObjectKind;
use super::instance::Instance;
use super::integrity;
use super::mechanisms::IV_LEN;
use super::node::Node;
use cryptoki::error::Error as CkError;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;

/// What a job sees: the worker's session, this HSM's handle cache, and error recording.
pub(super) struct WorkerCtx<'a> {
    node: &'a Node,
    inst: &'a Instance,
    session: &'a Session,
    discard_session: bool,
}

impl<'a> WorkerCtx<'a> {
    pub(super) fn new(node: &'a Node, inst: &'a Instance, session: &'a Session) -> Self {
        WorkerCtx {
            node,
            inst,
            session,
            discard_session: false,
        }
    }

    /// Whether a session fault was met: the worker closes the session after the job.
    pub(super) fn session_faulted(&self) -> bool {
        self.discard_session
    }

    pub(super) fn session(&self) -> &Session {
        self.session
    }

    /// The module instance the job runs on.
    pub(super) fn instance(&self) -> &Instance {
        self.inst
    }

    /// Mechanisms and quirks of this token.
    pub(super) fn caps(&self) -> &Caps {
        &self.inst.caps
    }

    pub(super) fn hsm(&self) -> &str {
        self.node.name()
    }

    /// Convert a cryptoki error met during `op`, recording what it says about this HSM and
    /// session.
    pub(super) fn err(&mut self, op: Operation, e: CkError) -> HsmError {
        let e = HsmError::from_ck(self.hsm(), op, e);
        match e.fault() {
            Fault::Device => self.node.suspect(&e),
            Fault::Session => self.discard_session = true,
            Fault::Key | Fault::Request | Fault::Capacity => {}
        }
        e
    }

    /// The cached handle of an object; on a miss, one find by `CKA_ID` fills the cache.
    /// A secret key's copy is verified against its recorded check value the first time it
    /// is used in this instance ([`integrity::verify_once`]).
    pub(super) fn handle(&mut self, kind: ObjectKind, id: &[u8]) -> Result<ObjectHandle, HsmError> {
        let h = self.find_handle(kind, id)?;
        if kind == ObjectKind::Secret {
            self.verify_once(id, h)?;
        }
        Ok(h)
    }

    /// Verify the copy `h` of secret key `id` against its recorded check value, once per
    /// module instance. A copy that disagrees is quarantined (its `CKA_ID` renamed, kept as
    /// evidence), logged as a drift finding, and answered as missing on this HSM (so the
    /// call fails over and re-sync replaces it).
    fn verify_once(&mut self, id: &[u8], h: ObjectHandle) -> Result<(), HsmError> {
        // The common case (already verified in this instance) costs one lookup.
        if self.inst.handles.is_verified(id) {
            return Ok(());
        }
        // The value is computed as it was recorded: with the recorded kind (an HMAC key's
        // length picks the mechanism; a token's `CKA_VALUE_LEN` of an unwrapped key may read 0).
        let Some((kind, expected)) = self.expected_kind_and_check(id) else {
            return Ok(());
        };
        let found = integrity::compute(self.session, h, kind)
            .map_err(|e| self.err(Operation::CheckValue, e))?;
        if found == Some(expected) {
            self.inst.handles.set_verified(id);
            return Ok(());
        }
        let renamed = self
            .session
            .update_attributes(h, &[Attribute::Id(integrity::quarantined_id(id))])
            .is_ok();
        self.forget(ObjectKind::Secret, id);
        tracing::error!(
            target: "hsm_kms::audit",
            hsm = %self.hsm(),
            object = %hex::encode(id),
            renamed,
            "drift finding: this HSM's copy of a key disagrees with the check value recorded \
             when the key was made; the copy is quarantined (never used again) and will be \
             replaced from a copy that agrees"
        );
        Err(HsmError::KeyMissing {
            hsm: self.hsm().to_string(),
            object: hex::encode(id),
        })
    }

    /// The recorded kind and check value of object `id`, if any.
    pub(super) fn expected_kind_and_check(
        &self,
        id: &[u8],
    ) -> Option<(super::kinds::KeyKind, [u8; integrity::CHECK_LEN])> {
        self.node.opts.checks.get(id)
    }

    /// The cached handle of an object, or one find by `CKA_ID` (no verification).
    pub(super) fn find_handle(
        &mut self,
        kind: ObjectKind,
        id: &[u8],
    ) -> Result<ObjectHandle, HsmError> {
        if let Some(h) = self.inst.handles.get(kind, id) {
            return Ok(h);
        }
        self.node.count_find();
        let found = self
            .session
            .find_objects(&[Attribute::Class(kind.class()), Attribute::Id(id.to_vec())])
            .map_err(|e| self.err(Operation::FindObject, e))?;
        match found.first() {
            Some(h) => {
                self.inst.handles.insert(kind, id, *h);
                Ok(*h)
            }
            None => Err(HsmError::KeyMissing {
                hsm: self.hsm().to_string(),
                object: hex::encode(id),
            }),
        }
    }

    pub(super) fn remember(&self, kind: ObjectKind, id: &[u8], h: ObjectHandle) {
        self.inst.handles.insert(kind, id, h);
    }

    pub(super) fn forget(&self, kind: ObjectKind, id: &[u8]) {
        self.inst.handles.remove(kind, id);
    }

    /// Run `f` (operation `op`) with the handle of a key; a stale handle is re-found once
    /// and `f` retried once.
    pub(super) fn with_key<T>(
        &mut self,
        op: Operation,
        kind: ObjectKind,
        id: &[u8],
        f: impl Fn(&Session, ObjectHandle) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        let h = self.handle(kind, id)?;
        match f(self.session, h) {
            Ok(v) => Ok(v),
            Err(e) if error::is_stale_handle(&e) => {
                self.forget(kind, id);
                let h = self.handle(kind, id)?;
                f(self.session, h).map_err(|e| self.err(op, e))
            }
            Err(e) => Err(self.err(op, e)),
        }
    }

    /// Random bytes from the HSM.
    /// The IV of the next AES-GCM encryption: deterministic (fixed field ‖ counter) when the
    /// cluster has a fixed field, else random from the token.
    pub(super) fn next_iv(&mut self) -> Result<[u8; IV_LEN], HsmError> {
        if let Some(source) = &self.node.opts.iv {
            return source.next().ok_or_else(|| {
                HsmError::Internal("the GCM IV counter of this process start is exhausted".into())
            });
        }
        let mut iv = [0u8; IV_LEN];
        self.session
            .generate_random_slice(&mut iv)
            .map_err(|e| self.err(Operation::Random, e))?;
        Ok(iv)
    }

    pub(super) fn random(&mut self, n: usize) -> Result<Vec<u8>, HsmError> {
        self.session
            .generate_random_vec(n as u32)
            .map_err(|e| self.err(Operation::Random, e))
    }

    /// Destroy the object with this `CKA_ID` and kind; true if one existed.
    pub(super) fn destroy(&mut self, kind: ObjectKind, id: &[u8]) -> Result<bool, HsmError> {
        match self.handle(kind, id) {
            Ok(h) => {
                self.session
                    .destroy_object(h)
                    .map_err(|e| self.err(Operation::DestroyObject, e))?;
                self.forget(kind, id);
                Ok(true)
            }
            Err(HsmError::KeyMissing { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Destroy the private, public and secret objects with this `CKA_ID`.
    pub(super) fn destroy_all(&mut self, id: &[u8]) -> Result<bool, HsmError> {
        let mut any = false;
        for kind in ObjectKind::ALL {
            any |= self.destroy(kind, id)?;
        }
        Ok(any)
    }
}
