//! A vCPU whose memory is a guest_memfd memslot reads what the VMM put
//! there through the guest_memfd mapping, and the VMM sees what it wrote.

use kvm_ioctls::VcpuExit;
use userfault::kvm::Memslot;

use super::guest;
use crate::util::{self, require};

const SLOT_SIZE: u64 = 0x10000;

#[test]
fn vcpu_runs_on_guest_memfd_memory() {
    const TEST: &str = "vcpu_runs_on_guest_memfd_memory";
    let (_kvm, vm) = require!(TEST, "kvm", super::open_vm());
    if !super::need_gmem_slot(TEST) {
        return;
    }
    let Some(gmem) = super::need_shared_gmem(TEST, super::borrow(&vm), SLOT_SIZE) else {
        return;
    };
    let view = gmem.map_all().expect("mmap of the guest_memfd");

    let data = guest::data();
    super::poke(&view, guest::CODE_GPA as usize, guest::CODE);
    super::poke(&view, guest::DATA_GPA as usize, &data);

    let slot = Memslot::from_mapping(0, 0, &view).guest_memfd(&gmem, 0);
    // SAFETY: `view` and `gmem` stay alive until the vCPU and the VM are
    // closed (explicitly, at the end of the test); should a panic unwind
    // earlier, the vCPU (declared last) is closed first, so nothing runs
    // the guest once they are gone. The test holds no reference into
    // `view`.
    unsafe { slot.set(super::borrow(&vm)) }.expect("guest_memfd memslot");

    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    guest::enter_real_mode(&vcpu);
    let mut reported = None;
    let mut exits = Vec::new();
    for _ in 0..16 {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, bytes) => {
                assert_eq!(port, guest::PORT, "guest wrote to port {port:#x}");
                let bytes: [u8; 4] = bytes.try_into().expect("a 4-byte out");
                reported = Some(u32::from_le_bytes(bytes));
                exits.push("IoOut");
            }
            VcpuExit::Hlt => {
                exits.push("Hlt");
                break;
            }
            other => panic!("unexpected exit {other:?} after {exits:?}"),
        }
    }
    let want = guest::checksum(&data);
    assert_eq!(reported, Some(want), "exits: {exits:?}");
    let stored = super::peek(&view, guest::RESULT_GPA as usize, 4);
    assert_eq!(
        u32::from_le_bytes(stored.try_into().unwrap()),
        want,
        "the guest's store is visible through the guest_memfd mapping"
    );
    util::report(&format!(
        "kvm: real-mode vCPU on a guest_memfd slot summed {} bytes to {want:#x} ({exits:?})",
        data.len()
    ));
    // The vCPU and the VM go before the slot's memory.
    drop(vcpu);
    drop(vm);
    drop(view);
    drop(gmem);
}
