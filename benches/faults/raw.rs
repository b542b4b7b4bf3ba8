//! The baseline: userfaultfd driven with `libc` system calls and the
//! `uffd_sys` constants and structs only, with no safe layer in between.
//!
//! It does what a careful hand-written handler must: it checks the event
//! type and fault flags, resolves MINOR faults with CONTINUE, and wakes the
//! range after `EEXIST`. Anything else is a benchmark failure (panic).
//!
//! Used by `benches/faults` and by `bench-peer` (through `#[path]`).

#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use uffd_sys as sys;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn fail(op: &str) -> ! {
    panic!("{op}: {}", std::io::Error::last_os_error())
}

/// `userfaultfd(O_CLOEXEC)` and `UFFDIO_API` with no features: a blocking
/// userfaultfd.
pub fn open_syscall() -> OwnedFd {
    // SAFETY: userfaultfd(2) takes one integer and touches no memory.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    if fd < 0 {
        fail("userfaultfd");
    }
    // SAFETY: a descriptor the kernel just created for this call.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    api(fd.as_raw_fd());
    fd
}

/// `ioctl(open("/dev/userfaultfd"), USERFAULTFD_IOC_NEW, O_CLOEXEC)` and
/// `UFFDIO_API` (the way that works under valgrind, which does not know
/// the system call).
pub fn open_device() -> OwnedFd {
    // SAFETY: open(2) of a NUL-terminated path.
    let dev = unsafe { libc::open(c"/dev/userfaultfd".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if dev < 0 {
        fail("open /dev/userfaultfd");
    }
    // SAFETY: USERFAULTFD_IOC_NEW takes an integer and returns a new fd.
    let fd = unsafe {
        libc::ioctl(
            dev,
            sys::USERFAULTFD_IOC_NEW as libc::c_ulong,
            libc::O_CLOEXEC,
        )
    };
    // SAFETY: `dev` was opened above and is used no more.
    unsafe { libc::close(dev) };
    if fd < 0 {
        fail("USERFAULTFD_IOC_NEW");
    }
    // SAFETY: a descriptor the kernel just created for this call.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    api(fd.as_raw_fd());
    fd
}

fn api(fd: RawFd) {
    let mut arg = sys::uffdio_api {
        api: sys::UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one uffdio_api.
    if unsafe { libc::ioctl(fd, sys::UFFDIO_API as libc::c_ulong, &mut arg) } < 0 {
        fail("UFFDIO_API");
    }
}

/// `UFFDIO_REGISTER`; returns the range's ioctl mask.
///
/// # Safety
///
/// Accesses to the range block until a handler resolves them; nothing may
/// hold a Rust reference into it.
pub unsafe fn register(fd: RawFd, start: usize, len: usize, mode: u64) -> u64 {
    let mut arg = sys::uffdio_register {
        range: sys::uffdio_range {
            start: start as u64,
            len: len as u64,
        },
        mode,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one uffdio_register; the
    // effect on the range is the caller's contract.
    if unsafe { libc::ioctl(fd, sys::UFFDIO_REGISTER as libc::c_ulong, &mut arg) } < 0 {
        fail("UFFDIO_REGISTER");
    }
    arg.ioctls
}

/// `UFFDIO_UNREGISTER`.
pub fn unregister(fd: RawFd, start: usize, len: usize) {
    let mut arg = sys::uffdio_range {
        start: start as u64,
        len: len as u64,
    };
    // SAFETY: UFFDIO_UNREGISTER reads one uffdio_range and returns the range
    // to the kernel's own fault handling.
    if unsafe { libc::ioctl(fd, sys::UFFDIO_UNREGISTER as libc::c_ulong, &mut arg) } < 0 {
        fail("UFFDIO_UNREGISTER");
    }
}

/// `memfd_create(name, MFD_CLOEXEC | extra)` + `ftruncate(size)`.
pub fn memfd(size: usize, extra: libc::c_uint) -> OwnedFd {
    // SAFETY: memfd_create(2) of a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"userfault-bench".as_ptr(), libc::MFD_CLOEXEC | extra) };
    if fd < 0 {
        fail("memfd_create");
    }
    // SAFETY: a descriptor the kernel just created for this call.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate(2) of our own descriptor.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } < 0 {
        fail("ftruncate");
    }
    fd
}

/// A shared mapping of a whole file, unmapped on drop.
pub struct Shared {
    pub addr: usize,
    pub len: usize,
}

impl Shared {
    pub fn new(fd: RawFd, len: usize) -> Shared {
        // SAFETY: a new mapping at an address the kernel chooses.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            fail("mmap");
        }
        Shared {
            addr: addr as usize,
            len,
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range this value mapped.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// `pwrite(2)` of all of `data` at `offset`.
pub fn pwrite_all(fd: RawFd, data: &[u8], offset: usize) {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: reads `data.len() - done` bytes of a live slice.
        let n = unsafe {
            libc::pwrite(
                fd,
                data[done..].as_ptr().cast(),
                data.len() - done,
                (offset + done) as libc::off_t,
            )
        };
        if n <= 0 {
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            fail("pwrite");
        }
        done += n as usize;
    }
}

/// How a raw handler resolves a MISSING fault.
#[derive(Debug, Clone, Copy)]
pub enum Missing {
    /// `UFFDIO_COPY` of the `unit`-aligned block around the fault.
    Copy { unit: usize },
    /// `pwrite` of the page into the file (`fd`, at the page's offset in
    /// the mapping), then `UFFDIO_CONTINUE`.
    WriteContinue { fd: RawFd, unit: usize },
    /// Never expected (MINOR-only runs).
    Unexpected,
}

/// What a raw handler needs: the userfaultfd, the registered range's start,
/// the source to copy from (same offsets as the range), and its MISSING
/// resolution. MINOR faults are always resolved with one page of
/// `UFFDIO_CONTINUE`.
#[derive(Debug, Clone, Copy)]
pub struct Handler {
    pub fd: RawFd,
    pub base: usize,
    pub src: *const u8,
    pub missing: Missing,
}

// SAFETY: `src` points into a source buffer that outlives every run and is
// only read.
unsafe impl Send for Handler {}
// SAFETY: as above; a `Handler` has no interior mutability.
unsafe impl Sync for Handler {}

/// A buffer of raw `uffd_msg` records.
pub struct Msgs(Vec<sys::uffd_msg>);

impl Msgs {
    pub fn new(n: usize) -> Msgs {
        Msgs(vec![sys::uffd_msg::default(); n])
    }
}

impl Handler {
    /// One `read(2)` of up to `msgs` events, each resolved; returns the
    /// page faults resolved.
    #[inline(never)]
    pub fn serve(&self, msgs: &mut Msgs) -> usize {
        let bytes = std::mem::size_of_val(msgs.0.as_slice());
        let n = loop {
            // SAFETY: reads at most `bytes` bytes into the live buffer.
            let n = unsafe { libc::read(self.fd, msgs.0.as_mut_ptr().cast(), bytes) };
            if n >= 0 {
                break n as usize / std::mem::size_of::<sys::uffd_msg>();
            }
            if errno() != libc::EINTR {
                fail("read");
            }
        };
        let mut served = 0;
        for msg in &msgs.0[..n] {
            if msg.event != sys::UFFD_EVENT_PAGEFAULT {
                panic!("unexpected event {:#x}", msg.event);
            }
            // SAFETY: a PAGEFAULT record's payload is the pagefault member.
            let pf = unsafe { msg.arg.pagefault };
            self.resolve(pf.address as usize, pf.flags);
            served += 1;
        }
        served
    }

    fn resolve(&self, address: usize, flags: u64) {
        if flags & sys::UFFD_PAGEFAULT_FLAG_MINOR != 0 {
            let page = address & !(crate::harness::PAGE - 1);
            self.continue_page(page, crate::harness::PAGE);
            return;
        }
        match self.missing {
            Missing::Copy { unit } => {
                // Blocks are aligned in the range, which need not be
                // aligned to `unit` in the address space.
                let dst = self.base + ((address - self.base) & !(unit - 1));
                let mut arg = sys::uffdio_copy {
                    dst: dst as u64,
                    // The source has the range's offsets.
                    src: self.src as u64 + (dst - self.base) as u64,
                    len: unit as u64,
                    mode: 0,
                    copy: 0,
                };
                // SAFETY: UFFDIO_COPY reads and writes one uffdio_copy and
                // reads `unit` bytes of the source, which covers the range.
                let r =
                    unsafe { libc::ioctl(self.fd, sys::UFFDIO_COPY as libc::c_ulong, &mut arg) };
                if r < 0 {
                    self.settle(dst, unit, "UFFDIO_COPY");
                }
            }
            Missing::WriteContinue { fd, unit } => {
                // Blocks are aligned in the range (and the file).
                let off = (address - self.base) & !(unit - 1);
                // SAFETY: `unit` bytes of the source, which covers the range.
                let data = unsafe { std::slice::from_raw_parts(self.src.add(off), unit) };
                pwrite_all(fd, data, off);
                self.continue_page(self.base + off, unit);
            }
            Missing::Unexpected => panic!("unexpected MISSING fault at {address:#x}"),
        }
    }

    fn continue_page(&self, page: usize, len: usize) {
        let mut arg = sys::uffdio_continue {
            range: sys::uffdio_range {
                start: page as u64,
                len: len as u64,
            },
            mode: 0,
            mapped: 0,
        };
        // SAFETY: UFFDIO_CONTINUE reads and writes one uffdio_continue.
        let r = unsafe { libc::ioctl(self.fd, sys::UFFDIO_CONTINUE as libc::c_ulong, &mut arg) };
        if r < 0 {
            self.settle(page, len, "UFFDIO_CONTINUE");
        }
    }

    /// After a failed resolution: `EEXIST` wakes the range (a failure wakes
    /// nobody), anything else is fatal.
    #[cold]
    fn settle(&self, start: usize, len: usize, op: &str) {
        if errno() != libc::EEXIST {
            fail(op);
        }
        let mut arg = sys::uffdio_range {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_WAKE reads one uffdio_range.
        if unsafe { libc::ioctl(self.fd, sys::UFFDIO_WAKE as libc::c_ulong, &mut arg) } < 0 {
            fail("UFFDIO_WAKE");
        }
    }
}

/// The raw handler's work for one batch, under a name callgrind can be
/// told to count (`--toggle-collect=userfault_bench_cost_raw`).
#[unsafe(no_mangle)]
#[inline(never)]
pub fn userfault_bench_cost_raw(h: &Handler, msgs: &mut Msgs) -> usize {
    h.serve(msgs)
}

/// The raw side of an instruction-count run: `faults` 4 KiB COPY faults on
/// anonymous memory, opened through `/dev/userfaultfd`.
pub fn cost_child(faults: usize) {
    use crate::harness::{Anon, PAGE, pwrite_run, source, verify};
    let len = faults * PAGE;
    let src = source(len);
    let mem = Anon::new(len);
    let uffd = open_device();
    let fd = uffd.as_raw_fd();
    // SAFETY: a fresh mapping that only raw pointers reach.
    unsafe { register(fd, mem.addr, len, sys::UFFDIO_REGISTER_MODE_MISSING) };
    let h = Handler {
        fd,
        base: mem.addr,
        src: src.as_ptr(),
        missing: Missing::Copy { unit: PAGE },
    };
    let mut msgs = Msgs::new(1);
    pwrite_run(mem.addr, len, faults, || {
        userfault_bench_cost_raw(&h, &mut msgs)
    });
    unregister(fd, mem.addr, len);
    // SAFETY: unregistered; no reference into it.
    unsafe { verify("raw cost", mem.addr, &src) };
}
