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
/// Prints `SKIP <test>: <reason>` straight to the process's stderr (past the
/// test harness's capture) and returns, or fails the test when the
/// capability is required.
pub fn skip(test: &str, capability: &str, reason: &str) {
    if required(capability) {
        panic!("{test}: required capability {capability} is unavailable: {reason}");
    }
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
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
