//! What every benchmark shares: the source pattern, the faulting threads,
//! the interleaved rounds, the statistics and the tables.
//!
//! Used by `benches/faults` and by `bench-peer` (through `#[path]`), so it
//! depends on nothing but `std` and `libc`.

#![allow(dead_code)]

use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The base page size this benchmark assumes (x86_64).
pub const PAGE: usize = 4096;

/// The source ("snapshot") every handler copies from: each 8-byte word
/// depends on its offset, so a page served at the wrong place or only in
/// part is caught by the verification.
pub fn source(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    for (i, word) in data.chunks_exact_mut(8).enumerate() {
        let v = ((i as u64) << 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5_5A5A_0F0F_F0F0;
        word.copy_from_slice(&v.to_le_bytes());
    }
    data
}

/// Compares `len` bytes at `addr` with `want`; panics naming the first page
/// that differs.
///
/// # Safety
///
/// `[addr, addr + len)` must be mapped and readable, every page of it
/// present or backed by something that cannot block (call it after the
/// range was unregistered), and no Rust reference may point into it.
pub unsafe fn verify(what: &str, addr: usize, want: &[u8]) {
    // SAFETY: the caller's contract; memcmp only reads.
    let same = unsafe {
        libc::memcmp(
            addr as *const libc::c_void,
            want.as_ptr().cast(),
            want.len(),
        )
    };
    if same == 0 {
        return;
    }
    for (p, chunk) in want.chunks(PAGE).enumerate() {
        let at = addr + p * PAGE;
        // SAFETY: as above, one page of it.
        let page = unsafe { std::slice::from_raw_parts(at as *const u8, chunk.len()) };
        if page != chunk {
            panic!("{what}: page {p} ({at:#x}) does not hold the bytes the handler served");
        }
    }
    panic!("{what}: memcmp reported a difference that no page shows");
}

/// A private anonymous mapping, unmapped on drop.
pub struct Anon {
    pub addr: usize,
    pub len: usize,
}

impl Anon {
    /// `mmap(len, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS)`.
    pub fn new(len: usize) -> Anon {
        // SAFETY: a new mapping at an address the kernel chooses.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(
            addr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Anon {
            addr: addr as usize,
            len,
        }
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range this value mapped.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// One run of one variant.
#[derive(Debug, Clone)]
pub struct Sample {
    /// 4 KiB pages made present.
    pub pages: usize,
    /// Faults the handler resolved.
    pub faults: usize,
    /// From the first access to the last one's return.
    pub secs: f64,
    /// Median fault latency seen by the faulting thread, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
}

impl Sample {
    pub fn pages_per_sec(&self) -> f64 {
        self.pages as f64 / self.secs
    }

    /// From the faulting threads' latencies (ns).
    pub fn new(pages: usize, faults: usize, secs: f64, mut lat_ns: Vec<u32>) -> Sample {
        let (p50, p99) = percentiles(&mut lat_ns);
        Sample {
            pages,
            faults,
            secs,
            p50_us: p50 / 1000.0,
            p99_us: p99 / 1000.0,
        }
    }
}

fn percentiles(v: &mut [u32]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_unstable();
    let at = |q: f64| f64::from(v[((v.len() - 1) as f64 * q).round() as usize]);
    (at(0.50), at(0.99))
}

/// Makes a panic on any thread end the process at once: a handler thread
/// that panicked would otherwise leave its faulting threads blocked.
pub fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
}

/// Aborts the process if `f` has not returned within `limit`: a faulting
/// thread that is never woken must end the benchmark, not hang it.
pub fn with_deadline<T>(what: &str, limit: Duration, f: impl FnOnce() -> T) -> T {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let what = what.to_string();
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
            eprintln!("{what}: not finished within {limit:?}; a faulting thread is stuck");
            std::process::abort();
        }
    });
    let out = f();
    let _ = done.send(());
    let _ = watchdog.join();
    out
}

