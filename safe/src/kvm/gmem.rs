//! guest_memfd: creation flags, the flavour of the out-of-tree flags, and
//! the file itself.

use std::borrow::Cow;
use std::fmt;
use std::ops::{BitOr, BitOrAssign};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use gmem_sys::firecracker_6_18 as fc;
use gmem_sys::upstream::gmem_write_v7 as write_v7;

use crate::backing::{Backing, check_span, pwrite_all};
use crate::error::rustix_errno;
use crate::error::{Errno, Error, Result};
use crate::mem::{Mapping, Sharing};
use crate::sys;

/// Flags of `KVM_CREATE_GUEST_MEMFD`.
///
/// The mainline flags are constants. The out-of-tree ones (`WRITE`,
/// `NO_DIRECT_MAP`) have different bit numbers in different patch stacks —
/// bit 2 is `WRITE` in one and `NO_DIRECT_MAP` in another — so they are
/// only handed out by a [`GmemFlavour`] that established, by trying, what
/// the running kernel means by each bit. A value remembers which of its
/// bits mean `WRITE` and `NO_DIRECT_MAP`, and `Debug` shows the names.
///
/// Equality and hashing look at the bits only.
///
/// ```
/// use userfault::kvm::GmemFlags;
///
/// let f = GmemFlags::MMAP | GmemFlags::INIT_SHARED;
/// assert_eq!(f.bits(), 0x3);
/// assert_eq!(format!("{f:?}"), "GmemFlags(MMAP | INIT_SHARED)");
/// assert_eq!(format!("{:?}", GmemFlags::from_raw(0x11)), "GmemFlags(MMAP | 0x10)");
/// ```
#[derive(Clone, Copy, Default)]
pub struct GmemFlags {
    bits: u64,
    /// Bits known (from a [`GmemFlavour`]) to mean `WRITE`.
    write: u64,
    /// Bits known (from a [`GmemFlavour`]) to mean `NO_DIRECT_MAP`.
    no_direct_map: u64,
}

impl GmemFlags {
    /// `GUEST_MEMFD_FLAG_MMAP`: the file may be mapped by user space
    /// (Linux 6.18).
    pub const MMAP: GmemFlags = GmemFlags::named(gmem_sys::GUEST_MEMFD_FLAG_MMAP);
    /// `GUEST_MEMFD_FLAG_INIT_SHARED`: memory starts out shared, so the user
    /// mapping can touch it (Linux 6.18; only for VM types without private
    /// memory).
    pub const INIT_SHARED: GmemFlags = GmemFlags::named(gmem_sys::GUEST_MEMFD_FLAG_INIT_SHARED);

    const fn named(bits: u64) -> GmemFlags {
        GmemFlags {
            bits,
            write: 0,
            no_direct_map: 0,
        }
    }

    /// No flags.
    pub const fn empty() -> GmemFlags {
        GmemFlags::named(0)
    }

    /// Flags from raw bits, for a caller that knows its kernel. Bits other
    /// than `MMAP` and `INIT_SHARED` carry no name: what they mean depends
    /// on the kernel's patch stack. [`GuestMemfd::write_at`] still works
    /// if one of them is the kernel's `WRITE`, because it tries.
    pub const fn from_raw(bits: u64) -> GmemFlags {
        GmemFlags::named(bits)
    }

    /// The raw bits, as `kvm_create_guest_memfd.flags`.
    pub const fn bits(self) -> u64 {
        self.bits
    }

    /// True when every bit of `other` is set here.
    pub const fn contains(self, other: GmemFlags) -> bool {
        self.bits & other.bits == other.bits
    }

    /// True when a bit established to mean `WRITE` is set.
    pub const fn has_write(self) -> bool {
        self.bits & self.write != 0
    }

    /// True when a bit established to mean `NO_DIRECT_MAP` is set.
    pub const fn has_no_direct_map(self) -> bool {
        self.bits & self.no_direct_map != 0
    }
}

impl PartialEq for GmemFlags {
    fn eq(&self, other: &Self) -> bool {
        self.bits == other.bits
    }
}

impl Eq for GmemFlags {}

impl std::hash::Hash for GmemFlags {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bits.hash(state);
    }
}

