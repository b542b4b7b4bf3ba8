//! The KVM userfault bitmap and the probe for `KVM_MEM_USERFAULT`.

use std::fmt;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Memslot;
use crate::error::{Errno, Error, Result};
use crate::mem::{Mapping, Sharing};
use crate::sys;

/// The userfault bitmap of one memslot: one bit per base page of the slot,
/// in `u64` words as the kernel reads them (an array of `unsigned long`).
///
/// A set bit means "this page is not populated yet": a vCPU access to it
/// exits with `KVM_EXIT_MEMORY_FAULT` and the USERFAULT flag. The page is
/// then written into the slot's backing and the bit cleared, in that order
/// — which is what [`Stage2Fault::resolve`](super::Stage2Fault::resolve)
/// does. Clearing uses a store-release (`fetch_and(!mask, Release)`), so a
/// thread that sees the bit clear with [`test`](UserfaultBitmap::test)
/// (an acquire load) also sees the page.
///
/// Attached to a file's [`PageState`](crate::resolve::PageState) (through
/// [`Stage2Resolver::new`](super::Stage2Resolver::new)), its bits are part
/// of that state: every fill of a page clears its bit, every discard sets
/// it again.
///
/// ```
/// use userfault::kvm::UserfaultBitmap;
///
/// let b = UserfaultBitmap::new_all_set(0x10_0000, 130 * 4096).unwrap();
/// assert_eq!(b.pages(), 130);
/// assert_eq!(b.words().len(), 3);
/// assert_eq!(b.test(129), Some(true));
/// assert_eq!(b.clear(129), Some(true));
/// assert_eq!(b.test(129), Some(false));
/// assert_eq!(b.test(130), None);
/// assert_eq!(b.count_set(), 129);
/// ```
pub struct UserfaultBitmap {
    words: Box<[AtomicU64]>,
    guest_phys_addr: u64,
    pages: u64,
    page_size: u64,
}

/// `n` zeroed words, or `ENOMEM` when they cannot be allocated.
fn zeroed_words(n: usize) -> Result<Box<[AtomicU64]>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::os_hint(
            "userfault bitmap",
            Errno::ENOMEM,
            format!("cannot allocate a bitmap of {n} words"),
        )
    })?;
    v.extend((0..n).map(|_| AtomicU64::new(0)));
    Ok(v.into_boxed_slice())
}

impl UserfaultBitmap {
    /// The most pages KVM takes in one memslot: `KVM_MEM_MAX_NR_PAGES`,
    /// `(1 << 31) - 1` (`include/linux/kvm_host.h`; a larger
    /// `KVM_SET_USER_MEMORY_REGION2` fails with `EINVAL`).
    pub const MAX_SLOT_PAGES: u64 = (1 << 31) - 1;

    /// A bitmap for a slot of `memory_size` bytes at `guest_phys_addr`,
    /// with every bit clear (no page traps).
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when the address or size is not a multiple of the
    /// base page size, the size is zero, the slot wraps the guest physical
    /// address space, or it has more pages than KVM takes in one memslot
    /// ([`MAX_SLOT_PAGES`](UserfaultBitmap::MAX_SLOT_PAGES)); `ENOMEM` when
    /// the bitmap cannot be allocated.
    pub fn new(guest_phys_addr: u64, memory_size: u64) -> Result<UserfaultBitmap> {
        let page_size = crate::sys::page_size() as u64;
        if memory_size == 0
            || !memory_size.is_multiple_of(page_size)
            || !guest_phys_addr.is_multiple_of(page_size)
        {
            return Err(Error::invalid(
                "userfault bitmap",
                format!(
                    "slot {guest_phys_addr:#x}+{memory_size:#x} must be non-empty and aligned to \
                     the page size {page_size:#x}"
                ),
            ));
        }
        if guest_phys_addr.checked_add(memory_size).is_none() {
            return Err(Error::invalid(
                "userfault bitmap",
                format!(
                    "slot {guest_phys_addr:#x}+{memory_size:#x} wraps around the guest physical \
                     address space"
                ),
            ));
        }
        let pages = memory_size / page_size;
        if pages > Self::MAX_SLOT_PAGES {
            return Err(Error::invalid(
                "userfault bitmap",
                format!(
                    "a slot of {memory_size:#x} bytes has {pages} pages; KVM takes at most {} \
                     pages in one memslot (KVM_MEM_MAX_NR_PAGES): split the memory into several \
                     slots",
                    Self::MAX_SLOT_PAGES
                ),
            ));
        }
        // At most 2^31 bits (256 MiB) each, after the check above; the
        // allocation can still fail, which is an error, not an abort.
        let words = pages.div_ceil(64) as usize;
        Ok(UserfaultBitmap {
            words: zeroed_words(words)?,
            guest_phys_addr,
            pages,
            page_size,
        })
    }

