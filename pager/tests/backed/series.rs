//! The posted series (required on the `7.3-oot` kernel): a guest_memfd
//! served by the server to the VMM's registered mapping and to a real vCPU
//! taking KVM userfault exits, through one page state.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::time::Duration;

use kvm_ioctls::VcpuExit;
use userfault::backing::BackedMapping;
use userfault::kvm::{
    GmemFlags, GmemFlavour, GuestMemfd, Kvm, MemoryFault, Memslot, UserfaultBitmap, probe_userfault,
};
use userfault::resolve::{PageState, Region};
use userfault::uffd::{Features, RegisterMode, Uffd};
use userfault_pager::source::FileSource;
use userfault_pager::{Config, FileRange, Server};

use super::{PAGE, guest, read_page, source_byte};
use crate::util::{self, require};

const PAGES: usize = 64;
const SIZE: usize = PAGES * PAGE;

/// The guest image: the summing-and-overwriting program, its data, and
/// the source pattern everywhere else.
fn image() -> Vec<u8> {
    let mut image: Vec<u8> = (0..SIZE).map(|k| source_byte(k / PAGE, k % PAGE)).collect();
    let code = guest::CODE_GPA as usize;
    image[code..code + PAGE].fill(0xF4);
    image[code..code + guest::WRITING_CODE.len()].copy_from_slice(guest::WRITING_CODE);
    let data = guest::DATA_GPA as usize;
    image[data..data + guest::DATA_LEN].copy_from_slice(&guest::data());
    image
}

fn page_of(gpa: u64) -> usize {
    gpa as usize / PAGE
}

#[test]
fn guest_memfd_served_to_the_vmm_and_a_vcpu_through_the_server() {
    serve_vmm_and_vcpu(
        "guest_memfd_served_to_the_vmm_and_a_vcpu_through_the_server",
        false,
        false,
    );
}

/// The same with the VMM's mapping registered copy-capable: its faults are
/// placed with `UFFDIO_COPY`, the vCPU's with write().
#[test]
fn guest_memfd_served_copy_capable_to_the_vmm_and_a_vcpu_through_the_server() {
    serve_vmm_and_vcpu(
        "guest_memfd_served_copy_capable_to_the_vmm_and_a_vcpu_through_the_server",
        true,
        false,
    );
}

/// With the populator writing the file while the VMM and the vCPU touch
/// it: the guest's writes survive it, every other page ends as the
/// snapshot's, and every userfault bit ends clear.
#[test]
fn guest_memfd_vcpu_and_vmm_writes_survive_the_populator() {
    serve_vmm_and_vcpu(
        "guest_memfd_vcpu_and_vmm_writes_survive_the_populator",
        false,
        true,
    );
}

