//! Creating a userfaultfd and the `UFFDIO_API` handshake.

use std::borrow::Cow;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use uffd_sys as sys;

use super::{Features, Ioctls, Uffd};
use crate::error::{Errno, Error, Result};

/// Where the default device node lives.
pub const DEVICE_PATH: &str = "/dev/userfaultfd";

/// How a userfaultfd is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpenMethod {
    /// The `userfaultfd(2)` system call; if the kernel refuses it (for
    /// example `EPERM` under `vm.unprivileged_userfaultfd=0` without
    /// `CAP_SYS_PTRACE`), `/dev/userfaultfd`.
    #[default]
    Auto,
    /// Only the `userfaultfd(2)` system call.
    Syscall,
    /// Only `ioctl(open("/dev/userfaultfd"), USERFAULTFD_IOC_NEW, flags)`
    /// (Linux 6.1+), whose access is governed by the device node's
    /// permissions instead of the sysctl.
    Device,
}

/// Which way a [`Uffd`] was actually created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// By the `userfaultfd(2)` system call.
    Syscall,
    /// Through the userfaultfd device node.
    Device,
    /// Delivered by the kernel in a fork event for a child process.
    Fork,
    /// Created and negotiated by another process and received from it
    /// ([`Uffd::from_received`]), typically over a Unix socket.
    Received,
}

/// The kernel's answer to `UFFDIO_API`: every feature it supports and the
/// ioctls valid on a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelApi {
    features: Features,
    ioctls: Ioctls,
}

impl KernelApi {
    pub(super) fn new(features: Features, ioctls: Ioctls) -> KernelApi {
        KernelApi { features, ioctls }
    }

    /// Every feature the kernel supports (its whole feature word, including
    /// bits this crate has no name for).
    pub fn features(&self) -> Features {
        self.features
    }

    /// The ioctls valid on a userfaultfd (`UFFD_API_IOCTLS`).
    pub fn ioctls(&self) -> Ioctls {
        self.ioctls
    }
}

/// Options for creating a [`Uffd`]: how to open it, its file flags and the
/// features to negotiate.
///
/// Defaults: [`OpenMethod::Auto`], close-on-exec, blocking, kernel faults
/// trapped (not user-mode-only), no features.
#[derive(Debug, Clone)]
pub struct UffdBuilder {
    method: OpenMethod,
    device: PathBuf,
    close_on_exec: bool,
    non_blocking: bool,
    user_mode_only: bool,
    required: Features,
    optional: Features,
}

impl Default for UffdBuilder {
    fn default() -> Self {
        UffdBuilder::new()
    }
}

impl UffdBuilder {
    /// The defaults listed on [`UffdBuilder`].
    pub fn new() -> UffdBuilder {
        UffdBuilder {
            method: OpenMethod::Auto,
            device: PathBuf::from(DEVICE_PATH),
            close_on_exec: true,
            non_blocking: false,
            user_mode_only: false,
            required: Features::empty(),
            optional: Features::empty(),
        }
    }

    /// How to create the userfaultfd.
    pub fn open_method(mut self, method: OpenMethod) -> UffdBuilder {
        self.method = method;
        self
    }

    /// The device node for [`OpenMethod::Device`] and [`OpenMethod::Auto`]
    /// (default [`DEVICE_PATH`]; containers sometimes bind it elsewhere).
    pub fn device_path(mut self, path: impl Into<PathBuf>) -> UffdBuilder {
        self.device = path.into();
        self
    }

    /// `O_CLOEXEC` (default on).
    pub fn close_on_exec(mut self, on: bool) -> UffdBuilder {
        self.close_on_exec = on;
        self
    }

    /// `O_NONBLOCK` (default off): `read` returns no events instead of
    /// waiting, and [`Uffd::poll`] works. Can be changed later with
    /// [`Uffd::set_nonblocking`].
    pub fn non_blocking(mut self, on: bool) -> UffdBuilder {
        self.non_blocking = on;
        self
    }

    /// `UFFD_USER_MODE_ONLY` (default off): trap only faults raised by user
    /// space. Such a userfaultfd may be created without privilege, but
    /// faults raised inside the kernel (by KVM, or by system calls that
    /// read or write the range) then fail with `EFAULT` instead of waiting
    /// for the handler, which a VMM does not want. If the kernel refuses
    /// the flag, creation fails; the flag is never dropped silently.
    pub fn user_mode_only(mut self, on: bool) -> UffdBuilder {
        self.user_mode_only = on;
        self
    }

    /// Features that must be enabled; creation fails if the kernel lacks
    /// one. Adds to earlier calls.
    pub fn require_features(mut self, features: Features) -> UffdBuilder {
        self.required |= features;
        self
    }

