//! `userfault-pager`: a page-fault handler for VMMs restoring guest memory
//! from a snapshot over userfaultfd.
//!
//! ```text
//! userfault-pager firecracker --socket PATH --mem-file FILE [--diff-file FILE]
//!     [--working-set FILE] [--record-working-set FILE] [--threads N]
//!     [--chunk SIZE] [--no-prefetch] [--stats-json FILE]
//!     [--chunk-max SIZE] [--replay-ahead SIZE] [--source mmap|pread]
//!     [--populator-cpus LIST]
//! ```
//!
//! Exit status: 0 when the VMM closed its connection, every page was
//! served, or SIGTERM/SIGINT/SIGHUP stopped it (counters printed, the
//! recorded working set saved); 1 when serving failed; 2 for a usage error
//! or a bad handshake.

use std::io::{IsTerminal as _, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use userfault_pager::source::{FileSource, LayeredSource, MappedSource, Prefault};
use userfault_pager::{
    Config, Exit, PageSource, Populator, Server, Stats, WorkingSet, firecracker,
};

const USAGE: &str = "usage: userfault-pager firecracker --socket PATH --mem-file FILE
           [--diff-file FILE] [--working-set FILE] [--record-working-set FILE]
           [--threads N] [--chunk SIZE] [--no-prefetch] [--stats-json FILE]
           [--chunk-max SIZE] [--replay-ahead SIZE] [--source mmap|pread]
           [--populator-cpus LIST]

Serves a Firecracker microVM's guest memory from a snapshot file as its
userfaultfd page-fault handler: listens on the Unix socket PATH (given to
Firecracker as the Uffd backend's path), receives Firecracker's
userfaultfd and memory layout, and serves each fault with the aligned
chunk around it while a background populator fills the rest.

  --socket PATH               Unix socket to listen on (a stale socket file is replaced)
  --mem-file FILE             the guest memory snapshot file
  --diff-file FILE            a diff snapshot over --mem-file (its holes fall through)
  --working-set FILE          prefetch these pages first (a recorded working set)
  --record-working-set FILE   record the order pages are first faulted, saved at exit
  --threads N                 handler threads (default 2)
  --chunk SIZE                bytes resolved around each fault: 4K..2M (default 64K)
  --chunk-max SIZE            choose each fault's chunk from its neighbours, up to SIZE
                              (default 512K; 0: the aligned --chunk around every fault):
                              a fault after resolved pages takes the next --chunk..SIZE
                              bytes forward, an isolated fault its page alone
  --replay-ahead SIZE         with --working-set, a fault on a recorded page resolves SIZE
                              bytes along the recorded order instead of its chunk
                              (default 256K; 0: its chunk)
  --no-prefetch               serve demand faults only
  --stats-json FILE           write the final counters as JSON
  --source mmap|pread         how --mem-file is read: mmap (default) maps it and copies
                              straight from the page cache, prefaulted before Firecracker
                              connects; pread reads each chunk into a buffer first
  --populator-cpus LIST       run the background populator on these CPUs only
                              (e.g. 3 or 2,3 or 2-3): a core the vCPUs do not use
  --handshake-timeout SECS    wait this long for the handshake after connect (default 10)";

#[derive(Debug)]
struct Args {
    socket: PathBuf,
    mem_file: PathBuf,
    diff_file: Option<PathBuf>,
    working_set: Option<PathBuf>,
    record: Option<PathBuf>,
    threads: usize,
    chunk: usize,
    prefetch: bool,
    stats_json: Option<PathBuf>,
    handshake_timeout: Duration,
    mapped: bool,
    populator_cpus: Vec<usize>,
    chunk_max: Option<usize>,
    replay_ahead: usize,
}

/// A CPU list as `taskset -c` takes it: `3`, `0,2`, `2-3`, `0,2-3`.
fn parse_cpus(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let (lo, hi): (usize, usize) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse().ok()?, hi.parse().ok()?),
            None => {
                let c = part.parse().ok()?;
                (c, c)
            }
        };
        if lo > hi || hi >= 1024 {
            return None;
        }
        cpus.extend(lo..=hi);
    }
    Some(cpus)
}

