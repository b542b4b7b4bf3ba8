//! FORK events: a child process inherits the registered range, its faults
//! arrive on the userfaultfd the fork event delivers.
//!
//! The forking thread waits inside `fork()` until the event is read, and
//! glibc's `fork()` holds the malloc locks meanwhile. So the handler here is
//! started, and has allocated everything it needs, before the range is
//! registered; its loop does not allocate. Any thread of this process that
//! forks while the range is registered (another test's child, say) raises
//! an event here too, and is served the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use userfault::uffd::{
    CopyMode, Event, EventBuffer, Features, Origin, RegisterMode, Registration, Uffd,
};

use super::fixtures::{self, Kind, Mem, TIMEOUT, ok, pattern};
use crate::util::{self, require};

/// What the handler saw of the child's fault.
#[derive(Debug, Clone, Copy)]
struct ChildFault {
    address: usize,
    thread_id: Option<u32>,
    origin: Origin,
    parent_id: Option<u64>,
    features: Features,
    /// `FD_CLOEXEC` on the child's userfaultfd.
    close_on_exec: bool,
}

struct Shared {
    uffd: Uffd,
    reg: OnceLock<Registration>,
    ready: AtomicBool,
    stop: AtomicBool,
    fault: Mutex<Option<ChildFault>>,
}

/// Serves fork events of the parent and page faults of every child, with
/// `data` for each missing page. Allocates only before `ready`.
fn handler(shared: Arc<Shared>, data: Vec<u8>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let ps = data.len();
        let mut children: Vec<Uffd> = Vec::with_capacity(64);
        let mut buf = EventBuffer::with_capacity(8);
        shared.ready.store(true, Ordering::SeqCst);
        while !shared.stop.load(Ordering::SeqCst) {
            for event in shared
                .uffd
                .wait_events(&mut buf, Some(Duration::from_millis(5)))
                .expect("parent events")
            {
                match event {
                    Event::Fork { uffd: child } => {
                        child.set_nonblocking(true).expect("non-blocking child");
                        children.push(child);
                    }
                    other => panic!("unexpected parent event {other:?}"),
                }
            }
            for child in &children {
                for event in child.read_events(&mut buf).expect("child events") {
                    let Event::PageFault {
                        address, thread_id, ..
                    } = event
                    else {
                        panic!("unexpected child event {event:?}");
                    };
                    event.take();
                    let reg = shared.reg.get().expect("registered before any fork");
                    let creg = child.inherit(reg).expect("inherited registration");
                    assert_eq!(creg.uffd_id(), child.id());
                    child
                        .copy(&creg, address & !(ps - 1), &data, CopyMode::empty())
                        .expect("copy into the child");
                    *shared.fault.lock().expect("fault slot") = Some(ChildFault {
                        address,
                        thread_id,
                        origin: child.origin(),
                        parent_id: child.parent_id(),
                        features: child.features(),
                        close_on_exec: rustix::io::fcntl_getfd(child)
                            .expect("fcntl(F_GETFD)")
                            .contains(rustix::io::FdFlags::CLOEXEC),
                    });
                }
            }
        }
    })
}

#[test]
fn fork_event_delivers_the_childs_userfaultfd() {
    const TEST: &str = "fork_event_delivers_the_childs_userfaultfd";
    let uffd = require!(
        TEST,
        "uffd",
        fixtures::open(Features::EVENT_FORK | Features::THREAD_ID)
    );
    let ps = fixtures::page();
    let mem = Mem::new(Kind::AnonPrivate, 2).expect("memory");
    let before = pattern(51, ps);
    let after = pattern(52, ps);
    let parent_id = uffd.id();
    let parent_features = uffd.features();
    let shared = Arc::new(Shared {
        uffd,
        reg: OnceLock::new(),
        ready: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        fault: Mutex::new(None),
    });
    let thread = handler(Arc::clone(&shared), after.clone());
    let deadline = Instant::now() + TIMEOUT;
    while !shared.ready.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the handler never started");
        std::thread::yield_now();
    }

    // From here until the uffd is closed, forks of this process wait for
    // the handler.
    // SAFETY: the mapping is only accessed through raw pointers.
    let reg = unsafe {
        shared
            .uffd
            .register(mem.addr(), mem.len(), RegisterMode::MISSING)
    }
    .expect("register");
    let copied = shared
        .uffd
        .copy(&reg, mem.addr(), &before, CopyMode::empty());
    let _ = shared.reg.set(reg);

    let page1 = mem.page_addr(1);
    let (expect_before, expect_after) = (before.as_ptr() as usize, after.as_ptr() as usize);
    // SAFETY: the child only reads memory and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let same = |addr: usize, expected: usize| {
            (0..ps).all(|j| {
                // SAFETY: both pages are mapped in the child; the first may
                // fault and wait for the parent's handler.
                unsafe {
                    (addr as *const u8).add(j).read_volatile()
                        == (expected as *const u8).add(j).read()
                }
            })
        };
        let code = if !same(mem.addr(), expect_before) {
            2
        } else if !same(page1, expect_after) {
            3
        } else {
            0
        };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let status = fixtures::wait_child(pid, TIMEOUT);

    // No new fork may raise an event once the range is unregistered; one
    // already raised is read until the handler stops, or released when the
    // userfaultfd closes.
    let unregistered = shared.uffd.unregister(&reg);
    shared.stop.store(true, Ordering::SeqCst);
    thread.join().expect("handler");
    let fault = *shared.fault.lock().expect("fault slot");
    drop(shared);

    assert_eq!(ok(copied), Ok(ps));
    assert_eq!(ok(unregistered), Ok(()));
    let status = status.expect("the child never finished");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x} (2: inherited page wrong, 3: resolved page wrong)"
    );
    let fault = fault.expect("the child's fault reached the handler");
    util::report(&format!("uffd: fork child {pid} faulted: {fault:?}"));
    assert_eq!(fault.address, page1);
    assert_eq!(
        fault.thread_id,
        Some(pid as u32),
        "the child's only thread is its pid"
    );
    assert_eq!(fault.origin, Origin::Fork);
    assert_eq!(fault.parent_id, Some(parent_id));
    assert_eq!(
        fault.features, parent_features,
        "the child's context has the parent's features"
    );
    assert!(
        fault.close_on_exec,
        "the child's userfaultfd is close-on-exec, as its parent's"
    );
}
