//! The posted series, executed where the kernel has them (the `7.3-oot`
//! kernel of the kernel matrix requires every one): a guest_memfd served
//! through the typed resolution layer, copy-capable as the kernel offers
//! it, CONTINUE-only when asked and CONTINUE-only because the kernel says
//! so; and a vCPU taking KVM userfault exits on a guest_memfd slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kvm_ioctls::VcpuExit;
use userfault::backing::BackedMapping;
use userfault::caps::{Capabilities, RangeClass};
use userfault::kvm::{
    GmemFlags, GmemFlavour, GuestMemfd, MemoryFault, Memslot, Stage2Resolver, UserfaultBitmap,
    probe_userfault,
};
use userfault::mem::{Mapping, Sharing};
use userfault::resolve::{AnyFault, AnyRegion, Fault, PageState, Region};
use userfault::uffd::{CopyMode, EventBuffer, Ioctls, RegisterMode, Uffd};

use super::PAGE;
use crate::util::{self, require};

const PAGES: usize = 4;

/// The content of page `page` in these tests.
fn page_data(page: usize) -> Vec<u8> {
    (0..PAGE)
        .map(|i| (i as u8).wrapping_mul(7) ^ (page as u8 + 0x40))
        .collect()
}

/// `MMAP | INIT_SHARED | WRITE` (the WRITE bit as the flavour probe finds
/// it) for a VM, or `None` after skipping `test` for the missing piece.
fn writable_flags(test: &str, vm: std::os::fd::BorrowedFd<'_>) -> Option<GmemFlags> {
    super::need_shared_gmem(test, vm, PAGE as u64)?;
    let flavour = GmemFlavour::probe(vm).expect("flavour probe");
    match flavour.write() {
        Ok(write) => Some(GmemFlags::MMAP | GmemFlags::INIT_SHARED | write),
        Err(e) => {
            util::skip(test, "gmem-write", &e.to_string());
            None
        }
    }
}

/// Reads page `page` of `map` on another thread (it blocks in the fault)
/// while `serve` resolves the fault that read raises, then checks that
/// the reader saw `want` in the whole page.
fn read_page_while_serving(map: &Mapping, page: usize, want: &[u8], serve: impl FnOnce()) {
    let addr = map.addr() + page * PAGE;
    let reader = std::thread::spawn(move || {
        let mut out = vec![0u8; PAGE];
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: inside the test's live mapping; the first read
            // blocks until the fault is resolved; no Rust reference points
            // into the mapping.
            *b = unsafe { ((addr + i) as *const u8).read_volatile() };
        }
        out
    });
    serve();
    let seen = util::with_deadline("page reader", Duration::from_secs(60), || {
        reader.join().expect("reader")
    });
    assert!(seen == want, "page {page}: the reader saw other bytes");
}

/// The next page fault of `uffd`, within a minute.
fn next_fault(uffd: &Uffd, buf: &mut EventBuffer) -> (usize, userfault::uffd::FaultKind) {
    crate::resolve::next_fault(uffd, buf, Duration::from_secs(60)).expect("a page fault")
}

