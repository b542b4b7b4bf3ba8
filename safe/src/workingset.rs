//! Working-set tracking: which pages of a range were touched, for a page
//! server that prefetches them on the next restore.
//!
//! A [`Tracker`] starts tracking a range, and [`Tracker::read`] later
//! returns the [`WorkingSet`]: the touched pages in address order and,
//! where the mechanism gives it, in first-touch order. The mechanism is
//! chosen by trying what the running kernel has, best first, and is
//! reported in the result:
//!
//! | [`Mechanism`] | kernel | what it records | order |
//! |---|---|---|---|
//! | [`RwpAsync`](Mechanism::RwpAsync) | Linux 7.3 | reads and writes: the range is read-write protected through an `RWP_ASYNC` userfaultfd, the kernel un-protects each page on its first access without an event, and `PAGEMAP_SCAN` reports `PAGE_IS_ACCESSED` | address |
//! | [`FaultOrder`](Mechanism::FaultOrder) | any | the MISSING and MINOR faults of a demand-paged run, which the caller's handler reports with [`Tracker::record_fault`] | address and first touch |
//! | [`WrittenPages`](Mechanism::WrittenPages) | Linux 6.7 | writes only: the range is write-protected through a `WP_ASYNC` userfaultfd and `PAGEMAP_SCAN` reports `PAGE_IS_WRITTEN` | address |
//!
//! Limits: a shmem page that is reclaimed loses its read-write protection
//! (the kernel's documented limit) and reads as touched once it is mapped
//! again; [`Mechanism::FaultOrder`] sees only pages that were missing when
//! first touched (a page present before tracking started is not seen).
//!
//! [`Tracker::start`] tracks a range nobody else handles faults of, on a
//! userfaultfd of its own (RWP_ASYNC, else WP_ASYNC: no fault ever waits
//! for a handler). [`Tracker::attach`] tracks a range the caller already
//! registered — a page server's demand-paged guest memory — on the
//! caller's userfaultfd (RWP_ASYNC if that userfaultfd enabled it and the
//! range is registered RWP, else fault order if it is registered MISSING
//! or MINOR, else WP_ASYNC).
//!
//! # Example: the pages a workload touches
//!
//! ```no_run
//! use userfault::mem::{Mapping, Sharing};
//! use userfault::workingset::Tracker;
//!
//! # fn main() -> userfault::Result<()> {
//! let page = 4096;
//! let ram = Mapping::anonymous(256 * page, Sharing::Private)?;
//! let tracker = Tracker::start(ram.addr(), ram.len(), page)?;
//! // ... the guest runs ...
//! let set = tracker.read()?;
//! println!("{} pages touched ({:?})", set.len(), set.mechanism());
//! # Ok(())
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::pagemap::{PageCategories, Pagemap, Scan};
use crate::uffd::{Features, Ioctls, RegisterMode, Registration, RwprotectMode, Uffd};

/// How a [`Tracker`] learns which pages were touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// `UFFD_FEATURE_RWP_ASYNC` + `PAGEMAP_SCAN` with `PAGE_IS_ACCESSED`
    /// (Linux 7.3): every read or write, in address order.
    RwpAsync,
    /// MISSING / MINOR faults reported by the caller's handler: the pages of
    /// a demand-paged run, in first-touch and address order.
    FaultOrder,
    /// `UFFD_FEATURE_WP_ASYNC` + `PAGEMAP_SCAN` with `PAGE_IS_WRITTEN`
    /// (Linux 6.7): written pages only, in address order.
    WrittenPages,
}

impl Mechanism {
    /// True when reads are recorded, not only writes.
    pub fn records_reads(self) -> bool {
        !matches!(self, Mechanism::WrittenPages)
    }

    /// True when the result has a first-touch order.
    pub fn has_first_touch_order(self) -> bool {
        matches!(self, Mechanism::FaultOrder)
    }
}

/// The pages a [`Tracker`] saw touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingSet {
    mechanism: Mechanism,
    page_size: usize,
    pages: Vec<usize>,
    first_touch: Option<Vec<usize>>,
}

