//! The deterministic cost metric: user-space instructions the handler
//! thread executes per resolved fault, counted by valgrind's callgrind.
//!
//! `cost-child <variant> <faults>` handles `faults` 4 KiB MISSING faults on
//! anonymous memory with the handler's work (one `read` of events and the
//! resolution of each) inside one named function; the parent runs it under
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=<that
//! function>` and divides the count by `faults`. The userfaultfd is opened
//! through `/dev/userfaultfd` (valgrind does not know the system call), and
//! the faults are raised inside `pwrite(2)` from the registered pages.

use std::sync::Arc;

use userfault::mem::{Mapping, Sharing};
use userfault::resolve::{CopyCapable, Region};
use userfault::uffd::{CopyMode, Event, EventBuffer, OpenMethod, RegisterMode, Registration, Uffd};

use std::time::Duration;

use crate::harness::{
    self, Options, PAGE, pwrite_pages, pwrite_run, source, verify, with_deadline,
};
use crate::{raw, safe};

/// Variants, with the function callgrind counts.
const VARIANTS: &[(&str, &str, &str)] = &[
    (
        "raw",
        "userfault_bench_cost_raw",
        "libc read + ioctl, uffd_sys structs",
    ),
    (
        "safe",
        "userfault_bench_cost_safe",
        "Uffd::read_events, Region::fault, MissingFault::copy",
    ),
    (
        "safe-uffd",
        "userfault_bench_cost_safe_uffd",
        "Uffd::read_events, Uffd::copy_or_wake",
    ),
    (
        "pager",
        "*userfault_pager::server::handle_batch*",
        "userfault-pager's handler pass (1 thread, 4 KiB chunks, no prefetch), from a snapshot file with pread",
    ),
    (
        "pager-map",
        "*userfault_pager::server::handle_batch*",
        "the same, copying straight from a populated private mapping of the file (as raw copies from memory)",
    ),
];

pub fn run(o: &Options) {
    println!();
    if o.smoke {
        // The same code paths natively: proves they still work, counts
        // nothing.
        for (name, _, _) in VARIANTS {
            child(name, 64);
        }
        println!("### handler instructions per fault: smoke (native run, nothing counted)");
        return;
    }
    if !harness::have_valgrind() {
        println!("### handler instructions per fault: SKIP: valgrind is not installed");
        return;
    }
    const FAULTS: usize = 4096;
    println!("### handler instructions per fault (callgrind, {FAULTS} faults, 4 KiB COPY)");
    println!();
    println!("| variant | instructions per fault | ratio to raw | what the handler calls |");
    println!("|---|---:|---:|---|");
    let mut raw_ir = None;
    for (name, symbol, what) in VARIANTS {
        let args = [
            "cost-child".to_string(),
            name.to_string(),
            FAULTS.to_string(),
        ];
        match harness::callgrind_ir(symbol, &args) {
            Ok(ir) => {
                let per = ir as f64 / FAULTS as f64;
                let base = *raw_ir.get_or_insert(per);
                println!("| {name} | {per:.1} | {:.3} | {what} |", per / base);
            }
            Err(e) => println!("| {name} | error: {e} | | |"),
        }
    }
}

pub fn child(variant: &str, faults: usize) {
    match variant {
        "raw" => raw::cost_child(faults),
        "safe" => safe_child(faults, false),
        "safe-uffd" => safe_child(faults, true),
        "pager" => pager_child(faults, false),
        "pager-map" => pager_child(faults, true),
        other => panic!("unknown cost variant {other}"),
    }
}

