//! Decoding of `KVM_EXIT_MEMORY_FAULT` from `kvm_run`.

use std::mem::offset_of;

use gmem_sys::kvm_memory_fault_exit;
use gmem_sys::upstream::kvm_userfault_v3 as uf;
use kvm_bindings::{kvm_run, kvm_run__bindgen_ty_1};

use crate::error::{Error, Result};

/// Offset of `exit_reason` in `struct kvm_run` (8 on every architecture).
pub const KVM_RUN_EXIT_REASON_OFFSET: usize = offset_of!(kvm_run, exit_reason);

/// Offset of the `memory_fault` payload in `struct kvm_run`: the start of
/// the exit union (32 on x86_64).
pub const KVM_RUN_MEMORY_FAULT_OFFSET: usize =
    offset_of!(kvm_run, __bindgen_anon_1) + offset_of!(kvm_run__bindgen_ty_1, memory_fault);

const PAYLOAD_END: usize = KVM_RUN_MEMORY_FAULT_OFFSET + size_of::<kvm_memory_fault_exit>();

bitflags::bitflags! {
    /// `kvm_run.memory_fault.flags` (`KVM_MEMORY_EXIT_FLAG_*`). Bits
    /// without a name here (for example Firecracker's asynchronous
    /// page-fault flag, `1 << 5`) are kept and shown in hexadecimal.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct MemoryFaultFlags: u64 {
        /// `KVM_MEMORY_EXIT_FLAG_PRIVATE`: the access was to private memory.
        const PRIVATE = gmem_sys::KVM_MEMORY_EXIT_FLAG_PRIVATE;
        /// `KVM_MEMORY_EXIT_FLAG_USERFAULT` (posted series; the same bit in
        /// the upstream v3 posting and Firecracker's stack): the page's bit
        /// is set in the slot's userfault bitmap.
        const USERFAULT = uf::KVM_MEMORY_EXIT_FLAG_USERFAULT;
        const _ = !0;
    }
}

/// A `KVM_EXIT_MEMORY_FAULT` exit: `KVM_RUN` failed with `EFAULT` (or
/// `EHWPOISON`) and `kvm_run.exit_reason` is 39.
///
/// The exit reason is meaningful only after such a failure; after a
/// successful `KVM_RUN` or another errno it is stale. Decode only then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryFault {
    flags: MemoryFaultFlags,
    gpa: u64,
    size: u64,
}

impl MemoryFault {
    /// A fault from its three fields, as a VMM that decoded `kvm_run`
    /// itself has them (for example from
    /// `kvm_ioctls::VcpuExit::MemoryFault { flags, gpa, size }`).
    pub const fn new(flags: u64, gpa: u64, size: u64) -> MemoryFault {
        MemoryFault {
            flags: MemoryFaultFlags::from_bits_retain(flags),
            gpa,
            size,
        }
    }

    /// Decodes the exit from the bytes of a `kvm_run` (the vCPU's mmapped
    /// `kvm_run`, or a copy): `None` when `exit_reason` is not
    /// `KVM_EXIT_MEMORY_FAULT`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `run` is too short to hold the payload.
    ///
    /// # References
    ///
    /// [`KVM_EXIT_MEMORY_FAULT`](https://docs.kernel.org/virt/kvm/api.html#kvm-run)
    pub fn from_kvm_run_bytes(run: &[u8]) -> Result<Option<MemoryFault>> {
        if run.len() < PAYLOAD_END {
            return Err(Error::invalid(
                "decode KVM_EXIT_MEMORY_FAULT",
                format!(
                    "kvm_run has {} bytes, the memory_fault payload ends at {PAYLOAD_END}",
                    run.len()
                ),
            ));
        }
        let u32_at = |at: usize| {
            let mut b = [0; 4];
            b.copy_from_slice(&run[at..at + 4]);
            u32::from_ne_bytes(b)
        };
        let u64_at = |at: usize| {
            let mut b = [0; 8];
            b.copy_from_slice(&run[at..at + 8]);
            u64::from_ne_bytes(b)
        };
        if u32_at(KVM_RUN_EXIT_REASON_OFFSET) != gmem_sys::KVM_EXIT_MEMORY_FAULT {
            return Ok(None);
        }
        let base = KVM_RUN_MEMORY_FAULT_OFFSET;
        Ok(Some(MemoryFault::new(
            u64_at(base + offset_of!(kvm_memory_fault_exit, flags)),
            u64_at(base + offset_of!(kvm_memory_fault_exit, gpa)),
            u64_at(base + offset_of!(kvm_memory_fault_exit, size)),
        )))
    }

