//! `KVM_EXIT_MEMORY_FAULT` decoded from `kvm_run` bytes laid out by hand
//! from the kernel's documented offsets, independently of the crate's
//! `offset_of!` constants.

use userfault::error::Error;
use userfault::kvm::{
    KVM_RUN_EXIT_REASON_OFFSET, KVM_RUN_MEMORY_FAULT_OFFSET, MemoryFault, MemoryFaultFlags,
    Stage2Resolver, UserfaultBitmap,
};

/// `exit_reason` is at byte 8 of `struct kvm_run`; the exit union at 32 on
/// x86_64 (after `exit_reason`, two u8 flags, a u16, `cr8`, `apic_base`).
const EXIT_REASON_AT: usize = 8;
#[cfg(target_arch = "x86_64")]
const UNION_AT: usize = 32;
#[cfg(not(target_arch = "x86_64"))]
const UNION_AT: usize = KVM_RUN_MEMORY_FAULT_OFFSET;

fn run_bytes(exit_reason: u32, flags: u64, gpa: u64, size: u64) -> Vec<u8> {
    let mut run = vec![0xEEu8; size_of::<kvm_bindings::kvm_run>()];
    run[EXIT_REASON_AT..][..4].copy_from_slice(&exit_reason.to_ne_bytes());
    run[UNION_AT..][..8].copy_from_slice(&flags.to_ne_bytes());
    run[UNION_AT + 8..][..8].copy_from_slice(&gpa.to_ne_bytes());
    run[UNION_AT + 16..][..8].copy_from_slice(&size.to_ne_bytes());
    run
}

#[test]
fn memory_fault_decodes_from_kvm_run_bytes() {
    assert_eq!(KVM_RUN_EXIT_REASON_OFFSET, EXIT_REASON_AT);
    assert_eq!(KVM_RUN_MEMORY_FAULT_OFFSET, UNION_AT);

    let apf = 1u64 << 5; // Firecracker's asynchronous page-fault flag: no name here
    let high = 1u64 << 63;
    let flags = MemoryFaultFlags::USERFAULT.bits() | MemoryFaultFlags::PRIVATE.bits() | apf | high;
    let run = run_bytes(39, flags, 0x1_2345_6000, 4096);
    let fault = MemoryFault::from_kvm_run_bytes(&run)
        .expect("long enough")
        .expect("exit reason 39");
    assert!(fault.is_userfault());
    assert!(fault.is_private());
    assert_eq!(fault.flags().bits(), flags, "every bit kept");
    assert_eq!(fault.unknown_flags(), apf | high);
    assert_eq!(fault.gpa(), 0x1_2345_6000);
    assert_eq!(fault.size(), 4096);
    let shown = format!("{:?}", fault.flags());
    assert!(
        shown.contains("PRIVATE")
            && shown.contains("USERFAULT")
            && shown.contains("0x8000000000000020"),
        "{shown}"
    );

    // A mainline memory fault (no USERFAULT flag) decodes, but is not a
    // stage-2 userfault.
    let plain = MemoryFault::from_kvm_run_bytes(&run_bytes(39, 0, 0x1000, 4096))
        .unwrap()
        .unwrap();
    assert!(!plain.is_userfault() && !plain.is_private());
    assert_eq!(plain.unknown_flags(), 0);

    // Another exit reason (KVM_EXIT_IO = 2; KVM_EXIT_HLT = 5) is no memory fault.
    for reason in [2, 5, 38, 40] {
        assert_eq!(
            MemoryFault::from_kvm_run_bytes(&run_bytes(reason, flags, 0x1000, 4096)).unwrap(),
            None,
            "exit reason {reason}"
        );
    }
    // Too short to hold the payload.
    let e = MemoryFault::from_kvm_run_bytes(&run[..UNION_AT + 23]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(MemoryFault::from_kvm_run_bytes(&run[..UNION_AT + 24]).is_ok());

    // The typed kvm_run decodes the same way as its bytes.
    let mut typed = kvm_bindings::kvm_run {
        exit_reason: 39,
        ..Default::default()
    };
    typed.__bindgen_anon_1.memory_fault.flags = flags;
    typed.__bindgen_anon_1.memory_fault.gpa = 0x1_2345_6000;
    typed.__bindgen_anon_1.memory_fault.size = 4096;
    // SAFETY: `typed` was zeroed by `Default` before its fields were set.
    assert_eq!(unsafe { MemoryFault::from_kvm_run(&typed) }, Some(fault));
}

#[test]
fn only_userfaults_inside_the_slot_become_stage2_faults() {
    let memfd = userfault::backing::Memfd::shmem(c"stage2-decode", 8 * 4096).expect("memfd");
    let state = userfault::resolve::PageState::new(std::sync::Arc::new(memfd)).expect("state");
    let bitmap =
        std::sync::Arc::new(UserfaultBitmap::new_all_set(0x10_0000, 4 * 4096).expect("bitmap"));
    let resolver = Stage2Resolver::new(&state, &bitmap, 4 * 4096).expect("resolver");
    let uf = MemoryFaultFlags::USERFAULT.bits();

    let inside = MemoryFault::new(uf, 0x10_2000 + 0x123, 4096);
    let fault = resolver.fault(&inside).expect("a stage-2 fault");
    assert_eq!(fault.page(), 2);
    assert_eq!(fault.page_gpa(), 0x10_2000);
    assert_eq!(fault.backing_offset(), 6 * 4096);
    assert_eq!(fault.len(), 4096);

    assert!(
        resolver
            .fault(&MemoryFault::new(0, 0x10_2000, 4096))
            .is_none(),
        "no USERFAULT flag"
    );
    assert!(
        resolver
            .fault(&MemoryFault::new(uf, 0x10_4000, 4096))
            .is_none(),
        "past the slot"
    );
    assert!(
        resolver
            .fault(&MemoryFault::new(uf, 0x0f_f000, 4096))
            .is_none(),
        "before the slot"
    );

    // A slot that does not fit in the backing is refused.
    let e = Stage2Resolver::new(&state, &bitmap, 5 * 4096).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
}
