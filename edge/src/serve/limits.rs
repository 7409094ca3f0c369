//! Admission control: a fixed number of model jobs at once and a bounded wait queue.
//!
//! A request that finds every slot busy and the queue full is refused at once (503 with
//! `Retry-After`) instead of piling up: memory and latency stay bounded under any load.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Slots and queue.
#[derive(Debug)]
pub struct Limiter {
    sem: Arc<Semaphore>,
    slots: usize,
    max_queue: usize,
    queued: AtomicUsize,
}

/// Why a job was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Every slot is busy and the queue is full.
    Full,
    /// The request's deadline passed while it waited in the queue.
    Timeout,
}

/// A running slot; freed on drop (move it into the job, not the handler, so the slot stays
/// taken until the model work has really stopped).
#[derive(Debug)]
pub struct Permit {
    _permit: OwnedSemaphorePermit,
}

struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Limiter {
    /// `slots` concurrent jobs, `max_queue` waiting.
    pub fn new(slots: usize, max_queue: usize) -> Self {
        Limiter {
            sem: Arc::new(Semaphore::new(slots)),
            slots,
            max_queue,
            queued: AtomicUsize::new(0),
        }
    }

    /// Wait for a slot until `deadline`; refuse at once when the queue is full.
    pub async fn admit(&self, deadline: Instant) -> Result<Permit, Rejected> {
        if let Ok(p) = self.sem.clone().try_acquire_owned() {
            return Ok(Permit { _permit: p });
        }
        let before = self.queued.fetch_add(1, Ordering::SeqCst);
        let _slot = QueueSlot(&self.queued);
        if before >= self.max_queue {
            return Err(Rejected::Full);
        }
        match tokio::time::timeout_at(deadline.into(), self.sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Permit { _permit: p }),
            Ok(Err(_)) => Err(Rejected::Full),
            Err(_) => Err(Rejected::Timeout),
        }
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst).min(self.max_queue)
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.slots - self.sem.available_permits()
    }

    /// Configured slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Configured queue length.
    pub fn max_queue(&self) -> usize {
        self.max_queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn full_queue_is_refused_and_slots_come_back() {
        let l = Arc::new(Limiter::new(1, 1));
        let far = Instant::now() + Duration::from_secs(30);
        let p1 = l.admit(far).await.unwrap();
        assert_eq!(l.running(), 1);
        // One may wait...
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.admit(far).await.map(|_| ()) });
        while l.queued() == 0 {
            tokio::task::yield_now().await;
        }
        // ...the next is refused at once.
        assert_eq!(l.admit(far).await.unwrap_err(), Rejected::Full);
        drop(p1);
        waiter.await.unwrap().unwrap();
        assert_eq!((l.running(), l.queued()), (0, 0));
        // A deadline that passes in the queue is a timeout, not a hang.
        let _p = l.admit(far).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(l.admit(soon).await.unwrap_err(), Rejected::Timeout);
        assert_eq!(l.queued(), 0);
    }
}
