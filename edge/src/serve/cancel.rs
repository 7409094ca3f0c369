//! Cancellation of model work: a flag, a deadline and the server-wide kill switch, checked
//! before every forward pass through [`CancellableSession`].
//!
//! The core library's generation loop has no cancellation hook of its own, but every token it
//! samples goes through [`Session::feed`]; wrapping the session makes a cancelled request stop
//! within one token without touching the core loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use dgpo_core::model::Session;
use dgpo_core::{Error, Result};

/// Why a job should stop.
#[derive(Debug)]
pub struct Cancel {
    flag: AtomicBool,
    deadline: Instant,
    kill: Arc<AtomicBool>,
}

impl Cancel {
    /// A token that expires at `deadline` or when `kill` is set.
    pub fn new(deadline: Instant, kill: Arc<AtomicBool>) -> Arc<Self> {
        Arc::new(Cancel {
            flag: AtomicBool::new(false),
            deadline,
            kill,
        })
    }

    /// Ask the job to stop (the client went away).
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// Whether the job should stop now.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
            || self.kill.load(Ordering::Relaxed)
            || Instant::now() >= self.deadline
    }

    /// Whether the deadline has passed (as opposed to an explicit cancel).
    pub fn timed_out(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// The request's deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// Cancels its token when dropped unless disarmed: a handler future that hyper drops because
/// the client disconnected thereby stops the blocking job it started.
pub struct CancelOnDrop(pub Option<Arc<Cancel>>);

impl CancelOnDrop {
    /// The job finished; dropping no longer cancels.
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.cancel();
        }
    }
}

/// A [`Session`] that refuses to run the model once its [`Cancel`] fires.
pub struct CancellableSession<'a> {
    inner: Box<dyn Session + 'a>,
    cancel: Arc<Cancel>,
}

impl<'a> CancellableSession<'a> {
    /// Wrap `inner`.
    pub fn new(inner: Box<dyn Session + 'a>, cancel: Arc<Cancel>) -> Self {
        CancellableSession { inner, cancel }
    }

    fn check(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

impl Session for CancellableSession<'_> {
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check()?;
        self.inner.feed(tokens)
    }
    fn feed_all(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.check()?;
        self.inner.feed_all(tokens)
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn truncate(&mut self, len: usize) -> Result<()> {
        self.inner.truncate(len)
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
}
