//! Fault-resolution benchmarks: the safe layer (`userfault`) against a raw
//! `libc` + `uffd_sys` baseline in the same process, run interleaved.
//!
//! ```text
//! cargo bench --bench faults [-- [--smoke] [--rounds N] [SCENARIO...]]
//! ```
//!
//! Scenarios (all by default): `anon` (1 faulting thread), `anon-mt` (4
//! faulting threads, batched reads), `shmem` (MINOR → CONTINUE,
//! CONTINUE-only write + CONTINUE, COPY), `chunk` (64 KiB COPY), `huge`
//! (hugetlb 2 MiB COPY), `kvm` (a vCPU demand-paging a memslot), `cost`
//! (handler instructions per fault under callgrind), `pager` (a 1 GiB
//! snapshot restore: the page server against a Firecracker-style per-page
//! handler), `probe` (how long
//! `Capabilities::probe()` and the `userfault-probe` binary take). `--smoke` runs every
//! scenario once at tiny sizes, and the cost scenario natively. Every run
//! verifies every byte served. Nothing here asserts a time.
//!
//! `BENCHMARKS.md` at the repository root has the method and the results.

mod harness;
mod raw;

mod cost;
mod huge;
mod kvm;
mod pager;
mod probe;
mod safe;

use harness::{Anon, Interleaved, Options, PAGE, Sample, run_faults, source, verify};
use uffd_sys as sys;

const USAGE: &str =
    "usage: faults [--smoke] [--rounds N] [anon|anon-mt|shmem|chunk|huge|kvm|pager|cost|probe]...
       faults cost-child <raw|safe|safe-uffd> <faults>";

const MIB: usize = 1 << 20;

fn main() {
    harness::abort_on_panic();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("cost-child") {
        cost::child(&args[2], args[3].parse().expect("fault count"));
        return;
    }
    let o = Options::parse(USAGE);
    let sizes = |full: &[usize]| -> Vec<usize> { if o.smoke { vec![MIB] } else { full.to_vec() } };
    let biggest = if o.smoke { 4 * MIB } else { 512 * MIB };
    let src = source(biggest);
    println!(
        "# userfault fault-resolution benchmarks ({} round{}{})",
        o.rounds,
        if o.rounds == 1 { "" } else { "s" },
        if o.smoke { ", smoke" } else { "" }
    );

    if o.wants("anon") {
        for len in sizes(&[64 * MIB, 512 * MIB]) {
            anon(&src, len, 1, 1, &o).print(&[("safe", "raw")]);
        }
    }
    if o.wants("anon-mt") {
        for len in sizes(&[64 * MIB, 512 * MIB]) {
            anon(&src, len, 4, 64, &o).print(&[("safe", "raw")]);
        }
    }
    if o.wants("shmem") {
        for len in sizes(&[64 * MIB]) {
            shmem(&src, len, &o).print(&[
                ("safe-minor", "raw-minor"),
                ("safe-wcont", "raw-wcont"),
                ("safe-copy", "raw-copy"),
                ("safe-wcont", "safe-copy"),
            ]);
        }
    }
    if o.wants("chunk") {
        for len in sizes(&[256 * MIB]) {
            chunk(&src, len, &o).print(&[("safe", "raw")]);
        }
        for len in sizes(&[64 * MIB]) {
            shmem_chunk(&src, len, &o).print(&[("safe-64k", "raw-64k"), ("safe-64k", "safe-4k")]);
        }
        safe::state_memory();
    }
    if o.wants("huge") {
        let len = if o.smoke { 4 * MIB } else { 256 * MIB };
        match huge::run(&src, len, &o) {
            Ok(report) => report.print(&[("safe", "raw")]),
            Err(why) => println!("\n### hugetlb 2 MiB COPY: SKIP: {why}"),
        }
    }
    if o.wants("kvm") {
        let len = if o.smoke { MIB } else { 64 * MIB };
        match kvm::run(&src, len, &o) {
            Ok(report) => report.print(&[("safe", "raw")]),
            Err(why) => println!("\n### KVM demand paging: SKIP: {why}"),
        }
    }
    if o.wants("pager") {
        let len = if o.smoke { 4 * MIB } else { 1024 * MIB };
        let src = harness::source(len);
        pager::run(&src, len, &o).print(&[
            ("page", "fc-raw"),
            ("page-map", "fc-raw"),
            ("demand", "fc-raw"),
            ("prefetch", "fc-raw"),
            ("replay", "fc-raw"),
            ("replay-0", "fc-raw"),
            ("demand-map", "fc-raw"),
            ("prefetch-map", "fc-raw"),
            ("replay-map", "fc-raw"),
            ("prefetch-map-cpu", "fc-raw"),
            ("replay-map-cpu", "fc-raw"),
            ("replay-map-ahead", "fc-raw"),
            ("replay-map-cpu-ahead", "fc-raw"),
            ("demand-map-grow", "fc-raw"),
            ("prefetch-map-grow", "fc-raw"),
            ("prefetch-map-cpu-grow", "fc-raw"),
        ]);
    }
    if o.wants("cost") {
        cost::run(&o);
    }
    if o.wants("probe") {
        probe::run(&o);
    }
}

