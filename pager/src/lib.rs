//! A page server over userfaultfd: restores guest memory from a snapshot
//! with chunked demand faults, a background populator and working-set
//! replay, and serves Firecracker as its page-fault handler.
//!
//! | item | what it is |
//! |---|---|
//! | [`Server`] | handler threads over one userfaultfd, a populator, counters |
//! | [`Range`] | a registered range and the source offset it is served from |
//! | [`FileRange`] | a memfd or guest_memfd range served through the file's shared page state |
//! | [`Stage2`] | the entry point for vCPU threads taking KVM userfault exits |
//! | [`source`] | page sources: a snapshot file, zeros, a diff over a base |
//! | [`WorkingSet`] | the order pages were first needed, in a small versioned file |
//! | [`firecracker`] | Firecracker's handshake: the userfaultfd and guest memory layout over a Unix socket |
//! | [`Stats`] | counters and the demand-fault latency histogram, readable while it runs |
//!
//! # How faults are served
//!
//! Each handler thread polls the userfaultfd, reads a batch of events and
//! resolves each page fault together with the not-yet-resolved pages of
//! the aligned chunk around it ([`Config::chunk`]): one `pread` of the
//! source, one `UFFDIO_COPY` per stretch of data pages and one
//! `UFFDIO_ZEROPAGE` per stretch of zero pages. A page another thread
//! resolved first (`EEXIST`) is woken with `UFFDIO_WAKE`, so no faulting
//! thread is left asleep. The populator fills what is left, the recorded
//! working set first, and steps aside whenever a demand fault is pending;
//! once every page is in it unregisters the ranges, and the server stops
//! ([`Exit::Complete`]).
//!
//! With chunks of one page (`Config::chunk` no larger than the page size,
//! no adaptive chunks, no replay: Firecracker's example handler's way), a
//! fault on a pending data page takes a short path: one claim, one
//! `UFFDIO_COPY` straight from a [`MappedSource`](source::MappedSource)'s
//! mapping (or from the page read into the thread's buffer), and the
//! accounting, with no window built. After a pass that found events a
//! handler thread reads again at once, since a woken thread often faults
//! again before the next `poll`; it stops doing so while those reads keep
//! finding nothing (a guest that computes between faults), trying again
//! now and then.
//!
//! REMOVE events (a balloon's `MADV_DONTNEED`) make the next fault on
//! those pages map zeros, never the snapshot, and the populator leaves them
//! unbacked; no resolution is in flight while an event is read and
//! applied, so none lands in a range after its removal. UNMAP retires
//! pages; REMAP moves them (their state moves along, and a resolution that
//! looked up the old address starts again). FORK serves the child's copy
//! from what it had at the fork, on a thread of its own that ends when the
//! child exits (or, when prefetching, once every page of it is in;
//! [`Exit::Complete`] waits for that). A process may serve its own memory
//! and fork as often as it likes: a fork holds the allocator's locks until
//! its event is read, so nothing that event's reading waits for allocates
//! (the child's state is captured into `mmap`ed buffers). A fault the server cannot place
//! (outside every range it was given) is woken rather than left asleep,
//! and one that keeps coming back stops the server with its address. A
//! server thread that panics (in a [`PageSource`] of the caller's, say)
//! stops the server with [`Exit::Failed`] naming the thread, rather than
//! leaving the others serving around a page it had claimed.
//!
//! File-backed guest memory (a shmem memfd, a guest_memfd) is served
//! through the file's shared page state instead ([`FileRange`],
//! [`Config::files`]): `pwrite` + `UFFDIO_CONTINUE` on CONTINUE-only
//! ranges, `UFFDIO_COPY` on copy-capable ones, the populator writing the
//! file, and vCPU threads resolving their KVM userfault exits through
//! [`Server::stage2`] — each page written once, whichever path asks first.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use userfault::mem::{Mapping, Sharing};
//! use userfault::uffd::{Features, RegisterMode, Uffd};
//! use userfault_pager::source::FileSource;
//! use userfault_pager::{Config, Exit, Range, Server};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let snapshot = Arc::new(FileSource::open("guest.mem")?);
//! let guest = Mapping::anonymous(1 << 30, Sharing::Private)?;
//! let uffd = Arc::new(
//!     Uffd::builder()
//!         .non_blocking(true)
//!         .request_features(Features::EVENT_REMOVE)
//!         .create()?,
//! );
//! // SAFETY: the guest's memory is reached only through raw pointers.
//! let reg = unsafe { uffd.register(guest.addr(), guest.len(), RegisterMode::MISSING)? };
//!
//! let server = Server::start(
//!     uffd,
//!     &[Range::new(reg, 0)],
//!     snapshot,
//!     Config { threads: 4, ..Config::default() },
//! )?;
//! // ... run the guest; server.stats() reads the counters meanwhile ...
//! let report = server.wait();
//! assert!(matches!(report.exit, Exit::Complete));
//! println!("{} demand faults", report.stats.demand_faults);
//! # Ok(())
//! # }
//! ```

mod backed;
mod error;
pub mod firecracker;
mod mapbuf;
mod resolver;
mod server;
pub mod source;
mod stats;
mod workingset;

pub use backed::{FileRange, Stage2};
pub use error::Error;
pub use resolver::Range;
pub use server::{Config, Exit, Populator, Report, Server};
pub use source::PageSource;
pub use stats::{Latency, Stats};
pub use workingset::WorkingSet;