fn parse_size(s: &str) -> Option<usize> {
    let (num, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1 << 10),
        b'm' | b'M' => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult)
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    match it.next().as_deref() {
        Some("firecracker") => {}
        Some("-h" | "--help") => return Err(String::new()),
        Some(other) => return Err(format!("unknown command {other:?}")),
        None => return Err("no command given".into()),
    }
    let mut socket = None;
    let mut mem_file = None;
    let mut args = Args {
        socket: PathBuf::new(),
        mem_file: PathBuf::new(),
        diff_file: None,
        working_set: None,
        record: None,
        threads: 2,
        chunk: 64 << 10,
        prefetch: true,
        stats_json: None,
        handshake_timeout: Duration::from_secs(10),
        mapped: true,
        populator_cpus: Vec::new(),
        chunk_max: Some(512 << 10),
        replay_ahead: 256 << 10,
    };
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--socket" => socket = Some(PathBuf::from(value("--socket")?)),
            "--mem-file" => mem_file = Some(PathBuf::from(value("--mem-file")?)),
            "--diff-file" => args.diff_file = Some(value("--diff-file")?.into()),
            "--working-set" => args.working_set = Some(value("--working-set")?.into()),
            "--record-working-set" => args.record = Some(value("--record-working-set")?.into()),
            "--stats-json" => args.stats_json = Some(value("--stats-json")?.into()),
            "--threads" => {
                let v = value("--threads")?;
                args.threads = v
                    .parse()
                    .ok()
                    .filter(|&n| (1..=256).contains(&n))
                    .ok_or_else(|| format!("--threads {v:?}: expected 1..256"))?;
            }
            "--chunk" => {
                let v = value("--chunk")?;
                args.chunk = parse_size(&v)
                    .filter(|&n| n.is_power_of_two() && (4 << 10..=2 << 20).contains(&n))
                    .ok_or_else(|| {
                        format!("--chunk {v:?}: expected a power of two from 4K to 2M")
                    })?;
            }
            "--handshake-timeout" => {
                let v = value("--handshake-timeout")?;
                let secs: u64 = v
                    .parse()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| format!("--handshake-timeout {v:?}: expected seconds"))?;
                args.handshake_timeout = Duration::from_secs(secs);
            }
            "--chunk-max" => {
                let v = value("--chunk-max")?;
                args.chunk_max = match parse_size(&v) {
                    Some(0) => None,
                    Some(n) if n.is_power_of_two() && (4 << 10..=2 << 20).contains(&n) => Some(n),
                    _ => {
                        return Err(format!(
                            "--chunk-max {v:?}: expected 0 or a power of two from 4K to 2M"
                        ));
                    }
                };
            }
            "--replay-ahead" => {
                let v = value("--replay-ahead")?;
                args.replay_ahead = parse_size(&v)
                    .filter(|&n| n <= 64 << 20)
                    .ok_or_else(|| format!("--replay-ahead {v:?}: expected a size up to 64M"))?;
            }
            "--source" => {
                args.mapped = match value("--source")?.as_str() {
                    "mmap" => true,
                    "pread" => false,
                    v => return Err(format!("--source {v:?}: expected mmap or pread")),
                }
            }
            "--populator-cpus" => {
                let v = value("--populator-cpus")?;
                args.populator_cpus = parse_cpus(&v).ok_or_else(|| {
                    format!("--populator-cpus {v:?}: expected a CPU list such as 3, 2,3 or 2-3")
                })?;
            }
            "--no-prefetch" => args.prefetch = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    args.socket = socket.ok_or("--socket is required")?;
    args.mem_file = mem_file.ok_or("--mem-file is required")?;
    Ok(args)
}

/// Why the program stops with a failure: the message and exit status.
struct Failure(String, u8);

/// SIGTERM, SIGINT and SIGHUP: blocked in every thread, taken by one
/// thread with `sigwait(3)`, so that a stop request ends the server
/// cleanly (counters printed, the recorded working set saved).
mod signals {
    use std::mem::MaybeUninit;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

    /// What the watcher saw, and whether the server is running.
    #[derive(Debug, Default)]
    pub struct Stop {
        pub signal: AtomicI32,
        pub serving: AtomicBool,
    }