/// The page server in per-page mode, serving a snapshot file with `pread`,
/// or (`mapped`) from a populated private mapping of it.
fn pager_child(faults: usize, mapped: bool) {
    use userfault_pager::source::{FileSource, MappedSource, PageSource, Prefault};
    use userfault_pager::{Config, Range, Server};
    let len = faults * PAGE;
    let src = source(len);
    let path = std::env::temp_dir().join(format!("userfault-cost-pager-{}", std::process::id()));
    std::fs::write(&path, &src).expect("write the snapshot");
    let file: Arc<dyn PageSource> = if mapped {
        Arc::new(MappedSource::open(&path, Prefault::Populate).expect("map the snapshot"))
    } else {
        Arc::new(FileSource::open(&path).expect("open the snapshot"))
    };
    let _ = std::fs::remove_file(&path);
    let uffd = Uffd::builder()
        .open_method(OpenMethod::Device)
        .non_blocking(true)
        .create()
        .expect("/dev/userfaultfd");
    let mem = Mapping::anonymous(len, Sharing::Private).expect("mmap");
    // SAFETY: a fresh mapping that only raw pointers reach.
    let reg = unsafe { uffd.register(mem.addr(), len, RegisterMode::MISSING) }.expect("register");
    let server = Server::start(
        Arc::new(uffd),
        &[Range::new(reg, 0)],
        file,
        Config {
            threads: 1,
            chunk: PAGE,
            // Per-page mode: no window grows past the faulting page.
            adaptive_chunk: None,
            prefetch: false,
            finish_when_complete: false,
            ..Config::default()
        },
    )
    .expect("start the server");
    with_deadline("pager cost run", Duration::from_secs(300), || {
        pwrite_pages(mem.addr(), len)
    });
    let report = server.shutdown();
    assert_eq!(
        report.stats.demand_faults, faults as u64,
        "every fault served once"
    );
    // SAFETY: every page is present; no reference into it.
    unsafe { verify("pager cost", mem.addr(), &src) };
}

fn safe_child(faults: usize, uffd_level: bool) {
    let len = faults * PAGE;
    let src = source(len);
    let uffd = Arc::new(
        Uffd::builder()
            .open_method(OpenMethod::Device)
            .create()
            .expect("/dev/userfaultfd"),
    );
    let mem = Mapping::anonymous(len, Sharing::Private).expect("mmap");
    let mut buf = EventBuffer::with_capacity(1);
    if uffd_level {
        // SAFETY: a fresh mapping that only raw pointers reach.
        let reg =
            unsafe { uffd.register(mem.addr(), len, RegisterMode::MISSING) }.expect("register");
        pwrite_run(mem.addr(), len, faults, || {
            userfault_bench_cost_safe_uffd(&uffd, &reg, &mut buf, &src)
        });
        uffd.unregister(&reg).expect("unregister");
    } else {
        // SAFETY: a fresh mapping that only raw pointers reach.
        let region = unsafe {
            Region::copy_capable(uffd, mem.addr(), len, RegisterMode::MISSING, PAGE)
                .expect("register")
        };
        pwrite_run(mem.addr(), len, faults, || {
            userfault_bench_cost_safe(&region, &mut buf, &src)
        });
        drop(region);
    }
    // SAFETY: unregistered; no reference into it.
    unsafe { verify("safe cost", mem.addr(), &src) };
}

/// The typestate handler's work for one batch (as in the timed scenarios).
#[unsafe(no_mangle)]
#[inline(never)]
pub fn userfault_bench_cost_safe(
    region: &Region<CopyCapable>,
    buf: &mut EventBuffer,
    src: &[u8],
) -> usize {
    safe::serve_region(region, buf, |f, off| f.copy(&src[off..off + PAGE]))
}

/// The `Uffd`-level handler's work for one batch.
#[unsafe(no_mangle)]
#[inline(never)]
pub fn userfault_bench_cost_safe_uffd(
    uffd: &Uffd,
    reg: &Registration,
    buf: &mut EventBuffer,
    src: &[u8],
) -> usize {
    let mut served = 0;
    for event in uffd.read_events(buf).expect("read events") {
        let Event::PageFault { address, .. } = event else {
            safe::unexpected(event);
        };
        event.take();
        let page = address & !(PAGE - 1);
        let off = page - reg.start();
        uffd.copy_or_wake(reg, page, &src[off..off + PAGE], CopyMode::empty())
            .expect("UFFDIO_COPY");
        served += 1;
    }
    served
}