impl BitOr for GmemFlags {
    type Output = GmemFlags;
    fn bitor(self, rhs: GmemFlags) -> GmemFlags {
        GmemFlags {
            bits: self.bits | rhs.bits,
            write: self.write | rhs.write,
            no_direct_map: self.no_direct_map | rhs.no_direct_map,
        }
    }
}

impl BitOrAssign for GmemFlags {
    fn bitor_assign(&mut self, rhs: GmemFlags) {
        *self = *self | rhs;
    }
}

impl GmemFlags {
    /// The names of the set flags, `|`-joined (`"MMAP|INIT_SHARED"`), bits
    /// without a known name as one number, `"no flags"` when empty.
    fn names(&self) -> String {
        let mut names = Vec::new();
        let mut rest = self.bits;
        for (bit, name) in [
            (gmem_sys::GUEST_MEMFD_FLAG_MMAP, "MMAP"),
            (gmem_sys::GUEST_MEMFD_FLAG_INIT_SHARED, "INIT_SHARED"),
            (self.write, "WRITE"),
            (self.no_direct_map, "NO_DIRECT_MAP"),
        ] {
            if bit != 0 && rest & bit == bit {
                names.push(name.to_string());
                rest &= !bit;
            }
        }
        if rest != 0 {
            names.push(format!("{rest:#x}"));
        }
        if names.is_empty() {
            return "no flags".to_string();
        }
        names.join("|")
    }
}

/// Why `KVM_CREATE_GUEST_MEMFD` refused `flags`, of which the VM does not
/// advertise `extra`.
fn refused_flags_hint(flags: GmemFlags, extra: u64, advertised: u64) -> String {
    let mainline = gmem_sys::GUEST_MEMFD_FLAG_MMAP | gmem_sys::GUEST_MEMFD_FLAG_INIT_SHARED;
    let refused = if extra == flags.bits() {
        flags.to_string()
    } else {
        format!("{} of {flags}", GmemFlags::from_raw(extra))
    };
    let mut text = format!(
        "this VM does not take the guest_memfd flags {refused}: it advertises {} in \
         KVM_CAP_GUEST_MEMFD_FLAGS",
        if advertised == 0 {
            "none".to_string()
        } else {
            GmemFlags::from_raw(advertised).to_string()
        }
    );
    if extra & mainline != 0 {
        text.push_str("; MMAP and INIT_SHARED need Linux 6.18");
    } else {
        text.push_str("; the other bits are those of out-of-tree series (see GmemFlavour::probe)");
    }
    text
}

/// `MMAP|INIT_SHARED`: the flags as an operator writes them.
impl fmt::Display for GmemFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names())
    }
}

impl fmt::Debug for GmemFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bits == 0 {
            return f.write_str("GmemFlags(empty)");
        }
        write!(f, "GmemFlags({})", self.names().replace('|', " | "))
    }
}

/// What the kernel did with one candidate out-of-tree flag bit when
/// [`GmemFlavour::probe`] tried it on a scratch guest_memfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateBit {
    /// `KVM_CREATE_GUEST_MEMFD` refused the bit with this errno.
    Refused(Errno),
    /// The bit was accepted, but `pwrite` of one page failed with this
    /// errno: the bit is not `WRITE` on this kernel.
    NotWrite(Errno),
    /// The bit was accepted and `pwrite` of one page succeeded: the bit is
    /// `WRITE` on this kernel.
    Write,
}

impl CandidateBit {
    fn describe(self) -> String {
        match self {
            CandidateBit::Refused(e) => format!("refused by KVM_CREATE_GUEST_MEMFD with {e}"),
            CandidateBit::NotWrite(e) => format!("accepted, but pwrite failed with {e}"),
            CandidateBit::Write => "accepted, and pwrite works".to_string(),
        }
    }

    fn errno(self) -> Option<Errno> {
        match self {
            CandidateBit::Refused(e) | CandidateBit::NotWrite(e) => Some(e),
            CandidateBit::Write => None,
        }
    }
}

