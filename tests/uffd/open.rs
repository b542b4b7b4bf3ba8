//! Creating a userfaultfd (syscall, device, automatic), its file flags,
//! the `UFFDIO_API` handshake, and the errors that explain a refusal.

use std::os::fd::{AsFd, AsRawFd};

use userfault::Errno;
use userfault::Error;
use userfault::uffd::{
    Features, Ioctls, OpenMethod, Origin, RegisterMode, Uffd, UffdBuilder, query_kernel,
};

use super::fixtures::{self, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, Kind, Mem};
use crate::util::{self, require};

fn fd_flags(uffd: &Uffd) -> (bool, bool) {
    let fd = uffd.as_raw_fd();
    // SAFETY: F_GETFD / F_GETFL only read the descriptor's flags.
    let (fdfl, fl) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFD),
            libc::fcntl(fd, libc::F_GETFL),
        )
    };
    assert!(fdfl >= 0 && fl >= 0);
    (fdfl & libc::FD_CLOEXEC != 0, fl & libc::O_NONBLOCK != 0)
}

fn sysctl_unprivileged() -> Option<String> {
    std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .ok()
        .map(|s| s.trim().to_string())
}

#[test]
fn handshake_keeps_the_kernels_whole_feature_word() {
    const TEST: &str = "handshake_keeps_the_kernels_whole_feature_word";
    let kernel = require!(TEST, "uffd", query_kernel().map_err(|e| e.to_string()));
    util::report(&format!(
        "uffd: kernel features {:?} ({:#x}), ioctls {:?}",
        kernel.features(),
        kernel.features().bits(),
        kernel.ioctls()
    ));
    // The fd-level ioctls the crate names (UFFDIO_SET_MODE with RWP, Linux
    // 7.3), plus whatever a newer kernel adds, which is kept, not dropped.
    let mut named = Ioctls::REGISTER | Ioctls::UNREGISTER | Ioctls::API;
    if kernel.features().contains(Features::RWP) {
        named |= Ioctls::SET_MODE;
    }
    assert!(kernel.ioctls().contains(named), "{:?}", kernel.ioctls());
    let raw = crate::util::uffd_features().expect("raw UFFDIO_API");
    assert_eq!(
        kernel.features().bits(),
        raw,
        "the feature word, raw and typed"
    );
    // Every kernel with userfaultfd has the 4.11 events.
    assert!(
        kernel
            .features()
            .contains(Features::EVENT_REMAP | Features::EVENT_REMOVE | Features::EVENT_UNMAP)
    );

    let uffd = Uffd::builder()
        .require_features(Features::THREAD_ID)
        .create()
        .expect("userfaultfd with THREAD_ID");
    assert_eq!(uffd.features(), Features::THREAD_ID, "only the asked bit");
    assert_eq!(uffd.kernel_features(), kernel.features(), "the whole word");
    assert_eq!(uffd.kernel_api(), kernel);

    // The kernel agrees: fdinfo shows the context's enabled features.
    let info =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", uffd.as_raw_fd())).expect("fdinfo");
    let api = info
        .lines()
        .find_map(|l| l.strip_prefix("API:"))
        .expect("API line in fdinfo");
    let ctx_features = api.trim().split(':').nth(1).expect("features field");
    let ctx_features = u64::from_str_radix(ctx_features, 16).expect("hex");
    assert_eq!(
        ctx_features & 0xffff_ffff & !(1 << 31),
        Features::THREAD_ID.bits(),
        "fdinfo API line {api:?}"
    );
}

#[test]
fn optional_features_the_kernel_lacks_are_left_out() {
    const TEST: &str = "optional_features_the_kernel_lacks_are_left_out";
    let kernel = require!(TEST, "uffd", query_kernel().map_err(|e| e.to_string()));
    // Bit 40 has no meaning in any kernel.
    let unknown = Features::from_bits_retain(1 << 40);
    assert!(!kernel.features().contains(unknown));
    let uffd = Uffd::builder()
        .request_features(unknown | Features::THREAD_ID | Features::EXACT_ADDRESS)
        .create()
        .expect("optional features never fail creation");
    // What the kernel offers of the request (EXACT_ADDRESS came in 5.18).
    assert_eq!(
        uffd.features(),
        (Features::THREAD_ID | Features::EXACT_ADDRESS) & kernel.features()
    );

    let err = Uffd::builder()
        .require_features(unknown | Features::THREAD_ID)
        .create()
        .expect_err("a required feature the kernel lacks");
    assert!(err.is_unsupported(), "{err}");
    assert_eq!(err.errno(), Some(Errno::EINVAL));
    let text = err.to_string();
    assert!(
        text.starts_with("userfaultfd features 0x10000000000 is not supported"),
        "names only the missing bit: {text}"
    );
}

