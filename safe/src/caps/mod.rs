//! What the running kernel offers, as one value: [`Capabilities::probe`].
//!
//! Every item is decided by asking the kernel or by trying the operation on
//! a scratch object — never by kernel version, and never by a capability or
//! flag number alone where out-of-tree series gave numbers conflicting
//! meanings. Every item is a [`Status`]: [`Supported`](Status::Supported)
//! (with a value where there is one), [`Unsupported`](Status::Unsupported)
//! with the errno and a one-line reason, or
//! [`NotProbed`](Status::NotProbed) with why (no `/dev/kvm`, no huge pages,
//! no permission).
//!
//! | section | what | how |
//! |---|---|---|
//! | [`Host`] | kernel release, architecture, page size, huge pages, who is asking | `uname(2)`, `/proc/meminfo`, `/proc/thread-self/status` |
//! | [`UserfaultfdCaps`] | the system call (with and without `UFFD_USER_MODE_ONLY`), `/dev/userfaultfd`, `vm.unprivileged_userfaultfd`, the feature word | `userfaultfd(2)`, `USERFAULTFD_IOC_NEW`, `UFFDIO_API` on throw-away fds |
//! | [`MemoryRow`] | per memory type × [`REGISTER_MODES`]: the range's ioctl mask or the errno | `UFFDIO_REGISTER` of a scratch mapping |
//! | [`GmemUffd`] | whether `UFFDIO_COPY` really works on guest_memfd, and whether such a range is CONTINUE-only | `UFFDIO_COPY` of one page |
//! | [`KvmCaps`] | `/dev/kvm`, capabilities as integers, guest_memfd and its flags, the out-of-tree flavour, KVM userfault | `KVM_CHECK_EXTENSION`, scratch VMs, guest_memfds and memslots |
//!
//! The probe leaves nothing behind: every scratch descriptor, VM and
//! mapping is closed before it returns, and no sysctl is changed. It runs
//! without privilege, reporting what the calling user can use.
//!
//! # Capability names
//!
//! [`Capabilities::has`] answers for a stable set of names (the ones
//! `userfault-probe --require` takes); [`Capabilities::names`] lists them
//! with their meaning.
//!
//! | name | met when |
//! |---|---|
//! | `uffd` | a userfaultfd that also traps faults raised inside the kernel can be created (system call or device) |
//! | `uffd-syscall` | `userfaultfd(2)` without `UFFD_USER_MODE_ONLY` works |
//! | `uffd-user-mode-only` | `userfaultfd(2)` with `UFFD_USER_MODE_ONLY` works |
//! | `uffd-dev` | `/dev/userfaultfd` opens and `USERFAULTFD_IOC_NEW` gives a userfaultfd |
//! | `uffd-unprivileged` | `vm.unprivileged_userfaultfd` is 1 |
//! | `feature:<NAME>` | `UFFDIO_API` offers `UFFD_FEATURE_<NAME>` (`feature:MINOR_SHMEM`, `feature:MOVE`, …, one per [`Features`] name) |
//! | `<memory>-<mode>` | `UFFDIO_REGISTER` in that mode alone succeeds; memory `anon`, `anon-shared`, `shmem`, `hugetlb`, `gmem`; mode `missing`, `wp`, `minor` (`shmem-minor`, `anon-wp`, …) |
//! | `hugetlb` | a hugetlb memfd of the default huge page size can be mapped |
//! | `kvm` | `/dev/kvm` opens and `KVM_CREATE_VM` works |
//! | `kvm-cap:<NAME>` | `KVM_CHECK_EXTENSION(KVM_CAP_<NAME>)` is positive on a default-type VM (on `/dev/kvm` when no VM could be created), for the mainline capabilities in [`KVM_CAPABILITIES`] (`kvm-cap:USER_MEMORY2`, …) |
//! | `gmem` | `KVM_CREATE_GUEST_MEMFD` works (creating one; not yet using it) |
//! | `gmem-slot` | a guest_memfd is accepted as a memslot of a default-type VM |
//! | `gmem-mmap` | a `MMAP \| INIT_SHARED` guest_memfd can be created and mapped |
//! | `gmem-uffd` | a guest_memfd mapping registers `MISSING \| MINOR` |
//! | `gmem-uffd-copy` | `UFFDIO_COPY` of one page into such a range works |
//! | `gmem-continue-only` | such a range is CONTINUE-only |
//! | `gmem-write` | guest_memfd `write()` works with some candidate flag bit |
//! | `gmem-no-direct-map` | `GUEST_MEMFD_FLAG_NO_DIRECT_MAP` is accepted |
//! | `kvm-userfault` | `KVM_MEM_USERFAULT` is accepted on a scratch memslot |
//!
//! # Serialisation
//!
//! With the `serde` feature every type here implements
//! `serde::Serialize`; the shape ([`SCHEMA_VERSION`]) is documented in the
//! workspace README and is what `userfault-probe --json` prints. Bit sets
//! serialise as `{"bits": "0x…", "names": [...], "unknown": "0x…"}`, an
//! errno as `{"name": "EINVAL", "code": 22}`, and a [`Status`] as
//! `{"status": "supported", "value": …}`, `{"status": "unsupported",
//! "errno": …, "reason": "…"}` or `{"status": "not_probed", "why": "…"}`.
//!
//! ```no_run
//! use userfault::caps::Capabilities;
//!
//! # fn main() -> userfault::Result<()> {
//! let caps = Capabilities::probe()?;
//! if caps.has("shmem-minor") == Some(true) {
//!     println!("MINOR faults on shmem: {:?}", caps.userfaultfd.api);
//! }
//! for name in ["gmem-write", "kvm-userfault"] {
//!     println!("{name}: {}", caps.explain(name).unwrap_or_default());
//! }
//! # Ok(()) }
//! ```
//!
//! # References
//!
//! - [`userfaultfd(2)`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html),
//!   [`UFFDIO_API(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_API.2const.html),
//!   [`UFFDIO_REGISTER(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_REGISTER.2const.html)
//! - [Documentation/virt/kvm/api.rst](https://docs.kernel.org/virt/kvm/api.html):
//!   `KVM_CHECK_EXTENSION`, `KVM_CREATE_GUEST_MEMFD`, `KVM_SET_USER_MEMORY_REGION2`