/// Which numbering of the out-of-tree guest_memfd flags the running kernel
/// uses, as established by [`GmemFlavour::probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GmemNumbering {
    /// Neither bit 2 nor bit 3 is accepted: only the mainline flags.
    Mainline,
    /// Bit 2 is `WRITE`: the upstream posting "KVM: guest_memfd: use write
    /// for population" (v7, [`gmem_sys::upstream::gmem_write_v7`]).
    UpstreamWrite,
    /// Bit 3 is `WRITE` and bit 2, if accepted, `NO_DIRECT_MAP`:
    /// Firecracker's 6.18 stack ([`gmem_sys::firecracker_6_18`]).
    Firecracker,
    /// Bit 2 is accepted and is not `WRITE`, bit 3 is refused: direct-map
    /// removal ([`gmem_sys::upstream::direct_map_removal_v12`]) without the
    /// `write()` series.
    DirectMapRemoval,
    /// The kernel's answers match no known patch stack; no out-of-tree flag
    /// is handed out.
    Unknown,
}

/// The out-of-tree guest_memfd flags of the running kernel, established by
/// trying them: for each candidate bit (2 and 3) a scratch guest_memfd is
/// created with it, and one page is written with `pwrite`.
///
/// Only a value of this type hands out `WRITE` and `NO_DIRECT_MAP`
/// ([`write`](GmemFlavour::write), [`no_direct_map`](GmemFlavour::no_direct_map)).
/// `NO_DIRECT_MAP` cannot be observed from user space; it is inferred from
/// bit 2 being accepted without being `WRITE`, which is its only known
/// meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GmemFlavour {
    advertised: Option<u64>,
    base: GmemFlags,
    bit2: CandidateBit,
    bit3: CandidateBit,
}

impl GmemFlavour {
    /// Probes the guest_memfd flags of `vm`: `KVM_CHECK_EXTENSION(
    /// KVM_CAP_GUEST_MEMFD_FLAGS)` (kept as a hint), then for bits 2 and 3
    /// `KVM_CREATE_GUEST_MEMFD` of a one-page scratch file with `MMAP |
    /// INIT_SHARED` (where the VM takes them) plus the bit, and `pwrite` of
    /// one page into it. The scratch files are closed before returning.
    ///
    /// # Errors
    ///
    /// The errno of `KVM_CREATE_GUEST_MEMFD` when even a scratch
    /// guest_memfd without a candidate bit cannot be created (for example
    /// `ENOTTY` on a kernel without guest_memfd).
    ///
    /// # References
    ///
    /// [`KVM_CREATE_GUEST_MEMFD`](https://docs.kernel.org/virt/kvm/api.html#kvm-create-guest-memfd)
    pub fn probe(vm: impl AsFd) -> Result<GmemFlavour> {
        let vm = vm.as_fd();
        let advertised = sys::kvm::check_extension(vm, gmem_sys::KVM_CAP_GUEST_MEMFD_FLAGS)
            .ok()
            .filter(|&v| v > 0)
            .map(|v| v as u64);
        let page = crate::sys::page_size() as u64;
        // The base flags: those of MMAP | INIT_SHARED the VM takes, found by
        // creating a scratch file with them.
        let mut base = GmemFlags::empty();
        for candidate in [GmemFlags::MMAP | GmemFlags::INIT_SHARED, GmemFlags::MMAP] {
            if GuestMemfd::create(vm, page, candidate).is_ok() {
                base = candidate;
                break;
            }
        }
        if base.bits() == 0 {
            GuestMemfd::create(vm, page, base)?;
        }
        let try_bit = |bit: u64| -> CandidateBit {
            let flags = base | GmemFlags::from_raw(bit);
            match GuestMemfd::create(vm, page, flags) {
                Err(e) => CandidateBit::Refused(e.errno().unwrap_or(Errno::EINVAL)),
                Ok(gmem) => {
                    let zero = vec![0u8; page as usize];
                    match pwrite_all(gmem.as_fd(), 0, &zero) {
                        Ok(()) => CandidateBit::Write,
                        Err(e) => CandidateBit::NotWrite(e),
                    }
                }
            }
        };
        Ok(GmemFlavour {
            advertised,
            base,
            bit2: try_bit(1 << 2),
            bit3: try_bit(1 << 3),
        })
    }