    /// Features to enable where the kernel offers them; the ones it lacks
    /// are left out ([`Uffd::features`] says which were enabled). Adds to
    /// earlier calls.
    pub fn request_features(mut self, features: Features) -> UffdBuilder {
        self.optional |= features;
        self
    }

    fn flags(&self) -> libc::c_int {
        let mut flags = 0;
        if self.close_on_exec {
            flags |= libc::O_CLOEXEC;
        }
        if self.non_blocking {
            flags |= libc::O_NONBLOCK;
        }
        if self.user_mode_only {
            flags |= sys::UFFD_USER_MODE_ONLY;
        }
        flags
    }

    /// `userfaultfd(flags)` or `ioctl(open("/dev/userfaultfd"),
    /// USERFAULTFD_IOC_NEW, flags)`, then `ioctl(uffd, UFFDIO_API, …)`—creates
    /// the userfaultfd and negotiates the features.
    ///
    /// With [`OpenMethod::Auto`] the system call is tried first and the
    /// device second; when both fail the error names both reasons.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] from `userfaultfd` or `/dev/userfaultfd` with a hint an
    /// operator can act on (`vm.unprivileged_userfaultfd=0` without
    /// `CAP_SYS_PTRACE`, device permissions, `UFFD_USER_MODE_ONLY` unknown
    /// to the kernel, no userfaultfd in the kernel); [`Error::Unsupported`]
    /// when a required feature is missing (or `EVENT_FORK` lacks
    /// `CAP_SYS_PTRACE`).
    ///
    /// # References
    ///
    /// - [`userfaultfd(2)`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html)
    /// - [`UFFDIO_API(2const)`](https://man7.org/linux/man-pages/man2/UFFDIO_API.2const.html)
    #[doc(alias = "userfaultfd")]
    #[doc(alias = "UFFDIO_API")]
    #[doc(alias = "USERFAULTFD_IOC_NEW")]
    pub fn create(&self) -> Result<Uffd> {
        let (fd, origin) = self.open()?;
        let (enabled, api) = self.negotiate(fd.as_fd())?;
        Ok(Uffd::from_parts(
            fd,
            origin,
            enabled,
            api,
            self.user_mode_only,
            None,
            self.non_blocking,
        ))
    }