    /// Decodes the exit from a `kvm_run` (for example
    /// `kvm_ioctls::VcpuFd::get_kvm_run()`): `None` when `exit_reason` is
    /// not `KVM_EXIT_MEMORY_FAULT`. For bytes of unknown origin use
    /// [`from_kvm_run_bytes`](Self::from_kvm_run_bytes), which is safe.
    ///
    /// # Safety
    ///
    /// The first 24 bytes of `run`'s exit union (the `memory_fault`
    /// payload) must be initialised. They are in the vCPU's mmapped
    /// `kvm_run`, which the kernel owns and writes, and in a `kvm_run` made
    /// with `Default::default()` (zeroed); they are not in a `kvm_run` whose
    /// union was written through a smaller variant only (for example a
    /// struct literal naming `hlt` or `io`), where reading them reads
    /// uninitialised memory.
    ///
    /// # References
    ///
    /// [`KVM_EXIT_MEMORY_FAULT`](https://docs.kernel.org/virt/kvm/api.html#kvm-run)
    pub unsafe fn from_kvm_run(run: &kvm_run) -> Option<MemoryFault> {
        if run.exit_reason != gmem_sys::KVM_EXIT_MEMORY_FAULT {
            return None;
        }
        // SAFETY: `memory_fault` is three `u64`s, valid for every bit
        // pattern, and the caller promises its bytes are initialised.
        let f = unsafe { run.__bindgen_anon_1.memory_fault };
        Some(MemoryFault::new(f.flags, f.gpa, f.size))
    }

    /// The flags, unknown bits included.
    pub fn flags(&self) -> MemoryFaultFlags {
        self.flags
    }

    /// Flag bits this crate has no name for.
    pub fn unknown_flags(&self) -> u64 {
        self.flags.bits() & !(MemoryFaultFlags::PRIVATE | MemoryFaultFlags::USERFAULT).bits()
    }

    /// The guest physical address of the faulting range.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// The size of the faulting range in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True for a KVM userfault (the USERFAULT flag).
    pub fn is_userfault(&self) -> bool {
        self.flags.contains(MemoryFaultFlags::USERFAULT)
    }

