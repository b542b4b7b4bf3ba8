//! The userfaultfd object: open, negotiate, register, resolve, read events.
//!
//! A [`Uffd`] is a negotiated userfaultfd. Ranges registered with it
//! ([`Uffd::register`], the one `unsafe` step) report their faults as
//! [`Event`]s, read in batches into a caller-owned [`EventBuffer`]; the
//! handler resolves each fault with one of the resolution ioctls, which
//! take the range's [`Registration`] and check against it before any system
//! call.
//!
//! | step | call | kernel |
//! |---|---|---|
//! | create | [`UffdBuilder::create`] | `userfaultfd(2)` or `/dev/userfaultfd` + `USERFAULTFD_IOC_NEW`, then `UFFDIO_API` |
//! | ask what the kernel has | [`UffdBuilder::query`], [`query_kernel`] | `UFFDIO_API` on a throw-away fd |
//! | register | [`Uffd::register`] (`unsafe`) | `UFFDIO_REGISTER` → [`Registration`] with its [`Ioctls`] |
//! | wait | [`Uffd::poll`], [`Uffd::read_events`], [`Uffd::wait_events`] | `poll(2)`, `read(2)` |
//! | resolve | [`copy`](Uffd::copy), [`zeropage`](Uffd::zeropage), [`continue_range`](Uffd::continue_range), [`write_protect`](Uffd::write_protect), [`write_unprotect`](Uffd::write_unprotect), [`poison`](Uffd::poison), [`move_pages`](Uffd::move_pages) (`unsafe`), [`wake`](Uffd::wake) | `UFFDIO_COPY`, `_ZEROPAGE`, `_CONTINUE`, `_WRITEPROTECT`, `_POISON`, `_MOVE`, `_WAKE` |
//! | protect (Linux 7.3) | [`rwprotect`](Uffd::rwprotect), [`set_mode`](Uffd::set_mode) | `UFFDIO_RWPROTECT`, `UFFDIO_SET_MODE` |
//! | resolve without losing a wake-up | [`copy_or_wake`](Uffd::copy_or_wake), [`zeropage_or_wake`](Uffd::zeropage_or_wake), [`continue_or_wake`](Uffd::continue_or_wake) | the ioctl, then `UFFDIO_WAKE` on `EEXIST` |
//! | end | [`Uffd::unregister`], drop | `UFFDIO_UNREGISTER`, `close(2)` |
//!
//! # Rules the kernel imposes, and how this module follows them
//!
//! - **A failed COPY, ZEROPAGE or CONTINUE wakes nobody.** `EEXIST` means
//!   the page is there (another handler thread, or a write to the backing
//!   file, got there first), not that the faulting thread was woken. Use
//!   the `*_or_wake` methods, or call [`Uffd::wake`] yourself.
//! - **Partial progress is a signed count.** The kernel fails a range it
//!   did only partly with `EAGAIN` and stores the bytes done; this comes
//!   back as [`Error::Partial`] with `done`. A negative count is an errno
//!   and never becomes a size.
//! - **`EAGAIN` means "read events first".** While a REMOVE, UNMAP or
//!   REMAP event is unread, resolutions fail with `EAGAIN`
//!   ([`Error::is_again`](crate::Error::is_again)) and the faulting thread
//!   keeps waiting: read the events, then retry the resolution.
//! - **`UFFDIO_API` succeeds once per userfaultfd**; the kernel's whole
//!   feature word is kept ([`Uffd::kernel_features`]) beside the enabled set
//!   ([`Uffd::features`]). Querying uses a throw-away userfaultfd.
//! - **The range's ioctl mask is an upper bound.** Resolutions the mask
//!   lacks are refused before the system call with [`Error::Unsupported`];
//!   ones it offers can still fail with `EINVAL` for a memory type (MOVE
//!   into a file mapping).
//! - **Non-cooperative events hold their caller.** `fork()`, `mremap()`,
//!   `munmap()` and `madvise()` on registered ranges wait inside the kernel
//!   until their FORK/REMAP/UNMAP/REMOVE event is read; with
//!   `EVENT_FORK`, glibc's `fork()` even holds the malloc locks meanwhile,
//!   so the reader must not allocate before reading (this module's reading
//!   path does not).
//! - **A read takes its faults from the kernel**, which does not report
//!   them again while their threads wait. A page fault [`Event`] that
//!   nobody [takes](Event::take) — a typed region's `fault` takes the
//!   events it matches — wakes its page when it is dropped, and so do the
//!   faults of a batch left un-iterated: no fault is left blocked because
//!   no handler matched it.
//! - **Closing the userfaultfd releases every waiting thread**: their
//!   accesses are retried and handled by the kernel as if the range had
//!   never been registered (anonymous pages are zero-filled).
//!
//! # Example: a handler
//!
//! ```no_run
//! use std::time::Duration;
//! use userfault::mem::{Mapping, Sharing};
//! use userfault::uffd::{
//!     CopyMode, Event, EventBuffer, FaultKind, Features, RegisterMode, Uffd,
//! };
//!
//! # fn main() -> userfault::Result<()> {
//! const PAGE: usize = 4096;
//! // Guest memory, and the snapshot it is restored from.
//! let guest = Mapping::anonymous(64 * PAGE, Sharing::Private)?;
//! let snapshot = vec![0x5a_u8; 64 * PAGE];
//!
//! let uffd = Uffd::builder()
//!     .non_blocking(true)
//!     .request_features(Features::EVENT_REMOVE | Features::THREAD_ID)
//!     .create()?;
//! // SAFETY: `guest` is only ever accessed through raw pointers (by the
//! // guest), never through Rust references.
//! let reg = unsafe { uffd.register(guest.addr(), guest.len(), RegisterMode::MISSING)? };
//!
//! let mut events = EventBuffer::with_capacity(64);
//! let mut deferred = Vec::new();
//! loop {
//!     // Faults whose resolution met EAGAIN are retried after this batch of
//!     // events has been read.
//!     let mut faults = std::mem::take(&mut deferred);
//!     for event in uffd.wait_events(&mut events, Some(Duration::from_millis(100)))? {
//!         match event {
//!             Event::PageFault { address, kind: FaultKind::Missing, .. } => {
//!                 // Resolved below, after the batch: this handler answers
//!                 // for the fault from now on.
//!                 event.take();
//!                 faults.push(address & !(PAGE - 1));
//!             }
//!             Event::Remove { start, end } => {
//!                 // The guest dropped these pages: a later fault there
//!                 // wants zeros, not the snapshot.
//!                 let _ = (start, end);
//!             }
//!             other => eprintln!("unexpected event {other:?}"),
//!         }
//!     }
//!     for page in faults {
//!         let offset = page - reg.start();
//!         let data = &snapshot[offset..offset + PAGE];
//!         // Copies and wakes; on EEXIST (already resolved by another
//!         // handler thread) wakes instead.
//!         match uffd.copy_or_wake(&reg, page, data, CopyMode::empty()) {
//!             Ok(_) => {}
//!             // An event (REMOVE, …) is unread: read it first, then retry.
//!             // The faulting thread keeps waiting meanwhile.
//!             Err(e) if e.is_again() => deferred.push(page),
//!             Err(e) => return Err(e),
//!         }
//!     }
//! }
//! # }
//! ```
//!
//! # Async
//!
//! With the Cargo feature `tokio`, `AsyncUffd` reads events from a tokio
//! runtime through `tokio::io::unix::AsyncFd` (docs.rs documents every
//! feature).
//!
//! # References
//!
//! - [`userfaultfd(2)`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html)
//! - [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html)
//! - [Documentation/admin-guide/mm/userfaultfd.rst](https://docs.kernel.org/admin-guide/mm/userfaultfd.html)

