//! Counters and the demand-fault latency histogram, readable while the
//! server runs.
//!
//! # What the latency histogram measures
//!
//! Each demand fault's time from the `read(2)` that returned its event to
//! the end of its resolution (the `UFFDIO_COPY` or `UFFDIO_ZEROPAGE` that
//! woke the faulting thread, or the `UFFDIO_WAKE` after `EEXIST`): the
//! handler's service time, not the time the faulting thread waited before
//! the event was read. One timestamp is taken per read batch and one per
//! fault.
//!
//! Timestamps come from the time-stamp counter (`rdtsc`) where the kernel
//! keeps its own time with it (x86-64, clocksource `tsc`: the kernel has
//! found it constant-rate and synchronized across CPUs), converted to
//! nanoseconds with a rate measured against `CLOCK_MONOTONIC` from the
//! server's start to its first fault and refined whenever the counters are
//! read. Elsewhere
//! they come from `CLOCK_MONOTONIC` ([`Instant`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Buckets of the latency histogram: bucket `k` counts latencies in
/// `[2^k, 2^(k+1))` nanoseconds (the last one everything longer).
pub const BUCKETS: usize = 40;

/// Live counters, updated with relaxed atomics by every server thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub demand_faults: AtomicU64,
    pub demand_pages: AtomicU64,
    pub prefetch_pages: AtomicU64,
    pub zero_pages: AtomicU64,
    pub copied_bytes: AtomicU64,
    pub already_present: AtomicU64,
    pub retries: AtomicU64,
    pub removed_pages: AtomicU64,
    pub unmapped_pages: AtomicU64,
    pub remaps: AtomicU64,
    pub forks: AtomicU64,
    pub ended_children: AtomicU64,
    pub other_events: AtomicU64,
    pub unserved_faults: AtomicU64,
    pub stage2_faults: AtomicU64,
    latency: Histogram,
    clock: Clock,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    #[cfg(test)]
    pub fn record_latency(&self, d: Duration) {
        self.latency
            .record_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// A timestamp for [`record_since`](Self::record_since).
    #[inline]
    pub fn now(&self) -> Tick {
        self.clock.now()
    }

    /// Records a demand fault's latency: from `start` to now.
    #[inline]
    pub fn record_since(&self, start: Tick) {
        self.latency.record_ns(self.clock.ns_since(start));
    }

    pub fn snapshot(&self, total_pages: u64, remaining_pages: u64) -> Stats {
        self.clock.refine();
        let get = |c: &AtomicU64| c.load(Relaxed);
        let latency = self.latency.snapshot();
        Stats {
            total_pages,
            remaining_pages,
            demand_faults: get(&self.demand_faults),
            demand_pages: get(&self.demand_pages),
            prefetch_pages: get(&self.prefetch_pages),
            zero_pages: get(&self.zero_pages),
            copied_bytes: get(&self.copied_bytes),
            already_present: get(&self.already_present),
            retries: get(&self.retries),
            removed_pages: get(&self.removed_pages),
            unmapped_pages: get(&self.unmapped_pages),
            remaps: get(&self.remaps),
            forks: get(&self.forks),
            ended_children: get(&self.ended_children),
            other_events: get(&self.other_events),
            unserved_faults: get(&self.unserved_faults),
            stage2_faults: get(&self.stage2_faults),
            latency,
        }
    }
}

#[derive(Debug)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    #[inline]
    fn record_ns(&self, ns: u64) {
        // Bucket 0 holds 0 ns too.
        let k = (63 - (ns | 1).leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[k].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn snapshot(&self) -> Latency {
        let buckets: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let count: u64 = buckets.iter().sum();
        let sum = self.sum_ns.load(Relaxed);
        let quantile = |q: f64| -> u64 {
            if count == 0 {
                return 0;
            }
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (k, &n) in buckets.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    // The bucket's upper bound.
                    return (1u64 << (k + 1)) - 1;
                }
            }
            u64::MAX
        };
        Latency {
            count,
            mean_ns: sum.checked_div(count).unwrap_or(0),
            p50_ns: quantile(0.50),
            p90_ns: quantile(0.90),
            p99_ns: quantile(0.99),
            max_ns: buckets
                .iter()
                .rposition(|&n| n > 0)
                .map_or(0, |k| (1u64 << (k + 1)) - 1),
            buckets,
        }
    }
}

/// A point in time of the latency clock ([`Counters::now`]): counter ticks
/// since the clock's base.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tick(u64);

/// Nanoseconds per tick, in 32.32 fixed point, for `CLOCK_MONOTONIC`
/// timestamps (which are already nanoseconds).
const NS_PER_NS: u64 = 1 << 32;

/// The latency histogram's clock (see the module documentation).
#[derive(Debug)]
struct Clock {
    /// Timestamps are the time-stamp counter.
    tsc: bool,
    /// The base: `CLOCK_MONOTONIC` and the counter at the same moment.
    base: Instant,
    base_ticks: u64,
    /// Nanoseconds per tick, 32.32 fixed point.
    ns_per_tick: AtomicU64,
}