    /// `KVM_CHECK_EXTENSION(KVM_CAP_GUEST_MEMFD_FLAGS)` on the VM, if the
    /// capability is present: the flags the kernel advertises. A hint only;
    /// the probe decided by trying.
    pub fn advertised(&self) -> Option<u64> {
        self.advertised
    }

    /// The mainline flags the scratch files were created with (`MMAP |
    /// INIT_SHARED`, or what of it the VM accepted).
    pub fn base(&self) -> GmemFlags {
        self.base
    }

    /// What the kernel did with bit 2.
    pub fn bit2(&self) -> CandidateBit {
        self.bit2
    }

    /// What the kernel did with bit 3.
    pub fn bit3(&self) -> CandidateBit {
        self.bit3
    }

    /// The numbering these answers identify.
    pub fn numbering(&self) -> GmemNumbering {
        use CandidateBit::*;
        match (self.bit2, self.bit3) {
            (Refused(_), Refused(_)) => GmemNumbering::Mainline,
            (Write, Refused(_)) => GmemNumbering::UpstreamWrite,
            (Refused(_) | NotWrite(_), Write) => GmemNumbering::Firecracker,
            (NotWrite(_), Refused(_)) => GmemNumbering::DirectMapRemoval,
            _ => GmemNumbering::Unknown,
        }
    }

    fn summary(&self) -> String {
        format!(
            "bit 2 (WRITE in the upstream posting, NO_DIRECT_MAP in the direct-map-removal \
             series) was {}; bit 3 (WRITE in Firecracker's 6.18 stack) was {}",
            self.bit2.describe(),
            self.bit3.describe()
        )
    }

    /// The flag that makes a guest_memfd accept `write()`/`pwrite()`
    /// (`GUEST_MEMFD_FLAG_WRITE`: bit 2 upstream, bit 3 in Firecracker's
    /// stack), as this kernel numbers it.
    ///
    /// # Errors
    ///
    /// `Unsupported`, with the errno the kernel gave for bit 2, when no
    /// candidate bit made `pwrite` work.
    pub fn write(&self) -> Result<GmemFlags> {
        let bit = match self.numbering() {
            GmemNumbering::UpstreamWrite => write_v7::GUEST_MEMFD_FLAG_WRITE,
            GmemNumbering::Firecracker => fc::GUEST_MEMFD_FLAG_WRITE,
            other => {
                let why = match other {
                    GmemNumbering::Unknown => "the answers match no known patch stack",
                    _ => "this kernel lacks the guest_memfd write() series",
                };
                return Err(Error::unsupported(
                    "guest_memfd write() (GUEST_MEMFD_FLAG_WRITE)",
                    self.bit2.errno(),
                    format!("{}: {why}", self.summary()),
                ));
            }
        };
        Ok(GmemFlags {
            bits: bit,
            write: bit,
            no_direct_map: 0,
        })
    }

    /// The flag that removes a guest_memfd's memory from the kernel's
    /// direct map (`GUEST_MEMFD_FLAG_NO_DIRECT_MAP`, bit 2 where it exists),
    /// when bit 2 was accepted and is not `WRITE`.
    ///
    /// # Errors
    ///
    /// `Unsupported`, with the errno the kernel gave for bit 2, otherwise.
    pub fn no_direct_map(&self) -> Result<GmemFlags> {
        match (self.numbering(), self.bit2) {
            (
                GmemNumbering::Firecracker | GmemNumbering::DirectMapRemoval,
                CandidateBit::NotWrite(_),
            ) => {
                let bit = fc::GUEST_MEMFD_FLAG_NO_DIRECT_MAP;
                Ok(GmemFlags {
                    bits: bit,
                    write: 0,
                    no_direct_map: bit,
                })
            }
            _ => Err(Error::unsupported(
                "guest_memfd direct-map removal (GUEST_MEMFD_FLAG_NO_DIRECT_MAP)",
                self.bit2.errno(),
                format!(
                    "{}: this kernel lacks the direct-map-removal series",
                    self.summary()
                ),
            )),
        }
    }
}