#[test]
fn guest_memfd_served_through_the_typed_layer_as_the_kernel_offers_it() {
    const TEST: &str = "guest_memfd_served_through_the_typed_layer_as_the_kernel_offers_it";
    let (_kvm, vm) = require!(TEST, "kvm", super::open_vm());
    let vm = super::borrow(&vm);
    let Some(gmem) = super::need_shared_gmem(TEST, vm, (PAGES * PAGE) as u64) else {
        return;
    };
    let uffd = Arc::new(require!(
        TEST,
        "uffd",
        Uffd::builder()
            .non_blocking(true)
            .create()
            .map_err(|e| e.to_string())
    ));
    let mapping = BackedMapping::whole(Arc::new(gmem)).expect("mmap");
    // SAFETY: the mapping is read only through raw pointers, by the reader
    // thread; nothing references it.
    let region = match unsafe { AnyRegion::register(uffd.clone(), mapping.clone()) } {
        Ok(region) => region,
        Err(e) => {
            util::skip(TEST, "gmem-uffd", &format!("guest_memfd registration: {e}"));
            return;
        }
    };
    let mask = region.registration().ioctls();
    util::report(&format!(
        "kvm: guest_memfd registered MISSING|MINOR: {} region, ioctls {:#x}",
        region.class_name(),
        mask.bits()
    ));
    assert!(mask.contains(Ioctls::CONTINUE), "{mask:?}");
    if !mask.contains(Ioctls::COPY) {
        util::skip(
            TEST,
            "gmem-uffd-copy",
            "the range's mask offers no UFFDIO_COPY",
        );
        return;
    }
    assert_eq!(region.class_name(), "copy-capable");
    let mut buf = EventBuffer::with_capacity(4);
    let mut served = 0;
    for page in [1, 3] {
        let want = page_data(page);
        read_page_while_serving(mapping.mapping(), page, &want, || {
            let (address, kind) = next_fault(&uffd, &mut buf);
            let fault = region
                .fault_at(address, kind)
                .expect("a fault of the region");
            assert!(fault.is_missing(), "page {page}: {kind:?}");
            let AnyFault::CopyCapable(fault) = fault else {
                panic!("a copy-capable region's fault");
            };
            let Fault::Missing(missing) = fault else {
                panic!("MISSING");
            };
            missing.copy(&want).expect("UFFDIO_COPY into guest_memfd");
            served += 1;
        });
    }
    assert_eq!(served, 2, "one fill per faulting page");
}

#[test]
fn guest_memfd_continue_only_when_the_caller_asks() {
    const TEST: &str = "guest_memfd_continue_only_when_the_caller_asks";
    let (_kvm, vm) = require!(TEST, "kvm", super::open_vm());
    let vm = super::borrow(&vm);
    let Some(flags) = writable_flags(TEST, vm) else {
        return;
    };
    let gmem = Arc::new(GuestMemfd::create(vm, (PAGES * PAGE) as u64, flags).expect("gmem"));
    let mapping = BackedMapping::whole(gmem).expect("mmap");
    continue_only_serving(TEST, mapping);
}

/// A CONTINUE-only region over `mapping` of `gmem`: a MISSING fault is served by
/// write() then CONTINUE, a MINOR fault (page written before the read) by
/// CONTINUE alone; every byte read equals what was written.
fn continue_only_serving(test: &str, mapping: Arc<BackedMapping<GuestMemfd>>) -> Option<Ioctls> {
    let uffd = Arc::new(
        Uffd::builder()
            .non_blocking(true)
            .create()
            .expect("userfaultfd"),
    );
    // SAFETY: read only through raw pointers by the reader thread.
    let region = match unsafe { Region::continue_only(uffd.clone(), mapping.clone()) } {
        Ok(region) => region,
        Err(e) => {
            util::skip(test, "gmem-uffd", &format!("guest_memfd registration: {e}"));
            return None;
        }
    };
    let mask = region.registration().ioctls();
    let mut buf = EventBuffer::with_capacity(4);
    let want = page_data(0);
    read_page_while_serving(mapping.mapping(), 0, &want, || {
        let (address, kind) = next_fault(&uffd, &mut buf);
        match region
            .fault_at(address, kind)
            .expect("a fault of the region")
        {
            Fault::Missing(missing) => {
                missing
                    .write_then_continue(&want)
                    .expect("write() + UFFDIO_CONTINUE");
            }
            _ => panic!("page 0 untouched: a MISSING fault expected, got {kind:?}"),
        }
    });
    let want = page_data(2);
    // Written through the page state (the file is shared with it: its
    // own `write_at` needs the file exclusively); the page is filled, so the
    // fault is MINOR.
    mapping
        .state()
        .populate(2 * PAGE as u64, &want)
        .expect("pwrite page 2");
    read_page_while_serving(mapping.mapping(), 2, &want, || {
        let (address, kind) = next_fault(&uffd, &mut buf);
        match region
            .fault_at(address, kind)
            .expect("a fault of the region")
        {
            Fault::Minor(minor) => {
                minor.map().expect("UFFDIO_CONTINUE");
            }
            _ => panic!("page 2 in the file: a MINOR fault expected, got {kind:?}"),
        }
    });
    util::report(&format!(
        "kvm: CONTINUE-only guest_memfd region (mask {:#x}) served MISSING by write()+CONTINUE \
         and MINOR by CONTINUE",
        mask.bits()
    ));
    Some(mask)
}