/// A guest_memfd slot with KVM userfault, mapped by the VMM and registered
/// (CONTINUE-only, or copy-capable with `copy`): the VMM touches pages
/// first, then a vCPU runs the summing guest, taking a userfault exit for
/// each page the VMM did not fill, and writes its data pages; the VMM then
/// reads what the guest wrote.
fn serve_vmm_and_vcpu(test: &str, copy: bool, prefetch: bool) {
    // Declared before the VM, so that they are dropped after it (the
    // memslot refers to them) also when the test fails.
    let gmem: Arc<GuestMemfd>;
    let ram: Arc<BackedMapping<GuestMemfd>>;
    let bitmap = Arc::new(UserfaultBitmap::new_all_set(0, SIZE as u64).expect("bitmap"));
    let kvm_ioctls = require!(
        test,
        "kvm",
        kvm_ioctls::Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))
    );
    let vm = require!(
        test,
        "kvm",
        kvm_ioctls
            .create_vm()
            .map_err(|e| format!("KVM_CREATE_VM: {e}"))
    );
    // SAFETY: `vm` owns the descriptor and outlives every use of `vm_fd`.
    let vm_fd = unsafe { BorrowedFd::borrow_raw(vm.as_raw_fd()) };
    let kvm = require!(test, "kvm", Kvm::open().map_err(|e| e.to_string()));
    require!(
        test,
        "kvm-userfault",
        probe_userfault(&kvm).map_err(|e| format!("no KVM userfault: {e}"))
    );
    let write = require!(
        test,
        "gmem-write",
        GmemFlavour::probe(vm_fd)
            .and_then(|f| f.write())
            .map_err(|e| format!("no guest_memfd write(): {e}"))
    );
    let flags = GmemFlags::MMAP | GmemFlags::INIT_SHARED | write;
    gmem = Arc::new(require!(
        test,
        "gmem-mmap",
        GuestMemfd::create(vm_fd, SIZE as u64, flags).map_err(|e| e.to_string())
    ));
    let state = PageState::new(gmem.clone()).expect("page state");
    ram = Arc::new(BackedMapping::new(&state, 0, SIZE).expect("mmap"));
    let uffd = Arc::new(
        Uffd::builder()
            .non_blocking(true)
            .request_features(Features::EVENT_REMOVE)
            .create()
            .expect("userfaultfd"),
    );
    let file = if copy {
        let mode = RegisterMode::MISSING | RegisterMode::MINOR;
        let region = require!(
            test,
            "gmem-uffd-copy",
            // SAFETY: guest memory is reached only by the vCPU and raw
            // pointers.
            unsafe { Region::copy_capable_file(uffd.clone(), ram.clone(), mode) }
                .map_err(|e| format!("no copy-capable userfaultfd on guest_memfd: {e}"))
        );
        FileRange::copy_capable(region, 0)
    } else {
        let region = require!(
            test,
            "gmem-uffd",
            // SAFETY: as above.
            unsafe { Region::continue_only(uffd.clone(), ram.clone()) }
                .map_err(|e| format!("no userfaultfd on guest_memfd: {e}"))
        );
        FileRange::continue_only(region, 0)
    };
    let file = file
        .expect("file range")
        .stage2_slot(bitmap.clone(), 0)
        .expect("slot");
    let image = image();
    let dir = std::env::temp_dir().join(format!("userfault-pager-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("snapshot");
    std::fs::File::create(&path)
        .unwrap()
        .write_all_at(&image, 0)
        .unwrap();
    let source = Arc::new(FileSource::open(&path).unwrap());
    // The source keeps the file open; nothing is left behind.
    std::fs::remove_dir_all(&dir).unwrap();
    let slot = Memslot::from_mapping(0, 0, ram.mapping())
        .guest_memfd(&gmem, 0)
        .userfault(&bitmap);
    // SAFETY: `ram`, `gmem` and `bitmap` outlive the slot (deleted below,
    // or closed with the VM, which is dropped before them) and the vCPU;
    // no Rust reference points into `ram`.
    unsafe { slot.set(vm_fd) }.expect("guest_memfd memslot with KVM_MEM_USERFAULT");
    // One page per resolution, so that each path fills its own pages;
    // without the populator the vCPU's pages are left to the vCPU.
    let server = Server::start(
        uffd,
        &[],
        source,
        Config {
            threads: 2,
            chunk: PAGE,
            prefetch,
            files: vec![file],
            ..Config::default()
        },
    )
    .expect("start");
    let base = ram.addr();
    let data_page = page_of(guest::DATA_GPA);
    let vmm_first = data_page + 1;
    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    guest::enter_real_mode(&vcpu);
    let (reported, exits) = util::with_deadline(test, Duration::from_secs(300), || {
        // The VMM touches one of the guest's data pages and the upper half
        // of the slot first, through its mapping (userfaultfd faults).
        std::thread::scope(|s| {
            s.spawn(|| {
                for p in std::iter::once(vmm_first).chain(PAGES / 2..PAGES) {
                    assert!(
                        read_page(base, p) == image[p * PAGE..(p + 1) * PAGE],
                        "VMM page {p}"
                    );
                }
            });
        });
        assert_eq!(bitmap.test(vmm_first as u64), Some(false));
        // The VMM writes a page the guest never touches.
        let vmm_written = PAGES / 2;
        // SAFETY: inside the live, registered mapping (filled just now).
        unsafe { ((base + vmm_written * PAGE + 9) as *mut u8).write_volatile(0xA7) };
        // The vCPU takes a KVM userfault exit for each other page it
        // touches; the server's stage-2 entry fills it.
        let stage2 = server.stage2();
        let (mut reported, mut exits) = (None, Vec::new());
        for _ in 0..64 {
            match vcpu.run().expect("KVM_RUN") {
                VcpuExit::MemoryFault { flags, gpa, size } => {
                    let exit = MemoryFault::new(flags, gpa, size);
                    let r = stage2.resolve(&exit).expect("stage-2 resolve");
                    assert!(r.is_some(), "not a userfault of the slot: {exit:?}");
                    exits.push(page_of(gpa));
                }
                VcpuExit::IoOut(port, bytes) => {
                    assert_eq!(port, guest::PORT);
                    let bytes: [u8; 4] = bytes.try_into().expect("a 4-byte out");
                    reported = Some(u32::from_le_bytes(bytes));
                }
                VcpuExit::Hlt => break,
                other => panic!("unexpected exit {other:?}"),
            }
        }
        (reported, exits)
    });
    assert_eq!(
        reported,
        Some(guest::checksum(&guest::data())),
        "the guest summed the snapshot's data"
    );
    assert!(
        prefetch || (exits.contains(&page_of(guest::CODE_GPA)) && exits.contains(&data_page)),
        "stage-2 exits for the code and the first data page: {exits:?}"
    );
    assert!(
        !exits.contains(&vmm_first),
        "the page the VMM filled took a stage-2 exit: {exits:?}"
    );
    // What the guest wrote (every data byte, including the page the VMM
    // filled first) is what the VMM reads now: nothing refilled it.
    for i in (0..guest::DATA_LEN).step_by(257) {
        let at = guest::DATA_GPA as usize + i;
        // SAFETY: inside the live, registered mapping.
        let b = unsafe { ((base + at) as *const u8).read_volatile() };
        assert_eq!(b, guest::OVERWRITE, "data byte {i}");
    }
    // SAFETY: as above.
    let b = unsafe { ((base + PAGES / 2 * PAGE + 9) as *const u8).read_volatile() };
    assert_eq!(b, 0xA7, "the VMM's write");
    if prefetch {
        assert!(
            server.wait_timeout(Duration::from_secs(120)),
            "the populator finished"
        );
        assert_eq!(bitmap.count_set(), 0, "every userfault bit clear");
        let result = page_of(guest::RESULT_GPA);
        let sum = guest::checksum(&guest::data()).to_le_bytes();
        for p in 0..PAGES {
            let mut want = image[p * PAGE..(p + 1) * PAGE].to_vec();
            if (data_page..data_page + guest::DATA_LEN / PAGE).contains(&p) {
                want.fill(guest::OVERWRITE);
            } else if p == result {
                want[..4].copy_from_slice(&sum);
            } else if p == PAGES / 2 {
                want[9] = 0xA7;
            }
            assert!(
                read_page(base, p) == want,
                "page {p} differs from the snapshot and the guest's and VMM's writes"
            );
        }
    }
    let stats = server.stats();
    assert_eq!(stats.stage2_faults, exits.len() as u64, "{stats:?}");
    // The vCPU's exits, the VMM's faults and the populator count each page
    // they wrote once: all of them once the populator is done.
    let counted = stats.demand_pages + stats.prefetch_pages;
    if prefetch {
        assert_eq!(counted, PAGES as u64, "{stats:?}");
    } else {
        assert!(counted <= PAGES as u64, "{stats:?}");
    }
    assert!(
        prefetch || stats.demand_faults as usize > PAGES / 2,
        "{stats:?}"
    );
    util::report(&format!(
        "{test}: checksum ok; stage-2 exits for pages {exits:?}; {} userfaultfd faults",
        stats.demand_faults
    ));
    drop(vcpu);
    server.shutdown();
    Memslot::delete(vm_fd, 0, 0).expect("delete memslot");
}