mod names;
mod probe;
#[cfg(feature = "serde")]
mod serde_impls;

use crate::error::{Errno, Error, Result};
use crate::kvm::{CandidateBit, GmemNumbering};
use crate::uffd::{Features, Ioctls, KernelApi, RegisterMode};

/// The version of the serialised shape of [`Capabilities`]: raised when a
/// field is removed or changes meaning (adding fields keeps it).
pub const SCHEMA_VERSION: u32 = 1;

/// The register modes every memory type is probed with, in table order:
/// MISSING, WP, MINOR, MISSING|MINOR (how a CONTINUE-only range is
/// registered), MISSING|WP|MINOR and RWP (Linux 7.3; registered on a
/// userfaultfd that enabled `UFFD_FEATURE_RWP`).
pub const REGISTER_MODES: [RegisterMode; 6] = [
    RegisterMode::MISSING,
    RegisterMode::WP,
    RegisterMode::MINOR,
    RegisterMode::MISSING.union(RegisterMode::MINOR),
    RegisterMode::MISSING
        .union(RegisterMode::WP)
        .union(RegisterMode::MINOR),
    RegisterMode::RWP,
];

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status<T = ()> {
    /// It works (for this user, on this kernel); the value found, if any.
    Supported(T),
    /// The kernel refused it.
    Unsupported {
        /// The errno the kernel gave, if it was a system call that failed.
        errno: Option<Errno>,
        /// Why, in one line: which call failed and what it means.
        reason: String,
    },
    /// It was not tried, because something it needs is missing.
    NotProbed {
        /// What is missing (no `/dev/kvm`, no huge pages, …).
        why: String,
    },
}

impl<T> Status<T> {
    /// True for [`Status::Supported`].
    pub fn is_supported(&self) -> bool {
        matches!(self, Status::Supported(_))
    }

