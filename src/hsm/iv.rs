//! AES-GCM IVs by the deterministic construction of NIST SP 800-38D §8.2.1: a 32-bit fixed
//! field that no other process start (of this or any other node sharing the metadata store)
//! ever uses, allocated durably before the first encryption, followed by a 64-bit invocation
//! counter. Every IV is then unique under every key for the life of the deployment, so the
//! 2^32-invocation limit of random 96-bit IVs (SP 800-38D §8.3) does not apply; the bound is
//! 2^64 encryptions per process start and 2^32 process starts.

use super::mechanisms::IV_LEN;
use std::sync::atomic::{AtomicU64, Ordering};

/// The IVs of one process start.
#[derive(Debug)]
pub(crate) struct IvSource {
    fixed: u32,
    counter: AtomicU64,
}

impl IvSource {
    /// A source for the fixed field `fixed` (never used by another process start).
    pub(crate) fn new(fixed: u32) -> IvSource {
        IvSource {
            fixed,
            counter: AtomicU64::new(0),
        }
    }

    /// The next IV: `fixed (4 bytes, big-endian) ‖ invocation counter (8 bytes, big-endian)`;
    /// `None` once the invocations of this fixed field are used up (2^64 − 1).
    pub(crate) fn next(&self) -> Option<[u8; IV_LEN]> {
        // Never wraps: at u64::MAX the counter stays there and no IV is given.
        let n = self
            .counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1))
            .ok()?;
        let mut iv = [0u8; IV_LEN];
        let (fixed, invocation) = iv.split_at_mut(4);
        fixed.copy_from_slice(&self.fixed.to_be_bytes());
        invocation.copy_from_slice(&n.to_be_bytes());
        Some(iv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ivs_carry_the_fixed_field_and_never_repeat() {
        let s = std::sync::Arc::new(IvSource::new(0x0102_0304));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    (0..10_000).map(|_| s.next().unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for t in threads {
            for iv in t.join().unwrap() {
                assert_eq!(iv[..4], [1, 2, 3, 4]);
                assert!(seen.insert(iv), "IV repeated");
            }
        }
        assert_eq!(seen.len(), 40_000);
    }

    #[test]
    fn an_exhausted_fixed_field_gives_no_iv() {
        let s = IvSource::new(7);
        s.counter.store(u64::MAX - 2, Ordering::Relaxed);
        assert!(s.next().is_some());
        assert!(s.next().is_some());
        assert!(s.next().is_none());
        assert!(
            s.next().is_none(),
            "the counter must not wrap around to reuse IVs"
        );
    }
}