/// The CPU that single-faulter runs put both the faulting thread and the
/// handler on: the last one this process may use.
///
/// On a two-core virtual machine an unpinned run is bimodal: when the two
/// threads land on different CPUs every round trip pays a cross-CPU wake-up
/// of an idle virtual CPU (about 45 µs here), when they share one it is a
/// direct switch (about 7 µs), and the scheduler flips between the two
/// within a run. Sharing one CPU makes the handler's own cost part of every
/// round trip, which is what the comparison is after.
pub fn pin_cpu() -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is an empty set, and sched_getaffinity
    // writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; pid 0 is the calling thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if r != 0 {
        return None;
    }
    // SAFETY: CPU_ISSET reads inside the set.
    (0..libc::CPU_SETSIZE as usize)
        .rev()
        .find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
}

/// Another CPU this thread may run on than `cpu` (the lowest), if any.
pub fn other_cpu(cpu: Option<usize>) -> Option<usize> {
    let cpu = cpu?;
    // SAFETY: as in `pin_cpu`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as in `pin_cpu`.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if r != 0 {
        return None;
    }
    // SAFETY: CPU_ISSET reads inside the set.
    (0..libc::CPU_SETSIZE as usize).find(|&c| c != cpu && unsafe { libc::CPU_ISSET(c, &set) })
}

/// Restricts the calling thread to `cpu` (ignored if the kernel refuses).
pub fn pin_to(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: a zeroed cpu_set_t is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside the set (`cpu` < CPU_SETSIZE, from
    // pin_cpu); sched_setaffinity reads it and changes only this thread.
    unsafe {
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
    }
}

/// Touches every 4 KiB page of `[addr, addr + len)` from `threads` threads
/// (each a contiguous share, a multiple of `unit`), while a handler thread
/// calls `serve` (one batch of events per call, returning the faults it
/// resolved) until `faults` faults are resolved.
///
/// The first access to each `unit` is timed in the faulting thread (the
/// access that faults); the others land on pages the handler already made
/// present.
pub fn run_faults(
    what: &str,
    addr: usize,
    len: usize,
    unit: usize,
    threads: usize,
    faults: usize,
    mut serve: impl FnMut() -> usize + Send,
) -> Sample {
    assert!(len.is_multiple_of(unit * threads), "{what}: uneven split");
    let share = len / threads;
    let pin = if threads == 1 { pin_cpu() } else { None };
    let start = Barrier::new(threads + 1);
    let checksum = AtomicU64::new(0);
    with_deadline(what, Duration::from_secs(120), || {
        std::thread::scope(|s| {
            let handler = s.spawn(|| {
                pin_to(pin);
                let mut served = 0;
                while served < faults {
                    served += serve();
                }
                served
            });
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (start, checksum) = (&start, &checksum);
                    s.spawn(move || {
                        let base = addr + t * share;
                        let mut lat = Vec::with_capacity(share / unit);
                        let mut sum = 0u64;
                        pin_to(pin);
                        start.wait();
                        for off in (0..share).step_by(PAGE) {
                            let p = (base + off) as *const u8;
                            if off.is_multiple_of(unit) {
                                let t0 = Instant::now();
                                // SAFETY: inside the registered mapping,
                                // which only raw pointers reach; the read
                                // waits for the handler.
                                sum += u64::from(unsafe { p.read_volatile() });
                                lat.push(t0.elapsed().as_nanos() as u32);
                            } else {
                                // SAFETY: as above.
                                sum += u64::from(unsafe { p.read_volatile() });
                            }
                        }
                        checksum.fetch_add(sum, Ordering::Relaxed);
                        (Instant::now(), lat)
                    })
                })
                .collect();
            start.wait();
            let t0 = Instant::now();
            let mut lat = Vec::with_capacity(len / unit);
            let mut end = t0;
            for w in workers {
                let (done, l) = w.join().expect("faulting thread");
                end = end.max(done);
                lat.extend(l);
            }
            let served = handler.join().expect("handler thread");
            Sample::new(len / PAGE, served, (end - t0).as_secs_f64(), lat)
        })
    })
}