impl WorkingSet {
    /// How the pages were recorded.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The size of the pages listed.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The first address of every touched page, in address order.
    pub fn pages(&self) -> &[usize] {
        &self.pages
    }

    /// The touched pages in the order they were first touched, where the
    /// mechanism gives it ([`Mechanism::FaultOrder`]).
    pub fn first_touch(&self) -> Option<&[usize]> {
        self.first_touch.as_deref()
    }

    /// The number of touched pages.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// True when no page was touched.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// True when the page holding `addr` was touched.
    pub fn contains(&self, addr: usize) -> bool {
        let page = addr & !(self.page_size - 1);
        self.pages.binary_search(&page).is_ok()
    }
}

/// Tracks which pages of one range are touched (see the
/// [module documentation](self)).
#[derive(Debug)]
pub struct Tracker {
    uffd: Arc<Uffd>,
    reg: Registration,
    page_size: usize,
    mechanism: Mechanism,
    /// True when the tracker registered the range itself.
    own: bool,
    pagemap: Option<Pagemap>,
    /// [`Mechanism::FaultOrder`]: one bit per page seen, and the pages in
    /// the order first seen.
    seen: Box<[AtomicU64]>,
    order: Mutex<Vec<usize>>,
}

impl Tracker {
    /// `userfaultfd(2)`, `UFFDIO_API`, `UFFDIO_REGISTER` and
    /// `UFFDIO_RWPROTECT` (or `UFFDIO_WRITEPROTECT`): starts tracking
    /// `[start, start + len)` (pages of `page_size` bytes) on a userfaultfd
    /// of its own, registered RWP with `RWP_ASYNC` where the kernel has it
    /// (Linux 7.3), else WP with `WP_ASYNC` (Linux 6.7; writes only). Either way the kernel resolves every access itself:
    /// no thread ever waits for a handler, and no data changes.
    ///
    /// The range must be mapped and not registered with another
    /// userfaultfd. Dropping the tracker ends the tracking.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a range that is empty or not aligned to
    /// `page_size`; `Unsupported` when the kernel has neither mechanism
    /// (then only [`attach`](Self::attach) to a demand-paged range can
    /// track it, by fault order), with both attempts' errors; the
    /// registration's errors.
    pub fn start(start: usize, len: usize, page_size: usize) -> Result<Tracker> {
        check_range(start, len, page_size)?;
        let rwp = Self::start_with(
            start,
            len,
            page_size,
            Features::RWP | Features::RWP_ASYNC,
            Features::empty(),
            RegisterMode::RWP,
            Mechanism::RwpAsync,
        );
        let rwp_err = match rwp {
            Ok(t) => return Ok(t),
            Err(e) => e,
        };
        let wp = Self::start_with(
            start,
            len,
            page_size,
            Features::WP_ASYNC,
            Features::WP_UNPOPULATED | Features::WP_HUGETLBFS_SHMEM,
            RegisterMode::WP,
            Mechanism::WrittenPages,
        );
        match wp {
            Ok(t) => Ok(t),
            Err(wp_err) => Err(Error::unsupported(
                "working-set tracking",
                wp_err.errno(),
                format!(
                    "RWP_ASYNC: {rwp_err}; WP_ASYNC: {wp_err} (a demand-paged range can still \
                     be tracked by fault order: Tracker::attach)"
                ),
            )),
        }
    }

    fn start_with(
        start: usize,
        len: usize,
        page_size: usize,
        required: Features,
        optional: Features,
        mode: RegisterMode,
        mechanism: Mechanism,
    ) -> Result<Tracker> {
        let uffd = Arc::new(
            Uffd::builder()
                .non_blocking(true)
                .require_features(required)
                .request_features(optional)
                .create()?,
        );
        // SAFETY: the userfaultfd is private to the tracker, which issues
        // only protection changes on it (UFFDIO_RWPROTECT /
        // UFFDIO_WRITEPROTECT) and never resolves a fault by putting data
        // into the range; with RWP_ASYNC / WP_ASYNC enabled (required above)
        // the kernel resolves every fault in the modes registered without a
        // handler. So no access to the range waits and its contents are
        // only ever what the process itself writes: references into it
        // stay valid.
        let reg = unsafe { uffd.register(start, len, mode)? };
        let tracker = Tracker::new(uffd, reg, page_size, mechanism, true)?;
        tracker.arm()?;
        Ok(tracker)
    }

