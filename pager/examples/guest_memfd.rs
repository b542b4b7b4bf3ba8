//! Restores guest memory that is a guest_memfd from `guest.mem` with the
//! page server: the VMM's mapping of it is demand-paged through
//! userfaultfd (write() + UFFDIO_CONTINUE), the vCPU through KVM userfault
//! exits, and the populator fills the rest, all through the file's one
//! page state (the README's second library example). Needs a kernel with
//! the posted guest_memfd userfaultfd, guest_memfd write() and KVM
//! userfault series.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use kvm_ioctls::VcpuExit;
use userfault::backing::BackedMapping;
use userfault::kvm::{GmemFlags, GmemFlavour, GuestMemfd, MemoryFault, Memslot, UserfaultBitmap};
use userfault::resolve::{PageState, Region};
use userfault::uffd::{Features, Uffd};
use userfault_pager::source::FileSource;
use userfault_pager::{Config, FileRange, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const SIZE: usize = 1 << 30;
    // Declared before the VM, so that they outlive its memslot.
    let gmem: Arc<GuestMemfd>;
    let ram: Arc<BackedMapping<GuestMemfd>>;
    let bitmap = Arc::new(UserfaultBitmap::new_all_set(0, SIZE as u64)?);
    let snapshot = Arc::new(FileSource::open("guest.mem")?);
    let vm = kvm_ioctls::Kvm::new()?.create_vm()?;
    // SAFETY: `vm` keeps the descriptor open while `vm_fd` is in use.
    let vm_fd = unsafe { BorrowedFd::borrow_raw(vm.as_raw_fd()) };

    let write = GmemFlavour::probe(vm_fd)?.write()?;
    let flags = GmemFlags::MMAP | GmemFlags::INIT_SHARED | write;
    gmem = Arc::new(GuestMemfd::create(vm_fd, SIZE as u64, flags)?);
    let state = PageState::new(gmem.clone())?;
    ram = Arc::new(BackedMapping::new(&state, 0, SIZE)?);
    let uffd = Arc::new(
        Uffd::builder()
            .non_blocking(true)
            .request_features(Features::EVENT_REMOVE)
            .create()?,
    );
    // SAFETY: guest memory is reached only by the vCPU and raw pointers.
    let region = unsafe { Region::continue_only(uffd.clone(), ram.clone())? };
    // SAFETY: `ram`, `gmem` and `bitmap` outlive the VM (declared first);
    // no Rust reference points into `ram`.
    unsafe {
        Memslot::from_mapping(0, 0, ram.mapping())
            .guest_memfd(&gmem, 0)
            .userfault(&bitmap)
            .set(vm_fd)?
    };

    let server = Server::start(
        uffd,
        &[], // no anonymous ranges
        snapshot,
        Config {
            threads: 2,
            files: vec![FileRange::continue_only(region, 0)?.stage2_slot(bitmap.clone(), 0)?],
            ..Config::default()
        },
    )?;
    // One clone per vCPU thread.
    let stage2 = server.stage2();
    let mut vcpu = vm.create_vcpu(0)?;
    // ... set up the vCPU's registers ...
    loop {
        match vcpu.run()? {
            VcpuExit::MemoryFault { flags, gpa, size } => {
                // Fills the page's chunk, clears its bits; then re-enter.
                let resolved = stage2.resolve(&MemoryFault::new(flags, gpa, size))?;
                if resolved.is_none() {
                    return Err("a memory fault that is not a KVM userfault".into());
                }
            }
            VcpuExit::Hlt => break,
            _ => {}
        }
    }
    let report = server.shutdown();
    println!(
        "{} stage-2 exits, {} userfaultfd faults, {} pages prefetched",
        report.stats.stage2_faults, report.stats.demand_faults, report.stats.prefetch_pages
    );
    Ok(())
}
