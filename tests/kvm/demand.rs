//! Demand paging a vCPU: the guest's memory is a shmem memfd whose mapping
//! is registered with userfaultfd, and every page the vCPU touches — its
//! code, its data, the page it stores to — is brought in by a handler
//! thread through the safe layer while KVM_RUN waits on the fault.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kvm_ioctls::VcpuExit;
use userfault::backing::{BackedMapping, Memfd};
use userfault::kvm::Memslot;
use userfault::resolve::{ContinueOnly, CopyCapable, Fault, Region};
use userfault::uffd::{Event, EventBuffer, RegisterMode, Uffd};

use super::{PAGE, guest};
use crate::util::{self, require};

const SLOT_SIZE: usize = 0x10000;

/// The memory image the guest starts from: its code and the bytes it sums.
fn image() -> Vec<u8> {
    let mut image = vec![0u8; SLOT_SIZE];
    let code = guest::CODE_GPA as usize;
    image[code..code + guest::CODE.len()].copy_from_slice(guest::CODE);
    let data = guest::DATA_GPA as usize;
    image[data..data + guest::DATA_LEN].copy_from_slice(&guest::data());
    image
}

/// How a region's faults are served.
enum Served<'a> {
    Copy(&'a Region<CopyCapable, Memfd>),
    ContinueOnly(&'a Region<ContinueOnly, Memfd>),
}

/// Serves faults from `image` until `stop`; returns the faults served.
fn serve(region: Served<'_>, uffd: &Uffd, image: &[u8], stop: &AtomicBool) -> usize {
    let mut events = EventBuffer::with_capacity(8);
    let mut served = 0;
    while !stop.load(Ordering::Acquire) {
        for event in uffd
            .wait_events(&mut events, Some(Duration::from_millis(20)))
            .expect("read events")
        {
            if !matches!(event, Event::PageFault { .. }) {
                continue;
            }
            let result = match &region {
                Served::Copy(r) => match r.fault(&event).expect("fault in the slot") {
                    Fault::Missing(f) => {
                        let at = f.page() - r.registration().start();
                        f.copy(&image[at..at + PAGE])
                    }
                    Fault::Minor(f) => f.map(),
                    Fault::WriteProtect(f) => panic!("WP fault at {:#x}", f.page()),
                    Fault::Rwp(f) => panic!("RWP fault at {:#x}", f.page()),
                    Fault::Unknown(f) => panic!("unknown fault at {:#x}", f.page()),
                },
                Served::ContinueOnly(r) => match r.fault(&event).expect("fault in the slot") {
                    Fault::Missing(f) => {
                        let at = f.file_offset() as usize;
                        f.write_then_continue(&image[at..at + PAGE])
                    }
                    Fault::Minor(f) => f.map(),
                    Fault::WriteProtect(f) => panic!("WP fault at {:#x}", f.page()),
                    Fault::Rwp(f) => panic!("RWP fault at {:#x}", f.page()),
                    Fault::Unknown(f) => panic!("unknown fault at {:#x}", f.page()),
                },
            };
            result.expect("resolution");
            served += 1;
        }
    }
    served
}

fn demand_page(test: &str, continue_only: bool) {
    let (_kvm, vm) = require!(test, "kvm", super::open_vm());
    // A CONTINUE-only region registers MISSING|MINOR on its shmem memfd.
    if continue_only && !crate::util::need(test, "uffd-minor-shmem") {
        return;
    }
    let uffd = Arc::new(require!(
        test,
        "uffd",
        Uffd::builder()
            .non_blocking(true)
            .create()
            .map_err(|e| format!("no userfaultfd: {e}"))
    ));
    let memfd = Arc::new(Memfd::shmem(c"vcpu-demand", SLOT_SIZE as u64).expect("memfd"));
    let ram = BackedMapping::whole(memfd).expect("mmap");
    let image = image();

    let slot = Memslot::from_mapping(0, 0, ram.mapping());
    // SAFETY: `ram` stays mapped while the vCPU runs (the vCPU is declared
    // after it and dropped first), and the slot is deleted before `ram` is
    // unmapped; the test holds no Rust reference into it.
    unsafe { slot.set(super::borrow(&vm)) }.expect("memslot");

    let (copy_region, co_region);
    let served_region = if continue_only {
        // SAFETY: guest memory is accessed only by the vCPU and by raw
        // pointers, never through Rust references.
        co_region = unsafe { Region::continue_only(uffd.clone(), ram.clone()) }.expect("register");
        Served::ContinueOnly(&co_region)
    } else {
        // SAFETY: as above.
        copy_region =
            unsafe { Region::copy_capable_file(uffd.clone(), ram.clone(), RegisterMode::MISSING) }
                .expect("register");
        Served::Copy(&copy_region)
    };

    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    guest::enter_real_mode(&vcpu);
    let stop = AtomicBool::new(false);
    let (reported, served) = util::with_deadline(test, Duration::from_secs(60), || {
        std::thread::scope(|s| {
            let handler = s.spawn(|| serve(served_region, &uffd, &image, &stop));
            let mut reported = None;
            for _ in 0..16 {
                match vcpu.run().expect("KVM_RUN") {
                    VcpuExit::IoOut(port, bytes) => {
                        assert_eq!(port, guest::PORT);
                        let bytes: [u8; 4] = bytes.try_into().expect("a 4-byte out");
                        reported = Some(u32::from_le_bytes(bytes));
                    }
                    VcpuExit::Hlt => break,
                    other => panic!("unexpected exit {other:?}"),
                }
            }
            stop.store(true, Ordering::Release);
            (reported, handler.join().expect("handler"))
        })
    });
    let want = guest::checksum(&guest::data());
    assert_eq!(
        reported,
        Some(want),
        "the guest's checksum over demand-paged memory"
    );
    // Code page, three data pages and the result page at least.
    assert!(served >= 5, "only {served} faults served");
    let stored = super::pread(ram.backing().as_fd(), guest::RESULT_GPA, 4);
    assert_eq!(
        stored,
        want.to_le_bytes(),
        "the guest's store reached the file"
    );
    util::report(&format!(
        "{test}: vCPU checksum {want:#x} over {} demand-paged bytes, {served} faults served",
        guest::DATA_LEN
    ));
    Memslot::delete(super::borrow(&vm), 0, 0).expect("delete memslot");
}

#[test]
fn vcpu_demand_paged_by_copy() {
    demand_page("vcpu_demand_paged_by_copy", false);
}

#[test]
fn vcpu_demand_paged_by_write_then_continue() {
    demand_page("vcpu_demand_paged_by_write_then_continue", true);
}

/// A vCPU sums its data pages and overwrites every byte it summed, while a
/// VMM thread reads the same pages through a second registered mapping of
/// the same file. Both ranges are served through the file's one page
/// state: each page is filled once, whichever mapping faults first; the
/// VMM sees every byte as the snapshot's or the guest's, never zeros; the
/// guest's checksum is the snapshot's and every byte it wrote is in the
/// file afterwards.
#[test]
fn a_vcpu_writes_while_the_vmm_reads_through_the_shared_state() {
    use crate::resolve::Counting;
    use std::sync::atomic::AtomicUsize;
    const TEST: &str = "a_vcpu_writes_while_the_vmm_reads_through_the_shared_state";
    let (_kvm, vm) = require!(TEST, "kvm", super::open_vm());
    let uffd = Arc::new(require!(
        TEST,
        "uffd",
        Uffd::builder()
            .non_blocking(true)
            .create()
            .map_err(|e| format!("no userfaultfd: {e}"))
    ));
    // Both ranges are CONTINUE-only: registered MISSING|MINOR on shmem.
    if !crate::util::need(TEST, "uffd-minor-shmem") {
        return;
    }
    let pages = SLOT_SIZE / PAGE;
    let state = userfault::resolve::PageState::new(Arc::new(Counting::new(pages))).expect("state");
    // The memslot's mapping (KVM's accesses fault through it) and the VMM's.
    let guest_ram = Arc::new(BackedMapping::new(&state, 0, SLOT_SIZE).expect("mmap"));
    let vmm_view = Arc::new(BackedMapping::new(&state, 0, SLOT_SIZE).expect("mmap"));
    let mut image = vec![0u8; SLOT_SIZE];
    let code = guest::CODE_GPA as usize;
    image[code..code + guest::WRITING_CODE.len()].copy_from_slice(guest::WRITING_CODE);
    let data_at = guest::DATA_GPA as usize;
    image[data_at..data_at + guest::DATA_LEN].copy_from_slice(&guest::data());

    let slot = Memslot::from_mapping(0, 0, guest_ram.mapping());
    // SAFETY: `guest_ram` stays mapped while the vCPU runs (the vCPU is
    // dropped first) and the slot is deleted before it is unmapped; no Rust
    // reference points into it.
    unsafe { slot.set(super::borrow(&vm)) }.expect("memslot");
    // SAFETY: both mappings are accessed only by the vCPU and through raw
    // pointers.
    let guest_region =
        unsafe { Region::continue_only(uffd.clone(), guest_ram.clone()) }.expect("register");
    // SAFETY: as above.
    let vmm_region =
        unsafe { Region::continue_only(uffd.clone(), vmm_view.clone()) }.expect("register");

    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    guest::enter_real_mode(&vcpu);
    let stop = AtomicBool::new(false);
    let halted = AtomicBool::new(false);
    let (served, vmm_reads) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let reported = util::with_deadline(TEST, Duration::from_secs(60), || {
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut events = EventBuffer::with_capacity(8);
                while !stop.load(Ordering::Acquire) {
                    for event in uffd
                        .wait_events(&mut events, Some(Duration::from_millis(10)))
                        .expect("events")
                    {
                        let fault = guest_region
                            .fault(&event)
                            .or_else(|| vmm_region.fault(&event));
                        let result = match fault {
                            Some(Fault::Missing(f)) => {
                                let at = f.file_offset() as usize;
                                f.write_then_continue(&image[at..at + PAGE])
                            }
                            Some(Fault::Minor(f)) => f.map(),
                            Some(Fault::WriteProtect(f)) => panic!("WP at {:#x}", f.page()),
                            Some(Fault::Rwp(f)) => panic!("RWP at {:#x}", f.page()),
                            Some(Fault::Unknown(f)) => panic!("unknown fault at {:#x}", f.page()),
                            None => continue,
                        };
                        result.expect("resolution");
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            // The VMM reads the data pages through its own mapping until the
            // guest halts.
            s.spawn(|| {
                let want = guest::data();
                let mut round = 0usize;
                while !halted.load(Ordering::Acquire) || round == 0 {
                    for i in (0..guest::DATA_LEN).rev().step_by(61) {
                        // SAFETY: inside the live, registered VMM mapping; the
                        // read waits for its fault.
                        let b = unsafe {
                            vmm_view
                                .mapping()
                                .as_ptr()
                                .add(data_at + i)
                                .read_volatile()
                        };
                        assert!(
                            b == want[i] || b == guest::OVERWRITE,
                            "the VMM read {b:#x} at data byte {i}: neither the snapshot's nor the guest's"
                        );
                        vmm_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    round += 1;
                }
            });
            let mut reported = None;
            for _ in 0..16 {
                match vcpu.run().expect("KVM_RUN") {
                    VcpuExit::IoOut(port, bytes) => {
                        assert_eq!(port, guest::PORT);
                        let bytes: [u8; 4] = bytes.try_into().expect("a 4-byte out");
                        reported = Some(u32::from_le_bytes(bytes));
                    }
                    VcpuExit::Hlt => break,
                    other => panic!("unexpected exit {other:?}"),
                }
            }
            halted.store(true, Ordering::Release);
            // Let the VMM reader finish its round before the handler stops.
            while vmm_reads.load(Ordering::Relaxed) == 0 {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(50));
            stop.store(true, Ordering::Release);
            reported
        })
    });
    let want = guest::checksum(&guest::data());
    assert_eq!(reported, Some(want), "the guest's checksum");
    let backing = state.backing();
    let file = super::pread(backing.as_fd(), guest::DATA_GPA, guest::DATA_LEN);
    assert!(
        file.iter().all(|&b| b == guest::OVERWRITE),
        "a byte the guest wrote was lost"
    );
    assert_eq!(
        super::pread(backing.as_fd(), guest::RESULT_GPA, 4),
        want.to_le_bytes()
    );
    assert_eq!(
        backing.doubles.load(Ordering::SeqCst),
        0,
        "a page was filled twice"
    );
    for p in [1, 2, 3, 4, 5] {
        assert_eq!(backing.fills_of(p), 1, "page {p}");
    }
    util::report(&format!(
        "{TEST}: checksum {want:#x}; {} faults served over two mappings, {} VMM reads, {} page \
         fills",
        served.load(Ordering::Relaxed),
        vmm_reads.load(Ordering::Relaxed),
        backing.pages.load(Ordering::Relaxed)
    ));
    drop(vcpu);
    Memslot::delete(super::borrow(&vm), 0, 0).expect("delete memslot");
}

/// The `kvm` module's worked example on a real guest_memfd: a vCPU whose
/// stage-2 faults are resolved through the file's page state while the
/// VMM's own mapping of the guest_memfd is served by userfaultfd through
/// the same state. Needs the posted series (guest_memfd `write()`, KVM
/// userfault, userfaultfd on guest_memfd).
#[test]
fn guest_memfd_vcpu_and_vmm_share_one_page_state() {
    use userfault::kvm::{
        GmemFlags, GmemFlavour, GuestMemfd, Kvm, MemoryFault, Stage2Resolver, UserfaultBitmap,
        probe_userfault,
    };
    use userfault::resolve::PageState;
    const TEST: &str = "guest_memfd_vcpu_and_vmm_share_one_page_state";
    let (_kvm_ioctls, vm) = require!(TEST, "kvm", super::open_vm());
    let vm_fd = super::borrow(&vm);
    let write = require!(
        TEST,
        "gmem-write",
        GmemFlavour::probe(vm_fd)
            .and_then(|f| f.write())
            .map_err(|e| format!("no guest_memfd write(): {e}"))
    );
    let kvm = Kvm::open().expect("/dev/kvm");
    require!(
        TEST,
        "kvm-userfault",
        probe_userfault(&kvm).map_err(|e| format!("no KVM userfault: {e}"))
    );
    let mut image = vec![0u8; SLOT_SIZE];
    let code = guest::CODE_GPA as usize;
    image[code..code + guest::WRITING_CODE.len()].copy_from_slice(guest::WRITING_CODE);
    let data_at = guest::DATA_GPA as usize;
    image[data_at..data_at + guest::DATA_LEN].copy_from_slice(&guest::data());
    let flags = GmemFlags::MMAP | GmemFlags::INIT_SHARED | write;
    let gmem = Arc::new(GuestMemfd::create(vm_fd, SLOT_SIZE as u64, flags).expect("guest_memfd"));
    let state = PageState::new(gmem.clone()).expect("state");
    let ram = Arc::new(BackedMapping::new(&state, 0, SLOT_SIZE).expect("mmap"));
    let uffd = Arc::new(Uffd::builder().non_blocking(true).create().expect("uffd"));
    // SAFETY: guest memory is accessed only by the vCPU and through raw
    // pointers.
    let region = require!(
        TEST,
        "gmem-uffd",
        unsafe { Region::continue_only(uffd.clone(), ram.clone()) }
            .map_err(|e| format!("no userfaultfd on guest_memfd: {e}"))
    );
    let bitmap = Arc::new(UserfaultBitmap::new_all_set(0, SLOT_SIZE as u64).expect("bitmap"));
    let resolver = Stage2Resolver::new(&state, &bitmap, 0).expect("resolver");
    let slot = Memslot::from_mapping(0, 0, ram.mapping())
        .guest_memfd(&gmem, 0)
        .userfault(&bitmap);
    // SAFETY: `ram`, `gmem` and `bitmap` outlive the slot (deleted below)
    // and the vCPU (dropped first); no Rust reference points into `ram`.
    unsafe { slot.set(vm_fd) }.expect("memslot");
    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    guest::enter_real_mode(&vcpu);
    let stop = AtomicBool::new(false);
    let (reported, stage2, served) = util::with_deadline(TEST, Duration::from_secs(300), || {
        std::thread::scope(|s| {
            let handler = s.spawn(|| {
                let mut events = EventBuffer::with_capacity(8);
                let mut served = 0;
                while !stop.load(Ordering::Acquire) {
                    for event in uffd
                        .wait_events(&mut events, Some(Duration::from_millis(10)))
                        .expect("events")
                    {
                        let r = match region.fault(&event) {
                            Some(Fault::Missing(f)) => {
                                let at = f.file_offset() as usize;
                                f.write_then_continue(&image[at..at + PAGE])
                            }
                            Some(Fault::Minor(f)) => f.map(),
                            _ => continue,
                        };
                        r.expect("resolution");
                        served += 1;
                    }
                }
                served
            });
            let (mut reported, mut stage2) = (None, 0);
            for _ in 0..64 {
                match vcpu.run().expect("KVM_RUN") {
                    VcpuExit::MemoryFault { flags, gpa, size } => {
                        let exit = MemoryFault::new(flags, gpa, size);
                        let fault = resolver.fault(&exit).expect("a userfault in the slot");
                        let at = fault.backing_offset() as usize;
                        fault.resolve(&image[at..at + PAGE]).expect("stage-2");
                        stage2 += 1;
                    }
                    VcpuExit::IoOut(_, bytes) => {
                        let bytes: [u8; 4] = bytes.try_into().expect("a 4-byte out");
                        reported = Some(u32::from_le_bytes(bytes));
                    }
                    VcpuExit::Hlt => break,
                    other => panic!("unexpected exit {other:?}"),
                }
            }
            // The VMM reads what the guest wrote, through its mapping.
            for i in (0..guest::DATA_LEN).step_by(509) {
                // SAFETY: inside the live, registered mapping.
                let b = unsafe { ram.mapping().as_ptr().add(data_at + i).read_volatile() };
                assert_eq!(b, guest::OVERWRITE, "data byte {i}");
            }
            stop.store(true, Ordering::Release);
            (reported, stage2, handler.join().expect("handler"))
        })
    });
    assert_eq!(reported, Some(guest::checksum(&guest::data())));
    assert!(stage2 >= 4, "{stage2} stage-2 faults");
    // Code, three data pages and the result page were filled by stage-2.
    assert!(bitmap.count_set() as usize <= SLOT_SIZE / PAGE - 5);
    util::report(&format!(
        "{TEST}: checksum ok; {stage2} stage-2 faults, {served} userfaultfd faults"
    ));
    drop(vcpu);
    Memslot::delete(vm_fd, 0, 0).expect("delete memslot");
}
