//! Scenario 4b: a hugetlb memfd (2 MiB pages) mapped shared, registered
//! MISSING, every huge page resolved with one 2 MiB `UFFDIO_COPY`.
//!
//! The huge pages are reserved here (`vm.nr_hugepages` raised by what the
//! run needs) and the old value is restored afterwards.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use userfault::backing::{BackedMapping, HugePageSize, Memfd};
use userfault::resolve::Region;
use userfault::uffd::{EventBuffer, RegisterMode, Uffd};

use crate::harness::{Interleaved, Options, Report, Sample, run_faults, verify};
use crate::{raw, safe, sys};

const HUGE: usize = 2 << 20;
const NR: &str = "/proc/sys/vm/nr_hugepages";
const FREE: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

fn read_number(path: &str) -> Result<usize, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("{path}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{path}: {e}"))
}

/// Raises `vm.nr_hugepages` by `pages`; lowers it back on drop.
struct Reservation {
    old: usize,
}

impl Reservation {
    fn new(pages: usize) -> Result<Reservation, String> {
        let old = read_number(NR)?;
        std::fs::write(NR, format!("{}\n", old + pages))
            .map_err(|e| format!("cannot raise vm.nr_hugepages (needs root): {e}"))?;
        let r = Reservation { old };
        let free = read_number(FREE)?;
        if free < pages {
            return Err(format!(
                "asked for {pages} more 2 MiB huge pages, the kernel has {free} free \
                 (memory too fragmented?)"
            ));
        }
        Ok(r)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(NR, format!("{}\n", self.old)) {
            eprintln!("could not restore vm.nr_hugepages to {}: {e}", self.old);
        }
    }
}

pub fn run(src: &[u8], len: usize, o: &Options) -> Result<Report, String> {
    let reservation = Reservation::new(len / HUGE)?;
    let report = Interleaved::new(format!(
        "hugetlb memfd, MISSING, 2 MiB COPY, {} MiB, 1 faulting thread",
        len >> 20
    ))
    .variant("raw", || raw_run(src, len))
    .variant("safe", || safe_run(src, len))
    .run(o.rounds);
    drop(reservation);
    Ok(report)
}

fn raw_run(src: &[u8], len: usize) -> Sample {
    let file = raw::memfd(len, libc::MFD_HUGETLB | libc::MFD_HUGE_2MB);
    let map = raw::Shared::new(file.as_raw_fd(), len);
    let uffd = raw::open_syscall();
    let fd = uffd.as_raw_fd();
    // SAFETY: a fresh mapping that only raw pointers reach.
    unsafe { raw::register(fd, map.addr, len, sys::UFFDIO_REGISTER_MODE_MISSING) };
    let h = raw::Handler {
        fd,
        base: map.addr,
        src: src.as_ptr(),
        missing: raw::Missing::Copy { unit: HUGE },
    };
    let mut msgs = raw::Msgs::new(1);
    let s = run_faults("raw huge", map.addr, len, HUGE, 1, len / HUGE, || {
        h.serve(&mut msgs)
    });
    raw::unregister(fd, map.addr, len);
    // SAFETY: unregistered; no reference into it.
    unsafe { verify("raw huge", map.addr, &src[..len]) };
    s
}

fn safe_run(src: &[u8], len: usize) -> Sample {
    let memfd = Arc::new(
        Memfd::hugetlb(c"userfault-bench", len as u64, HugePageSize::Size2M).expect("memfd"),
    );
    let map = BackedMapping::whole(memfd).expect("mmap");
    let uffd = Arc::new(Uffd::new().expect("userfaultfd"));
    // SAFETY: a fresh mapping that only raw pointers reach.
    let region = unsafe {
        Region::copy_capable_file(uffd, map.clone(), RegisterMode::MISSING).expect("register")
    };
    let mut buf = EventBuffer::with_capacity(1);
    let s = run_faults("safe huge", map.addr(), len, HUGE, 1, len / HUGE, || {
        safe::serve_region(&region, &mut buf, |f, off| f.copy(&src[off..off + HUGE]))
    });
    drop(region);
    // SAFETY: unregistered; no reference into it.
    unsafe { verify("safe huge", map.addr(), &src[..len]) };
    s
}