    /// A bitmap with every page's bit set: every page traps until it is
    /// populated (a VM restored from a snapshot).
    ///
    /// # Errors
    ///
    /// As [`new`](UserfaultBitmap::new).
    pub fn new_all_set(guest_phys_addr: u64, memory_size: u64) -> Result<UserfaultBitmap> {
        let b = UserfaultBitmap::new(guest_phys_addr, memory_size)?;
        b.set_all();
        Ok(b)
    }

    /// The guest physical address of the slot's first page.
    pub fn guest_phys_addr(&self) -> u64 {
        self.guest_phys_addr
    }

    /// The slot's size in bytes.
    pub fn memory_size(&self) -> u64 {
        self.pages * self.page_size
    }

    /// Number of pages (bits).
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The page size one bit stands for (the base page size).
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The words as the kernel reads them.
    pub fn words(&self) -> &[AtomicU64] {
        &self.words
    }

    /// The address KVM is given as `userfault_bitmap`.
    pub(crate) fn kernel_addr(&self) -> u64 {
        self.words.as_ptr() as u64
    }

    /// The page index of guest physical address `gpa`, if it lies in the
    /// slot.
    pub fn page_of(&self, gpa: u64) -> Option<u64> {
        let off = gpa.checked_sub(self.guest_phys_addr)?;
        let page = off / self.page_size;
        (page < self.pages).then_some(page)
    }

    /// The word index and bit mask of page `page`, or `None` when it is not
    /// below [`pages`](UserfaultBitmap::pages).
    #[inline]
    fn at(&self, page: u64) -> Option<(usize, u64)> {
        (page < self.pages).then(|| ((page / 64) as usize, 1 << (page % 64)))
    }

    /// True when page `page`'s bit is set (an acquire load: after `false`,
    /// the data of the write that preceded the clearing is visible);
    /// `None` when `page` is not below [`pages`](UserfaultBitmap::pages).
    pub fn test(&self, page: u64) -> Option<bool> {
        let (w, mask) = self.at(page)?;
        Some(self.words[w].load(Ordering::Acquire) & mask != 0)
    }

    /// Sets page `page`'s bit, so that vCPU accesses trap again; returns
    /// whether it was set. KVM only notices for pages it has not mapped
    /// yet: for others, disable and re-enable `KVM_MEM_USERFAULT` on the
    /// slot (and drop the page from the backing, for example with
    /// [`Backing::punch_hole`](crate::backing::Backing::punch_hole)).
    /// `None` (and nothing set) when `page` is not below
    /// [`pages`](UserfaultBitmap::pages).
    pub fn set(&self, page: u64) -> Option<bool> {
        let (w, mask) = self.at(page)?;
        // Relaxed: a set bit takes effect for KVM through the memslot ioctl
        // that (re-)enables KVM_MEM_USERFAULT, a system call.
        Some(self.words[w].fetch_or(mask, Ordering::Relaxed) & mask != 0)
    }

    /// Sets every page's bit.
    pub fn set_all(&self) {
        let full = self.pages / 64;
        for w in &self.words[..full as usize] {
            w.store(u64::MAX, Ordering::Relaxed);
        }
        let rest = self.pages % 64;
        if rest != 0 {
            self.words[full as usize].fetch_or((1 << rest) - 1, Ordering::Relaxed);
        }
    }