/// The results of one variant over all rounds.
pub struct Series {
    pub name: String,
    pub samples: Vec<Sample>,
}

/// A benchmark's variants, run interleaved: round `r` runs each variant
/// once, in order on even rounds and in reverse on odd ones, so that no
/// variant always runs first or last.
pub struct Interleaved<'a> {
    pub title: String,
    variants: Vec<(String, Box<dyn FnMut() -> Sample + 'a>)>,
}

impl<'a> Interleaved<'a> {
    pub fn new(title: impl Into<String>) -> Interleaved<'a> {
        Interleaved {
            title: title.into(),
            variants: Vec::new(),
        }
    }

    pub fn variant(mut self, name: impl Into<String>, run: impl FnMut() -> Sample + 'a) -> Self {
        self.variants.push((name.into(), Box::new(run)));
        self
    }

    pub fn run(mut self, rounds: usize) -> Report {
        let mut series: Vec<Series> = self
            .variants
            .iter()
            .map(|(n, _)| Series {
                name: n.clone(),
                samples: Vec::new(),
            })
            .collect();
        // One warm-up round, not counted: the first run of a process pays
        // for page tables, huge page pool growth and cold caches.
        if rounds > 1 {
            for (_, run) in &mut self.variants {
                run();
            }
        }
        for r in 0..rounds {
            let n = self.variants.len();
            let order: Vec<usize> = if r % 2 == 0 {
                (0..n).collect()
            } else {
                (0..n).rev().collect()
            };
            for i in order {
                settle();
                let sample = (self.variants[i].1)();
                series[i].samples.push(sample);
            }
        }
        Report {
            title: self.title,
            series,
        }
    }
}

/// A pause between runs, so that work the kernel defers after a large
/// unmap (freeing hundreds of MiB) lands before the next run rather than
/// inside it; without it the second run of a round was measurably slower
/// at 512 MiB, whichever variant it was.
fn settle() {
    std::thread::sleep(Duration::from_millis(200));
}

/// The summary of an interleaved benchmark.
pub struct Report {
    pub title: String,
    pub series: Vec<Series>,
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

impl Report {
    fn find(&self, name: &str) -> &Series {
        self.series
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no variant {name}"))
    }

    /// Per-round ratios `candidate / baseline` of pages per second.
    pub fn ratios(&self, candidate: &str, baseline: &str) -> Vec<f64> {
        let c = self.find(candidate);
        let b = self.find(baseline);
        c.samples
            .iter()
            .zip(&b.samples)
            .map(|(c, b)| c.pages_per_sec() / b.pages_per_sec())
            .collect()
    }

    /// Prints one table row per variant, then one line per ratio.
    pub fn print(&self, ratios: &[(&str, &str)]) {
        let rounds = self.series.first().map_or(0, |s| s.samples.len());
        let first = self.series.first().and_then(|s| s.samples.first());
        println!();
        println!(
            "### {} ({} rounds after a warm-up; {} pages, {} faults per run)",
            self.title,
            rounds,
            first.map_or(0, |s| s.pages),
            first.map_or(0, |s| s.faults)
        );
        println!();
        println!("| variant | pages/s median | min | max | fault p50 µs | fault p99 µs |");
        println!("|---|---:|---:|---:|---:|---:|");
        for s in &self.series {
            let mut rate: Vec<f64> = s.samples.iter().map(Sample::pages_per_sec).collect();
            let (lo, hi) = min_max(&rate);
            let mut p50: Vec<f64> = s.samples.iter().map(|x| x.p50_us).collect();
            let mut p99: Vec<f64> = s.samples.iter().map(|x| x.p99_us).collect();
            println!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} |",
                s.name,
                median(&mut rate),
                lo,
                hi,
                median(&mut p50),
                median(&mut p99)
            );
        }
        println!();
        for (cand, base) in ratios {
            let mut r = self.ratios(cand, base);
            let (lo, hi) = min_max(&r);
            let rounds: Vec<String> = r.iter().map(|x| format!("{x:.3}")).collect();
            println!(
                "ratio {cand}/{base}: median {:.3} (min {lo:.3}, max {hi:.3}; per round {})",
                median(&mut r),
                rounds.join(" ")
            );
        }
    }
}

