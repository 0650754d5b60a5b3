//! The memory write bodies may hold at once (`server.max_buffered_bytes`), shared by every write
//! in flight: each write takes its share as it grows, and gives it back when it ends. A write
//! whose share cannot grow is refused (503); nothing else suffers.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// `server.max_buffered_bytes`, shared by every write in flight, counted in KiB.
pub(crate) struct MemoryBudget {
    permits: Arc<Semaphore>,
}

/// Shares grow in steps of this many KiB, so that a growing body does not ask at every read.
pub(crate) const STEP_KIB: usize = 64;

impl MemoryBudget {
    pub(crate) fn new(bytes: u64) -> MemoryBudget {
        let kib = usize::try_from(bytes / 1024).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        MemoryBudget { permits: Arc::new(Semaphore::new(kib)) }
    }

    /// A new write's share, covering `bytes` to start with; `None` past the budget.
    pub(crate) fn share(&self, bytes: usize) -> Option<Share> {
        let mut share = Share { permits: self.permits.clone(), held: None, kib: 0 };
        share.cover(bytes).then_some(share)
    }
}

/// One write's part of the budget, given back when it is dropped.
pub(crate) struct Share {
    permits: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    kib: usize,
}

impl Share {
    /// Grows the share by `bytes` more; false if the budget has no room.
    pub(crate) fn grow(&mut self, bytes: usize) -> bool {
        self.cover((self.kib * 1024).saturating_add(bytes))
    }

    /// Grows the share to cover `bytes` (it never shrinks); false if the budget has no room.
    pub(crate) fn cover(&mut self, bytes: usize) -> bool {
        let need = bytes.div_ceil(1024);
        if need <= self.kib {
            return true;
        }
        let more = (need - self.kib).next_multiple_of(STEP_KIB);
        let Ok(permit) = u32::try_from(more)
            .map_err(drop)
            .and_then(|n| self.permits.clone().try_acquire_many_owned(n).map_err(drop))
        else {
            return false;
        };
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        self.kib += more;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_grow_within_the_budget_and_come_back() {
        let budget = MemoryBudget::new(1024 * 1024);
        let mut a = budget.share(100 * 1024).unwrap();
        assert!(a.cover(700 * 1024));
        assert!(budget.share(400 * 1024).is_none(), "past the budget");
        let b = budget.share(200 * 1024).unwrap();
        assert!(!a.cover(900 * 1024), "a share grew past the budget");
        assert!(!a.grow(200 * 1024), "a share grew past the budget");
        drop(b);
        assert!(a.cover(900 * 1024));
        assert!(a.grow(64 * 1024));
        drop(a);
        assert!(budget.share(1024 * 1024).is_some(), "a dropped share was not given back");
    }
}