    /// The value of a [`Status::Supported`].
    pub fn supported(&self) -> Option<&T> {
        match self {
            Status::Supported(v) => Some(v),
            _ => None,
        }
    }

    /// The errno of a [`Status::Unsupported`].
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Status::Unsupported { errno, .. } => *errno,
            _ => None,
        }
    }

    /// The reason of a [`Status::Unsupported`] or the why of a
    /// [`Status::NotProbed`].
    pub fn reason(&self) -> Option<&str> {
        match self {
            Status::Supported(_) => None,
            Status::Unsupported { reason, .. } => Some(reason),
            Status::NotProbed { why } => Some(why),
        }
    }

    /// Applies `f` to the value of a [`Status::Supported`].
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Status<U> {
        match self {
            Status::Supported(v) => Status::Supported(f(v)),
            Status::Unsupported { errno, reason } => Status::Unsupported { errno, reason },
            Status::NotProbed { why } => Status::NotProbed { why },
        }
    }

    /// `Status<&T>` of a `&Status<T>`.
    pub fn as_ref(&self) -> Status<&T> {
        match self {
            Status::Supported(v) => Status::Supported(v),
            Status::Unsupported { errno, reason } => Status::Unsupported {
                errno: *errno,
                reason: reason.clone(),
            },
            Status::NotProbed { why } => Status::NotProbed { why: why.clone() },
        }
    }

    /// The same outcome without the value.
    pub fn unit(&self) -> Status {
        self.as_ref().map(|_| ())
    }

    /// A `NotProbed` status.
    pub(crate) fn not_probed(why: impl Into<String>) -> Status<T> {
        Status::NotProbed { why: why.into() }
    }

    /// An `Unsupported` status.
    pub(crate) fn unsupported(errno: Option<Errno>, reason: impl Into<String>) -> Status<T> {
        Status::Unsupported {
            errno,
            reason: reason.into(),
        }
    }

    /// `Supported` for `Ok`; `Unsupported` with the error's errno and
    /// reason for `Err`.
    pub(crate) fn from_result(r: Result<T>) -> Status<T> {
        match r {
            Ok(v) => Status::Supported(v),
            Err(e) => Status::unsupported(e.errno(), reason_of(&e)),
        }
    }
}

/// The one-line reason of an error: the operation and what its errno
/// means here, without repeating the errno (kept beside it).
pub(crate) fn reason_of(e: &Error) -> String {
    match e {
        Error::Os {
            op, hint: Some(h), ..
        } => format!("{op}: {h}"),
        Error::Os { op, hint: None, .. } => format!("{op} failed"),
        Error::Unsupported { what, reason, .. } => format!("{what}: {reason}"),
        Error::InvalidArgument { op, reason } => format!("{op}: {reason}"),
        other => other.to_string(),
    }
}

/// Everything [`Capabilities::probe`] found out about the running kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Capabilities {
    /// The machine and the user asking.
    pub host: Host,
    /// Creating a userfaultfd, and its feature word.
    pub userfaultfd: UserfaultfdCaps,
    /// `UFFDIO_REGISTER` per memory type and mode, in [`MemoryKind::ALL`]
    /// order.
    pub memory: Vec<MemoryRow>,
    /// userfaultfd on guest_memfd beyond the mask: does `UFFDIO_COPY` work,
    /// and is such a range CONTINUE-only.
    pub guest_memfd_uffd: GmemUffd,
    /// KVM, guest_memfd and the out-of-tree series.
    pub kvm: KvmCaps,
}

/// The machine and the user the probe ran as.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Host {
    /// `uname -r`.
    pub kernel_release: String,
    /// `uname -v`: the kernel's build string.
    pub kernel_version: String,
    /// `uname -m` (`x86_64`, `aarch64`, …).
    pub architecture: String,
    /// The base page size in bytes.
    pub page_size: usize,
    /// The default huge page pool, from `/proc/meminfo`.
    pub huge_pages: Status<HugePages>,
    /// The real user id.
    pub uid: u32,
    /// The effective user id.
    pub euid: u32,
    /// Whether the probing thread has `CAP_SYS_PTRACE` in its effective
    /// set (which lifts the user-mode-only restriction of `userfaultfd(2)`);
    /// `None` when `/proc/thread-self/status` could not be read.
    pub cap_sys_ptrace: Option<bool>,
}