    fn set() -> libc::sigset_t {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set it is given; sigaddset
        // adds valid signal numbers to an initialised set.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(set.as_mut_ptr(), sig);
            }
            set.assume_init()
        }
    }

    /// Blocks the stop signals in this thread (and so in every thread it
    /// spawns afterwards), and starts the thread that waits for them.
    /// Before the server runs, a stop removes `socket` and exits.
    pub fn watch(socket: PathBuf) -> Arc<Stop> {
        let set = set();
        // SAFETY: changes only this thread's signal mask, to a valid set.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        let stop = Arc::new(Stop::default());
        let seen = stop.clone();
        std::thread::spawn(move || {
            let mut sig = 0;
            // SAFETY: waits on a valid set of signals blocked in every
            // thread; writes one int.
            while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
            if !seen.serving.load(Ordering::Acquire) {
                let _ = std::fs::remove_file(&socket);
                eprintln!("userfault-pager: stopped by signal {sig} before serving anything");
                std::process::exit(0);
            }
            seen.signal.store(sig, Ordering::Release);
        });
        stop
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) if msg.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("userfault-pager: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg, code)) => {
            eprintln!("userfault-pager: {msg}");
            ExitCode::from(code)
        }
    }
}

/// Binds `path`, replacing a socket file nobody listens on.
fn bind(path: &PathBuf) -> Result<UnixListener, Failure> {
    if std::fs::symlink_metadata(path).is_ok() {
        use std::os::unix::fs::FileTypeExt as _;
        let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
        if !is_socket {
            return Err(Failure(
                format!("{} exists and is not a socket", path.display()),
                2,
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(Failure(
                format!("another handler is listening on {}", path.display()),
                2,
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| Failure(format!("remove stale socket {}: {e}", path.display()), 2))?;
    }
    UnixListener::bind(path).map_err(|e| Failure(format!("bind {}: {e}", path.display()), 2))
}

/// Removes the socket file when the handler ends.
struct SocketFile<'a>(&'a PathBuf);

impl Drop for SocketFile<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    // Opened (and, mapped, prefaulted) before Firecracker connects: a
    // restore does not wait for it.
    let base: Arc<dyn PageSource> = if args.mapped {
        Arc::new(
            MappedSource::open(&args.mem_file, Prefault::Populate)
                .map_err(|e| Failure(e.to_string(), 2))?,
        )
    } else {
        Arc::new(FileSource::open(&args.mem_file).map_err(|e| Failure(e.to_string(), 2))?)
    };
    let source: Arc<dyn PageSource> = match &args.diff_file {
        None => base,
        Some(diff) => {
            let diff = FileSource::open(diff).map_err(|e| Failure(e.to_string(), 2))?;
            Arc::new(LayeredSource::new(diff, base))
        }
    };
    let working_set = match &args.working_set {
        Some(p) => Some(WorkingSet::load(p).map_err(|e| Failure(e.to_string(), 2))?),
        None => None,
    };
    if args.record.is_some() && args.prefetch {
        // Pages the populator brings in before the guest asks never fault:
        // a recording taken while prefetching (above all while replaying)
        // is only what was missed, and saved over a working set it shrinks
        // it.
        eprintln!(
            "userfault-pager: note: recording while prefetching sees only the pages that fault \
             before the populator reaches them; record with --no-prefetch for a complete working set"
        );
    }
    let stop = signals::watch(args.socket.clone());
    let listener = bind(&args.socket)?;
    let _socket_file = SocketFile(&args.socket);
    eprintln!(
        "userfault-pager: listening on {} for Firecracker; serving {} ({} bytes)",
        args.socket.display(),
        args.mem_file.display(),
        source.len()
    );
    let hs = firecracker::accept(&listener, args.handshake_timeout)
        .map_err(|e| Failure(format!("{e}; nothing was served"), 2))?;
    drop(listener);
    if hs.peer_pid == Some(std::process::id()) {
        return Err(Failure("handshake: the peer is this process".into(), 2));
    }
    hs.check_file(source.len())
        .map_err(|e| Failure(format!("{e}; nothing was served"), 2))?;
    // SAFETY: this program never creates a userfaultfd and never forks, so
    // the received one was created by another process (userfaultfd(2)
    // binds the creator's address space), checked above to be a different
    // process: registering and resolving its ranges cannot touch this
    // process's memory.
    let ranges =
        unsafe { hs.ranges() }.map_err(|e| Failure(format!("{e}; nothing was served"), 2))?;
    let pages: usize = hs.regions.iter().map(|r| r.size / r.page_size).sum();
    eprintln!(
        "userfault-pager: Firecracker (pid {}) sent {} region(s), {pages} pages; {} thread(s), {} KiB chunks{}",
        hs.peer_pid.map_or("?".to_string(), |p| p.to_string()),
        hs.regions.len(),
        args.threads,
        args.chunk >> 10,
        match (&working_set, args.prefetch) {
            (_, false) => ", no prefetch".to_string(),
            (Some(ws), true) => format!(", prefetching {} working-set pages first", ws.len()),
            (None, true) => ", prefetching".to_string(),
        }
    );
    let peer: OwnedFd = hs
        .stream
        .try_clone()
        .map_err(|e| Failure(format!("dup the connection: {e}"), 1))?
        .into();
    let config = Config {
        threads: args.threads,
        chunk: args.chunk,
        adaptive_chunk: args.chunk_max,
        replay_ahead: args.replay_ahead,
        prefetch: args.prefetch,
        working_set,
        record: args.record.is_some(),
        finish_when_complete: true,
        peer: Some(peer),
        populator: Populator {
            cpus: args.populator_cpus.clone(),
            ..Populator::default()
        },
        files: Vec::new(),
    };
    let started = Instant::now();
    // Before the start: its handler threads serve at once, so a stop from
    // here on is a stop while serving (counters printed, recording saved).
    stop.serving.store(true, Ordering::Release);
    let server = Server::start(Arc::new(hs.uffd), &ranges, source, config)
        .map_err(|e| Failure(format!("{e}; nothing was served"), 1))?;
    let progress = args.prefetch && std::io::stderr().is_terminal();
    let mut printed = false;
    let mut signal = 0;
    while !server.wait_timeout(Duration::from_millis(200)) {
        signal = stop.signal.load(Ordering::Acquire);
        if signal != 0 {
            break;
        }
        if progress && !server.is_prefetched() {
            let s = server.stats();
            let done = s.total_pages - s.remaining_pages;
            eprint!(
                "\rprefetch: {done}/{} pages ({}%), {} demand faults   ",
                s.total_pages,
                done * 100 / s.total_pages.max(1),
                s.demand_faults
            );
            let _ = std::io::stderr().flush();
            printed = true;
        }
    }
    if printed {
        eprintln!();
    }
    let report = if signal != 0 {
        server.shutdown()
    } else {
        server.wait()
    };
    let elapsed = started.elapsed();
    print_stats(&report.stats, elapsed);
    if let Some(path) = &args.stats_json {
        let json = serde_json::to_string_pretty(&report.stats).expect("stats serialize");
        std::fs::write(path, json + "\n")
            .map_err(|e| Failure(format!("write {}: {e}", path.display()), 1))?;
    }
    if let (Some(path), Some(ws)) = (&args.record, &report.recorded) {
        ws.save(path).map_err(|e| Failure(e.to_string(), 1))?;
        eprintln!(
            "userfault-pager: recorded a working set of {} pages in {}",
            ws.len(),
            path.display()
        );
    }
    let left = report.stats.remaining_pages;
    match report.exit {
        Exit::Complete => {
            eprintln!(
                "userfault-pager: every page served in {:.3} s; ranges unregistered, exiting",
                elapsed.as_secs_f64()
            );
            Ok(())
        }
        Exit::PeerClosed { reason } => {
            if left == 0 {
                eprintln!("userfault-pager: {reason}; every page had been served");
            } else {
                eprintln!(
                    "userfault-pager: {reason}; {left} of {} pages had not been needed yet",
                    report.stats.total_pages
                );
            }
            Ok(())
        }
        Exit::Shutdown => {
            eprintln!(
                "userfault-pager: stopped by signal {signal}; {left} of {} pages were never \
                 served, and the VMM's faults on them now wait forever: stop the VMM too",
                report.stats.total_pages
            );
            Ok(())
        }
        Exit::Failed(e) => Err(Failure(
            format!(
                "serving failed: {e} (the VMM's faults in unserved pages now wait forever: stop it)"
            ),
            1,
        )),
        _ => Ok(()),
    }
}

fn print_stats(s: &Stats, elapsed: Duration) {
    eprintln!(
        "userfault-pager: {:.3} s: {} demand faults ({} pages), {} pages prefetched, {} zero pages, {} MiB copied, {} already present, {} retries, {} removed, {} unmapped; fault latency p50 {} µs, p99 {} µs",
        elapsed.as_secs_f64(),
        s.demand_faults,
        s.demand_pages,
        s.prefetch_pages,
        s.zero_pages,
        s.copied_bytes >> 20,
        s.already_present,
        s.retries,
        s.removed_pages,
        s.unmapped_pages,
        s.latency.p50_ns / 1000,
        s.latency.p99_ns / 1000,
    );
}
