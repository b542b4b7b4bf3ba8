//! Scenario 7: a snapshot restore served by the page server
//! (`userfault-pager`) against a raw per-page handler written the way
//! Firecracker's example handler works.
//!
//! A guest stand-in (one thread, a vCPU) touches a realistic working set: a
//! fixed subset of the snapshot's pages in a fixed order (clusters of
//! consecutive pages, as code and data are laid out), then a tail of random
//! pages. Every page the guest touched is verified afterwards.
//!
//! The clock starts at the handshake: the moment the handler has the
//! userfaultfd and the ranges (for the baseline, once its `MAP_POPULATE`
//! of the snapshot is done, which is not counted). The guest resumes
//! [`RESUME_GAP`] later, as a restored microVM does once the VMM has
//! restored its devices and vCPUs after handing the memory over, and the
//! clock stops at the guest's last access. Every variant waits the same
//! gap; only a handler that works before the guest asks gains from it.
//!
//! Every variant runs on one CPU: the guest and every handler thread
//! (the server's populator too) are pinned to the same one, as the other
//! single-faulter scenarios are (see `harness::pin_cpu`). Unpinned, this
//! two-vCPU machine is bimodal (a wake-up of an idle vCPU costs about
//! 45 µs, a switch on one CPU about 7 µs) and the baseline flipped between
//! 21 000 and 128 000 pages/s from round to round.
//!
//! | variant | handler |
//! |---|---|
//! | `fc-raw` | one `UFFDIO_COPY` of 4 KiB per fault, from a private `MAP_POPULATE` mapping of the file, one event per read |
//! | `page` | the server, 1 thread, 4 KiB chunks (per-page mode), no prefetch, `pread` of each page |
//! | `page-map` | the same from a populated private mapping of the file, as `fc-raw` copies |
//! | `demand` | the server, 1 thread, 64 KiB chunks, no prefetch |
//! | `prefetch` | the same with the background populator |
//! | `replay` | the same, prefetching the recorded working set first |
//! | `replay-0` | `replay` with the guest resuming at the handshake (no gap) |
//!
//! `pages/s` is the guest's touched pages over its time, so each ratio is
//! the baseline's time over the variant's.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use userfault::mem::{Mapping, Sharing};
use userfault::uffd::{Features, RegisterMode, Uffd};
use userfault_pager::source::{FileSource, MappedSource, Prefault};
use userfault_pager::{Config, PageSource, Populator, Range, Server, WorkingSet};

use crate::harness::{self, Interleaved, Options, PAGE, Sample, with_deadline};
use crate::raw;
use crate::sys;

/// From the handshake to the guest's first access, unless
/// `USERFAULT_BENCH_RESUME_GAP_MS` says otherwise.
pub const RESUME_GAP: Duration = Duration::from_millis(5);

/// The share of the guest's touches outside the recorded working set, in
/// percent, unless `USERFAULT_BENCH_PAGER_TAIL_PAGES` gives the tail in
/// pages: REAP (Ustiugov et al., ASPLOS '21) cut page faults by 97 % by
/// replaying the working set recorded on a function's first invocation, so
/// at most 3 % of a later invocation's faults fell outside its recording.
/// The earlier scenario's tail was 1 % of the file's pages (2 621 of 1 GiB,
/// 11 % of the touches): `USERFAULT_BENCH_PAGER_TAIL_PAGES=2621`.
pub const TAIL_PERCENT: usize = 3;