#[cfg(feature = "tokio")]
mod async_tokio;
mod event;
mod flags;
mod open;
mod received;
mod register;
mod resolve;
mod rwp;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[cfg(feature = "tokio")]
pub use async_tokio::AsyncUffd;
pub use event::{Event, EventBuffer, Events, FaultKind, Pending, TakenFault};
pub(crate) use flags::flag_names;
pub use flags::{
    ContinueMode, CopyMode, FaultFlags, Features, Ioctls, MoveMode, PoisonMode, RegisterMode,
    RwprotectMode, UnprotectMode, ZeropageMode,
};
pub(crate) use open::has_cap_sys_ptrace;
pub use open::{DEVICE_PATH, KernelApi, OpenMethod, Origin, UffdBuilder, query_kernel};
pub use register::Registration;
pub use resolve::Resolved;

use crate::error::{Error, Result};

/// A userfaultfd whose `UFFDIO_API` handshake is done.
///
/// Owns its descriptor (closed on drop, which releases every thread
/// waiting on one of its faults). `Send + Sync`: several handler threads
/// may read events from and resolve faults through one `Uffd`.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    id: u64,
    origin: Origin,
    /// The enabled features' bits; [`Uffd::set_mode`] changes the async ones.
    features: AtomicU64,
    api: KernelApi,
    user_mode_only: bool,
    parent: Option<u64>,
    /// True once the descriptor is known to be non-blocking (created so,
    /// or switched by [`set_nonblocking`](Self::set_nonblocking)), so that
    /// [`poll`](Self::poll) need not ask `fcntl` each time.
    nonblocking: AtomicBool,
}