/// Scenarios 1 and 2: private anonymous memory registered MISSING, every
/// 4 KiB page resolved with `UFFDIO_COPY`, `threads` faulting threads and
/// event reads of up to `batch` records.
fn anon(src: &[u8], len: usize, threads: usize, batch: usize, o: &Options) -> harness::Report {
    let what = format!(
        "anon MISSING, 4 KiB COPY, {} MiB, {threads} faulting thread{}, reads of up to {batch} event{}",
        len / MIB,
        if threads == 1 { "" } else { "s" },
        if batch == 1 { "" } else { "s" },
    );
    Interleaved::new(what)
        .variant("raw", || anon_raw(src, len, PAGE, threads, batch))
        .variant("safe", || safe::anon(src, len, threads, batch))
        .run(o.rounds)
}

/// The raw baseline of scenarios 1, 2 and 4: anonymous memory, COPY of
/// `unit` bytes around each fault.
fn anon_raw(src: &[u8], len: usize, unit: usize, threads: usize, batch: usize) -> Sample {
    use std::os::fd::AsRawFd;
    let mem = Anon::new(len);
    let uffd = raw::open_syscall();
    let fd = uffd.as_raw_fd();
    // SAFETY: a fresh mapping that only raw pointers reach.
    unsafe { raw::register(fd, mem.addr, len, sys::UFFDIO_REGISTER_MODE_MISSING) };
    let h = raw::Handler {
        fd,
        base: mem.addr,
        src: src.as_ptr(),
        missing: raw::Missing::Copy { unit },
    };
    let mut msgs = raw::Msgs::new(batch);
    let s = run_faults("raw anon", mem.addr, len, unit, threads, len / unit, || {
        h.serve(&mut msgs)
    });
    raw::unregister(fd, mem.addr, len);
    // SAFETY: unregistered, so nothing can block; no reference into it.
    unsafe { verify("raw anon", mem.addr, &src[..len]) };
    s
}

/// Scenario 3: a shmem memfd mapped shared and registered MISSING|MINOR.
fn shmem(src: &[u8], len: usize, o: &Options) -> harness::Report {
    use std::os::fd::AsRawFd;
    // MINOR runs map a file whose page cache is already full; each run maps
    // it afresh, so every page faults MINOR once.
    let raw_full = raw::memfd(len, 0);
    raw::pwrite_all(raw_full.as_raw_fd(), &src[..len], 0);
    let safe_full = safe::filled_memfd(&src[..len]);
    Interleaved::new(format!(
        "shmem memfd, MISSING|MINOR, 4 KiB, {} MiB, 1 faulting thread",
        len / MIB
    ))
    .variant("raw-minor", || {
        shmem_raw(src, len, Some(raw_full.as_raw_fd()))
    })
    .variant("safe-minor", || safe::shmem_minor(src, &safe_full))
    .variant("raw-wcont", || shmem_raw_missing(src, len, true))
    .variant("safe-wcont", || safe::shmem_write_continue(src, len))
    .variant("raw-copy", || shmem_raw_missing(src, len, false))
    .variant("safe-copy", || safe::shmem_copy(src, len))
    .run(o.rounds)
}