/// The tail's length in pages for a working set of `ws` pages.
fn tail_pages(ws: usize) -> usize {
    std::env::var("USERFAULT_BENCH_PAGER_TAIL_PAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ws * TAIL_PERCENT / (100 - TAIL_PERCENT))
        .max(1)
}

fn resume_gap() -> Duration {
    std::env::var("USERFAULT_BENCH_RESUME_GAP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(RESUME_GAP, Duration::from_millis)
}

/// Per server run: the variant, the guest's time in its working set and
/// tail (ms), and the pages the populator filled.
static SPLITS: std::sync::Mutex<Vec<Split>> = std::sync::Mutex::new(Vec::new());

/// One server run's variant, guest time split (ms) and prefetched pages.
type Split = (String, (f64, f64), u64);

/// The server's chunk in every variant but `page`.
const CHUNK: usize = 64 << 10;

/// What a fault in the working set resolves along the recorded order in
/// the `-ahead` variants (`Config::replay_ahead`).
const AHEAD: usize = 256 << 10;

/// The largest chunk of the `-grow` variants (`Config::adaptive_chunk`).
const GROW: usize = 512 << 10;

/// The guest's accesses: the working set (in order), then the random tail.
struct Guest {
    working_set: Vec<usize>,
    tail: Vec<usize>,
}

impl Guest {
    /// About 8 % of the pages in clusters of 8 to 64, then `tail` pages at
    /// random (a fixed seed: every variant and round sees the same
    /// accesses; a shorter tail is a prefix of a longer one).
    fn new(pages: usize, tail: usize) -> Guest {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut seen = vec![false; pages];
        let mut working_set = Vec::new();
        while working_set.len() < pages * 8 / 100 {
            let start = (next() as usize) % pages;
            let run = 8 + (next() as usize) % 57;
            let end = (start + run).min(pages);
            for (p, seen) in seen.iter_mut().enumerate().take(end).skip(start) {
                if !*seen {
                    *seen = true;
                    working_set.push(p);
                }
            }
        }
        let tail_len = tail.min(pages - working_set.len());
        let mut tail = Vec::new();
        while tail.len() < tail_len {
            let p = (next() as usize) % pages;
            if !seen[p] {
                seen[p] = true;
                tail.push(p);
            }
        }
        Guest { working_set, tail }
    }

    /// The guest's time (ms) in its working set and in its tail, from the
    /// per-access latencies.
    fn split(&self, lat: &[u32]) -> (f64, f64) {
        let (ws, tail) = lat.split_at(self.working_set.len());
        let ms = |l: &[u32]| l.iter().map(|&x| f64::from(x)).sum::<f64>() / 1e6;
        (ms(ws), ms(tail))
    }

    fn touched(&self) -> usize {
        self.working_set.len() + self.tail.len()
    }

    /// Waits until `gap` after `t0` (the handshake), then touches every
    /// page (one read each): the time from `t0` to the last access, and
    /// each access's latency (ns).
    fn run(&self, base: usize, t0: Instant, gap: Duration) -> (Duration, Vec<u32>) {
        let mut lat = Vec::with_capacity(self.touched());
        if let Some(left) = gap.checked_sub(t0.elapsed()) {
            std::thread::sleep(left);
        }
        let mut sum = 0u64;
        for &p in self.working_set.iter().chain(&self.tail) {
            let t = Instant::now();
            // SAFETY: inside the registered mapping, which only raw
            // pointers reach; the read waits for the handler.
            sum += u64::from(unsafe { ((base + p * PAGE) as *const u8).read_volatile() });
            lat.push(t.elapsed().as_nanos() as u32);
        }
        std::hint::black_box(sum);
        (t0.elapsed(), lat)
    }

    /// Compares every touched page with the source.
    fn verify(&self, what: &str, base: usize, src: &[u8]) {
        for &p in self.working_set.iter().chain(&self.tail) {
            // SAFETY: the page was touched, so it is present; no reference
            // points into the mapping.
            unsafe { harness::verify(what, base + p * PAGE, &src[p * PAGE..(p + 1) * PAGE]) };
        }
    }
}

/// The snapshot file, written once.
struct Snapshot {
    path: PathBuf,
    len: usize,
}

impl Snapshot {
    fn new(src: &[u8]) -> Snapshot {
        let dir =
            std::env::temp_dir().join(format!("userfault-bench-pager-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("bench dir");
        let path = dir.join("mem");
        if let Err(e) = std::fs::write(&path, src) {
            // Leave no partial gigabyte behind.
            let _ = std::fs::remove_dir_all(&dir);
            panic!("write the snapshot {}: {e}", path.display());
        }
        Snapshot {
            path,
            len: src.len(),
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn run(src: &[u8], len: usize, o: &Options) -> harness::Report {
    let snapshot = Snapshot::new(&src[..len]);
    let guest = {
        let ws_only = Guest::new(len / PAGE, 0);
        Guest::new(len / PAGE, tail_pages(ws_only.working_set.len()))
    };
    let ws = WorkingSet::from_pages(PAGE as u32, guest.working_set.iter().map(|&p| p as u64))
        .expect("working set");
    let src = &src[..len];
    let gap = resume_gap();
    let cpu = harness::pin_cpu();
    // Runs `f` on a thread pinned to `cpu`: the threads it starts inherit
    // the pinning.
    let pinned = |f: &(dyn Fn() -> Sample + Sync)| {
        std::thread::scope(|s| {
            s.spawn(|| {
                harness::pin_to(cpu);
                f()
            })
            .join()
            .expect("variant thread")
        })
    };
    // The populator's own CPU in the `-cpu` variants: another one this
    // process may run on (a VMM host's idle core during a restore).
    let spare = harness::other_cpu(cpu);
    let base = Run {
        prefetch: false,
        working_set: None,
        gap,
        chunk: CHUNK,
        mapped: false,
        populator_cpu: None,
        grow: None,
        ahead: 0,
    };
    let variants: Vec<(&str, Run)> = {
        let ws = Some(ws);
        let v = |prefetch: bool, replay: bool, mapped: bool, spare: Option<usize>| Run {
            prefetch,
            working_set: if replay { ws.clone() } else { None },
            mapped,
            populator_cpu: spare,
            ..base.clone()
        };
        let mut list = vec![
            (
                "page",
                Run {
                    chunk: PAGE,
                    ..base.clone()
                },
            ),
            (
                "page-map",
                Run {
                    chunk: PAGE,
                    mapped: true,
                    ..base.clone()
                },
            ),
            ("demand", v(false, false, false, None)),
            ("prefetch", v(true, false, false, None)),
            ("replay", v(true, true, false, None)),
            (
                "replay-0",
                Run {
                    gap: Duration::ZERO,
                    ..v(true, true, false, None)
                },
            ),
            ("demand-map", v(false, false, true, None)),
            ("prefetch-map", v(true, false, true, None)),
            ("replay-map", v(true, true, true, None)),
        ];
        if spare.is_some() {
            list.push(("prefetch-map-cpu", v(true, false, true, spare)));
            list.push(("replay-map-cpu", v(true, true, true, spare)));
        }
        let grow = |r: Run| Run {
            grow: Some(GROW),
            ..r
        };
        let ahead = |r: Run| Run { ahead: AHEAD, ..r };
        list.push(("replay-map-ahead", ahead(v(true, true, true, None))));
        if spare.is_some() {
            list.push(("replay-map-cpu-ahead", ahead(v(true, true, true, spare))));
        }
        list.push(("demand-map-grow", grow(v(false, false, true, None))));
        list.push(("prefetch-map-grow", grow(v(true, false, true, None))));
        if spare.is_some() {
            list.push(("prefetch-map-cpu-grow", grow(v(true, false, true, spare))));
        }
        list
    };
    let mut report = Interleaved::new(format!(
        "snapshot restore, {} MiB, guest touches {} pages ({} working set + {} random), 1 vCPU",
        len >> 20,
        guest.touched(),
        guest.working_set.len(),
        guest.tail.len()
    ))
    .variant("fc-raw", || pinned(&|| fc_raw(&snapshot, &guest, src, gap)));
    for (name, run) in &variants {
        let (snapshot, guest) = (&snapshot, &guest);
        report = report.variant(*name, move || {
            pinned(&|| server(name, snapshot, guest, src, run))
        });
    }
    let report = report.run(o.rounds);
    let splits = std::mem::take(&mut *SPLITS.lock().unwrap());
    for s in &report.series {
        let mut faults: Vec<f64> = s.samples.iter().map(|x| x.faults as f64).collect();
        // The warm-up round's runs come first: keep the counted rounds.
        let runs: Vec<_> = splits.iter().filter(|x| x.0 == s.name).collect();
        let runs = &runs[runs.len().saturating_sub(s.samples.len())..];
        let mut ws: Vec<f64> = runs.iter().map(|x| x.1.0).collect();
        let mut tail: Vec<f64> = runs.iter().map(|x| x.1.1).collect();
        let mut pre: Vec<f64> = runs.iter().map(|x| x.2 as f64).collect();
        let median = |v: &mut Vec<f64>| {
            if v.is_empty() {
                f64::NAN
            } else {
                harness::median(v)
            }
        };
        println!(
            "{}: demand faults median {:.0}; guest ms in working set {:.1}, in tail {:.1}; pages prefetched {:.0}",
            s.name,
            harness::median(&mut faults),
            median(&mut ws),
            median(&mut tail),
            median(&mut pre),
        );
    }
    report
}

/// The baseline: Firecracker's example handler, one 4 KiB COPY per fault.
fn fc_raw(snapshot: &Snapshot, guest: &Guest, src: &[u8], gap: Duration) -> Sample {
    let file = std::fs::File::open(&snapshot.path).expect("open the snapshot");
    // SAFETY: a new private read-only mapping of the whole file.
    let backing = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            snapshot.len,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_POPULATE,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(backing, libc::MAP_FAILED, "mmap the snapshot");
    let mem = harness::Anon::new(snapshot.len);
    let uffd = raw::open_syscall();
    let fd = uffd.as_raw_fd();
    // SAFETY: a fresh mapping that only raw pointers reach.
    unsafe {
        raw::register(
            fd,
            mem.addr,
            snapshot.len,
            sys::UFFDIO_REGISTER_MODE_MISSING,
        )
    };
    let h = raw::Handler {
        fd,
        base: mem.addr,
        src: backing as *const u8,
        missing: raw::Missing::Copy { unit: PAGE },
    };
    let touched = guest.touched();
    let t0 = Instant::now();
    let (time, lat) = with_deadline("fc-raw", Duration::from_secs(300), || {
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut msgs = raw::Msgs::new(1);
                let mut served = 0;
                while served < touched {
                    served += h.serve(&mut msgs);
                }
            });
            guest.run(mem.addr, t0, gap)
        })
    });
    raw::unregister(fd, mem.addr, snapshot.len);
    guest.verify("fc-raw", mem.addr, src);
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(backing, snapshot.len) };
    Sample::new(touched, touched, time.as_secs_f64(), lat)
}

/// One server variant's settings.
#[derive(Clone)]
struct Run {
    prefetch: bool,
    working_set: Option<WorkingSet>,
    gap: Duration,
    chunk: usize,
    /// Serve from a `MappedSource` (populated before the handshake, as the
    /// baseline's mapping is) instead of a `FileSource`.
    mapped: bool,
    /// The populator's own CPU.
    populator_cpu: Option<usize>,
    /// `Config::adaptive_chunk`.
    grow: Option<usize>,
    /// `Config::replay_ahead`.
    ahead: usize,
}

/// The page server over the same memory.
fn server(name: &str, snapshot: &Snapshot, guest: &Guest, src: &[u8], run: &Run) -> Sample {
    let source: Arc<dyn PageSource> = if run.mapped {
        Arc::new(MappedSource::open(&snapshot.path, Prefault::Populate).expect("map the snapshot"))
    } else {
        Arc::new(FileSource::open(&snapshot.path).expect("open the snapshot"))
    };
    let mem = Mapping::anonymous(snapshot.len, Sharing::Private).expect("guest memory");
    let uffd = Uffd::builder()
        .non_blocking(true)
        .request_features(Features::EVENT_REMOVE)
        .create()
        .expect("userfaultfd");
    // SAFETY: guest memory is reached only through raw pointers.
    let reg =
        unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }.expect("register");
    let t0 = Instant::now();
    let server = Server::start(
        Arc::new(uffd),
        &[Range::new(reg, 0)],
        source,
        Config {
            threads: 1,
            chunk: run.chunk,
            adaptive_chunk: run.grow,
            replay_ahead: run.ahead,
            prefetch: run.prefetch,
            working_set: run.working_set.clone(),
            finish_when_complete: false,
            populator: Populator {
                cpus: run.populator_cpu.into_iter().collect(),
                ..Populator::default()
            },
            ..Config::default()
        },
    )
    .expect("start the server");
    let (time, lat) = with_deadline("pager", Duration::from_secs(300), || {
        guest.run(mem.addr(), t0, run.gap)
    });
    let report = server.shutdown();
    let split = guest.split(&lat);
    SPLITS
        .lock()
        .unwrap()
        .push((name.to_string(), split, report.stats.prefetch_pages));
    guest.verify("pager", mem.addr(), src);
    Sample::new(
        guest.touched(),
        report.stats.demand_faults as usize,
        time.as_secs_f64(),
        lat,
    )
}