    /// Clears page `page`'s bit with a store-release (`fetch_and(!mask,
    /// Release)`); returns whether it was set.
    ///
    /// Only clear a bit once the page is in the slot's backing: KVM maps
    /// whatever the backing holds when it sees the bit clear — for
    /// guest_memfd, a freshly allocated zero page if nothing was written.
    /// [`Stage2Fault::resolve`](super::Stage2Fault::resolve) does both steps
    /// in the right order. `None` (and nothing cleared) when `page` is not
    /// below [`pages`](UserfaultBitmap::pages).
    pub fn clear(&self, page: u64) -> Option<bool> {
        let (w, mask) = self.at(page)?;
        Some(self.words[w].fetch_and(!mask, Ordering::Release) & mask != 0)
    }

    /// Number of set bits (pages still trapping).
    pub fn count_set(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// Clears bits `[first, first + n)` a word at a time, with
    /// store-release. The caller keeps the range inside the bitmap.
    pub(crate) fn clear_range(&self, first: u64, n: u64) {
        for_words(first, n, |w, mask| {
            self.words[w].fetch_and(!mask, Ordering::Release);
        });
    }

    /// Sets bits `[first, first + n)` a word at a time.
    pub(crate) fn set_range(&self, first: u64, n: u64) {
        for_words(first, n, |w, mask| {
            self.words[w].fetch_or(mask, Ordering::Release);
        });
    }
}

/// Calls `f(word, mask)` for every word that bits `[first, first + n)`
/// touch.
fn for_words(first: u64, n: u64, mut f: impl FnMut(usize, u64)) {
    let (mut bit, end) = (first, first + n);
    while bit < end {
        let w = bit / 64;
        let lo = bit % 64;
        let hi = (end - w * 64).min(64);
        let mask = if hi - lo == 64 {
            u64::MAX
        } else {
            ((1u64 << (hi - lo)) - 1) << lo
        };
        f(w as usize, mask);
        bit = w * 64 + hi;
    }
}

impl fmt::Debug for UserfaultBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserfaultBitmap")
            .field(
                "guest_phys_addr",
                &format_args!("{:#x}", self.guest_phys_addr),
            )
            .field("pages", &self.pages)
            .field("set", &self.count_set())
            .finish()
    }
}

/// Does the kernel take `KVM_MEM_USERFAULT`? Decided by trying: creates a
/// scratch VM (type 0) on `kvm` (a [`Kvm`](super::Kvm) or a borrowed `/dev/kvm`) and
/// sets a one-page memslot with `KVM_MEM_USERFAULT` and a bitmap. Capability
/// numbers are not consulted: `KVM_CAP_USERFAULT` was 243 in the upstream
/// v3 posting and 245 in Firecracker's stack, and mainline gave both to
/// other capabilities. The flag (`1 << 3`) and the exit flag (`1 << 4`) are
/// the same in both.
///
/// # Errors
///
/// `Unsupported` with the errno when the kernel refuses the flag (`EINVAL`
/// on kernels without the series), and without an errno when it has no
/// `KVM_SET_USER_MEMORY_REGION2` (before Linux 6.8); `InvalidArgument` when `kvm` is not the
/// KVM device (checked with `fstat`: character device 10:232); the errno of
/// `KVM_CREATE_VM` or `mmap` when the probe cannot run.
///
/// # References
///
/// [`KVM_SET_USER_MEMORY_REGION2`](https://docs.kernel.org/virt/kvm/api.html#kvm-set-user-memory-region2)
pub fn probe_userfault(kvm: impl AsFd) -> Result<()> {
    // The slot's memory and bitmap come first, so that they are dropped
    // after the VM (locals drop in reverse order).
    let page = crate::sys::page_size();
    let memory = Mapping::anonymous(page, Sharing::Private)?;
    let bitmap = UserfaultBitmap::new(0, page as u64)?;
    let kvm = kvm.as_fd();
    sys::kvm::check_kvm_device("KVM_CREATE_VM", kvm)?;
    let vm = loop {
        // SAFETY: `kvm` was just checked to be /dev/kvm.
        match unsafe { sys::kvm::create_vm(kvm, 0) } {
            Ok(vm) => break vm,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::os("KVM_CREATE_VM", e)),
        }
    };
    // KVM_MEM_USERFAULT is a flag of KVM_SET_USER_MEMORY_REGION2: without
    // that ioctl (KVM_CAP_USER_MEMORY2, Linux 6.8) there is nothing to try.
    if !matches!(
        sys::kvm::check_extension(vm.as_fd(), gmem_sys::KVM_CAP_USER_MEMORY2),
        Ok(v) if v > 0
    ) {
        return Err(no_memory_region2(None));
    }
    let slot = Memslot::from_mapping(0, 0, &memory).userfault(&bitmap);
    // SAFETY: `memory` and `bitmap` outlive `vm`: declared before it, they
    // are dropped after it is closed (taking the slot with it) at the end
    // of this function, on every path. Nothing references `memory`, and no
    // vCPU exists.
    match unsafe { slot.issue(vm.as_fd()) } {
        Ok(()) => Ok(()),
        Err(errno @ Errno::EINVAL) => Err(Error::unsupported(
            "KVM userfault (KVM_MEM_USERFAULT)",
            Some(errno),
            "KVM_SET_USER_MEMORY_REGION2 refused KVM_MEM_USERFAULT on a one-page scratch slot: \
             this kernel lacks the posted KVM userfault series",
        )),
        Err(errno @ Errno::ENOTTY) => Err(no_memory_region2(Some(errno))),
        Err(errno) => Err(Error::os("KVM_SET_USER_MEMORY_REGION2", errno)),
    }
}