/// The default huge page pool (`/proc/meminfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct HugePages {
    /// Bytes per huge page (`Hugepagesize`).
    pub page_size: u64,
    /// Pages in the pool (`HugePages_Total`, set by `vm.nr_hugepages`).
    pub total: u64,
    /// Pages not in use (`HugePages_Free`).
    pub free: u64,
    /// Free pages already promised to mappings (`HugePages_Rsvd`).
    pub reserved: u64,
    /// Pages beyond the pool (`HugePages_Surp`).
    pub surplus: u64,
}

impl HugePages {
    /// Pages a new mapping can still reserve: free minus reserved.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

/// Which way a userfaultfd was created for the feature query and the
/// registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum UffdSource {
    /// `userfaultfd(2)` without `UFFD_USER_MODE_ONLY`.
    Syscall,
    /// `/dev/userfaultfd` and `USERFAULTFD_IOC_NEW`.
    Device,
    /// `userfaultfd(2)` with `UFFD_USER_MODE_ONLY`.
    SyscallUserModeOnly,
}

/// Creating a userfaultfd, and what `UFFDIO_API` offers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct UserfaultfdCaps {
    /// `userfaultfd(O_CLOEXEC)` and `UFFDIO_API`: a userfaultfd that also
    /// traps faults raised inside the kernel (by KVM, or by system calls).
    pub syscall: Status,
    /// `userfaultfd(O_CLOEXEC | UFFD_USER_MODE_ONLY)` and `UFFDIO_API`.
    pub syscall_user_mode_only: Status,
    /// True when the system call works only with `UFFD_USER_MODE_ONLY`
    /// (without it: `EPERM`).
    pub user_mode_only_required: bool,
    /// `/dev/userfaultfd`: the node, and whether this user can use it.
    pub device: DeviceNode,
    /// `vm.unprivileged_userfaultfd` (read, never written).
    pub unprivileged_userfaultfd: Status<u32>,
    /// `UFFDIO_API` with no features on a throw-away userfaultfd: the
    /// kernel's whole feature word and the fd's ioctls.
    pub api: Status<KernelApi>,
    /// How the userfaultfd of [`api`](Self::api) and of the registrations
    /// was created; `None` when none could be.
    pub probed_with: Option<UffdSource>,
}

/// A device node, and whether the calling user can use it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct DeviceNode {
    /// Where it was looked for.
    pub path: String,
    /// `stat(2)` of the node.
    pub node: Status<NodeInfo>,
    /// Opening it and using it (for `/dev/userfaultfd`: `USERFAULTFD_IOC_NEW`
    /// and `UFFDIO_API`; for `/dev/kvm`: `open` alone).
    pub usable: Status,
}

/// `stat(2)` of a device node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct NodeInfo {
    /// The permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// True for a character device.
    pub char_device: bool,
    /// The owner's user id.
    pub uid: u32,
    /// The owner's user name, from `/etc/passwd`.
    pub user: Option<String>,
    /// The group id.
    pub gid: u32,
    /// The group name, from `/etc/group`.
    pub group: Option<String>,
    /// The device's major number.
    pub major: u32,
    /// The device's minor number.
    pub minor: u32,
}

/// A memory type the registrations are probed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum MemoryKind {
    /// `mmap(MAP_PRIVATE | MAP_ANONYMOUS)`.
    AnonPrivate,
    /// `mmap(MAP_SHARED | MAP_ANONYMOUS)` (shmem).
    AnonShared,
    /// A shmem `memfd_create(2)` file mapped `MAP_SHARED`.
    MemfdShmem,
    /// A hugetlbfs `memfd_create(MFD_HUGETLB)` file of the default huge
    /// page size, mapped `MAP_SHARED`.
    HugetlbMemfd,
    /// A `GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED` guest_memfd
    /// of a scratch VM, mapped `MAP_SHARED`.
    GuestMemfd,
}

