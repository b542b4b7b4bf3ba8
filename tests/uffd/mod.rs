//! The safe userfaultfd layer (`userfault::uffd`) against the real kernel,
//! for each memory type where a feature applies: anonymous private,
//! anonymous shared, shmem memfd and hugetlbfs memfd.

// Memory of each type, faulting threads, event waiting.
mod fixtures;

// Creation, file flags, the UFFDIO_API handshake, refusal diagnostics.
mod open;

// Per-range ioctl masks for each memory type and mode; range checks.
mod register;

// Every resolution ioctl: success paths, EEXIST and wake, EFAULT, EINVAL,
// partial progress, refusals before the system call.
mod resolve;

// REMOVE/REMAP/UNMAP, thread ids, exact addresses, batched and blocking
// reads, EINTR, closing with threads waiting.
mod events;

// FORK events: the child's userfaultfd and its faults.
mod fork;

// 64 MiB fault storms with one and two handlers; a handler that stops.
mod storm;

// The tokio reader (feature `tokio`).
mod async_reader;

// Read-write protection (Linux 7.3): RWP faults, the async mode, SET_MODE.
mod rwp;

// PAGEMAP_SCAN and working-set tracking on each mechanism.
mod workingset;