/// Command-line options every benchmark binary understands.
#[derive(Debug, Clone)]
pub struct Options {
    /// Tiny sizes, one round: proves the benchmarks still run.
    pub smoke: bool,
    pub rounds: usize,
    /// Sub-commands (scenario names); empty means all.
    pub only: Vec<String>,
}

impl Options {
    /// Parses `std::env::args`, ignoring the `--bench` cargo passes.
    pub fn parse(usage: &str) -> Options {
        let mut o = Options {
            smoke: std::env::var_os("USERFAULT_BENCH_SMOKE").is_some(),
            rounds: 7,
            only: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--bench" => {}
                "--smoke" => o.smoke = true,
                "--rounds" => {
                    o.rounds = args
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|&n| n > 0)
                        .unwrap_or_else(|| panic!("--rounds needs a positive number\n{usage}"))
                }
                "-h" | "--help" => {
                    println!("{usage}");
                    std::process::exit(0);
                }
                s if s.starts_with('-') => panic!("unknown option {s}\n{usage}"),
                s => o.only.push(s.to_string()),
            }
        }
        if o.smoke {
            o.rounds = 1;
        }
        o
    }

    pub fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// Runs this executable under `valgrind --tool=callgrind`, counting only the
/// instructions executed inside the function `symbol` (and what it calls),
/// and returns that count (`Ir`).
pub fn callgrind_ir(symbol: &str, args: &[String]) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let out = std::env::temp_dir().join(format!(
        "userfault-callgrind-{}-{symbol}.out",
        std::process::id()
    ));
    let status = std::process::Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--collect-atstart=no")
        .arg(format!("--toggle-collect={symbol}"))
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("-q")
        .arg(&exe)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run valgrind: {e}"))?;
    if !status.success() {
        return Err(format!("valgrind {symbol}: {status}"));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let _ = std::fs::remove_file(&out);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no totals in the callgrind output of {symbol}"))
}

/// True when `valgrind` can be run.
pub fn have_valgrind() -> bool {
    std::process::Command::new("valgrind")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The faulting side of the instruction-count runs: `pwrite(2)`s every
/// page of `[addr, addr + len)` into a scratch memfd, so that each fault is
/// raised inside the kernel (by `copy_from_user`), where valgrind, which
/// cannot run a user-mode fault handler for a blocked thread, lets it wait
/// for the handler thread like any blocking system call.
pub fn pwrite_pages(addr: usize, len: usize) {
    // SAFETY: memfd_create(2) of a NUL-terminated name.
    let sink = unsafe { libc::memfd_create(c"userfault-bench-sink".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(
        sink >= 0,
        "memfd_create: {}",
        std::io::Error::last_os_error()
    );
    for off in (0..len).step_by(PAGE) {
        // SAFETY: the kernel reads one page at `addr + off`, inside the
        // caller's registered mapping, which no reference points into.
        let n = unsafe { libc::pwrite(sink, (addr + off) as *const libc::c_void, PAGE, 0) };
        assert_eq!(
            n,
            PAGE as isize,
            "pwrite: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(sink) };
}

/// Serves `faults` faults on a handler thread with `serve` while this
/// thread raises them with [`pwrite_pages`].
pub fn pwrite_run(addr: usize, len: usize, faults: usize, mut serve: impl FnMut() -> usize + Send) {
    with_deadline("cost run", Duration::from_secs(300), || {
        std::thread::scope(|s| {
            let handler = s.spawn(|| {
                let mut served = 0;
                while served < faults {
                    served += serve();
                }
            });
            pwrite_pages(addr, len);
            handler.join().expect("handler thread");
        })
    });
}
