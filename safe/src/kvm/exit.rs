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
}