/// `/sys/module/kvm/parameters/gmem_uffd_copy`: the `7.3-oot` kernel's
/// switch that makes guest_memfd mappings created while it is `N`
/// CONTINUE-only. Restored on drop.
struct CopySwitch {
    old: String,
}

const SWITCH: &str = "/sys/module/kvm/parameters/gmem_uffd_copy";

impl CopySwitch {
    fn off() -> Result<CopySwitch, String> {
        let old = std::fs::read_to_string(SWITCH)
            .map_err(|e| format!("{SWITCH}: {e} (a kernel without the CONTINUE-only switch)"))?;
        std::fs::write(SWITCH, "N").map_err(|e| format!("writing N to {SWITCH}: {e}"))?;
        Ok(CopySwitch {
            old: old.trim().to_string(),
        })
    }
}

impl Drop for CopySwitch {
    fn drop(&mut self) {
        let _ = std::fs::write(SWITCH, &self.old);
    }
}

#[test]
fn guest_memfd_continue_only_because_the_kernel_says_so() {
    const TEST: &str = "guest_memfd_continue_only_because_the_kernel_says_so";
    let (_kvm, vm) = require!(TEST, "kvm", super::open_vm());
    let vm = super::borrow(&vm);
    let Some(flags) = writable_flags(TEST, vm) else {
        return;
    };
    let gmem = Arc::new(GuestMemfd::create(vm, (PAGES * PAGE) as u64, flags).expect("gmem"));
    let switch = require!(TEST, "gmem-continue-only", CopySwitch::off());
    // Mapped while the switch is N: these mappings are CONTINUE-only (the
    // switch is read at mmap time, not when the guest_memfd is created).
    // Two mappings of one file share its page state.
    let state = PageState::new(gmem.clone()).expect("page state");
    let mapping = Arc::new(BackedMapping::new(&state, 0, PAGES * PAGE).expect("mmap"));
    let served = Arc::new(BackedMapping::new(&state, 0, PAGES * PAGE).expect("mmap"));
    let probed = Capabilities::probe().expect("probe");
    drop(switch);
    assert_eq!(
        std::fs::read_to_string(SWITCH).expect("switch").trim(),
        "Y",
        "switch restored"
    );
    assert_eq!(
        probed.guest_memfd_uffd.class.supported(),
        Some(&RangeClass::ContinueOnly),
        "the probe with the switch at N: {:?}",
        probed.guest_memfd_uffd
    );

    // The class the kernel's mask decides: CONTINUE-only.
    let uffd = Arc::new(
        Uffd::builder()
            .non_blocking(true)
            .create()
            .expect("userfaultfd"),
    );
    // The kernel's own mask for the range: no COPY, no ZEROPAGE.
    // SAFETY: nothing touches the mapping while it is registered; it is
    // unregistered right below.
    let raw = unsafe {
        uffd.register(
            mapping.addr(),
            mapping.len(),
            RegisterMode::MISSING | RegisterMode::MINOR,
        )
    }
    .expect("UFFDIO_REGISTER MISSING|MINOR");
    let kernel_mask = raw.ioctls();
    uffd.unregister(&raw).expect("unregister");
    assert!(kernel_mask.contains(Ioctls::CONTINUE), "{kernel_mask:?}");
    assert!(
        !kernel_mask.intersects(Ioctls::COPY | Ioctls::ZEROPAGE),
        "{kernel_mask:?}"
    );
    util::report(&format!(
        "kvm: with gmem_uffd_copy=N the kernel's mask is {:#x} (no COPY, no ZEROPAGE)",
        kernel_mask.bits()
    ));
    // SAFETY: nothing touches the mapping while this registration lives.
    let any = unsafe { AnyRegion::register(uffd.clone(), mapping.clone()) }.expect("register");
    assert_eq!(any.class_name(), "CONTINUE-only");
    let mask = any.registration().ioctls();
    assert!(!mask.contains(Ioctls::COPY), "{mask:?}");
    assert!(!mask.contains(Ioctls::ZEROPAGE), "{mask:?}");
    // The raw API refuses COPY before the kernel from the mask.
    let e = uffd
        .copy(
            any.registration(),
            mapping.addr(),
            &page_data(1),
            CopyMode::DONTWAKE,
        )
        .expect_err("UFFDIO_COPY on a CONTINUE-only guest_memfd range");
    assert!(e.is_unsupported(), "{e}");
    drop(any);
    // A typed CONTINUE-only region serves it.
    let mask = continue_only_serving(TEST, served).expect("a CONTINUE-only region");
    assert!(!mask.contains(Ioctls::COPY), "{mask:?}");
}

