//! Shared test fixtures: skip reporting and `USERFAULT_TEST_REQUIRE`.
//!
//! Capability names understood in `USERFAULT_TEST_REQUIRE` (comma
//! separated; `all` requires every one):
//!
//! | name | what the test needs |
//! |---|---|
//! | `uffd` | the `userfaultfd(2)` syscall |
//! | `uffd-dev` | `/dev/userfaultfd` |
//! | `kvm` | `/dev/kvm` |
//! | `gmem` | `KVM_CREATE_GUEST_MEMFD` on a VM |
//! | `kvm-memory-attributes` | `KVM_SET_MEMORY_ATTRIBUTES` for the default VM type |
//! | `hugetlb` | reserved huge pages (`vm.nr_hugepages`) and hugetlbfs memfds |
//! | `c-headers` | a C compiler and the system's `<linux/*.h>` headers |
//! | `root` | running as root (to switch to an unprivileged user) |
//! | `uffd-user-mode-only` | `UFFD_USER_MODE_ONLY` (Linux 5.11) |
//! | `uffd-minor-shmem` | MINOR faults on shmem (`UFFD_FEATURE_MINOR_SHMEM`, Linux 5.14) |
//! | `uffd-minor-hugetlb` | MINOR faults on hugetlbfs (`UFFD_FEATURE_MINOR_HUGETLBFS`, Linux 5.13) |
//! | `uffd-wp-shmem` | write protection on shmem and hugetlbfs (`UFFD_FEATURE_WP_HUGETLBFS_SHMEM`, Linux 5.19) |
//! | `uffd-wp-async` | asynchronous write protection (`UFFD_FEATURE_WP_ASYNC`, Linux 6.7) |
//! | `uffd-continue-wp` | `UFFDIO_CONTINUE_MODE_WP` (Linux 6.4) |
//! | `uffd-poison` | `UFFDIO_POISON` (Linux 6.6) |
//! | `uffd-move` | `UFFDIO_MOVE` (Linux 6.8) |
//! | `uffd-rwp` | read-write protection: `UFFD_FEATURE_RWP`, `UFFDIO_RWPROTECT` (Linux 7.3) |
//! | `uffd-rwp-async` | `UFFD_FEATURE_RWP_ASYNC` and `UFFDIO_SET_MODE` (Linux 7.3) |
//! | `pagemap-scan` | the `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap` (Linux 6.7) |
//! | `headers-7.3` | Linux 7.3's uAPI headers (Debian's `linux-libc-dev` 7.3) for the RWP ABI comparison |
//! | `kvm-memslot2` | `KVM_SET_USER_MEMORY_REGION2` (Linux 6.8) |
//! | `gmem-slot` | a guest_memfd usable as a memslot on the default VM type |
//! | `gmem-mmap` | `GUEST_MEMFD_FLAG_MMAP` and `GUEST_MEMFD_FLAG_INIT_SHARED` (Linux 6.18) |
//! | `gmem-uffd` | userfaultfd registration on a guest_memfd mapping (posted series) |
//! | `gmem-uffd-copy` | `UFFDIO_COPY` into a guest_memfd mapping (posted series) |
//! | `gmem-continue-only` | a guest_memfd range the kernel makes CONTINUE-only (the `7.3-oot` kernel's `kvm.gmem_uffd_copy=N`) |
//! | `gmem-write` | populating a guest_memfd with `write()` (posted series) |
//! | `kvm-userfault` | `KVM_MEM_USERFAULT` memslots and `KVM_MEMORY_EXIT_FLAG_USERFAULT` exits (posted series) |

use std::io::Write as _;

/// Every capability name a test may ask for.
pub const CAPABILITIES: &[&str] = &[
    "uffd",
    "uffd-dev",
    "kvm",
    "gmem",
    "kvm-memory-attributes",
    "hugetlb",
    "c-headers",
    "root",
    "uffd-user-mode-only",
    "uffd-minor-shmem",
    "uffd-minor-hugetlb",
    "uffd-wp-shmem",
    "uffd-wp-async",
    "uffd-continue-wp",
    "uffd-poison",
    "uffd-move",
    "uffd-rwp",
    "uffd-rwp-async",
    "pagemap-scan",
    "headers-7.3",
    "kvm-memslot2",
    "gmem-slot",
    "gmem-mmap",
    "gmem-uffd",
    "gmem-uffd-copy",
    "gmem-continue-only",
    "gmem-write",
    "kvm-userfault",
];

/// True when `USERFAULT_TEST_REQUIRE` names `capability` (or `all`).
pub fn required(capability: &str) -> bool {
    assert!(
        CAPABILITIES.contains(&capability),
        "unknown test capability {capability:?}; add it to tests/util.rs"
    );
    std::env::var("USERFAULT_TEST_REQUIRE").is_ok_and(|list| {
        list.split(',')
            .map(str::trim)
            .any(|c| c == capability || c == "all")
    })
}