    /// `ioctl(uffd, UFFDIO_API, {features: 0})` on a throw-away
    /// userfaultfd created the way [`create`](Self::create) would: what the
    /// kernel offers, without committing a userfaultfd to a feature set
    /// (the kernel accepts one successful `UFFDIO_API` per userfaultfd).
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create) for opening; the `UFFDIO_API` errno
    /// otherwise.
    pub fn query(&self) -> Result<KernelApi> {
        let (fd, _) = self.open()?;
        api(fd.as_fd(), Features::empty()).map_err(|e| Error::os("UFFDIO_API", e))
    }

    fn open(&self) -> Result<(OwnedFd, Origin)> {
        let flags = self.flags();
        match self.method {
            OpenMethod::Syscall => crate::sys::uffd::userfaultfd(flags)
                .map(|fd| (fd, Origin::Syscall))
                .map_err(|e| Error::os_hint("userfaultfd", e, self.syscall_hint(e))),
            OpenMethod::Device => self
                .open_device(flags)
                .map(|fd| (fd, Origin::Device))
                .map_err(|(op, e)| Error::os_hint(op, e, self.device_hint(op, e))),
            OpenMethod::Auto => match crate::sys::uffd::userfaultfd(flags) {
                Ok(fd) => Ok((fd, Origin::Syscall)),
                // Flags the kernel rejects are rejected by the device too.
                Err(e) if e == Errno::EINVAL => {
                    Err(Error::os_hint("userfaultfd", e, self.syscall_hint(e)))
                }
                Err(syscall_errno) => match self.open_device(flags) {
                    Ok(fd) => Ok((fd, Origin::Device)),
                    Err((op, dev_errno)) => Err(Error::os_hint(
                        "userfaultfd",
                        syscall_errno,
                        format!(
                            "{}; {} could not be used either: {op} failed with {dev_errno}: {}",
                            self.syscall_hint(syscall_errno),
                            self.device.display(),
                            self.device_hint(op, dev_errno)
                        ),
                    )),
                },
            },
        }
    }

    fn open_device(&self, flags: libc::c_int) -> Result<OwnedFd, (&'static str, Errno)> {
        use rustix::fs::{Mode, OFlags};
        let dev = rustix::fs::open(&self.device, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| ("open", crate::error::rustix_errno(e)))?;
        crate::sys::uffd::check_userfaultfd_device(dev.as_fd())
            .map_err(|e| ("USERFAULTFD_IOC_NEW", e))?;
        // SAFETY: `dev` was just checked to be the userfaultfd device.
        unsafe { crate::sys::uffd::userfaultfd_from_device(dev.as_fd(), flags) }
            .map_err(|e| ("USERFAULTFD_IOC_NEW", e))
    }

    fn syscall_hint(&self, errno: Errno) -> Cow<'static, str> {
        match errno {
            Errno::EPERM if self.user_mode_only => {
                "refused even for a user-mode-only userfaultfd: a seccomp filter or \
                 security module denies userfaultfd(2) (for containers: the runtime's \
                 seccomp profile)"
                    .into()
            }
            Errno::EPERM => eperm_hint().into(),
            Errno::EINVAL if self.user_mode_only => USER_MODE_ONLY_UNKNOWN.into(),
            Errno::EINVAL => "the kernel rejected the flags".into(),
            Errno::ENOSYS => {
                "this kernel has no userfaultfd (built without CONFIG_USERFAULTFD), or a \
                 seccomp filter hides the system call"
                    .into()
            }
            Errno::EMFILE | Errno::ENFILE => "too many open files".into(),
            _ => "userfaultfd(2) failed".into(),
        }
    }

    fn device_hint(&self, op: &str, errno: Errno) -> Cow<'static, str> {
        let path = self.device.display();
        match (op, errno) {
            ("open", Errno::ENOENT) => format!(
                "{path} does not exist (it needs Linux 6.1 or newer, and a container must \
                 have the device node)"
            )
            .into(),
            ("open", Errno::EACCES | Errno::EPERM) => format!(
                "no read-write access to {path} (mode 0600 root by default): grant the \
                 VMM's user access, e.g. with a udev rule, a group or an ACL"
            )
            .into(),
            ("open", Errno::ENXIO | Errno::ENODEV) => {
                format!("{path} is not backed by the userfaultfd driver").into()
            }
            ("open", _) => format!("{path} could not be opened").into(),
            ("USERFAULTFD_IOC_NEW", Errno::ENODEV) => format!(
                "{path} is not a userfaultfd device (the misc character device that \
                 /sys/dev/char or /proc/misc names userfaultfd), so the ioctl was not issued"
            )
            .into(),
            (_, Errno::EINVAL) if self.user_mode_only => USER_MODE_ONLY_UNKNOWN.into(),
            (_, Errno::ENOTTY | Errno::EINVAL) => {
                format!("{path} does not answer USERFAULTFD_IOC_NEW: not a userfaultfd device")
                    .into()
            }
            _ => "USERFAULTFD_IOC_NEW failed".into(),
        }
    }

    /// `UFFDIO_API` on `fd` with the required and, where the kernel has
    /// them, the optional features. A failed `UFFDIO_API` leaves the fd
    /// unconfigured, so it can be retried with fewer bits.
    fn negotiate(&self, fd: BorrowedFd<'_>) -> Result<(Features, KernelApi)> {
        let required = self.required;
        let mut want = required | self.optional;
        let mut kernel: Option<Features> = None;
        // At most: all bits, the kernel's subset, that subset without
        // EVENT_FORK (which needs CAP_SYS_PTRACE).
        for _ in 0..3 {
            let errno = match api(fd, want) {
                Ok(answer) => return Ok((want, answer)),
                Err(e) => e,
            };
            let offered = match kernel {
                Some(k) => k,
                None => {
                    let k = self.query()?.features;
                    kernel = Some(k);
                    k
                }
            };
            let missing = required.difference(offered);
            if !missing.is_empty() {
                return Err(Error::unsupported(
                    format!("userfaultfd features {}", super::flag_names(missing)),
                    Some(errno),
                    format!("the kernel offers only {}", super::flag_names(offered)),
                ));
            }
            if errno == Errno::EPERM && want.contains(Features::EVENT_FORK) {
                if required.contains(Features::EVENT_FORK) {
                    return Err(Error::unsupported(
                        "userfaultfd feature EVENT_FORK",
                        Some(errno),
                        "enabling fork events needs CAP_SYS_PTRACE",
                    ));
                }
                want.remove(Features::EVENT_FORK);
                continue;
            }
            let narrowed = required | (self.optional & offered);
            if narrowed == want {
                return Err(Error::os_hint(
                    "UFFDIO_API",
                    errno,
                    format!(
                        "the kernel refused the features {}",
                        super::flag_names(want)
                    ),
                ));
            }
            want = narrowed;
        }
        Err(Error::os_hint(
            "UFFDIO_API",
            Errno::EINVAL,
            format!(
                "the kernel refused every subset of the features {} tried",
                super::flag_names(want)
            ),
        ))
    }
}

