//! The bit sets of the userfaultfd ABI: features, register modes, ioctl
//! masks, page-fault flags and the per-ioctl modes.
//!
//! Every set keeps bits it does not name (`from_bits_retain`, `const _ =
//! !0`): a newer kernel's bits survive a round trip through this crate and
//! show up in `Debug` as hex beside the names this crate knows. No name is
//! given to a bit the mainline kernel has not merged (feature bits 19 and up,
//! register mode bits 4 and up).

use bitflags::bitflags;
use uffd_sys as sys;

bitflags! {
    /// `UFFD_FEATURE_*`: what `UFFDIO_API` offers and enables.
    ///
    /// The kernel reports every feature it supports, but enables only the
    /// ones requested. Most of the memory-type bits (`MISSING_SHMEM`,
    /// `MINOR_HUGETLBFS`, …) only *report* support: registration works
    /// without requesting them. The bits that change behaviour are the
    /// `EVENT_*` bits, `SIGBUS`, `THREAD_ID`, `EXACT_ADDRESS`,
    /// `WP_UNPOPULATED` and `WP_ASYNC`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Features: u64 {
        /// Write-protect faults are reported (`UFFD_FEATURE_PAGEFAULT_FLAG_WP`, Linux 5.7).
        const PAGEFAULT_FLAG_WP = sys::UFFD_FEATURE_PAGEFAULT_FLAG_WP;
        /// Fork events: the child's registrations are kept and a new
        /// userfaultfd for it is delivered (`UFFD_FEATURE_EVENT_FORK`).
        /// Enabling it needs `CAP_SYS_PTRACE`.
        const EVENT_FORK = sys::UFFD_FEATURE_EVENT_FORK;
        /// `mremap(2)` of a registered range keeps the registration and is
        /// reported (`UFFD_FEATURE_EVENT_REMAP`).
        const EVENT_REMAP = sys::UFFD_FEATURE_EVENT_REMAP;
        /// `madvise(MADV_DONTNEED/MADV_REMOVE)` on a registered range is
        /// reported (`UFFD_FEATURE_EVENT_REMOVE`).
        const EVENT_REMOVE = sys::UFFD_FEATURE_EVENT_REMOVE;
        /// MISSING registration of hugetlbfs works (`UFFD_FEATURE_MISSING_HUGETLBFS`; report only).
        const MISSING_HUGETLBFS = sys::UFFD_FEATURE_MISSING_HUGETLBFS;
        /// MISSING registration of shmem works (`UFFD_FEATURE_MISSING_SHMEM`; report only).
        const MISSING_SHMEM = sys::UFFD_FEATURE_MISSING_SHMEM;
        /// `munmap(2)` of a registered range is reported (`UFFD_FEATURE_EVENT_UNMAP`).
        const EVENT_UNMAP = sys::UFFD_FEATURE_EVENT_UNMAP;
        /// Faults raise `SIGBUS` in the faulting thread instead of an event
        /// (`UFFD_FEATURE_SIGBUS`).
        const SIGBUS = sys::UFFD_FEATURE_SIGBUS;
        /// Page-fault events carry the faulting thread's id (`UFFD_FEATURE_THREAD_ID`).
        const THREAD_ID = sys::UFFD_FEATURE_THREAD_ID;
        /// MINOR registration of hugetlbfs works (`UFFD_FEATURE_MINOR_HUGETLBFS`; report only).
        const MINOR_HUGETLBFS = sys::UFFD_FEATURE_MINOR_HUGETLBFS;
        /// MINOR registration of shmem works (`UFFD_FEATURE_MINOR_SHMEM`; report only).
        const MINOR_SHMEM = sys::UFFD_FEATURE_MINOR_SHMEM;
        /// Page-fault addresses are exact, not rounded down to the page
        /// (`UFFD_FEATURE_EXACT_ADDRESS`).
        const EXACT_ADDRESS = sys::UFFD_FEATURE_EXACT_ADDRESS;
        /// WP registration of hugetlbfs and shmem works (`UFFD_FEATURE_WP_HUGETLBFS_SHMEM`).
        const WP_HUGETLBFS_SHMEM = sys::UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
        /// Write protection also applies to unpopulated anonymous pages
        /// (`UFFD_FEATURE_WP_UNPOPULATED`).
        const WP_UNPOPULATED = sys::UFFD_FEATURE_WP_UNPOPULATED;
        /// `UFFDIO_POISON` exists (`UFFD_FEATURE_POISON`, Linux 6.6).
        const POISON = sys::UFFD_FEATURE_POISON;
        /// Write-protect faults are resolved by the kernel, without an event
        /// (`UFFD_FEATURE_WP_ASYNC`, Linux 6.7).
        const WP_ASYNC = sys::UFFD_FEATURE_WP_ASYNC;
        /// `UFFDIO_MOVE` exists (`UFFD_FEATURE_MOVE`, Linux 6.8).
        const MOVE = sys::UFFD_FEATURE_MOVE;
        /// [`RegisterMode::RWP`] and `UFFDIO_RWPROTECT` exist: read-write
        /// protection, whose faults report reads as well as writes
        /// (`UFFD_FEATURE_RWP`, Linux 7.3). Must be requested to register RWP.
        const RWP = sys::UFFD_FEATURE_RWP;
        /// Faults on read-write-protected pages are resolved by the kernel,
        /// without an event; `PAGEMAP_SCAN` then reports the touched pages as
        /// `PAGE_IS_ACCESSED` (`UFFD_FEATURE_RWP_ASYNC`, Linux 7.3). Requested
        /// only together with [`RWP`](Self::RWP) (the kernel refuses it alone
        /// with `EINVAL`); switched at run time with
        /// [`Uffd::set_mode`](super::Uffd::set_mode).
        const RWP_ASYNC = sys::UFFD_FEATURE_RWP_ASYNC;
        // Keep every bit a newer kernel reports.
        const _ = !0;
    }
}

