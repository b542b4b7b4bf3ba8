//! Scenario 7: a snapshot restore served by the page server
//! (`userfault-pager`) against a raw per-page handler written the way
//! Firecracker's example handler works.
//!
//! A guest stand-in (one thread, a vCPU) touches a realistic working set: a
//! fixed subset of the snapshot's pages in a fixed order (clusters of
//! consecutive pages, as code and data are laid out), then a tail of random
//! pages. Timed from the moment the handler is ready (the baseline's
//! `MAP_POPULATE` of the snapshot is not counted) to the guest's last
//! access. Every page the guest touched is verified afterwards.
//!
//! | variant | handler |
//! |---|---|
//! | `fc-raw` | one `UFFDIO_COPY` of 4 KiB per fault, from a private `MAP_POPULATE` mapping of the file, one event per read |
//! | `demand` | the server, 1 thread, 64 KiB chunks, no prefetch |
//! | `prefetch` | the same with the background populator |
//! | `replay` | the same, prefetching the recorded working set first |
//!
//! `pages/s` is the guest's touched pages over its time, so each ratio is
//! the baseline's time over the variant's.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use userfault::mem::{Mapping, Sharing};
use userfault::uffd::{Features, RegisterMode, Uffd};
use userfault_pager::source::FileSource;
use userfault_pager::{Config, Range, Server, WorkingSet};

use crate::harness::{self, Interleaved, Options, PAGE, Sample, with_deadline};
use crate::raw;
use crate::sys;

/// The guest's accesses: the working set (in order), then the random tail.
struct Guest {
    working_set: Vec<usize>,
    tail: Vec<usize>,
}

impl Guest {
    /// About 8 % of the pages in clusters of 8 to 64, then 1 % at random
    /// (a fixed seed: every variant and round sees the same accesses).
    fn new(pages: usize) -> Guest {
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
        let mut tail = Vec::new();
        while tail.len() < (pages / 100).max(1) {
            let p = (next() as usize) % pages;
            if !seen[p] {
                seen[p] = true;
                tail.push(p);
            }
        }
        Guest { working_set, tail }
    }

    fn touched(&self) -> usize {
        self.working_set.len() + self.tail.len()
    }

    /// Touches every page (one read each): the time taken, and each
    /// access's latency (ns).
    fn run(&self, base: usize) -> (Duration, Vec<u32>) {
        let mut lat = Vec::with_capacity(self.touched());
        let t0 = Instant::now();
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
        std::fs::write(&path, src).expect("write the snapshot");
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
    let guest = Guest::new(len / PAGE);
    let ws = WorkingSet::from_pages(PAGE as u32, guest.working_set.iter().map(|&p| p as u64))
        .expect("working set");
    let src = &src[..len];
    let report = Interleaved::new(format!(
        "snapshot restore, {} MiB, guest touches {} pages ({} working set + {} random), 1 vCPU",
        len >> 20,
        guest.touched(),
        guest.working_set.len(),
        guest.tail.len()
    ))
    .variant("fc-raw", || fc_raw(&snapshot, &guest, src))
    .variant("demand", || server(&snapshot, &guest, src, false, None))
    .variant("prefetch", || server(&snapshot, &guest, src, true, None))
    .variant("replay", || {
        server(&snapshot, &guest, src, true, Some(ws.clone()))
    })
    .run(o.rounds);
    for s in &report.series {
        let mut faults: Vec<f64> = s.samples.iter().map(|x| x.faults as f64).collect();
        println!(
            "demand faults {}: median {:.0}",
            s.name,
            harness::median(&mut faults)
        );
    }
    report
}

/// The baseline: Firecracker's example handler, one 4 KiB COPY per fault.
fn fc_raw(snapshot: &Snapshot, guest: &Guest, src: &[u8]) -> Sample {
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
    let (time, lat) = with_deadline("fc-raw", Duration::from_secs(300), || {
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut msgs = raw::Msgs::new(1);
                let mut served = 0;
                while served < touched {
                    served += h.serve(&mut msgs);
                }
            });
            guest.run(mem.addr)
        })
    });
    raw::unregister(fd, mem.addr, snapshot.len);
    guest.verify("fc-raw", mem.addr, src);
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(backing, snapshot.len) };
    Sample::new(touched, touched, time.as_secs_f64(), lat)
}

/// The page server over the same memory.
fn server(
    snapshot: &Snapshot,
    guest: &Guest,
    src: &[u8],
    prefetch: bool,
    working_set: Option<WorkingSet>,
) -> Sample {
    let source = Arc::new(FileSource::open(&snapshot.path).expect("open the snapshot"));
    let mem = Mapping::anonymous(snapshot.len, Sharing::Private).expect("guest memory");
    let uffd = Uffd::builder()
        .non_blocking(true)
        .request_features(Features::EVENT_REMOVE)
        .create()
        .expect("userfaultfd");
    // SAFETY: guest memory is reached only through raw pointers.
    let reg =
        unsafe { uffd.register(mem.addr(), mem.len(), RegisterMode::MISSING) }.expect("register");
    let server = Server::start(
        Arc::new(uffd),
        &[Range::new(reg, 0)],
        source,
        Config {
            threads: 1,
            prefetch,
            working_set,
            finish_when_complete: false,
            ..Config::default()
        },
    )
    .expect("start the server");
    let (time, lat) = with_deadline("pager", Duration::from_secs(300), || guest.run(mem.addr()));
    let report = server.shutdown();
    guest.verify("pager", mem.addr(), src);
    Sample::new(
        guest.touched(),
        report.stats.demand_faults as usize,
        time.as_secs_f64(),
        lat,
    )
}