/// A guest_memfd: guest memory as a file of its own (`KVM_CREATE_GUEST_MEMFD`).
///
/// It backs guest_memfd memslots ([`Memslot::guest_memfd`](super::Memslot::guest_memfd)),
/// can be mapped shared when created with [`GmemFlags::MMAP`], and — where
/// the kernel has the posted `write()` series and the file was created with
/// the flag from [`GmemFlavour::write`] — filled with `pwrite`, which makes
/// it a [`Backing`] for CONTINUE-only ranges and KVM userfault slots.
#[derive(Debug)]
pub struct GuestMemfd {
    fd: OwnedFd,
    size: u64,
    flags: GmemFlags,
}

impl GuestMemfd {
    /// `ioctl(vm, KVM_CREATE_GUEST_MEMFD, {size, flags})`: a new
    /// guest_memfd of `size` bytes for the VM `vm` (a [`Vm`](super::Vm) or
    /// any borrowed VM file descriptor). The file is close-on-exec: KVM
    /// creates it without `O_CLOEXEC` (the ioctl takes no file flags), so
    /// `create` sets `FD_CLOEXEC` right after the ioctl. A thread that
    /// forks and execs between the two calls can still pass it on.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `vm` is not a KVM VM (checked with `readlink`
    /// of `/proc/thread-self/fd/<fd>`, which must name `anon_inode:kvm-vm`:
    /// only a VM's answer to the ioctl can be trusted to be a new
    /// descriptor; `Unsupported` when `/proc` is not mounted, see
    /// [`Vm::create_guest_memfd`](super::Vm::create_guest_memfd)) or when
    /// `size` is not a non-zero multiple of the page size. `EINVAL` from
    /// the kernel, with a hint naming the flags this VM
    /// advertises when `flags` has others; `ENOTTY` on a kernel without
    /// guest_memfd (before Linux 6.8). The `fcntl` errno if setting
    /// `FD_CLOEXEC` fails (the new file is closed).
    ///
    /// # References
    ///
    /// [`KVM_CREATE_GUEST_MEMFD`](https://docs.kernel.org/virt/kvm/api.html#kvm-create-guest-memfd)
    #[doc(alias = "KVM_CREATE_GUEST_MEMFD")]
    pub fn create(vm: impl AsFd, size: u64, flags: GmemFlags) -> Result<GuestMemfd> {
        let vm = vm.as_fd();
        sys::kvm::check_vm("KVM_CREATE_GUEST_MEMFD", vm)?;
        // SAFETY: `vm` was just checked to be a VM.
        unsafe { GuestMemfd::create_on_vm(vm, size, flags) }
    }