bitflags! {
    /// `UFFDIO_REGISTER_MODE_*`: which faults a registered range reports.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct RegisterMode: u64 {
        /// Faults on pages that are not present (`UFFDIO_REGISTER_MODE_MISSING`).
        const MISSING = sys::UFFDIO_REGISTER_MODE_MISSING;
        /// Writes to write-protected pages (`UFFDIO_REGISTER_MODE_WP`).
        const WP = sys::UFFDIO_REGISTER_MODE_WP;
        /// Faults on pages present in the page cache but not mapped
        /// (`UFFDIO_REGISTER_MODE_MINOR`; shmem and hugetlbfs).
        const MINOR = sys::UFFDIO_REGISTER_MODE_MINOR;
        /// Any access, read or write, to a read-write-protected page
        /// (`UFFDIO_REGISTER_MODE_RWP`, Linux 7.3; needs [`Features::RWP`]).
        /// Anonymous, shmem and hugetlbfs memory; never together with `WP`.
        const RWP = sys::UFFDIO_REGISTER_MODE_RWP;
        const _ = !0;
    }
}

bitflags! {
    /// The `ioctls` masks of `UFFDIO_API` (ioctls valid on the fd) and
    /// `UFFDIO_REGISTER` (ioctls valid on the range): bit `_UFFDIO_X` set
    /// when `UFFDIO_X` is offered.
    ///
    /// The range mask is an upper bound: an ioctl it offers may still fail
    /// with `EINVAL` for a particular memory type (`UFFDIO_MOVE` into a file
    /// mapping, for one).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Ioctls: u64 {
        /// `UFFDIO_REGISTER`.
        const REGISTER = 1 << sys::_UFFDIO_REGISTER;
        /// `UFFDIO_UNREGISTER`.
        const UNREGISTER = 1 << sys::_UFFDIO_UNREGISTER;
        /// `UFFDIO_WAKE`.
        const WAKE = 1 << sys::_UFFDIO_WAKE;
        /// `UFFDIO_COPY`.
        const COPY = 1 << sys::_UFFDIO_COPY;
        /// `UFFDIO_ZEROPAGE`.
        const ZEROPAGE = 1 << sys::_UFFDIO_ZEROPAGE;
        /// `UFFDIO_MOVE`.
        const MOVE = 1 << sys::_UFFDIO_MOVE;
        /// `UFFDIO_WRITEPROTECT`.
        const WRITEPROTECT = 1 << sys::_UFFDIO_WRITEPROTECT;
        /// `UFFDIO_CONTINUE`.
        const CONTINUE = 1 << sys::_UFFDIO_CONTINUE;
        /// `UFFDIO_POISON`.
        const POISON = 1 << sys::_UFFDIO_POISON;
        /// `UFFDIO_RWPROTECT` (Linux 7.3).
        const RWPROTECT = 1 << sys::_UFFDIO_RWPROTECT;
        /// `UFFDIO_SET_MODE` (Linux 7.3; offered on the fd, not on ranges).
        const SET_MODE = 1 << sys::_UFFDIO_SET_MODE;
        /// `UFFDIO_API`.
        const API = 1 << sys::_UFFDIO_API;
        const _ = !0;
    }
}

