//! The `userfaultfd` crate (crates.io, 0.9) against the same raw-syscall
//! baseline as `benches/faults`, in the same process, interleaved: scenarios
//! 1 and 2 (anonymous memory, 4 KiB COPY, 1 and 4 faulting threads) and the
//! handler's instructions per fault under callgrind.
//!
//! Kept out of the workspace because `userfaultfd-sys` runs bindgen (and so
//! needs libclang) at build time:
//!
//! ```text
//! cargo run --release --manifest-path bench-peer/Cargo.toml -- [--smoke] [--rounds N] [anon|anon-mt|cost]...
//! ```

#[path = "../../benches/faults/harness.rs"]
mod harness;
#[path = "../../benches/faults/raw.rs"]
mod raw;

use std::os::fd::AsRawFd;

use harness::{Anon, Interleaved, Options, PAGE, Report, Sample, run_faults, source, verify};
use userfaultfd::{Event, EventBuffer, Uffd, UffdBuilder};

const USAGE: &str = "usage: userfault-bench-peer [--smoke] [--rounds N] [anon|anon-mt|cost]...
       userfault-bench-peer cost-child <raw|peer> <faults>";

const MIB: usize = 1 << 20;

fn main() {
    harness::abort_on_panic();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("cost-child") {
        let faults = args[3].parse().expect("fault count");
        match args[2].as_str() {
            "raw" => raw::cost_child(faults),
            "peer" => peer_cost_child(faults),
            other => panic!("unknown cost variant {other}"),
        }
        return;
    }
    let o = Options::parse(USAGE);
    let sizes: Vec<usize> = if o.smoke {
        vec![MIB]
    } else {
        vec![64 * MIB, 512 * MIB]
    };
    let src = source(*sizes.iter().max().expect("a size"));
    println!(
        "# the userfaultfd crate against the raw baseline ({} round{}{})",
        o.rounds,
        if o.rounds == 1 { "" } else { "s" },
        if o.smoke { ", smoke" } else { "" }
    );
    for (name, threads, batch) in [("anon", 1, 1), ("anon-mt", 4, 64)] {
        if o.wants(name) {
            for &len in &sizes {
                anon(&src, len, threads, batch, &o).print(&[("peer", "raw")]);
            }
        }
    }
    if o.wants("cost") {
        cost(&o);
    }
}

fn anon(src: &[u8], len: usize, threads: usize, batch: usize, o: &Options) -> Report {
    Interleaved::new(format!(
        "anon MISSING, 4 KiB COPY, {} MiB, {threads} faulting thread{}, reads of up to {batch} event{}",
        len / MIB,
        if threads == 1 { "" } else { "s" },
        if batch == 1 { "" } else { "s" },
    ))
    .variant("raw", || raw_run(src, len, threads, batch))
    .variant("peer", || peer_run(src, len, threads, batch))
    .run(o.rounds)
}

fn raw_run(src: &[u8], len: usize, threads: usize, batch: usize) -> Sample {
    let mem = Anon::new(len);
    let uffd = raw::open_syscall();
    let fd = uffd.as_raw_fd();
    // SAFETY: a fresh mapping that only raw pointers reach.
    unsafe { raw::register(fd, mem.addr, len, uffd_sys::UFFDIO_REGISTER_MODE_MISSING) };
    let h = raw::Handler {
        fd,
        base: mem.addr,
        src: src.as_ptr(),
        missing: raw::Missing::Copy { unit: PAGE },
    };
    let mut msgs = raw::Msgs::new(batch);
    let s = run_faults("raw anon", mem.addr, len, PAGE, threads, len / PAGE, || {
        h.serve(&mut msgs)
    });
    raw::unregister(fd, mem.addr, len);
    // SAFETY: unregistered; no reference into it.
    unsafe { verify("raw anon", mem.addr, &src[..len]) };
    s
}