impl MemoryKind {
    /// Every kind, in table order.
    pub const ALL: [MemoryKind; 5] = [
        MemoryKind::AnonPrivate,
        MemoryKind::AnonShared,
        MemoryKind::MemfdShmem,
        MemoryKind::HugetlbMemfd,
        MemoryKind::GuestMemfd,
    ];

    /// A short label for tables (`"anon private"`).
    pub fn label(self) -> &'static str {
        match self {
            MemoryKind::AnonPrivate => "anon private",
            MemoryKind::AnonShared => "anon shared",
            MemoryKind::MemfdShmem => "memfd shmem",
            MemoryKind::HugetlbMemfd => "hugetlb memfd",
            MemoryKind::GuestMemfd => "guest_memfd",
        }
    }

    /// The prefix of its capability names (`"anon"` in `anon-wp`).
    pub fn capability_prefix(self) -> &'static str {
        match self {
            MemoryKind::AnonPrivate => "anon",
            MemoryKind::AnonShared => "anon-shared",
            MemoryKind::MemfdShmem => "shmem",
            MemoryKind::HugetlbMemfd => "hugetlb",
            MemoryKind::GuestMemfd => "gmem",
        }
    }
}

/// `UFFDIO_REGISTER` of one memory type in each of [`REGISTER_MODES`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct MemoryRow {
    /// The memory type.
    pub kind: MemoryKind,
    /// Creating and mapping the scratch memory (one page, or one huge
    /// page): when not supported, every mode is
    /// [`NotProbed`](Status::NotProbed).
    pub setup: Status,
    /// The registrations, in [`REGISTER_MODES`] order.
    pub modes: Vec<ModeMask>,
}

impl MemoryRow {
    /// The result for `mode`, if it was one of [`REGISTER_MODES`].
    pub fn mask(&self, mode: RegisterMode) -> Option<&Status<Ioctls>> {
        self.modes
            .iter()
            .find(|m| m.mode == mode)
            .map(|m| &m.ioctls)
    }
}

/// `UFFDIO_REGISTER` in one mode: the range's ioctl mask, or the errno.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ModeMask {
    /// The register mode.
    #[cfg_attr(feature = "serde", serde(serialize_with = "serde_impls::mode_label"))]
    pub mode: RegisterMode,
    /// The `ioctls` mask the kernel returned (an upper bound: an ioctl it
    /// offers can still fail with `EINVAL`), or why registration failed.
    pub ioctls: Status<Ioctls>,
}

/// How a MISSING fault on a range registered `MISSING | MINOR` can be
/// resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum RangeClass {
    /// `UFFDIO_COPY` is offered and works.
    CopyCapable,
    /// `UFFDIO_CONTINUE` is offered and `UFFDIO_COPY` is not offered or
    /// refused: fill the backing file with `write()`, then CONTINUE.
    ContinueOnly,
    /// Neither: no resolution of MISSING faults is offered.
    Neither,
}

/// userfaultfd on a guest_memfd mapping beyond the mask: the mask is an
/// upper bound, so `UFFDIO_COPY` is tried on one page.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct GmemUffd {
    /// `UFFDIO_COPY` of one page into a guest_memfd range registered
    /// `MISSING | MINOR`.
    pub copy: Status,
    /// The class of such a range: CONTINUE-only when CONTINUE is offered
    /// and COPY is not offered or refused.
    pub class: Status<RangeClass>,
}

/// A mainline KVM capability, as `KVM_CHECK_EXTENSION` returned it on
/// `/dev/kvm` (the system-wide value) and on a scratch VM of the default
/// type (what that VM can use: they differ, for example
/// `KVM_CAP_GUEST_MEMFD` is 1 system-wide and 0 for Linux 6.12's default
/// VM).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct KvmCap {
    /// The capability number.
    pub number: u32,
    /// Its mainline name (`"KVM_CAP_GUEST_MEMFD"`).
    pub name: &'static str,
    /// The integer returned on `/dev/kvm` (0: absent; some capabilities
    /// return a count or a mask).
    pub value: Status<i32>,
    /// The integer returned on a scratch VM of the default type (type 0).
    pub vm_value: Status<i32>,
}