bitflags! {
    /// `UFFD_PAGEFAULT_FLAG_*`: the raw flags of a page-fault event.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct FaultFlags: u64 {
        /// The access was a write (`UFFD_PAGEFAULT_FLAG_WRITE`).
        const WRITE = sys::UFFD_PAGEFAULT_FLAG_WRITE;
        /// A write-protect fault (`UFFD_PAGEFAULT_FLAG_WP`).
        const WP = sys::UFFD_PAGEFAULT_FLAG_WP;
        /// A minor fault (`UFFD_PAGEFAULT_FLAG_MINOR`).
        const MINOR = sys::UFFD_PAGEFAULT_FLAG_MINOR;
        /// A read-write-protect fault (`UFFD_PAGEFAULT_FLAG_RWP`, Linux 7.3).
        const RWP = sys::UFFD_PAGEFAULT_FLAG_RWP;
        const _ = !0;
    }
}

bitflags! {
    /// `UFFDIO_COPY_MODE_*`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct CopyMode: u64 {
        /// Do not wake the threads waiting on the range
        /// (`UFFDIO_COPY_MODE_DONTWAKE`); wake them later with
        /// [`Uffd::wake`](super::Uffd::wake).
        const DONTWAKE = sys::UFFDIO_COPY_MODE_DONTWAKE;
        /// Install the pages write-protected (`UFFDIO_COPY_MODE_WP`); the
        /// range must be registered with [`RegisterMode::WP`].
        const WP = sys::UFFDIO_COPY_MODE_WP;
        const _ = !0;
    }
}

bitflags! {
    /// `UFFDIO_CONTINUE_MODE_*`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ContinueMode: u64 {
        /// Do not wake the waiting threads (`UFFDIO_CONTINUE_MODE_DONTWAKE`).
        const DONTWAKE = sys::UFFDIO_CONTINUE_MODE_DONTWAKE;
        /// Map the pages write-protected (`UFFDIO_CONTINUE_MODE_WP`); the
        /// range must be registered with [`RegisterMode::WP`].
        const WP = sys::UFFDIO_CONTINUE_MODE_WP;
        const _ = !0;
    }
}

bitflags! {
    /// `UFFDIO_MOVE_MODE_*`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct MoveMode: u64 {
        /// Do not wake the waiting threads (`UFFDIO_MOVE_MODE_DONTWAKE`).
        const DONTWAKE = sys::UFFDIO_MOVE_MODE_DONTWAKE;
        /// Skip holes in the source instead of failing with `ENOENT`
        /// (`UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES`).
        const ALLOW_SRC_HOLES = sys::UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES;
        const _ = !0;
    }
}

bitflags! {
    /// `UFFDIO_RWPROTECT_MODE_*`. Without [`RWP`](Self::RWP) the range is
    /// un-protected (and its waiters woken unless [`DONTWAKE`](Self::DONTWAKE)).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct RwprotectMode: u64 {
        /// Read-write protect the range (`UFFDIO_RWPROTECT_MODE_RWP`).
        const RWP = sys::UFFDIO_RWPROTECT_MODE_RWP;
        /// When un-protecting, do not wake the waiting threads
        /// (`UFFDIO_RWPROTECT_MODE_DONTWAKE`); the kernel refuses it
        /// together with `RWP`.
        const DONTWAKE = sys::UFFDIO_RWPROTECT_MODE_DONTWAKE;
        const _ = !0;
    }
}

bitflags! {
    /// `UFFDIO_ZEROPAGE_MODE_*`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ZeropageMode: u64 {
        /// Do not wake the waiting threads (`UFFDIO_ZEROPAGE_MODE_DONTWAKE`);
        /// wake them later with [`Uffd::wake`](super::Uffd::wake).
        const DONTWAKE = sys::UFFDIO_ZEROPAGE_MODE_DONTWAKE;
        const _ = !0;
    }
}

bitflags! {
    /// `UFFDIO_POISON_MODE_*`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct PoisonMode: u64 {
        /// Do not wake the waiting threads (`UFFDIO_POISON_MODE_DONTWAKE`).
        const DONTWAKE = sys::UFFDIO_POISON_MODE_DONTWAKE;
        const _ = !0;
    }
}