/// A blocking userfaultfd from the crate that also traps faults raised in
/// the kernel (its default is user-mode-only); the crate opens
/// `/dev/userfaultfd` first.
fn peer_uffd() -> Uffd {
    UffdBuilder::new()
        .close_on_exec(true)
        .user_mode_only(false)
        .create()
        .expect("userfaultfd crate: create")
}

/// One read of events, each MISSING fault resolved by `copy` (waking), and
/// `wake` after `EEXIST` as the crate leaves that to the caller.
fn peer_serve(uffd: &Uffd, buf: &mut EventBuffer, base: usize, src: &[u8]) -> usize {
    let mut served = 0;
    for event in uffd.read_events(buf).expect("read events") {
        match event.expect("event") {
            Event::Pagefault { addr, .. } => {
                let page = addr as usize & !(PAGE - 1);
                let off = page - base;
                let data = &src[off..off + PAGE];
                // SAFETY: copies one page of the live source into a missing
                // page of the registered range, which no reference points
                // into.
                let r = unsafe { uffd.copy(data.as_ptr().cast(), page as *mut _, PAGE, true) };
                match r {
                    Ok(_) => {}
                    Err(userfaultfd::Error::CopyFailed(e)) if e as i32 == libc::EEXIST => {
                        uffd.wake(page as *mut _, PAGE).expect("wake")
                    }
                    Err(e) => panic!("UFFDIO_COPY: {e}"),
                }
            }
            other => panic!("unexpected event {other:?}"),
        }
        served += 1;
    }
    served
}

fn peer_run(src: &[u8], len: usize, threads: usize, batch: usize) -> Sample {
    let mem = Anon::new(len);
    let uffd = peer_uffd();
    uffd.register(mem.addr as *mut _, len).expect("register");
    let mut buf = EventBuffer::new(batch);
    let s = run_faults(
        "peer anon",
        mem.addr,
        len,
        PAGE,
        threads,
        len / PAGE,
        || peer_serve(&uffd, &mut buf, mem.addr, src),
    );
    uffd.unregister(mem.addr as *mut _, len)
        .expect("unregister");
    // SAFETY: unregistered; no reference into it.
    unsafe { verify("peer anon", mem.addr, &src[..len]) };
    s
}

/// The crate's handler work for one batch, under a name callgrind counts.
#[unsafe(no_mangle)]
#[inline(never)]
pub fn userfault_bench_cost_peer(
    uffd: &Uffd,
    buf: &mut EventBuffer,
    base: usize,
    src: &[u8],
) -> usize {
    peer_serve(uffd, buf, base, src)
}

fn peer_cost_child(faults: usize) {
    let len = faults * PAGE;
    let src = source(len);
    let mem = Anon::new(len);
    let uffd = peer_uffd();
    uffd.register(mem.addr as *mut _, len).expect("register");
    let mut buf = EventBuffer::new(1);
    harness::pwrite_run(mem.addr, len, faults, || {
        userfault_bench_cost_peer(&uffd, &mut buf, mem.addr, &src)
    });
    uffd.unregister(mem.addr as *mut _, len)
        .expect("unregister");
    // SAFETY: unregistered; no reference into it.
    unsafe { verify("peer cost", mem.addr, &src) };
}

fn cost(o: &Options) {
    println!();
    if o.smoke {
        raw::cost_child(64);
        peer_cost_child(64);
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
    println!("| variant | instructions per fault | ratio to raw |");
    println!("|---|---:|---:|");
    let mut raw_ir = None;
    for (name, symbol) in [
        ("raw", "userfault_bench_cost_raw"),
        ("peer", "userfault_bench_cost_peer"),
    ] {
        let args = [
            "cost-child".to_string(),
            name.to_string(),
            FAULTS.to_string(),
        ];
        match harness::callgrind_ir(symbol, &args) {
            Ok(ir) => {
                let per = ir as f64 / FAULTS as f64;
                let base = *raw_ir.get_or_insert(per);
                println!("| {name} | {per:.1} | {:.3} |", per / base);
            }
            Err(e) => println!("| {name} | error: {e} | |"),
        }
    }
}