impl Uffd {
    /// A builder with the defaults: [`OpenMethod::Auto`], close-on-exec,
    /// blocking, no features.
    pub fn builder() -> UffdBuilder {
        UffdBuilder::new()
    }

    /// `UffdBuilder::new().create()`: a blocking, close-on-exec userfaultfd
    /// with no features.
    ///
    /// # Errors
    ///
    /// As [`UffdBuilder::create`].
    pub fn new() -> Result<Uffd> {
        UffdBuilder::new().create()
    }

    pub(crate) fn from_parts(
        fd: OwnedFd,
        origin: Origin,
        features: Features,
        api: KernelApi,
        user_mode_only: bool,
        parent: Option<u64>,
        nonblocking: bool,
    ) -> Uffd {
        Uffd {
            fd,
            id: open::next_id(),
            origin,
            features: AtomicU64::new(features.bits()),
            api,
            user_mode_only,
            parent,
            nonblocking: AtomicBool::new(nonblocking),
        }
    }

    /// True when the descriptor is non-blocking: the remembered answer when
    /// it is known to be, `fcntl(F_GETFL)` otherwise (a descriptor from a
    /// fork event, or one switched behind this `Uffd`'s back).
    #[inline]
    pub(super) fn known_nonblocking(&self) -> Result<bool> {
        if self.nonblocking.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let on = self.is_nonblocking()?;
        if on {
            self.nonblocking.store(true, Ordering::Relaxed);
        }
        Ok(on)
    }

    /// A process-wide unique number for this userfaultfd (not the fd
    /// number), recorded in its [`Registration`]s.
    #[inline]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// How this userfaultfd was created.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// For a userfaultfd delivered by a fork event: the [`id`](Self::id) of
    /// the parent's userfaultfd.
    pub fn parent_id(&self) -> Option<u64> {
        self.parent
    }

    /// The features enabled on this userfaultfd (as negotiated, then as
    /// changed by [`set_mode`](Self::set_mode)).
    pub fn features(&self) -> Features {
        Features::from_bits_retain(self.features.load(Ordering::Relaxed))
    }

    /// Every feature the kernel offers (its whole `UFFDIO_API` feature
    /// word, unknown bits included).
    pub fn kernel_features(&self) -> Features {
        self.api.features()
    }

    /// The kernel's whole `UFFDIO_API` answer.
    pub fn kernel_api(&self) -> KernelApi {
        self.api
    }

    /// True when created with `UFFD_USER_MODE_ONLY`.
    pub fn is_user_mode_only(&self) -> bool {
        self.user_mode_only
    }

    /// `fcntl(uffd, F_GETFL) & O_NONBLOCK`.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] from `fcntl`.
    pub fn is_nonblocking(&self) -> Result<bool> {
        let fl = rustix::fs::fcntl_getfl(&self.fd)
            .map_err(|e| Error::os("fcntl", crate::error::rustix_errno(e)))?;
        Ok(fl.contains(rustix::fs::OFlags::NONBLOCK))
    }

    /// `fcntl(uffd, F_SETFL, … | O_NONBLOCK)`: switches between blocking
    /// and non-blocking reads (needed for [`poll`](Self::poll)).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] from `fcntl`.
    pub fn set_nonblocking(&self, on: bool) -> Result<()> {
        let map = |e| Error::os("fcntl", crate::error::rustix_errno(e));
        let mut fl = rustix::fs::fcntl_getfl(&self.fd).map_err(map)?;
        fl.set(rustix::fs::OFlags::NONBLOCK, on);
        rustix::fs::fcntl_setfl(&self.fd, fl).map_err(map)?;
        self.nonblocking.store(on, Ordering::Relaxed);
        Ok(())
    }

    #[inline]
    fn as_fd_ref(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsFd for Uffd {
    #[inline]
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<Uffd> for OwnedFd {
    fn from(uffd: Uffd) -> OwnedFd {
        uffd.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn uffd_is_send_and_sync() {
        assert_send_sync::<Uffd>();
        assert_send_sync::<Registration>();
    }
}
