//! Integration tests of the userfault workspace, run against the real
//! kernel of the machine and the C headers installed on it.
//!
//! A test that needs something this machine lacks prints
//! `SKIP <test>: <reason> [<capability>]` and returns; `USERFAULT_TEST_REQUIRE` (a comma
//! list of capability names, see `util`) turns such a skip into a failure.

// Shared fixtures: skip reporting and USERFAULT_TEST_REQUIRE.
mod util;

// Every sys-crate item against C compiled with the system's kernel headers,
// or against the reference values where those headers predate the item.
mod abi;

// The running kernel accepts the sys crates' ioctl request numbers.
mod kernel_abi;

// guest_memfd, memslots, KVM userfault and stage-2 faults (`userfault::kvm`).
mod kvm;

// The typestate resolution layer: CONTINUE-only regions on shmem and hugetlb,
// the reference's F-rows, snapshot restore with and without a populator.
mod resolve;

// The userfault-probe binary: its JSON against raw UFFDIO_API and
// UFFDIO_REGISTER calls, --require exit codes, a run as nobody.
mod probe_cli;

// The safe userfaultfd layer: open, negotiate, register, resolve, events,
// fork, a fault storm, the async reader (tests/uffd/).
mod uffd;