/// A capability number that mainline and out-of-tree series gave different
/// meanings. Reported as the raw integer under its mainline name, and never
/// read as KVM userfault support (which [`KvmCaps::userfault`] decides by
/// trying).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct CollidingCap {
    /// The capability number.
    pub number: u32,
    /// Its name in mainline.
    pub mainline_name: &'static str,
    /// What out-of-tree series used the number for.
    pub out_of_tree: &'static str,
    /// The integer `KVM_CHECK_EXTENSION` returned on `/dev/kvm`.
    pub value: Status<i32>,
    /// The integer it returned on a scratch VM of the default type.
    pub vm_value: Status<i32>,
}

/// The mainline capabilities [`KvmCaps::capabilities`] reports, in order,
/// with their names.
pub const KVM_CAPABILITIES: [(u32, &str); 7] = [
    (gmem_sys::KVM_CAP_USER_MEMORY2, "KVM_CAP_USER_MEMORY2"),
    (
        gmem_sys::KVM_CAP_MEMORY_FAULT_INFO,
        "KVM_CAP_MEMORY_FAULT_INFO",
    ),
    (
        gmem_sys::KVM_CAP_MEMORY_ATTRIBUTES,
        "KVM_CAP_MEMORY_ATTRIBUTES",
    ),
    (gmem_sys::KVM_CAP_GUEST_MEMFD, "KVM_CAP_GUEST_MEMFD"),
    (gmem_sys::KVM_CAP_VM_TYPES, "KVM_CAP_VM_TYPES"),
    (
        gmem_sys::KVM_CAP_PRE_FAULT_MEMORY,
        "KVM_CAP_PRE_FAULT_MEMORY",
    ),
    (
        gmem_sys::KVM_CAP_GUEST_MEMFD_FLAGS,
        "KVM_CAP_GUEST_MEMFD_FLAGS",
    ),
];

/// The colliding capability numbers [`KvmCaps::colliding`] reports:
/// (number, mainline name, out-of-tree use).
pub const COLLIDING_CAPABILITIES: [(u32, &str, &str); 4] = [
    (
        // Not in gmem-sys: mainline's name for 239 (Linux 6.15, arm64).
        239,
        "KVM_CAP_ARM_WRITABLE_IMP_ID_REGS",
        "KVM_CAP_USERFAULT in the KVM userfault v1/v2 postings",
    ),
    (
        gmem_sys::KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED,
        "KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED",
        "KVM_CAP_USERFAULT in the KVM userfault v3 posting",
    ),
    (
        gmem_sys::KVM_CAP_ARM_SEA_TO_USER,
        "KVM_CAP_ARM_SEA_TO_USER",
        "KVM_CAP_USERFAULT in Firecracker's 6.18 stack",
    ),
    (
        gmem_sys::KVM_CAP_S390_USER_OPEREXEC,
        "KVM_CAP_S390_USER_OPEREXEC",
        "KVM_CAP_ASYNC_PF_USERFAULT in Firecracker's async-PF stack",
    ),
];

/// The out-of-tree guest_memfd flags of the kernel, established by trying
/// bits 2 and 3 on scratch guest_memfds ([`GmemFlavour`](crate::kvm::GmemFlavour)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Flavour {
    /// The numbering the answers identify.
    pub numbering: GmemNumbering,
    /// What `KVM_CREATE_GUEST_MEMFD` and `pwrite` did with bit 2.
    pub bit2: CandidateBit,
    /// What they did with bit 3.
    pub bit3: CandidateBit,
    /// The flags the scratch files were created with besides the candidate.
    pub base_flags: u64,
}