/// KVM userfault on a kernel without `KVM_SET_USER_MEMORY_REGION2`.
fn no_memory_region2(errno: Option<Errno>) -> Error {
    Error::unsupported(
        "KVM userfault (KVM_MEM_USERFAULT)",
        errno,
        "this kernel has no KVM_SET_USER_MEMORY_REGION2 (KVM_CAP_USER_MEMORY2), which KVM \
         userfault memslots need: run Linux 6.8 or newer with the posted KVM userfault series",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_slots_are_refused_before_allocating() {
        // 1 << 62 bytes would be a 128 TiB bitmap: refused, not an abort.
        let e = UserfaultBitmap::new(0, 1 << 62).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        assert!(e.to_string().contains("KVM_MEM_MAX_NR_PAGES"), "{e}");
        let page = crate::sys::page_size() as u64;
        let e = UserfaultBitmap::new(u64::MAX - page + 1, 2 * page).unwrap_err();
        assert!(e.to_string().contains("wraps around"), "{e}");
        // The largest slot KVM takes is accepted (a 256 MiB bitmap is not
        // allocated here: one page past the limit is refused instead).
        let e = UserfaultBitmap::new(0, (UserfaultBitmap::MAX_SLOT_PAGES + 1) * page).unwrap_err();
        assert!(e.to_string().contains("split the memory"), "{e}");
    }

    #[test]
    fn without_memory_region2_the_reason_names_linux_6_8() {
        let e = no_memory_region2(Some(Errno::ENOTTY));
        assert!(e.is_unsupported(), "{e}");
        let text = e.to_string();
        assert!(text.contains("KVM_SET_USER_MEMORY_REGION2"), "{text}");
        assert!(text.contains("Linux 6.8 or newer"), "{text}");
    }

    #[test]
    fn out_of_range_pages_are_none() {
        let page = crate::sys::page_size() as u64;
        let b = UserfaultBitmap::new_all_set(0, 3 * page).unwrap();
        assert_eq!(b.test(2), Some(true));
        assert_eq!(b.test(3), None);
        assert_eq!(b.test(u64::MAX), None);
        assert_eq!(b.set(3), None);
        assert_eq!(b.clear(1 << 40), None);
        assert_eq!(b.count_set(), 3, "nothing outside changed a word");
        assert_eq!(b.clear(0), Some(true));
        assert_eq!(b.set(0), Some(false));
    }
}