    /// [`create`](GuestMemfd::create) on a descriptor known to be a VM.
    ///
    /// # Safety
    ///
    /// `vm` must be a KVM VM file descriptor.
    pub(crate) unsafe fn create_on_vm(
        vm: BorrowedFd<'_>,
        size: u64,
        flags: GmemFlags,
    ) -> Result<GuestMemfd> {
        const OP: &str = "KVM_CREATE_GUEST_MEMFD";
        let page = crate::sys::page_size() as u64;
        if size == 0 || !size.is_multiple_of(page) {
            return Err(Error::invalid(
                OP,
                format!("size {size:#x} must be a non-zero multiple of the page size {page:#x}"),
            ));
        }
        let args = gmem_sys::kvm_create_guest_memfd {
            size,
            flags: flags.bits(),
            reserved: [0; 6],
        };
        // SAFETY: `vm` is a VM (this function's contract).
        let fd =
            unsafe { sys::kvm::create_guest_memfd(vm, args) }.map_err(|errno| match errno {
                Errno::EINVAL => {
                    let advertised =
                        sys::kvm::check_extension(vm, gmem_sys::KVM_CAP_GUEST_MEMFD_FLAGS)
                            .unwrap_or(0);
                    let extra = flags.bits() & !(advertised as u64);
                    if extra != 0 {
                        Error::os_hint(
                            OP,
                            errno,
                            refused_flags_hint(flags, extra, advertised as u64),
                        )
                    } else {
                        Error::os(OP, errno)
                    }
                }
                Errno::ENOTTY => Error::os_hint(
                    OP,
                    errno,
                    "this kernel has no guest_memfd (KVM_CREATE_GUEST_MEMFD needs Linux 6.8 or newer)",
                ),
                _ => Error::os(OP, errno),
            })?;
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)
            .map_err(|e| Error::os("fcntl", rustix_errno(e)))?;
        Ok(GuestMemfd { fd, size, flags })
    }

    /// Wraps a guest_memfd created elsewhere (for example by
    /// `kvm_ioctls::VmFd::create_guest_memfd`), given the flags it was
    /// created with; the size is read with `fstat`.
    ///
    /// # Errors
    ///
    /// The `fstat` errno.
    pub fn from_fd(fd: OwnedFd, flags: GmemFlags) -> Result<GuestMemfd> {
        let stat = rustix::fs::fstat(&fd).map_err(|e| Error::os("fstat", rustix_errno(e)))?;
        Ok(GuestMemfd {
            size: stat.st_size as u64,
            fd,
            flags,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The flags the file was created with.
    pub fn flags(&self) -> GmemFlags {
        self.flags
    }

    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, gmem, offset)`.
    ///
    /// guest_memfd allows only shared mappings, and only when created with
    /// [`GmemFlags::MMAP`]. Without [`GmemFlags::INIT_SHARED`] the memory
    /// starts private and touching the mapping raises `SIGBUS`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for [`Sharing::Private`] (the kernel would refuse
    /// it with `EINVAL`) and for a zero length; `ENODEV` with a hint when
    /// the file was created without `MMAP`; the `mmap` errno otherwise.
    pub fn mmap(&self, offset: u64, len: usize, sharing: Sharing) -> Result<Mapping> {
        if sharing == Sharing::Private {
            return Err(Error::invalid(
                "mmap",
                "guest_memfd can only be mapped shared (MAP_PRIVATE fails with EINVAL)",
            ));
        }
        Mapping::file(self.fd.as_fd(), offset, len, Sharing::Shared).map_err(|e| match e.errno() {
            Some(errno @ Errno::ENODEV) => Error::os_hint(
                "mmap",
                errno,
                "this guest_memfd was created without GUEST_MEMFD_FLAG_MMAP",
            ),
            _ => e,
        })
    }

    /// Maps the whole file shared, as [`mmap`](GuestMemfd::mmap) does.
    ///
    /// # Errors
    ///
    /// As [`mmap`](GuestMemfd::mmap); `InvalidArgument` if the size does
    /// not fit the address space.
    pub fn map_all(&self) -> Result<Mapping> {
        let len = usize::try_from(self.size)
            .map_err(|_| Error::invalid("mmap", "size exceeds the address space"))?;
        self.mmap(0, len, Sharing::Shared)
    }

    /// `pwrite(gmem, data, offset)` until done: puts `data` into the page
    /// cache at `offset` (both page-aligned) without faulting, where the
    /// kernel has guest_memfd `write()` (a posted series, not mainline).
    ///
    /// This is for setting the file up before it is guest memory in use:
    /// it takes the file exclusively (`&mut`), which nobody has once the file
    /// is behind a [`PageState`](crate::resolve::PageState) — every mapping,
    /// region and stage-2 resolver shares it through an `Arc` — so no page
    /// can be filled behind the state's back (the state would map it
    /// unfilled, or fill it again over the guest's writes). From then on,
    /// [`PageState::populate`](crate::resolve::PageState::populate) writes
    /// through the state, the same `pwrite`.
    ///
    /// ```no_run
    /// # fn f(vm: &std::fs::File, flags: userfault::kvm::GmemFlags) -> userfault::Result<()> {
    /// use std::sync::Arc;
    /// use userfault::kvm::GuestMemfd;
    /// use userfault::resolve::PageState;
    ///
    /// let mut gmem = GuestMemfd::create(vm, 1 << 20, flags)?;
    /// // Before the state: the firmware, written into the file directly.
    /// gmem.write_at(0, &[0x90; 4096])?;
    /// let state = PageState::new(Arc::new(gmem))?;
    /// // It is in the file: declare it so, and it is only mapped.
    /// state.mark_filled(0, 4096)?;
    /// // From here on: through the state.
    /// state.populate(4096, &[0xf4; 4096])?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Behind the state, the file cannot be written this way:
    ///
    /// ```compile_fail,E0596
    /// # fn f(state: &userfault::resolve::PageState<userfault::kvm::GuestMemfd>) {
    /// state.backing().write_at(0, &[0; 4096]);
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for an unaligned or out-of-range request.
    /// `Unsupported` with the kernel's errno when this kernel has no
    /// guest_memfd `write()` (`ESPIPE` from mainline's `pwrite`; `EINVAL`
    /// from a kernel whose file has no write method) or the file was
    /// created without the `WRITE` flag (`ENODEV` under the series).
    /// `EEXIST` when a file without direct map refuses to overwrite a
    /// populated page: the page is there already. Otherwise the `pwrite`
    /// errno.
    ///
    /// # References
    ///
    /// [`KVM_CREATE_GUEST_MEMFD`](https://docs.kernel.org/virt/kvm/api.html#kvm-create-guest-memfd)
    #[doc(alias = "pwrite")]
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.pwrite(offset, data)
    }

    /// The `pwrite` of [`write_at`](Self::write_at) and of the page state's
    /// fills.
    fn pwrite(&self, offset: u64, data: &[u8]) -> Result<()> {
        check_span(self, "pwrite", offset, data.len() as u64)?;
        pwrite_all(self.fd.as_fd(), offset, data).map_err(|errno| write_error(self.flags, errno))
    }
}