    /// True for an access to private memory (the PRIVATE flag).
    pub fn is_private(&self) -> bool {
        self.flags.contains(MemoryFaultFlags::PRIVATE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_the_kernel_layout() {
        assert_eq!(KVM_RUN_EXIT_REASON_OFFSET, 8);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(KVM_RUN_MEMORY_FAULT_OFFSET, 32);
    }

    #[test]
    fn typed_and_byte_decoding_agree() {
        let mut run = kvm_run {
            exit_reason: gmem_sys::KVM_EXIT_MEMORY_FAULT,
            ..Default::default()
        };
        run.__bindgen_anon_1.memory_fault.flags = 0x10 | 0x8 | (1 << 40);
        run.__bindgen_anon_1.memory_fault.gpa = 0x1234_5000;
        run.__bindgen_anon_1.memory_fault.size = 0x1000;
        // SAFETY: `run` was zeroed by `Default` before the fields were set.
        let f = unsafe { MemoryFault::from_kvm_run(&run) }.unwrap();
        assert!(f.is_userfault() && f.is_private());
        assert_eq!(f.unknown_flags(), 1 << 40);
        assert_eq!((f.gpa(), f.size()), (0x1234_5000, 0x1000));
        // SAFETY: a zeroed `kvm_run`.
        assert!(unsafe { MemoryFault::from_kvm_run(&kvm_run::default()) }.is_none());
        assert_eq!(
            format!("{:?}", f.flags()),
            "MemoryFaultFlags(PRIVATE | USERFAULT | 0x10000000000)"
        );
    }

    /// `kvm_run` bytes of every length, mostly memory-fault exits with
    /// hostile flags, addresses and sizes: decoding returns the bytes'
    /// fields or an error, and the stage-2 resolver maps only faults inside
    /// its slot to a page inside its backing; nothing panics.
    #[test]
    fn hostile_kvm_run_bytes() {
        use crate::backing::{Backing, Memfd};
        use crate::kvm::{Stage2Resolver, UserfaultBitmap};

        let page = crate::sys::page_size() as u64;
        const SLOT_PAGES: u64 = 16;
        let memfd = std::sync::Arc::new(
            Memfd::shmem(c"fuzz-stage2", (SLOT_PAGES + 4) * page).expect("memfd"),
        );
        crate::fuzzing::run("kvm_run memory_fault", |g| {
            let len = match g.below(4) {
                0 => g.below(PAYLOAD_END as u64 + 1) as usize,
                1 => PAYLOAD_END,
                _ => PAYLOAD_END + g.below(256) as usize,
            };
            let mut run = g.bytes(len);
            let base = KVM_RUN_MEMORY_FAULT_OFFSET;
            if len >= PAYLOAD_END {
                if g.below(4) != 0 {
                    run[KVM_RUN_EXIT_REASON_OFFSET..KVM_RUN_EXIT_REASON_OFFSET + 4]
                        .copy_from_slice(&gmem_sys::KVM_EXIT_MEMORY_FAULT.to_ne_bytes());
                }
                for field in 0..3 {
                    if g.bool() {
                        let at = base + 8 * field;
                        run[at..at + 8].copy_from_slice(&g.edgy_u64().to_ne_bytes());
                    }
                }
            }
            let word = |at: usize| u64::from_ne_bytes(run[at..at + 8].try_into().unwrap());
            let decoded = MemoryFault::from_kvm_run_bytes(&run);
            let fault = match decoded {
                Err(e) => {
                    assert!(len < PAYLOAD_END, "{len} bytes refused: {e}");
                    assert!(matches!(e, Error::InvalidArgument { .. }));
                    return;
                }
                Ok(None) => {
                    let reason = u32::from_ne_bytes(
                        run[KVM_RUN_EXIT_REASON_OFFSET..KVM_RUN_EXIT_REASON_OFFSET + 4]
                            .try_into()
                            .unwrap(),
                    );
                    assert_ne!(reason, gmem_sys::KVM_EXIT_MEMORY_FAULT);
                    return;
                }
                Ok(Some(f)) => f,
            };
            assert_eq!(fault.flags().bits(), word(base));
            assert_eq!(fault.gpa(), word(base + 8));
            assert_eq!(fault.size(), word(base + 16));
            assert_eq!(
                fault.unknown_flags() | (fault.flags().bits() & (0x8 | 0x10)),
                fault.flags().bits()
            );

            let slot_gpa = g.below(1 << 40) * page;
            let bitmap = std::sync::Arc::new(
                UserfaultBitmap::new(slot_gpa, SLOT_PAGES * page).expect("bitmap"),
            );
            let offset = g.below(5) * page;
            let state = crate::resolve::PageState::new(memfd.clone()).expect("page state");
            let resolver = Stage2Resolver::new(&state, &bitmap, offset).expect("resolver");
            let inside = fault
                .gpa()
                .checked_sub(slot_gpa)
                .is_some_and(|d| d < SLOT_PAGES * page);
            match resolver.fault(&fault) {
                Some(s2) => {
                    assert!(fault.is_userfault() && inside);
                    assert!(s2.page() < SLOT_PAGES);
                    assert!(s2.backing_offset() + page <= memfd.size());
                    assert_eq!(s2.page_gpa(), slot_gpa + s2.page() * page);
                }
                None => assert!(!fault.is_userfault() || !inside),
            }
        });
    }
}