    /// `UFFDIO_RWPROTECT` or `UFFDIO_WRITEPROTECT` of a range the caller
    /// registered on its own userfaultfd (or nothing, for fault order):
    /// tracks that range, choosing by trying: read-write protecting it
    /// ([`Mechanism::RwpAsync`]) when `uffd` has `RWP_ASYNC` enabled and
    /// `reg` offers `UFFDIO_RWPROTECT`; else fault order
    /// ([`Mechanism::FaultOrder`]: the handler calls
    /// [`record_fault`](Self::record_fault)) when `reg` is registered
    /// MISSING or MINOR; else write-protecting it
    /// ([`Mechanism::WrittenPages`]) when `uffd` has `WP_ASYNC` and `reg`
    /// offers `UFFDIO_WRITEPROTECT`.
    ///
    /// Dropping the tracker leaves the registration, and any protection
    /// it set, as they are (async protection resolves itself).
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `reg` is not `uffd`'s or not aligned to
    /// `page_size`; `Unsupported` when no mechanism applies; the errors of
    /// protecting the range.
    pub fn attach(uffd: Arc<Uffd>, reg: Registration, page_size: usize) -> Result<Tracker> {
        check_range(reg.start(), reg.len(), page_size)?;
        if reg.uffd_id() != uffd.id() {
            return Err(Error::invalid(
                "working-set tracking",
                "the registration belongs to another userfaultfd",
            ));
        }
        let features = uffd.features();
        let mut tried = Vec::new();
        if features.contains(Features::RWP_ASYNC) && reg.ioctls().contains(Ioctls::RWPROTECT) {
            let t = Tracker::new(uffd.clone(), reg, page_size, Mechanism::RwpAsync, false)?;
            match t.arm() {
                Ok(()) => return Ok(t),
                Err(e) => tried.push(format!("RWP_ASYNC: {e}")),
            }
        } else {
            tried.push("RWP_ASYNC: not enabled, or the range is not registered RWP".into());
        }
        if reg
            .mode()
            .intersects(RegisterMode::MISSING | RegisterMode::MINOR)
        {
            return Tracker::new(uffd, reg, page_size, Mechanism::FaultOrder, false);
        }
        tried.push("fault order: the range is registered neither MISSING nor MINOR".into());
        if features.contains(Features::WP_ASYNC) && reg.ioctls().contains(Ioctls::WRITEPROTECT) {
            let t = Tracker::new(uffd, reg, page_size, Mechanism::WrittenPages, false)?;
            match t.arm() {
                Ok(()) => return Ok(t),
                Err(e) => tried.push(format!("WP_ASYNC: {e}")),
            }
        } else {
            tried.push("WP_ASYNC: not enabled, or the range is not registered WP".into());
        }
        Err(Error::unsupported(
            "working-set tracking",
            None,
            tried.join("; "),
        ))
    }