#[test]
fn syscall_and_device_both_create_with_the_asked_flags() {
    const TEST: &str = "syscall_and_device_both_create_with_the_asked_flags";
    let by_syscall = require!(
        TEST,
        "uffd",
        Uffd::builder()
            .open_method(OpenMethod::Syscall)
            .create()
            .map_err(|e| e.to_string())
    );
    assert_eq!(by_syscall.origin(), Origin::Syscall);
    assert_eq!(fd_flags(&by_syscall), (true, false), "cloexec, blocking");

    let by_device = require!(
        TEST,
        "uffd-dev",
        Uffd::builder()
            .open_method(OpenMethod::Device)
            .non_blocking(true)
            .close_on_exec(false)
            .create()
            .map_err(|e| e.to_string())
    );
    assert_eq!(by_device.origin(), Origin::Device);
    assert_eq!(
        fd_flags(&by_device),
        (false, true),
        "no cloexec, non-blocking"
    );
    assert_eq!(
        by_device.kernel_features(),
        by_syscall.kernel_features(),
        "the same kernel answers both"
    );
    by_device.set_nonblocking(false).expect("F_SETFL");
    assert!(!by_device.is_nonblocking().expect("F_GETFL"));

    let auto = Uffd::new().expect("automatic");
    assert_eq!(auto.origin(), Origin::Syscall, "root may use the syscall");
    assert_ne!(auto.id(), by_syscall.id());
    let owned: std::os::fd::OwnedFd = auto.into();
    assert!(owned.as_fd().as_raw_fd() >= 0);
}

/// A user-mode-only userfaultfd lets faults raised inside the kernel fail
/// with EFAULT instead of waiting for the handler.
#[test]
fn user_mode_only_is_kept_and_spares_kernel_accesses() {
    const TEST: &str = "user_mode_only_is_kept_and_spares_kernel_accesses";
    let uffd = require!(
        TEST,
        "uffd-user-mode-only",
        Uffd::builder()
            .user_mode_only(true)
            .non_blocking(true)
            .create()
            .map_err(|e| e.to_string())
    );
    assert!(uffd.is_user_mode_only());
    let mem = Mem::new(Kind::AnonPrivate, 1).expect("anonymous memory");
    // SAFETY: the mapping is only accessed through raw pointers.
    unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }.expect("register");

    // read(2) into the missing page: the kernel's copy_to_user faults.
    let mut pipe = [0; 2];
    // SAFETY: pipe(2) writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let msg = b"kernel access";
    // SAFETY: writes from and reads into memory of the right length; the
    // destination is the registered page, reached through a raw pointer.
    let (w, r) = unsafe {
        let w = libc::write(pipe[1], msg.as_ptr().cast(), msg.len());
        let r = libc::read(pipe[0], mem.addr() as *mut libc::c_void, msg.len());
        (w, r)
    };
    let errno = std::io::Error::last_os_error().raw_os_error();
    // SAFETY: closes the descriptors pipe(2) created.
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    assert_eq!(w, msg.len() as isize);
    assert_eq!(r, -1, "the kernel access must fail, not wait");
    assert_eq!(errno, Some(libc::EFAULT));
    fixtures::assert_no_event(&uffd);
}

/// Without CAP_SYS_PTRACE and with vm.unprivileged_userfaultfd=0 the
/// syscall is refused; the error says why and what to do, and the
/// automatic method falls back to the device.
#[test]
fn refusal_without_cap_sys_ptrace_is_explained() {
    const TEST: &str = "refusal_without_cap_sys_ptrace_is_explained";
    require!(TEST, "uffd", query_kernel().map_err(|e| e.to_string()));
    let sysctl = sysctl_unprivileged();
    let outcome = fixtures::without_caps(&[CAP_SYS_PTRACE], || {
        let syscall = Uffd::builder().open_method(OpenMethod::Syscall).create();
        let user_mode = Uffd::builder()
            .open_method(OpenMethod::Syscall)
            .user_mode_only(true)
            .create()
            .map(|u| u.origin());
        let auto = Uffd::builder().create().map(|u| u.origin());
        let fork_required = Uffd::builder()
            .open_method(OpenMethod::Device)
            .require_features(Features::EVENT_FORK)
            .create()
            .map(|u| u.features());
        let fork_optional = Uffd::builder()
            .open_method(OpenMethod::Device)
            .request_features(Features::EVENT_FORK | Features::THREAD_ID)
            .create()
            .map(|u| u.features());
        (
            syscall.map(|u| u.origin()),
            user_mode,
            auto,
            fork_required,
            fork_optional,
        )
    });
    let Some((syscall, user_mode, auto, fork_required, fork_optional)) = outcome else {
        util::skip(TEST, "uffd", "cannot drop a capability in a thread");
        return;
    };
    let user_mode = match user_mode {
        Err(e) if e.errno() == Some(Errno::EINVAL) => {
            util::skip(TEST, "uffd-user-mode-only", &e.to_string());
            return;
        }
        other => other,
    };
    assert_eq!(
        user_mode.expect("user-mode-only needs no privilege"),
        Origin::Syscall
    );
    match sysctl.as_deref() {
        Some("0") => {
            let err = syscall.expect_err("EPERM without CAP_SYS_PTRACE");
            assert_eq!(err.errno(), Some(Errno::EPERM));
            let text = err.to_string();
            util::report(&format!("uffd: without CAP_SYS_PTRACE: {text}"));
            for words in [
                "vm.unprivileged_userfaultfd is 0",
                "CAP_SYS_PTRACE",
                "/dev/userfaultfd",
                "user-mode-only",
            ] {
                assert!(text.contains(words), "{words:?} missing from: {text}");
            }
        }
        other => {
            syscall.unwrap_or_else(|e| panic!("sysctl {other:?} allows the syscall: {e}"));
        }
    }
    if std::path::Path::new(userfault::uffd::DEVICE_PATH).exists() {
        let expected = if sysctl.as_deref() == Some("0") {
            Origin::Device
        } else {
            Origin::Syscall
        };
        assert_eq!(auto.expect("automatic creation"), expected);
        let err = fork_required.expect_err("EVENT_FORK without CAP_SYS_PTRACE");
        assert!(err.is_unsupported(), "{err}");
        assert_eq!(err.errno(), Some(Errno::EPERM));
        assert!(err.to_string().contains("CAP_SYS_PTRACE"), "{err}");
        assert_eq!(
            fork_optional.expect("optional EVENT_FORK is dropped"),
            Features::THREAD_ID
        );
    } else {
        util::skip(TEST, "uffd-dev", "no /dev/userfaultfd");
    }
}