impl Default for Clock {
    fn default() -> Clock {
        let monotonic = Clock {
            tsc: false,
            base: Instant::now(),
            base_ticks: 0,
            ns_per_tick: AtomicU64::new(NS_PER_NS),
        };
        if !tsc_usable() {
            return monotonic;
        }
        match paired_reading() {
            // The rate is measured at the first fault (from here to then)
            // and refined whenever the counters are read.
            Some((base_ticks, base)) => Clock {
                tsc: true,
                base,
                base_ticks,
                ns_per_tick: AtomicU64::new(0),
            },
            None => monotonic,
        }
    }
}

impl Clock {
    #[inline]
    fn now(&self) -> Tick {
        if self.tsc {
            Tick(rdtsc())
        } else {
            Tick(self.base.elapsed().as_nanos() as u64)
        }
    }

    #[inline]
    fn ns_since(&self, start: Tick) -> u64 {
        let ticks = self.now().0.saturating_sub(start.0);
        let mut rate = self.ns_per_tick.load(Relaxed);
        if rate == 0 {
            rate = self.calibrate();
        }
        // At most 2^64 nanoseconds for any rate up to 1 ns per tick; past
        // that (a counter slower than 1 GHz) only after centuries.
        ((u128::from(ticks) * u128::from(rate)) >> 32) as u64
    }

    /// The first rate, from the base to now (at least [`MIN_CALIBRATION`]
    /// after it: the first fault comes later than that in practice).
    #[cold]
    #[inline(never)]
    fn calibrate(&self) -> u64 {
        while self.base.elapsed() < MIN_CALIBRATION {
            std::hint::spin_loop();
        }
        self.refine();
        self.ns_per_tick.load(Relaxed)
    }

    /// Recomputes the counter's rate from the base to now: the longer the
    /// interval, the smaller the error of the two paired readings.
    fn refine(&self) {
        if self.tsc
            && let Some(rate) = rate_since(self.base_ticks, self.base)
        {
            self.ns_per_tick.store(rate, Relaxed);
        }
    }
}

/// The shortest interval a first rate is measured over: the paired
/// readings' error (tens of nanoseconds) is then well under 1 %.
const MIN_CALIBRATION: Duration = Duration::from_micros(20);

/// Nanoseconds per counter tick (32.32 fixed point) from the paired
/// reading `(base_ticks, base)` to now.
fn rate_since(base_ticks: u64, base: Instant) -> Option<u64> {
    let (ticks, at) = paired_reading()?;
    let ns = at.checked_duration_since(base)?.as_nanos();
    let dt = ticks.checked_sub(base_ticks).filter(|&d| d > 0)?;
    u64::try_from((ns << 32) / u128::from(dt))
        .ok()
        .filter(|&r| r > 0)
}

/// The time-stamp counter.
#[cfg(target_arch = "x86_64")]
#[inline]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter into registers; it
    // touches no memory. It is used only after `tsc_usable` found that it
    // does not fault in this process (PR_GET_TSC).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn rdtsc() -> u64 {
    0
}

/// True when timestamps can come from the time-stamp counter: x86-64, the
/// kernel's clocksource is `tsc`, and this process may execute `rdtsc`
/// (`prctl(PR_GET_TSC)` is `PR_TSC_ENABLE`).
fn tsc_usable() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    let source =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource");
    if !source.is_ok_and(|s| s.trim() == "tsc") {
        return false;
    }
    let mut mode: libc::c_int = 0;
    // SAFETY: PR_GET_TSC writes one int through the pointer, which points
    // at a live local.
    let r = unsafe { libc::prctl(libc::PR_GET_TSC, &mut mode as *mut libc::c_int) };
    r == 0 && mode == libc::PR_TSC_ENABLE
}

/// The time-stamp counter and `CLOCK_MONOTONIC` read together: the
/// counter's midpoint around the clock read, from the tightest of a few
/// tries (a preemption between the reads would skew one pair).
fn paired_reading() -> Option<(u64, Instant)> {
    let mut best: Option<(u64, u64, Instant)> = None;
    for _ in 0..8 {
        let a = rdtsc();
        let at = Instant::now();
        let b = rdtsc();
        let Some(width) = b.checked_sub(a) else {
            continue;
        };
        if best.is_none_or(|(w, _, _)| width < w) {
            best = Some((width, a + width / 2, at));
        }
    }
    best.map(|(_, ticks, at)| (ticks, at))
}