/// Raw MINOR run on the filled file `full`.
fn shmem_raw(src: &[u8], len: usize, full: Option<i32>) -> Sample {
    let fd = full.expect("a filled memfd");
    shmem_raw_run("raw shmem minor", src, len, fd, raw::Missing::Unexpected)
}

/// Raw MISSING run on a fresh file: pwrite + CONTINUE, or COPY.
fn shmem_raw_missing(src: &[u8], len: usize, write_continue: bool) -> Sample {
    use std::os::fd::AsRawFd;
    let file = raw::memfd(len, 0);
    let fd = file.as_raw_fd();
    let missing = if write_continue {
        raw::Missing::WriteContinue { fd, unit: PAGE }
    } else {
        raw::Missing::Copy { unit: PAGE }
    };
    shmem_raw_run("raw shmem missing", src, len, fd, missing)
}

fn shmem_raw_run(what: &str, src: &[u8], len: usize, file: i32, missing: raw::Missing) -> Sample {
    shmem_raw_run_unit(what, src, len, file, missing, PAGE)
}

fn shmem_raw_run_unit(
    what: &str,
    src: &[u8],
    len: usize,
    file: i32,
    missing: raw::Missing,
    unit: usize,
) -> Sample {
    use std::os::fd::AsRawFd;
    let map = raw::Shared::new(file, len);
    let uffd = raw::open_syscall();
    let fd = uffd.as_raw_fd();
    let mode = sys::UFFDIO_REGISTER_MODE_MISSING | sys::UFFDIO_REGISTER_MODE_MINOR;
    // SAFETY: a fresh mapping that only raw pointers reach.
    unsafe { raw::register(fd, map.addr, len, mode) };
    let h = raw::Handler {
        fd,
        base: map.addr,
        src: src.as_ptr(),
        missing,
    };
    let mut msgs = raw::Msgs::new(1);
    let s = run_faults(what, map.addr, len, unit, 1, len / unit, || {
        h.serve(&mut msgs)
    });
    raw::unregister(fd, map.addr, len);
    // SAFETY: unregistered; no reference into it.
    unsafe { verify(what, map.addr, &src[..len]) };
    s
}

/// Scenario 4b: a CONTINUE-only shmem range, each MISSING fault resolved
/// with one pwrite and one CONTINUE of the 64 KiB block around it: raw,
/// through the typed window of the shared page state, and the typed path a
/// page at a time.
fn shmem_chunk(src: &[u8], len: usize, o: &Options) -> harness::Report {
    const UNIT: usize = 64 << 10;
    Interleaved::new(format!(
        "shmem MISSING|MINOR, write() + CONTINUE of 64 KiB around each fault, {} MiB, 1 faulting thread",
        len / MIB
    ))
    .variant("raw-64k", || {
        use std::os::fd::AsRawFd;
        let file = raw::memfd(len, 0);
        let fd = file.as_raw_fd();
        let missing = raw::Missing::WriteContinue { fd, unit: UNIT };
        shmem_raw_run_unit("raw shmem wchunk", src, len, fd, missing, UNIT)
    })
    .variant("safe-64k", || safe::shmem_window(src, len, UNIT))
    .variant("safe-4k", || safe::shmem_write_continue(src, len))
    .run(o.rounds)
}

/// Scenario 4a: anonymous memory, each fault resolved by one COPY of the
/// 64 KiB block around it.
fn chunk(src: &[u8], len: usize, o: &Options) -> harness::Report {
    const UNIT: usize = 64 << 10;
    Interleaved::new(format!(
        "anon MISSING, 64 KiB COPY around each fault, {} MiB, 1 faulting thread",
        len / MIB
    ))
    .variant("raw", || anon_raw(src, len, UNIT, 1, 1))
    .variant("safe", || safe::chunk(src, len, UNIT))
    .run(o.rounds)
}
