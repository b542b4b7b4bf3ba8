//! A deterministic generator of hostile input for the decoders' property
//! tests (unit tests only).
//!
//! Each target runs for `USERFAULT_FUZZ_CASES` cases (default 20 000) or
//! `USERFAULT_FUZZ_SECONDS` seconds, whichever ends first (no time limit
//! unless set), from the seed `USERFAULT_FUZZ_SEED` (default fixed, so a
//! plain `cargo test` is reproducible). A failing case prints its seed and
//! number; rerun with that seed to reproduce it, and keep the input as a
//! regression test beside the target.

use std::time::{Duration, Instant};

/// xorshift64*: small, fast, and the same sequence on every machine.
pub(crate) struct Gen(u64);

impl Gen {
    pub(crate) fn new(seed: u64) -> Gen {
        Gen(seed.max(1))
    }

    pub(crate) fn u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.u64() % n
    }

    pub(crate) fn bool(&mut self) -> bool {
        self.u64() & 1 == 1
    }

    /// One of `items`.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// A value hostile input likes: 0, 1, all ones, a power of two, near a
    /// boundary, or anything.
    pub(crate) fn edgy_u64(&mut self) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => 1,
            2 => u64::MAX,
            3 => 1u64 << self.below(64),
            4 => (1u64 << self.below(64)).wrapping_sub(1),
            5 => u64::MAX - self.below(4096),
            6 => i64::MAX as u64 + self.below(3),
            _ => self.u64(),
        }
    }

    /// `len` random bytes.
    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.u64() as u8).collect()
    }

    /// Mutates `data` in place a few times: bit flips, byte replacements,
    /// truncation or extension.
    pub(crate) fn mutate(&mut self, data: &mut Vec<u8>) {
        for _ in 0..=self.below(4) {
            match self.below(5) {
                0 if !data.is_empty() => {
                    let at = self.below(data.len() as u64) as usize;
                    data[at] ^= 1 << self.below(8);
                }
                1 if !data.is_empty() => {
                    let at = self.below(data.len() as u64) as usize;
                    data[at] = self.u64() as u8;
                }
                2 => {
                    let keep = self.below(data.len() as u64 + 1) as usize;
                    data.truncate(keep);
                }
                3 => {
                    let more = self.below(16) as usize;
                    let extra = self.bytes(more);
                    data.extend(extra);
                }
                _ => {
                    if !data.is_empty() {
                        let at = self.below(data.len() as u64) as usize;
                        let byte = *self.pick(b"\n: \t0123456789abcdefxkB-+");
                        data.insert(at, byte);
                    }
                }
            }
        }
    }
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Runs `case` on generators seeded one after another until the budget is
/// spent; returns how many cases ran. A panic in a case names the seed.
pub(crate) fn run(target: &str, mut case: impl FnMut(&mut Gen)) -> u64 {
    let cases: u64 = env("USERFAULT_FUZZ_CASES").unwrap_or(20_000);
    let seconds: Option<f64> = env("USERFAULT_FUZZ_SECONDS");
    let seed: u64 = env("USERFAULT_FUZZ_SEED").unwrap_or(0x5EED_0F0D_DF00_D5EE);
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let mut n = 0;
    while n < cases || deadline.is_some() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let case_seed = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut g = Gen::new(case_seed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&mut g)));
        if let Err(panic) = outcome {
            eprintln!("{target}: case {n} (seed {case_seed:#x}) panicked");
            std::panic::resume_unwind(panic);
        }
        n += 1;
    }
    eprintln!("{target}: {n} cases");
    n
}