/// A snapshot of the server's counters ([`Server::stats`](crate::Server::stats)).
///
/// Page counts are in pages of the range they belong to (4 KiB, or the
/// huge page size of a hugetlbfs range). The fault, page and byte counters
/// include the work done for forked children; `total_pages` and
/// `remaining_pages` are the server's own ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Pages the server serves, over every range.
    pub total_pages: u64,
    /// Pages whose contents have not been resolved yet (neither faulted
    /// in, prefetched, removed nor unmapped).
    pub remaining_pages: u64,
    /// Page-fault events handled (demand faults).
    pub demand_faults: u64,
    /// Pages resolved by demand faults (and, on file ranges, KVM userfault
    /// exits), chunk neighbours included. Each page a resolution writes is
    /// counted once, by the path that wrote it: a page the populator fills
    /// while a demand fault's chunk is resolved is the populator's. A page
    /// resolved again after a REMOVE (as zeros, on its next fault) counts
    /// again, so with a balloon the page counts can add up to more than
    /// [`total_pages`](Self::total_pages).
    pub demand_pages: u64,
    /// Pages resolved by the background populator.
    pub prefetch_pages: u64,
    /// Pages resolved as zeros: with `UFFDIO_ZEROPAGE` (zero in the source,
    /// or removed), or, on file ranges, zeros written into a removed page.
    pub zero_pages: u64,
    /// Bytes of the source placed: copied with `UFFDIO_COPY`, or written
    /// into a file range's file.
    pub copied_bytes: u64,
    /// Faults whose page was already present (resolved by another thread):
    /// woken with `UFFDIO_WAKE`.
    pub already_present: u64,
    /// Resolutions retried because the kernel answered `EAGAIN` (an
    /// address-space change was being reported).
    pub retries: u64,
    /// Pages dropped by `UFFD_EVENT_REMOVE` (a balloon): served as zeros
    /// afterwards.
    pub removed_pages: u64,
    /// Pages unmapped (`UFFD_EVENT_UNMAP`).
    pub unmapped_pages: u64,
    /// `UFFD_EVENT_REMAP` events followed.
    pub remaps: u64,
    /// `UFFD_EVENT_FORK` events: child processes served.
    pub forks: u64,
    /// Forked children whose service ended while the server ran: every
    /// page of theirs was in, or their process exited.
    pub ended_children: u64,
    /// Events of kinds the server does not act on.
    pub other_events: u64,
    /// Page faults the server could not place: outside every served range
    /// (a registered mapping the VMM grew, say), or in a range unmapped
    /// meanwhile. Each was woken with `UFFDIO_WAKE` (its thread retries the
    /// access) rather than left asleep.
    pub unserved_faults: u64,
    /// KVM userfault exits (`KVM_EXIT_MEMORY_FAULT`) resolved through
    /// [`Stage2`](crate::Stage2).
    pub stage2_faults: u64,
    /// Demand-fault latency, from the `read` that returned the event to its
    /// resolution: the handler's service time ([`Latency`] says how it is
    /// timed).
    pub latency: Latency,
}

/// The demand-fault latency histogram.
///
/// Each demand fault's time from the `read(2)` that returned its event to
/// the end of its resolution (the `UFFDIO_COPY` or `UFFDIO_ZEROPAGE` that
/// woke the faulting thread, or the `UFFDIO_WAKE` after `EEXIST`): the
/// handler's service time, not the time the faulting thread waited before
/// its event was read. One timestamp is taken per read and one per fault.
/// They come from the time-stamp counter where the kernel keeps its own
/// time with it (x86-64 with clocksource `tsc`), converted with a rate
/// calibrated against `CLOCK_MONOTONIC`, and from `CLOCK_MONOTONIC`
/// elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// Faults measured.
    pub count: u64,
    /// Mean, in nanoseconds.
    pub mean_ns: u64,
    /// Median (upper bound of its power-of-two bucket), in nanoseconds.
    pub p50_ns: u64,
    /// 90th percentile (bucket upper bound), in nanoseconds.
    pub p90_ns: u64,
    /// 99th percentile (bucket upper bound), in nanoseconds.
    pub p99_ns: u64,
    /// Largest (bucket upper bound), in nanoseconds.
    pub max_ns: u64,
    /// Bucket `k` counts latencies in `[2^k, 2^(k+1))` ns.
    pub buckets: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_bucket_bounds() {
        let c = Counters::default();
        for _ in 0..90 {
            c.record_latency(Duration::from_nanos(1000));
        }
        for _ in 0..10 {
            c.record_latency(Duration::from_micros(100));
        }
        let s = c.snapshot(10, 3);
        assert_eq!(s.latency.count, 100);
        assert_eq!(s.latency.p50_ns, 1023);
        assert_eq!(s.latency.p90_ns, 1023);
        assert_eq!(s.latency.p99_ns, (1 << 17) - 1);
        assert_eq!(s.latency.mean_ns, (90 * 1000 + 10 * 100_000) / 100);
        assert_eq!(s.remaining_pages, 3);
    }

    /// The latency clock (the time-stamp counter where the kernel's
    /// clocksource is `tsc`) agrees with `CLOCK_MONOTONIC`.
    #[test]
    fn latency_clock_agrees_with_monotonic() {
        let c = Counters::default();
        for _ in 0..3 {
            let start = c.now();
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_millis(5));
            let monotonic = t0.elapsed().as_nanos() as u64;
            let measured = c.clock.ns_since(start);
            // The counter read brackets the monotonic one: it can only be
            // longer, by the time between the reads.
            assert!(
                measured * 100 >= monotonic * 99 && measured <= monotonic + 50_000_000,
                "clock (tsc {}) measured {measured} ns over {monotonic} ns",
                c.clock.tsc
            );
        }
        let start = c.now();
        c.record_since(start);
        assert_eq!(c.snapshot(0, 0).latency.count, 1);
    }
}