bitflags! {
    /// The modes of removing write protection
    /// ([`Uffd::write_unprotect`](super::Uffd::write_unprotect)):
    /// `UFFDIO_WRITEPROTECT` without `UFFDIO_WRITEPROTECT_MODE_WP`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct UnprotectMode: u64 {
        /// Do not wake the threads waiting on write-protect faults
        /// (`UFFDIO_WRITEPROTECT_MODE_DONTWAKE`).
        const DONTWAKE = sys::UFFDIO_WRITEPROTECT_MODE_DONTWAKE;
        const _ = !0;
    }
}

/// The names of the set bits of `flags` joined by `|` (`"MISSING|MINOR"`),
/// unnamed bits as one hexadecimal number, `"none"` when empty: flag sets
/// as operators read them, not as `Debug` shows them.
pub(crate) fn flag_names<F: bitflags::Flags<Bits = u64>>(flags: F) -> String {
    let mut parts: Vec<String> = flags.iter_names().map(|(n, _)| n.to_string()).collect();
    let named = flags.iter_names().fold(0, |a, (_, f)| a | f.bits());
    let unknown = flags.bits() & !named;
    if unknown != 0 {
        parts.push(format!("{unknown:#x}"));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join("|")
    }
}

impl Ioctls {
    /// The `Ioctls` bit of an ioctl named by its kernel name
    /// (`"UFFDIO_COPY"`), if this crate knows it.
    pub fn from_ioctl_name(name: &str) -> Option<Ioctls> {
        let short = name.strip_prefix("UFFDIO_")?;
        Ioctls::from_name(short)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_names_read_as_operators_write_them() {
        assert_eq!(
            flag_names(RegisterMode::MISSING | RegisterMode::MINOR),
            "MISSING|MINOR"
        );
        assert_eq!(
            flag_names(RegisterMode::from_bits_retain(1 | 1 << 9)),
            "MISSING|0x200"
        );
        assert_eq!(flag_names(Ioctls::empty()), "none");
    }

    #[test]
    fn unknown_bits_are_kept_and_shown() {
        let f = Features::from_bits_retain(0x7FFFF | 1 << 19);
        assert!(f.contains(Features::RWP_ASYNC));
        assert_eq!(f.bits() & (1 << 19), 1 << 19);
        let text = format!("{f:?}");
        assert!(text.contains("RWP_ASYNC"), "{text}");
        assert!(text.contains("0x80000"), "{text}");
        let i = Ioctls::from_bits_retain(0x3fc | 1 << 11);
        assert!(format!("{i:?}").contains("RWPROTECT"));
        assert!(format!("{i:?}").contains("0x800"));
        let m = RegisterMode::from_bits_retain(0xf | 1 << 4);
        assert!(format!("{m:?}").contains("RWP"));
        assert!(format!("{m:?}").contains("0x10"));
    }

    #[test]
    fn every_mainline_bit_is_named() {
        // Bits 0..=18 are the mainline features; each must have a name.
        for bit in 0..=18 {
            let f = Features::from_bits_retain(1 << bit);
            assert!(
                Features::all().iter_names().any(|(_, named)| named == f),
                "feature bit {bit} has no name"
            );
        }
        assert_eq!(
            Features::all()
                .iter_names()
                .fold(Features::empty(), |a, (_, f)| a | f)
                .bits(),
            sys::UFFD_API_FEATURES
        );
        assert_eq!(
            (Ioctls::WAKE
                | Ioctls::COPY
                | Ioctls::ZEROPAGE
                | Ioctls::MOVE
                | Ioctls::WRITEPROTECT
                | Ioctls::CONTINUE
                | Ioctls::POISON
                | Ioctls::RWPROTECT)
                .bits(),
            sys::UFFD_API_RANGE_IOCTLS
        );
        assert_eq!(
            (Ioctls::REGISTER | Ioctls::UNREGISTER | Ioctls::SET_MODE | Ioctls::API).bits(),
            sys::UFFD_API_IOCTLS
        );
        assert_eq!(
            RegisterMode::all()
                .iter_names()
                .fold(RegisterMode::empty(), |a, (_, m)| a | m)
                .bits(),
            sys::UFFD_API_REGISTER_MODES
        );
        assert_eq!(
            Ioctls::from_ioctl_name("UFFDIO_CONTINUE"),
            Some(Ioctls::CONTINUE)
        );
        assert_eq!(
            Ioctls::from_ioctl_name("UFFDIO_RWPROTECT"),
            Some(Ioctls::RWPROTECT)
        );
        assert_eq!(Ioctls::from_ioctl_name("UFFDIO_FROB"), None);
    }
}
