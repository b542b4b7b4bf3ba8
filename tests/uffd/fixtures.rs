//! Fixtures of the userfaultfd tests: memory of each type, threads that
//! fault on it, and waiting for events with a deadline.
//!
//! Registered memory is only ever read or written through raw pointers
//! (`ptr::copy_nonoverlapping`, `read_volatile`), never through Rust
//! references: the registration contract of `Uffd::register`.

use std::ffi::CString;
use std::mem::ManuallyDrop;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use userfault::backing::{HugePageSize, Memfd};
use userfault::mem::{Mapping, Sharing};
use userfault::uffd::{Event, EventBuffer, Features, Uffd};

use crate::util;

/// How long a step that should happen at once may take before the test
/// fails instead of hanging.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long to watch a thread that must stay blocked.
pub const STILL_BLOCKED: Duration = Duration::from_millis(150);

/// The base page size.
pub fn page() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// The memory types userfaultfd registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `MAP_PRIVATE | MAP_ANONYMOUS`.
    AnonPrivate,
    /// `MAP_SHARED | MAP_ANONYMOUS` (shmem without a file descriptor).
    AnonShared,
    /// A shmem memfd, `MAP_SHARED`.
    Memfd,
    /// A hugetlbfs memfd with 2 MiB pages, `MAP_SHARED`.
    Hugetlb,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [
        Kind::AnonPrivate,
        Kind::AnonShared,
        Kind::Memfd,
        Kind::Hugetlb,
    ];

    /// True for the kinds backed by a page cache (MINOR works).
    pub fn has_page_cache(self) -> bool {
        self != Kind::AnonPrivate
    }
}

/// Huge pages free in the pool, if the machine has 2 MiB huge pages.
fn free_huge_pages() -> Result<usize, String> {
    let info = std::fs::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<usize>().ok())
    };
    if field("Hugepagesize:") != Some(2048) {
        return Err("the default huge page size is not 2 MiB".into());
    }
    field("HugePages_Free:").ok_or_else(|| "no HugePages_Free in /proc/meminfo".into())
}

/// Memory of one kind, unmapped on drop — except when the test is
/// panicking, where a thread may still be blocked on it.
pub struct Mem {
    map: ManuallyDrop<Mapping>,
    file: Option<Memfd>,
    page: usize,
}

impl Mem {
    /// `pages` pages of `kind` (huge pages for hugetlb), or the reason the
    /// machine cannot provide them (hugetlb without reserved pages).
    pub fn new(kind: Kind, pages: usize) -> Result<Mem, String> {
        let name = CString::new(format!("userfault-test-{kind:?}")).map_err(|e| e.to_string())?;
        let (map, file, page) = match kind {
            Kind::AnonPrivate | Kind::AnonShared => {
                let sharing = if kind == Kind::AnonPrivate {
                    Sharing::Private
                } else {
                    Sharing::Shared
                };
                let map = Mapping::anonymous(pages * page(), sharing).map_err(|e| e.to_string())?;
                (map, None, page())
            }
            Kind::Memfd => {
                let len = pages * page();
                let file = Memfd::shmem(&name, len as u64).map_err(|e| e.to_string())?;
                let map = Mapping::file(std::os::fd::AsFd::as_fd(&file), 0, len, Sharing::Shared)
                    .map_err(|e| e.to_string())?;
                (map, Some(file), page())
            }
            Kind::Hugetlb => {
                let free = free_huge_pages()?;
                if free < pages {
                    return Err(format!(
                        "{free} free 2 MiB huge pages, {pages} needed (sysctl vm.nr_hugepages)"
                    ));
                }
                let huge = HugePageSize::Size2M.bytes();
                let len = pages * huge;
                let file = Memfd::hugetlb(&name, len as u64, HugePageSize::Size2M)
                    .map_err(|e| format!("hugetlb memfd: {e}"))?;
                let map = Mapping::file(std::os::fd::AsFd::as_fd(&file), 0, len, Sharing::Shared)
                    .map_err(|e| format!("hugetlb mapping: {e}"))?;
                (map, Some(file), huge)
            }
        };
        Ok(Mem {
            map: ManuallyDrop::new(map),
            file,
            page,
        })
    }

    /// Like [`Mem::new`], skipping the test (`hugetlb` capability) when
    /// huge pages are unavailable.
    pub fn for_test(test: &str, kind: Kind, pages: usize) -> Option<Mem> {
        match Mem::new(kind, pages) {
            Ok(mem) => Some(mem),
            Err(reason) if kind == Kind::Hugetlb => {
                util::skip(&format!("{test} [hugetlb]"), "hugetlb", &reason);
                None
            }
            Err(reason) => panic!("{test}: {kind:?} memory: {reason}"),
        }
    }