#[test]
fn vcpu_takes_kvm_userfault_exits_and_resumes_after_write_and_clear() {
    const TEST: &str = "vcpu_takes_kvm_userfault_exits_and_resumes_after_write_and_clear";
    const GMEM_GPA: u64 = 0x1_0000;
    const GMEM_PAGES: usize = 16;
    let size = (GMEM_PAGES * PAGE) as u64;
    let kvm = require!(
        TEST,
        "kvm",
        userfault::kvm::Kvm::open().map_err(|e| e.to_string())
    );
    if let Err(e) = probe_userfault(&kvm) {
        util::skip(TEST, "kvm-userfault", &e.to_string());
        return;
    }
    if !super::need_gmem_slot(TEST) {
        return;
    }
    // Memory and bitmap before the VM, so that they are dropped after it.
    let code = Mapping::anonymous(GMEM_GPA as usize, Sharing::Shared).expect("code memory");
    let bitmap = Arc::new(UserfaultBitmap::new_all_set(GMEM_GPA, size).expect("bitmap"));
    let (_k, vm_fd) = require!(TEST, "kvm", super::open_vm());
    let vm = super::borrow(&vm_fd);
    let Some(flags) = writable_flags(TEST, vm) else {
        return;
    };
    let gmem = Arc::new(GuestMemfd::create(vm, size, flags).expect("gmem"));
    let view = gmem.map_all().expect("mmap");
    let state = PageState::new(gmem.clone()).expect("page state");

    // mov ax,0x1000; mov ds,ax; mov al,[0]; out 0x10,al;
    // mov al,[0x1000]; out 0x10,al; hlt — reads pages 0 and 1 of the slot.
    let prog: [u8; 16] = [
        0xb8, 0x00, 0x10, 0x8e, 0xd8, 0xa0, 0x00, 0x00, 0xe6, 0x10, 0xa0, 0x00, 0x10, 0xe6, 0x10,
        0xf4,
    ];
    super::poke(&code, super::guest::CODE_GPA as usize, &prog);
    // SAFETY: `code`, `bitmap`, `view` and `gmem` outlive the VM and its
    // vCPU (closed explicitly at the end; on a panic the vCPU, declared
    // last, goes first); nothing references `code` or `view`.
    unsafe {
        Memslot::from_mapping(0, 0, &code)
            .set(vm)
            .expect("code slot");
        // Created with KVM_MEM_USERFAULT: this kernel's port refuses turning
        // it on for an existing guest_memfd slot.
        Memslot::from_mapping(1, GMEM_GPA, &view)
            .guest_memfd(&gmem, 0)
            .userfault(&bitmap)
            .set(vm)
            .expect("guest_memfd slot with KVM_MEM_USERFAULT");
    }
    let resolver = Stage2Resolver::new(&state, &bitmap, 0).expect("resolver");
    let mut vcpu = vm_fd.create_vcpu(0).expect("KVM_CREATE_VCPU");
    super::guest::enter_real_mode(&vcpu);
    let (mut faults, mut outs) = (Vec::new(), Vec::new());
    let done = AtomicBool::new(false);
    for _ in 0..32 {
        // KVM_RUN fails EFAULT with KVM_EXIT_MEMORY_FAULT; kvm-ioctls
        // returns that as `Ok(VcpuExit::MemoryFault)`.
        let reported = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, bytes)) => {
                assert_eq!(port, super::guest::PORT);
                outs.push(bytes[0]);
                continue;
            }
            Ok(VcpuExit::Hlt) => {
                done.store(true, Ordering::Relaxed);
                break;
            }
            Ok(VcpuExit::MemoryFault { flags, gpa, size }) => MemoryFault::new(flags, gpa, size),
            Ok(other) => panic!("unexpected exit {other:?}"),
            Err(e) => panic!("KVM_RUN: {e}"),
        };
        // The crate's own decoding of the same kvm_run.
        // SAFETY: the vCPU's mmapped kvm_run, which the kernel wrote.
        let exit = unsafe { MemoryFault::from_kvm_run(vcpu.get_kvm_run()) }
            .expect("KVM_EXIT_MEMORY_FAULT in kvm_run");
        assert_eq!(exit, reported, "kvm-ioctls and the crate decode alike");
        let fault = resolver
            .fault(&exit)
            .unwrap_or_else(|| panic!("not a userfault of the slot: {exit:?}"));
        let page = fault.page() as usize;
        faults.push((exit.gpa(), exit.flags().bits()));
        fault.resolve(&page_data(page)).expect("write + clear");
    }
    assert!(
        done.load(Ordering::Relaxed),
        "the guest halted: {faults:?} {outs:?}"
    );
    assert_eq!(
        faults
            .iter()
            .map(|(gpa, _)| *gpa & !0xfff)
            .collect::<Vec<_>>(),
        [GMEM_GPA, GMEM_GPA + PAGE as u64],
        "one USERFAULT exit per page read, in order"
    );
    assert_eq!(
        outs,
        [page_data(0)[0], page_data(1)[0]],
        "the guest read the written bytes"
    );
    assert_eq!(bitmap.count_set(), (GMEM_PAGES - 2) as u64);
    util::report(&format!(
        "kvm: vCPU took {} KVM_MEMORY_EXIT_FLAG_USERFAULT exits {faults:x?}, resumed after \
         write() + clear, read {outs:x?}",
        faults.len()
    ));
    drop(vcpu);
    // Turning KVM_MEM_USERFAULT off on the existing guest_memfd slot: the
    // series allows it; the 7.3 port refuses it (EINVAL). Either is
    // reported; any other answer fails.
    // SAFETY: as above; the vCPU is gone.
    let off = unsafe {
        Memslot::from_mapping(1, GMEM_GPA, &view)
            .guest_memfd(&gmem, 0)
            .set(vm)
    };
    match off {
        Ok(()) => util::report("kvm: KVM_MEM_USERFAULT cleared on the guest_memfd slot"),
        Err(e) => {
            assert_eq!(e.errno(), Some(userfault::Errno::EINVAL), "{e}");
            util::report(&format!(
                "kvm: this kernel refuses clearing KVM_MEM_USERFAULT on a guest_memfd slot: {e}"
            ));
        }
    }
    drop(vm_fd);
    drop(view);
    drop(gmem);
}
