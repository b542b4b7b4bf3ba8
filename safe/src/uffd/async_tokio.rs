//! Reading events from a tokio runtime (feature `tokio`).

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{EventBuffer, Events, Uffd};
use crate::error::{Errno, Error, Result};

/// A [`Uffd`] registered with a tokio runtime's reactor, for reading events
/// without a dedicated thread.
///
/// It holds the userfaultfd as an `Arc<Uffd>`, so the same userfaultfd can
/// also serve the typed regions of [`crate::resolve`], which keep an
/// `Arc<Uffd>` of their own: read events here, resolve them through the
/// region ([`uffd`](Self::uffd) hands out the `Arc` to build regions from).
/// Resolution ioctls do not block; call them on [`get_ref`](Self::get_ref)
/// or through a region.
///
/// One `AsyncUffd` per userfaultfd and runtime: the reactor refuses to
/// watch a descriptor twice (`EEXIST`).
///
/// ```no_run
/// use std::sync::Arc;
/// use userfault::backing::{BackedMapping, Memfd};
/// use userfault::resolve::{Fault, Region};
/// use userfault::uffd::{AsyncUffd, EventBuffer, Uffd};
///
/// async fn serve(snapshot: &[u8]) -> userfault::Result<()> {
///     let memfd = Arc::new(Memfd::shmem(c"guest", snapshot.len() as u64)?);
///     let mapping = BackedMapping::whole(memfd)?;
///     let uffd = AsyncUffd::new(Uffd::new()?)?;
///     // SAFETY: the guest memory is reached only through raw pointers.
///     let region = unsafe { Region::continue_only(uffd.uffd().clone(), mapping)? };
///     let page = region.page_size();
///     let mut events = EventBuffer::with_capacity(16);
///     loop {
///         for event in uffd.read_events(&mut events).await? {
///             match region.fault(&event) {
///                 Some(Fault::Missing(f)) => {
///                     let at = f.file_offset() as usize;
///                     f.write_then_continue(&snapshot[at..at + page])?;
///                 }
///                 Some(Fault::Minor(f)) => {
///                     f.map()?;
///                 }
///                 _ => {}
///             }
///         }
///     }
/// }
/// ```
#[derive(Debug)]
pub struct AsyncUffd {
    fd: AsyncFd<Arc<Uffd>>,
}

fn reactor_error(op: &'static str, e: std::io::Error) -> Error {
    match Errno::from_io(&e) {
        Some(errno) => Error::os(op, errno),
        None => Error::invalid(op, e.to_string()),
    }
}

impl AsyncUffd {
    /// Switches `uffd` to non-blocking mode and registers it with the
    /// current tokio runtime for readability. Takes a [`Uffd`] or an
    /// `Arc<Uffd>` shared with regions or other threads; the mode switch
    /// applies to every holder (their reads stop blocking too).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] from `fcntl` or from registering with the reactor.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with IO enabled (as `AsyncFd::new`).
    pub fn new(uffd: impl Into<Arc<Uffd>>) -> Result<AsyncUffd> {
        let uffd = uffd.into();
        uffd.set_nonblocking(true)?;
        // SAFETY: a `Uffd` owns its descriptor and never closes or
        // replaces it while it lives, and the `AsyncFd` holds an `Arc` of
        // it, so `as_raw_fd` names the same open file for as long as the
        // `AsyncFd` is registered.
        let fd = unsafe { AsyncFd::register_with_interest(uffd, Interest::READABLE) }
            .map_err(|e| reactor_error("epoll_ctl", e.into_parts().1))?;
        Ok(AsyncUffd { fd })
    }

    /// The userfaultfd, for registration and resolution.
    pub fn get_ref(&self) -> &Uffd {
        self.fd.get_ref()
    }

    /// The shared userfaultfd, to clone for
    /// [`Region`](crate::resolve::Region)s and other threads.
    pub fn uffd(&self) -> &Arc<Uffd> {
        self.fd.get_ref()
    }

    /// Deregisters from the reactor and returns the userfaultfd (still
    /// non-blocking).
    pub fn into_inner(self) -> Arc<Uffd> {
        self.fd.into_inner()
    }

    /// Waits until at least one event is pending, then reads as many as
    /// `buf` holds ([`Uffd::read_events`] without blocking a thread).
    /// Page faults left un-iterated when the events are dropped are woken
    /// (see [`Events`]).
    ///
    /// # Errors
    ///
    /// As [`Uffd::read_events`], and reactor errors.
    pub async fn read_events<'b>(&'b self, buf: &'b mut EventBuffer) -> Result<Events<'b>> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| reactor_error("poll", e))?;
            match self.get_ref().read_raw(buf) {
                Ok(()) => return Ok(self.get_ref().events(buf)),
                // Woken before it was read (another reader, or a fault
                // resolved meanwhile): wait for the next readiness.
                Err(Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => return Err(Error::os("read", e)),
            }
        }
    }

    /// The poll form of [`read_events`](Self::read_events), for
    /// implementing a `Stream`: `Pending` until an event is read (the task
    /// is woken when the userfaultfd becomes readable).
    ///
    /// # Errors
    ///
    /// As [`read_events`](Self::read_events).
    pub fn poll_read_events<'b>(
        &'b self,
        cx: &mut Context<'_>,
        buf: &'b mut EventBuffer,
    ) -> Poll<Result<Events<'b>>> {
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(reactor_error("poll", e))),
                Poll::Pending => return Poll::Pending,
            };
            match self.get_ref().read_raw(buf) {
                Ok(()) => return Poll::Ready(Ok(self.get_ref().events(buf))),
                Err(Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => return Poll::Ready(Err(Error::os("read", e))),
            }
        }
    }
}