    pub fn addr(&self) -> usize {
        self.map.addr()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The page size of this memory (huge for hugetlb).
    pub fn page_size(&self) -> usize {
        self.page
    }

    /// Address of page `i`.
    pub fn page_addr(&self, i: usize) -> usize {
        self.addr() + i * self.page
    }

    /// The backing file (memfd kinds).
    pub fn file(&self) -> Option<&Memfd> {
        self.file.as_ref()
    }

    /// Fills page `i` of the backing file with `data` without a fault.
    pub fn fill(&self, i: usize, data: &[u8]) {
        use std::os::fd::AsFd;
        let file = self.file().expect("a memfd-backed kind");
        // Through a second, never-registered shared mapping of the file
        // (hugetlbfs has no write()).
        let alias = userfault::mem::Mapping::file(
            file.as_fd(),
            (i * self.page) as u64,
            data.len(),
            userfault::mem::Sharing::Shared,
        )
        .expect("alias mapping");
        // SAFETY: the alias is a fresh mapping of `data.len()` bytes that no
        // Rust reference points into; `data` is a separate buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), alias.as_ptr(), data.len()) };
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            // SAFETY: dropped once, here; the mapping is not used after.
            unsafe { ManuallyDrop::drop(&mut self.map) };
        }
    }
}

/// A recognisable page: byte `j` of page `seed` is a function of both.
pub fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (seed.wrapping_mul(131) ^ j.wrapping_mul(7) ^ (j >> 8)) as u8 | 1)
        .collect()
}

/// The calling thread's id.
pub fn gettid() -> u32 {
    // SAFETY: gettid(2) has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// What a faulting thread saw.
#[derive(Debug)]
pub struct Seen {
    /// Its thread id.
    pub tid: u32,
    /// The bytes it read (empty for a write).
    pub data: Vec<u8>,
}

/// A thread accessing registered memory, which may block on a fault.
pub struct Touch {
    rx: Receiver<Seen>,
    tid: u32,
}

impl Touch {
    /// Reads `[addr, addr + len)` in a new thread.
    pub fn read(addr: usize, len: usize) -> Touch {
        Self::spawn(move || {
            let mut data = vec![0u8; len];
            // SAFETY: a raw read of mapped memory the test owns; it may
            // block on a userfault until the handler resolves it.
            unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, data.as_mut_ptr(), len) };
            data
        })
    }

    /// Writes `value` at `addr` in a new thread.
    pub fn write(addr: usize, value: u8) -> Touch {
        Self::spawn(move || {
            // SAFETY: a raw write into mapped memory the test owns.
            unsafe { (addr as *mut u8).write_volatile(value) };
            Vec::new()
        })
    }

    fn spawn(access: impl FnOnce() -> Vec<u8> + Send + 'static) -> Touch {
        let (tx, rx) = mpsc::channel();
        let (tid_tx, tid_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let tid = gettid();
            let _ = tid_tx.send(tid);
            let data = access();
            let _ = tx.send(Seen { tid, data });
        });
        let tid = tid_rx
            .recv_timeout(TIMEOUT)
            .expect("the touching thread started");
        Touch { rx, tid }
    }

    /// Waits until the thread sleeps in the kernel, off its CPU.
    ///
    /// A thread whose fault event has been read may not have gone to sleep
    /// yet: the kernel queues the fault, then looks at the page table once
    /// more before it sleeps, and a thread that finds the page resolved by
    /// then goes on without any wake. A test that checks that a
    /// `DONTWAKE` resolution leaves the thread blocked calls this first.
    /// `/proc/<tid>/syscall` reads "running" unless the task is asleep,
    /// and the kernel produces the other answer only once the task has
    /// left its CPU (`wait_task_inactive`).
    #[track_caller]
    pub fn wait_asleep(&self) {
        let path = format!("/proc/self/task/{}/syscall", self.tid);
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let state = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("the faulting thread has ended: its access did not block ({path}: {e})")
            });
            if !state.starts_with("running") {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the faulting thread did not go to sleep"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for the access to complete.
    #[track_caller]
    pub fn wait(self) -> Seen {
        match self.rx.recv_timeout(TIMEOUT) {
            Ok(seen) => seen,
            Err(RecvTimeoutError::Timeout) => panic!("the faulting thread is still blocked"),
            Err(RecvTimeoutError::Disconnected) => panic!("the faulting thread died"),
        }
    }

    /// True when the access has not completed after [`STILL_BLOCKED`].
    pub fn still_blocked(&self) -> bool {
        matches!(
            self.rx.recv_timeout(STILL_BLOCKED),
            Err(RecvTimeoutError::Timeout)
        )
    }
}