/// Reports that `test` cannot run for want of `capability`.
///
/// Prints `SKIP <test>: <reason> [<capability>]` straight to the process's
/// stderr (past the test harness's capture) and returns, or fails the test
/// when the capability is required.
pub fn skip(test: &str, capability: &str, reason: &str) {
    if required(capability) {
        panic!("{test}: required capability {capability} is unavailable: {reason}");
    }
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason} [{capability}]");
}

/// The kernel's userfaultfd feature word, from a raw `UFFDIO_API` with no
/// features on a throw-away `userfaultfd(2)` (asked once per process), or
/// why there is none.
pub fn uffd_features() -> Result<u64, String> {
    static WORD: std::sync::OnceLock<Result<u64, String>> = std::sync::OnceLock::new();
    WORD.get_or_init(|| {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: userfaultfd(2) takes only flags.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!(
                "userfaultfd(2) failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut api = uffd_sys::uffdio_api {
            api: uffd_sys::UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes one uffdio_api, which `api` is.
        let r = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                uffd_sys::UFFDIO_API as libc::c_ulong,
                &raw mut api,
            )
        };
        if r != 0 {
            return Err(format!("UFFDIO_API: {}", std::io::Error::last_os_error()));
        }
        Ok(api.features)
    })
    .clone()
}

/// The userfaultfd feature bit behind a test capability name, and what it
/// is called, for the names a feature bit decides.
fn feature_of(capability: &str) -> Option<(u64, &'static str)> {
    Some(match capability {
        "uffd-minor-shmem" => (
            uffd_sys::UFFD_FEATURE_MINOR_SHMEM,
            "UFFD_FEATURE_MINOR_SHMEM (Linux 5.14)",
        ),
        "uffd-minor-hugetlb" => (
            uffd_sys::UFFD_FEATURE_MINOR_HUGETLBFS,
            "UFFD_FEATURE_MINOR_HUGETLBFS (Linux 5.13)",
        ),
        "uffd-wp-shmem" => (
            uffd_sys::UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
            "UFFD_FEATURE_WP_HUGETLBFS_SHMEM (Linux 5.19)",
        ),
        "uffd-wp-async" => (
            uffd_sys::UFFD_FEATURE_WP_ASYNC,
            "UFFD_FEATURE_WP_ASYNC (Linux 6.7)",
        ),
        "uffd-poison" => (
            uffd_sys::UFFD_FEATURE_POISON,
            "UFFD_FEATURE_POISON / UFFDIO_POISON (Linux 6.6)",
        ),
        "uffd-move" => (
            uffd_sys::UFFD_FEATURE_MOVE,
            "UFFD_FEATURE_MOVE / UFFDIO_MOVE (Linux 6.8)",
        ),
        _ => return None,
    })
}

/// Whether the kernel offers the feature behind `capability` (`uffd`, or a
/// name of [`feature_of`]); `Err` with the reason when it does not.
pub fn has_feature(capability: &str) -> Result<(), String> {
    if capability == "uffd" {
        return uffd_features().map(drop);
    }
    let (bit, what) = feature_of(capability)
        .unwrap_or_else(|| panic!("{capability} is not decided by a feature bit"));
    let word = uffd_features()?;
    if word & bit == bit {
        Ok(())
    } else {
        Err(format!("the kernel's feature word {word:#x} lacks {what}"))
    }
}

/// True when the kernel has the userfaultfd feature behind `capability`;
/// otherwise skips `test` charged to it and returns false.
pub fn need(test: &str, capability: &str) -> bool {
    match has_feature(capability) {
        Ok(()) => true,
        Err(reason) => {
            skip(test, capability, &reason);
            false
        }
    }
}

/// Writes a line past the harness's capture, for counts worth seeing in CI.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Unwraps `Ok`, or skips the test with the error as the reason.
macro_rules! require {
    ($test:expr, $capability:expr, $probe:expr) => {
        match $probe {
            Ok(value) => value,
            Err(reason) => {
                $crate::util::skip($test, $capability, &reason);
                return;
            }
        }
    };
}
pub(crate) use require;

/// Runs `f`, aborting the whole test process if it has not returned within
/// `limit`: a faulting thread that never wakes must fail the run, not hang
/// it.
pub fn with_deadline<T>(what: &str, limit: std::time::Duration, f: impl FnOnce() -> T) -> T {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let what = what.to_string();
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
            let _ = writeln!(
                std::io::stderr(),
                "{what}: not finished within {limit:?}; a thread is stuck (lost wake-up?)"
            );
            std::process::abort();
        }
    });
    let out = f();
    let _ = done.send(());
    let _ = watchdog.join();
    out
}
