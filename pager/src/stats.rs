//! Counters and the demand-fault latency histogram, readable while the
//! server runs.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

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
    pub other_events: AtomicU64,
    pub unserved_faults: AtomicU64,
    latency: Histogram,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn record_latency(&self, d: Duration) {
        self.latency.record(d);
    }

    pub fn snapshot(&self, total_pages: u64, remaining_pages: u64) -> Stats {
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
            other_events: get(&self.other_events),
            unserved_faults: get(&self.unserved_faults),
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
    fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        let k = (63 - ns.leading_zeros() as usize).min(BUCKETS - 1);
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
    /// Pages resolved by demand faults, chunk neighbours included.
    pub demand_pages: u64,
    /// Pages resolved by the background populator.
    pub prefetch_pages: u64,
    /// Pages resolved with `UFFDIO_ZEROPAGE` (zero in the source, or removed).
    pub zero_pages: u64,
    /// Bytes copied with `UFFDIO_COPY`.
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
    /// Events of kinds the server does not act on.
    pub other_events: u64,
    /// Page faults the server could not place: outside every served range
    /// (a registered mapping the VMM grew, say), or in a range unmapped
    /// meanwhile. Each was woken with `UFFDIO_WAKE` (its thread retries the
    /// access) rather than left asleep.
    pub unserved_faults: u64,
    /// Demand-fault latency, from reading the event to its resolution.
    pub latency: Latency,
}

/// The demand-fault latency histogram.
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
}