/// Device failures name the device and the fix: a missing node, a node
/// without access, a file that is not the device. With both ways refused,
/// the error carries both reasons.
#[test]
fn device_failures_name_the_device() {
    const TEST: &str = "device_failures_name_the_device";
    require!(TEST, "uffd", query_kernel().map_err(|e| e.to_string()));
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("uffd-device-tests");
    std::fs::create_dir_all(&dir).expect("scratch directory");

    let missing = dir.join("no-such-device");
    let err = UffdBuilder::new()
        .open_method(OpenMethod::Device)
        .device_path(&missing)
        .create()
        .expect_err("missing node");
    assert_eq!(err.errno(), Some(Errno::ENOENT));
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(err.to_string().contains("no-such-device"), "{err}");

    let not_a_device = dir.join("plain-file");
    std::fs::write(&not_a_device, b"").expect("scratch file");
    let err = UffdBuilder::new()
        .open_method(OpenMethod::Device)
        .device_path(&not_a_device)
        .create()
        .expect_err("a regular file");
    assert!(
        matches!(
            err,
            Error::Os {
                op: "USERFAULTFD_IOC_NEW",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("not a userfaultfd device"),
        "{err}"
    );
    assert_eq!(err.errno(), Some(Errno::ENODEV), "refused before the ioctl");

    // Character devices of other drivers, the misc major's KVM included,
    // are refused before USERFAULTFD_IOC_NEW is sent to them.
    for other in ["/dev/null", "/dev/kvm"] {
        if !std::path::Path::new(other).exists() {
            continue;
        }
        let err = UffdBuilder::new()
            .open_method(OpenMethod::Device)
            .device_path(other)
            .create()
            .expect_err(other);
        assert_eq!(err.errno(), Some(Errno::ENODEV), "{other}: {err}");
        assert!(
            err.to_string().contains("not a userfaultfd device"),
            "{err}"
        );
    }

    let locked = dir.join("locked-device");
    std::fs::write(&locked, b"").expect("scratch file");
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000))
        .expect("chmod 000");
    let sysctl = sysctl_unprivileged();
    let outcome = fixtures::without_caps(
        &[CAP_SYS_PTRACE, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH],
        move || {
            let device = UffdBuilder::new()
                .open_method(OpenMethod::Device)
                .device_path(&locked)
                .create()
                .map(|_| ());
            let auto = UffdBuilder::new().device_path(&locked).create().map(|_| ());
            (device, auto)
        },
    );
    let Some((device, auto)) = outcome else {
        util::skip(TEST, "uffd", "cannot drop a capability in a thread");
        return;
    };
    let err = device.expect_err("no access to the node");
    assert_eq!(err.errno(), Some(Errno::EACCES));
    assert!(err.to_string().contains("no read-write access"), "{err}");
    if sysctl.as_deref() == Some("0") {
        let err = auto.expect_err("both ways refused");
        let text = err.to_string();
        util::report(&format!("uffd: both ways refused: {text}"));
        assert_eq!(err.errno(), Some(Errno::EPERM), "the syscall's errno leads");
        for words in [
            "vm.unprivileged_userfaultfd",
            "locked-device",
            "EACCES",
            "no read-write access",
        ] {
            assert!(text.contains(words), "{words:?} missing from: {text}");
        }
    }
}

/// A fork-event userfaultfd can only adopt registrations of its parent.
#[test]
fn inherit_needs_a_fork_child() {
    const TEST: &str = "inherit_needs_a_fork_child";
    let uffd = require!(TEST, "uffd", fixtures::open(Features::empty()));
    let other = fixtures::open(Features::empty()).expect("second userfaultfd");
    let mem = Mem::new(Kind::AnonPrivate, 1).expect("memory");
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg =
        unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }.expect("register");
    let err = other.inherit(&reg).expect_err("not a fork child");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert_eq!(other.parent_id(), None);
}
