//! Integration tests of the userfault workspace, run against the real
//! kernel of the machine and the C headers installed on it.
//!
//! A test that needs something this machine lacks prints
//! `SKIP <test>: <reason>` and returns; `USERFAULT_TEST_REQUIRE` (a comma
//! list of capability names, see `util`) turns such a skip into a failure.

// Shared fixtures: skip reporting and USERFAULT_TEST_REQUIRE.
mod util;

// Every sys-crate item against C compiled with the system's kernel headers,
// or against the reference values where those headers predate the item.
mod abi;

// The running kernel accepts the sys crates' ioctl request numbers.
mod kernel_abi;

// The safe userfaultfd layer: open, negotiate, register, resolve, events,
// fork, a fault storm, the async reader (tests/uffd/).
mod uffd;