/// KVM, guest_memfd and the out-of-tree series.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct KvmCaps {
    /// `/dev/kvm`: the node, and whether this user can open it.
    pub device: DeviceNode,
    /// `KVM_GET_API_VERSION` (12).
    pub api_version: Status<i32>,
    /// `KVM_CHECK_EXTENSION` on `/dev/kvm` and on a scratch VM for
    /// [`KVM_CAPABILITIES`].
    pub capabilities: Vec<KvmCap>,
    /// `KVM_CHECK_EXTENSION` on `/dev/kvm` and on a scratch VM for
    /// [`COLLIDING_CAPABILITIES`].
    pub colliding: Vec<CollidingCap>,
    /// `KVM_CREATE_VM` of the default type (0).
    pub vm: Status,
    /// `KVM_CREATE_GUEST_MEMFD` of one page without flags.
    pub guest_memfd: Status,
    /// `KVM_CHECK_EXTENSION(KVM_CAP_GUEST_MEMFD_FLAGS)` on the scratch VM:
    /// the flags it advertises (a hint; bits 2 and 3 are ambiguous).
    pub guest_memfd_flags: Status<u64>,
    /// A guest_memfd of the default-type VM as a memslot of it
    /// (`KVM_SET_USER_MEMORY_REGION2` with `KVM_MEM_GUEST_MEMFD`): what a
    /// VMM needs before it can give a guest guest_memfd memory. Linux 6.12
    /// creates guest_memfds for the default VM but refuses them as slots
    /// (`EINVAL`).
    pub guest_memfd_slot: Status,
    /// `KVM_CREATE_GUEST_MEMFD` with `MMAP | INIT_SHARED` and `mmap` of it.
    pub guest_memfd_mmap: Status,
    /// Which bit means what, established by trying.
    pub flavour: Status<Flavour>,
    /// guest_memfd `write()`: the flag bit that makes `pwrite` work.
    pub guest_memfd_write: Status<u64>,
    /// `GUEST_MEMFD_FLAG_NO_DIRECT_MAP`: its bit, where accepted.
    pub no_direct_map: Status<u64>,
    /// `KVM_MEM_USERFAULT` on a one-page scratch memslot.
    pub userfault: Status,
}

impl Capabilities {
    /// Probes the running kernel: every item of [`Capabilities`], each on
    /// scratch objects that are gone when this returns.
    ///
    /// Kernel refusals are values ([`Status::Unsupported`],
    /// [`Status::NotProbed`]); nothing here panics on one.
    ///
    /// # Errors
    ///
    /// Only when probing itself cannot run: `mmap` of one anonymous page
    /// fails.
    ///
    /// # References
    ///
    /// - [`userfaultfd(2)`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html),
    ///   [`UFFDIO_REGISTER(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_REGISTER.2const.html)
    /// - [`KVM_CHECK_EXTENSION`](https://docs.kernel.org/virt/kvm/api.html#kvm-check-extension),
    ///   [`KVM_CREATE_GUEST_MEMFD`](https://docs.kernel.org/virt/kvm/api.html#kvm-create-guest-memfd)
    pub fn probe() -> Result<Capabilities> {
        probe::probe()
    }

    /// The row of memory type `kind`.
    pub fn memory(&self, kind: MemoryKind) -> Option<&MemoryRow> {
        self.memory.iter().find(|r| r.kind == kind)
    }

    /// The kernel's feature word, when a userfaultfd could be created.
    pub fn features(&self) -> Option<Features> {
        self.userfaultfd.api.supported().map(KernelApi::features)
    }

    /// Whether the capability `name` (see the [module](self) docs and
    /// [`names`](Self::names)) is met; `None` for a name this crate does not
    /// know.
    pub fn has(&self, name: &str) -> Option<bool> {
        self.lookup(name).map(|(met, _)| met)
    }

    /// Why the capability `name` is met or not, in one line; `None` for a
    /// name this crate does not know.
    pub fn explain(&self, name: &str) -> Option<String> {
        self.lookup(name).map(|(_, why)| why)
    }

    /// Every capability name [`has`](Self::has) knows, with its meaning.
    pub fn names() -> Vec<(String, String)> {
        names::all()
    }
}