fn write_error(flags: GmemFlags, errno: Errno) -> Error {
    const WHAT: &str = "guest_memfd write()";
    let reason: Cow<'static, str> = match errno {
        Errno::ESPIPE | Errno::EINVAL => "this kernel has no guest_memfd write() (the posted \
             series \"KVM: guest_memfd: use write for population\" is not applied); \
             populate through a shared mapping instead"
            .into(),
        Errno::ENODEV => format!(
            "this guest_memfd was created with {flags}, without the WRITE flag \
             (see GmemFlavour::write)"
        )
        .into(),
        Errno::EEXIST => {
            return Error::os_hint(
                "pwrite",
                errno,
                "the page is already populated (a guest_memfd without direct map refuses to \
                 overwrite it)",
            );
        }
        _ => return Error::os("pwrite", errno),
    };
    Error::unsupported(WHAT, Some(errno), reason)
}

impl AsFd for GuestMemfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<GuestMemfd> for OwnedFd {
    fn from(g: GuestMemfd) -> OwnedFd {
        g.fd
    }
}

impl GuestMemfd {
    /// `fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset,
    /// len)`: drops pages from the file before it is guest memory in use.
    /// Like [`write_at`](Self::write_at) it takes the file exclusively,
    /// which nobody has once it is behind a
    /// [`PageState`](crate::resolve::PageState); from then on discard
    /// through the state ([`discard`](crate::resolve::PageState::discard)),
    /// so the pages' state and bitmap bits are reset with them.
    ///
    /// ```compile_fail,E0596
    /// # fn f(mapping: &userfault::backing::BackedMapping<userfault::kvm::GuestMemfd>) {
    /// // A mapping shares the file with its page state: no hole behind it.
    /// mapping.backing().punch_hole(0, 4096);
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for an unaligned or out-of-range request; the
    /// `fallocate` errno otherwise.
    pub fn punch_hole(&mut self, offset: u64, len: u64) -> Result<()> {
        Backing::punch_hole(self, offset, len, crate::backing::Claimed::new())
    }
}

impl Backing for GuestMemfd {
    fn size(&self) -> u64 {
        self.size
    }

    fn page_size(&self) -> usize {
        crate::sys::page_size()
    }