/// A non-blocking userfaultfd with `features` required, or the skip reason.
pub fn open(features: Features) -> Result<Uffd, String> {
    Uffd::builder()
        .non_blocking(true)
        .require_features(features)
        .create()
        .map_err(|e| e.to_string())
}

/// The next event, waiting up to [`TIMEOUT`], taken
/// ([`Event::into_taken`]): the test answers for it.
#[track_caller]
pub fn next_event(uffd: &Uffd) -> Event<'static> {
    let mut buf = EventBuffer::with_capacity(1);
    let mut events = uffd
        .wait_events(&mut buf, Some(TIMEOUT))
        .expect("waiting for an event");
    events
        .next()
        .expect("no event arrived in time")
        .into_taken()
}

/// Asserts that no event is pending.
#[track_caller]
pub fn assert_no_event(uffd: &Uffd) {
    let mut buf = EventBuffer::with_capacity(4);
    let events: Vec<Event> = uffd
        .wait_events(&mut buf, Some(Duration::from_millis(50)))
        .expect("polling")
        .collect();
    assert!(events.is_empty(), "unexpected events {events:?}");
}

/// Faults waiting in the userfaultfd, from `/proc/self/fdinfo` (`pending`:
/// not yet read; `total`: not yet woken).
pub fn fdinfo_faults(uffd: &Uffd) -> (usize, usize) {
    use std::os::fd::AsRawFd;
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", uffd.as_raw_fd()))
        .expect("fdinfo of the userfaultfd");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in fdinfo:\n{text}"))
    };
    (field("pending:"), field("total:"))
}

/// Waits until `n` faults are pending (unread) in the userfaultfd.
#[track_caller]
pub fn wait_pending(uffd: &Uffd, n: usize) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while fdinfo_faults(uffd).0 < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{n} faults never became pending: {:?}",
            fdinfo_faults(uffd)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `f` in a child process (`fork(2)`) and returns its wait status.
/// The child may only touch memory and call `_exit`.
pub fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs `f`, which only accesses memory, and leaves
    // with `_exit`: no allocation, no lock, nothing that another thread of
    // the parent could have held at the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = f();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    wait_child(pid, TIMEOUT).expect("the child process did not exit in time")
}

/// `waitpid` with a deadline; kills the child on timeout.
pub fn wait_child(pid: libc::pid_t, timeout: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child, writing only `status`.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(status);
        }
        assert!(r == 0, "waitpid: {}", std::io::Error::last_os_error());
        if std::time::Instant::now() >= deadline {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Capability numbers used by the tests.
pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Runs `f` in a new thread whose effective capabilities lack `caps`
/// (capabilities belong to a thread; the rest of the process keeps them).
/// `None` when the thread's capabilities cannot be changed.
pub fn without_caps<T: Send + 'static>(
    caps: &'static [u32],
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    std::thread::spawn(move || {
        let mut header = CapHeader {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        // SAFETY: capget writes one header and two data records, which
        // these are.
        if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
            return None;
        }
        for &cap in caps {
            data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
        }
        // SAFETY: capset reads one header and two data records; it changes
        // only this thread's capabilities.
        if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
            return None;
        }
        Some(f())
    })
    .join()
    .expect("the thread without capabilities panicked")
}

/// A result with the error as its message, for `assert_eq!`.
pub fn ok<T>(result: userfault::Result<T>) -> Result<T, String> {
    result.map_err(|e| e.to_string())
}

/// True when the kernel registers `kind` in `mode` as far as its feature
/// word says (MINOR and WP on shmem and hugetlbfs came after the rest);
/// otherwise skips `test` for `kind`, charged to the missing feature, and
/// returns false.
pub fn supports(test: &str, kind: Kind, mode: userfault::uffd::RegisterMode) -> bool {
    use userfault::uffd::RegisterMode;
    let test = format!("{test} [{kind:?}]");
    let mut needs = Vec::new();
    if mode.contains(RegisterMode::MINOR) {
        match kind {
            Kind::AnonShared | Kind::Memfd => needs.push("uffd-minor-shmem"),
            Kind::Hugetlb => needs.push("uffd-minor-hugetlb"),
            Kind::AnonPrivate => {}
        }
    }
    if mode.contains(RegisterMode::WP) && kind != Kind::AnonPrivate {
        needs.push("uffd-wp-shmem");
    }
    needs
        .into_iter()
        .all(|capability| util::need(&test, capability))
}