    fn new(
        uffd: Arc<Uffd>,
        reg: Registration,
        page_size: usize,
        mechanism: Mechanism,
        own: bool,
    ) -> Result<Tracker> {
        let pages = reg.len() / page_size;
        let (pagemap, seen) = match mechanism {
            Mechanism::FaultOrder => (
                None,
                (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            ),
            _ => (Some(Pagemap::open()?), Box::default()),
        };
        Ok(Tracker {
            uffd,
            reg,
            page_size,
            mechanism,
            own,
            pagemap,
            seen,
            order: Mutex::new(Vec::new()),
        })
    }

    /// Protects the whole range again: the start of a tracking interval.
    fn arm(&self) -> Result<()> {
        let (start, len) = (self.reg.start(), self.reg.len());
        match self.mechanism {
            Mechanism::RwpAsync => self
                .uffd
                .rwprotect(&self.reg, start, len, RwprotectMode::RWP)
                .map(drop),
            Mechanism::WrittenPages => self.uffd.write_protect(&self.reg, start, len).map(drop),
            Mechanism::FaultOrder => {
                for word in &self.seen {
                    word.store(0, Ordering::Relaxed);
                }
                self.order.lock().unwrap_or_else(|p| p.into_inner()).clear();
                Ok(())
            }
        }
    }

    /// The mechanism in use.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The tracked registration.
    pub fn registration(&self) -> &Registration {
        &self.reg
    }

    /// True when the tracker registered the range itself
    /// ([`start`](Self::start)); dropping it then unregisters the range.
    pub fn owns_registration(&self) -> bool {
        self.own
    }

    /// Records a fault at `address` the caller's handler is resolving
    /// ([`Mechanism::FaultOrder`]); returns true when it is the page's first
    /// touch. Cheap (one atomic operation for a page seen before) and safe
    /// to call from several handler threads. With the other mechanisms, and
    /// for an address outside the range, it records nothing and returns
    /// false.
    pub fn record_fault(&self, address: usize) -> bool {
        if self.mechanism != Mechanism::FaultOrder || !self.reg.contains(address, 1) {
            return false;
        }
        let index = (address - self.reg.start()) / self.page_size;
        let bit = 1u64 << (index % 64);
        let before = self.seen[index / 64].fetch_or(bit, Ordering::Relaxed);
        if before & bit != 0 {
            return false;
        }
        let page = self.reg.start() + index * self.page_size;
        self.order
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(page);
        true
    }

    /// `PAGEMAP_SCAN` of the range (`PAGE_IS_ACCESSED` or
    /// `PAGE_IS_WRITTEN`), or the recorded faults: the pages touched since
    /// tracking started (or since the last [`restart`](Self::restart));
    /// tracking goes on.
    ///
    /// # Errors
    ///
    /// `PAGEMAP_SCAN`'s errors.
    pub fn read(&self) -> Result<WorkingSet> {
        let (pages, first_touch) = match self.mechanism {
            Mechanism::FaultOrder => {
                let order = self.order.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let mut pages = order.clone();
                pages.sort_unstable();
                (pages, Some(order))
            }
            Mechanism::RwpAsync => (self.scan(PageCategories::ACCESSED)?, None),
            Mechanism::WrittenPages => (self.scan(PageCategories::WRITTEN)?, None),
        };
        Ok(WorkingSet {
            mechanism: self.mechanism,
            page_size: self.page_size,
            pages,
            first_touch,
        })
    }

    /// `UFFDIO_RWPROTECT` or `UFFDIO_WRITEPROTECT` of the whole range (or
    /// forgetting the recorded faults): starts a new tracking interval, so
    /// the next [`read`](Self::read) shows only pages touched from now on.
    ///
    /// # Errors
    ///
    /// The protection ioctl's errors.
    pub fn restart(&self) -> Result<()> {
        self.arm()
    }

    fn scan(&self, category: PageCategories) -> Result<Vec<usize>> {
        let pagemap = self
            .pagemap
            .as_ref()
            .ok_or_else(|| Error::invalid("working-set scan", "no pagemap"))?;
        let scan = Scan::new(self.reg.start(), self.reg.end())
            .require(category)
            .report(category);
        let mut pages = Vec::new();
        for region in pagemap.scan(&scan)? {
            let region = region?;
            let first = region.start & !(self.page_size - 1);
            pages.extend((first..region.end).step_by(self.page_size));
        }
        Ok(pages)
    }
}

fn check_range(start: usize, len: usize, page_size: usize) -> Result<()> {
    if !page_size.is_power_of_two() || len == 0 || (start | len) & (page_size - 1) != 0 {
        return Err(Error::invalid(
            "working-set tracking",
            format!(
                "range {start:#x}+{len:#x} is empty or not aligned to the page size {page_size:#x}"
            ),
        ));
    }
    Ok(())
}