    /// The `pwrite` of [`GuestMemfd::write_at`], under the page state's
    /// claim: `Unsupported` where the kernel has no guest_memfd `write()`.
    fn fill(&self, offset: u64, data: &[u8], _claim: crate::backing::Claimed<'_>) -> Result<()> {
        self.pwrite(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_their_bits() {
        assert_eq!(format!("{:?}", GmemFlags::empty()), "GmemFlags(empty)");
        assert_eq!(GmemFlags::empty().to_string(), "no flags");
        assert_eq!(
            (GmemFlags::MMAP | GmemFlags::INIT_SHARED).to_string(),
            "MMAP|INIT_SHARED"
        );
        let both = GmemFlags::MMAP | GmemFlags::INIT_SHARED;
        let hint = refused_flags_hint(both, both.bits(), 0);
        assert_eq!(
            hint,
            "this VM does not take the guest_memfd flags MMAP|INIT_SHARED: it advertises none \
             in KVM_CAP_GUEST_MEMFD_FLAGS; MMAP and INIT_SHARED need Linux 6.18"
        );
        let hint = refused_flags_hint(GmemFlags::from_raw(1 | 1 << 2), 1 << 2, 1);
        assert!(
            hint.contains("flags 0x4 of MMAP|0x4: it advertises MMAP"),
            "{hint}"
        );
        let write = GmemFlags {
            bits: 8,
            write: 8,
            no_direct_map: 0,
        };
        let f = GmemFlags::MMAP | GmemFlags::INIT_SHARED | write;
        assert!(f.has_write() && !f.has_no_direct_map());
        assert_eq!(format!("{f:?}"), "GmemFlags(MMAP | INIT_SHARED | WRITE)");
        assert_eq!(f, GmemFlags::from_raw(0xb));
        assert!(!GmemFlags::from_raw(0xb).has_write());
        assert!(f.contains(GmemFlags::MMAP));
    }

    fn flavour(bit2: CandidateBit, bit3: CandidateBit) -> GmemFlavour {
        GmemFlavour {
            advertised: Some(3),
            base: GmemFlags::MMAP | GmemFlags::INIT_SHARED,
            bit2,
            bit3,
        }
    }

    #[test]
    fn numbering_is_told_apart_by_behaviour() {
        use CandidateBit::*;
        let inval = Refused(Errno::EINVAL);
        let mainline = flavour(inval, inval);
        assert_eq!(mainline.numbering(), GmemNumbering::Mainline);
        let e = mainline.write().unwrap_err();
        assert!(e.is_unsupported());
        assert_eq!(e.errno(), Some(Errno::EINVAL));
        assert!(mainline.no_direct_map().unwrap_err().is_unsupported());

        let upstream = flavour(Write, inval);
        assert_eq!(upstream.numbering(), GmemNumbering::UpstreamWrite);
        assert_eq!(upstream.write().unwrap().bits(), 1 << 2);
        assert!(upstream.write().unwrap().has_write());
        assert!(upstream.no_direct_map().is_err());

        let fc = flavour(NotWrite(Errno::ENODEV), Write);
        assert_eq!(fc.numbering(), GmemNumbering::Firecracker);
        assert_eq!(fc.write().unwrap().bits(), 1 << 3);
        let ndm = fc.no_direct_map().unwrap();
        assert_eq!(ndm.bits(), 1 << 2);
        assert_eq!(
            format!("{:?}", fc.write().unwrap() | ndm | GmemFlags::MMAP),
            "GmemFlags(MMAP | WRITE | NO_DIRECT_MAP)"
        );

        let dmr = flavour(NotWrite(Errno::ESPIPE), inval);
        assert_eq!(dmr.numbering(), GmemNumbering::DirectMapRemoval);
        assert!(dmr.write().is_err());
        assert_eq!(dmr.no_direct_map().unwrap().bits(), 1 << 2);

        let odd = flavour(Write, Write);
        assert_eq!(odd.numbering(), GmemNumbering::Unknown);
        assert!(odd.write().is_err());
    }

    #[test]
    fn write_errors_explain_the_kernel() {
        let e = write_error(GmemFlags::MMAP, Errno::ESPIPE);
        assert!(e.is_unsupported());
        assert!(e.to_string().contains("no guest_memfd write()"), "{e}");
        let e = write_error(GmemFlags::MMAP, Errno::ENODEV);
        assert!(e.is_unsupported());
        assert!(e.to_string().contains("without the WRITE flag"), "{e}");
        assert!(write_error(GmemFlags::MMAP, Errno::EEXIST).is_exists());
        assert!(!write_error(GmemFlags::MMAP, Errno::EIO).is_unsupported());
    }
}