const USER_MODE_ONLY_UNKNOWN: &str = "this kernel does not know UFFD_USER_MODE_ONLY (Linux \
     5.11+); it was not dropped: create the userfaultfd without user_mode_only";

/// Why `userfaultfd(2)` said `EPERM` to a request that also traps kernel
/// faults, from the sysctl and the calling thread's capabilities.
fn eperm_hint() -> String {
    let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd");
    let ptrace = has_cap_sys_ptrace();
    match (sysctl.as_deref().map(str::trim), ptrace) {
        (Ok("0"), Some(false)) => "vm.unprivileged_userfaultfd is 0 and the process lacks \
             CAP_SYS_PTRACE, so the kernel allows only user-mode-only userfaultfds (which do \
             not trap faults raised by KVM or system calls): grant CAP_SYS_PTRACE, give the \
             user read-write access to /dev/userfaultfd (Linux 6.1+), or set \
             vm.unprivileged_userfaultfd=1"
            .to_string(),
        (Ok(value), Some(true)) | (Ok(value @ "1"), _) => format!(
            "vm.unprivileged_userfaultfd is {value} and the process {}, so a seccomp filter \
             or security module denies userfaultfd(2)",
            if ptrace == Some(true) {
                "has CAP_SYS_PTRACE"
            } else {
                "needs no capability"
            }
        ),
        (Ok(value), _) => format!(
            "vm.unprivileged_userfaultfd is {value}; without CAP_SYS_PTRACE only \
             user-mode-only userfaultfds are allowed (the capability could not be read, or the \
             sysctl has an unexpected value)"
        ),
        (Err(e), _) => format!(
            "/proc/sys/vm/unprivileged_userfaultfd could not be read ({e}); without \
             CAP_SYS_PTRACE the kernel allows only user-mode-only userfaultfds unless that \
             sysctl is 1"
        ),
    }
}

/// Whether the calling thread's effective capabilities include
/// `CAP_SYS_PTRACE` (capabilities are per thread).
pub(crate) fn has_cap_sys_ptrace() -> Option<bool> {
    const CAP_SYS_PTRACE: u32 = 19;
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    Some(cap_eff(&status)? & (1 << CAP_SYS_PTRACE) != 0)
}

/// The `CapEff:` mask of `/proc/<pid>/status` text.
pub(super) fn cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// `ioctl(fd, UFFDIO_API, {UFFD_API, features})`.
pub(super) fn api(fd: BorrowedFd<'_>, features: Features) -> Result<KernelApi, Errno> {
    let mut arg = sys::uffdio_api {
        api: sys::UFFD_API,
        features: features.bits(),
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one `uffdio_api`, which `arg` is;
    // it changes nothing but the userfaultfd's own state.
    unsafe { crate::sys::ioctl_mut(fd, sys::UFFDIO_API, &mut arg) }?;
    Ok(KernelApi::new(
        Features::from_bits_retain(arg.features),
        Ioctls::from_bits_retain(arg.ioctls),
    ))
}

/// A process-wide unique id for each [`Uffd`], so a registration cannot be
/// used with a userfaultfd it does not belong to.
pub(super) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `UffdBuilder::new().query()`: what the running kernel's userfaultfd
/// offers, asked on a throw-away userfaultfd.
///
/// # Errors
///
/// As [`UffdBuilder::create`] and [`UffdBuilder::query`].
pub fn query_kernel() -> Result<KernelApi> {
    UffdBuilder::new().query()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/<pid>/status` text: `CapEff` is read from well-formed text
    /// and nothing panics on mutated text; `/proc/misc` likewise.
    #[test]
    fn hostile_status_and_misc_text() {
        crate::fuzzing::run("/proc/self/status CapEff", |g| {
            let caps = g.edgy_u64();
            let text = format!(
                "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t{caps:016x}\nCapBnd:\t{:x}\n",
                g.u64()
            );
            assert_eq!(cap_eff(&text), Some(caps));
            let mut bytes = text.into_bytes();
            g.mutate(&mut bytes);
            let _ = cap_eff(&String::from_utf8_lossy(&bytes));
        });
        crate::fuzzing::run("/proc/misc", |g| {
            let minor = g.below(1 << 20) as u32;
            let text = format!(" 61 loop-control\n{minor} userfaultfd\n232 kvm\n");
            assert!(crate::sys::uffd::misc_lists_userfaultfd(&text, minor));
            assert!(!crate::sys::uffd::misc_lists_userfaultfd(
                &text,
                minor ^ 1 << 21
            ));
            let mut bytes = text.into_bytes();
            g.mutate(&mut bytes);
            let _ =
                crate::sys::uffd::misc_lists_userfaultfd(&String::from_utf8_lossy(&bytes), minor);
        });
    }
}
