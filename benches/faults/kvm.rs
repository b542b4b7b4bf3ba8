//! Scenario 5: KVM demand paging. A vCPU (32-bit protected mode, flat
//! segments, no paging) reads the first byte of every page of a memslot
//! whose memory is private anonymous memory registered MISSING with a
//! userfaultfd; each stage-2 fault becomes a userfaultfd fault that the
//! handler resolves with a 4 KiB `UFFDIO_COPY`.
//!
//! The guest times each access with `rdtsc` (the latency the faulting vCPU
//! sees, including the exit to KVM's fault path) and stores the cycles in
//! a second, unregistered memslot; it reports the sum of the bytes it read
//! through an I/O port, which must match the source. The vCPU thread and
//! the handler share one CPU, as the faulting thread and the handler do in
//! the single-threaded scenarios (see `harness::pin_cpu`).

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use userfault::mem::{Mapping, Sharing};
use userfault::resolve::Region;
use userfault::uffd::{EventBuffer, RegisterMode, Uffd};

use crate::harness::{
    Anon, Interleaved, Options, PAGE, Report, Sample, pin_cpu, pin_to, verify, with_deadline,
};
use crate::{raw, safe, sys};

/// Slot 0: code at `CODE_GPA`, per-page cycle counts from `LAT_GPA`.
const LOW_SIZE: usize = 4 << 20;
const CODE_GPA: u64 = 0x1000;
const LAT_GPA: u64 = 0x10000;
/// Slot 1: the registered memory.
const DATA_GPA: u64 = 0x1000_0000;
const PORT: u16 = 0x10;

/// The guest: for each page, `lfence; rdtsc`, read its first byte, add it
/// to EBX, `lfence; rdtsc`, store the cycle difference; then `out` EBX and
/// `hlt`.
fn code(pages: u32) -> Vec<u8> {
    let mut c = Vec::new();
    c.push(0xBE); // mov esi, DATA_GPA
    c.extend_from_slice(&(DATA_GPA as u32).to_le_bytes());
    c.push(0xB9); // mov ecx, pages
    c.extend_from_slice(&pages.to_le_bytes());
    c.push(0xBF); // mov edi, LAT_GPA
    c.extend_from_slice(&(LAT_GPA as u32).to_le_bytes());
    c.extend_from_slice(&[0x31, 0xDB]); // xor ebx, ebx
    let top = c.len();
    #[rustfmt::skip]
    c.extend_from_slice(&[
        0x0F, 0xAE, 0xE8,                   // lfence
        0x0F, 0x31,                         // rdtsc
        0x89, 0xC5,                         // mov ebp, eax
        0x0F, 0xB6, 0x06,                   // movzx eax, byte [esi]
        0x01, 0xC3,                         // add ebx, eax
        0x0F, 0xAE, 0xE8,                   // lfence
        0x0F, 0x31,                         // rdtsc
        0x29, 0xE8,                         // sub eax, ebp
        0x89, 0x07,                         // mov [edi], eax
        0x83, 0xC7, 0x04,                   // add edi, 4
        0x81, 0xC6, 0x00, 0x10, 0x00, 0x00, // add esi, 4096
        0x49,                               // dec ecx
        0x75,                               // jnz top
    ]);
    let back = top as isize - (c.len() as isize + 1);
    c.push(i8::try_from(back).expect("short loop") as u8);
    #[rustfmt::skip]
    c.extend_from_slice(&[
        0x89, 0xD8,             // mov eax, ebx
        0x66, 0xBA, 0x10, 0x00, // mov dx, PORT
        0xEF,                   // out dx, eax
        0xF4,                   // hlt
    ]);
    c
}

/// Cycles per second of the TSC the guest reads (the host's: KVM does not
/// scale it by default).
fn tsc_hz() -> f64 {
    // SAFETY: rdtsc has no preconditions on x86_64.
    let c0 = unsafe { core::arch::x86_64::_rdtsc() };
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: as above.
    let c1 = unsafe { core::arch::x86_64::_rdtsc() };
    (c1 - c0) as f64 / t0.elapsed().as_secs_f64()
}

struct Guest {
    _kvm: Kvm,
    vm: VmFd,
    low: Anon,
}

impl Guest {
    fn new(pages: usize) -> Result<Guest, String> {
        let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
        let vm = kvm
            .create_vm()
            .map_err(|e| format!("KVM_CREATE_VM failed: {e}"))?;
        let low = Anon::new(LOW_SIZE);
        let code = code(pages as u32);
        // SAFETY: the code lies inside the fresh mapping `low`, which no
        // reference points into.
        unsafe {
            std::ptr::copy_nonoverlapping(
                code.as_ptr(),
                (low.addr + CODE_GPA as usize) as *mut u8,
                code.len(),
            )
        };
        let slot = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: LOW_SIZE as u64,
            userspace_addr: low.addr as u64,
        };
        // SAFETY: `low` outlives the VM (both owned by this value; the VM
        // field is dropped first) and is reached only through raw pointers.
        unsafe { vm.set_user_memory_region(slot) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
        Ok(Guest { _kvm: kvm, vm, low })
    }

    /// Slot 1 over `[addr, addr + len)`.
    ///
    /// # Safety
    ///
    /// The memory must stay mapped until the VM is dropped and be reached
    /// only through raw pointers.
    unsafe fn data_slot(&self, addr: usize, len: usize) {
        let slot = kvm_userspace_memory_region {
            slot: 1,
            flags: 0,
            guest_phys_addr: DATA_GPA,
            memory_size: len as u64,
            userspace_addr: addr as u64,
        };
        // SAFETY: the caller's contract.
        unsafe { self.vm.set_user_memory_region(slot) }.expect("KVM_SET_USER_MEMORY_REGION");
    }

    /// Runs the vCPU to its `out`; returns the reported sum and the time.
    fn run(&self) -> (u32, f64) {
        let mut vcpu = self.vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x8,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 1,
            s: 1,
            l: 0,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        let data = kvm_segment {
            selector: 0x10,
            type_: 0x3,
            ..code
        };
        sregs.cs = code;
        for seg in [
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.ss,
            &mut sregs.fs,
            &mut sregs.gs,
        ] {
            *seg = data;
        }
        sregs.cr0 |= 1;
        vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
        let regs = kvm_regs {
            rip: CODE_GPA,
            rflags: 0x2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).expect("KVM_SET_REGS");
        let t0 = Instant::now();
        let mut sum = None;
        loop {
            match vcpu.run() {
                Ok(VcpuExit::IoOut(port, bytes)) if port == PORT => {
                    sum = Some(u32::from_le_bytes(bytes.try_into().expect("a 4-byte out")));
                }
                Ok(VcpuExit::Hlt) => break,
                Ok(other) => panic!("unexpected vCPU exit {other:?}"),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => panic!("KVM_RUN: {e}"),
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        (sum.expect("the guest reported no sum"), secs)
    }

    /// The guest's per-page cycle counts, in ns.
    fn latencies(&self, pages: usize, hz: f64) -> Vec<u32> {
        (0..pages)
            .map(|p| {
                let at = self.low.addr + LAT_GPA as usize + 4 * p;
                // SAFETY: inside `low` (LOW_SIZE holds LAT_GPA + 4 bytes per
                // page for the sizes used); the vCPU has stopped.
                let cycles = unsafe { (at as *const u32).read_unaligned() };
                (f64::from(cycles) * 1e9 / hz) as u32
            })
            .collect()
    }
}

fn expected_sum(src: &[u8], len: usize) -> u32 {
    (0..len).step_by(PAGE).map(|off| u32::from(src[off])).sum()
}

pub fn run(src: &[u8], len: usize, o: &Options) -> Result<Report, String> {
    assert!(LAT_GPA as usize + 4 * (len / PAGE) <= LOW_SIZE);
    // A guest that needs no handler proves the guest and the mode work
    // before any fault is involved.
    {
        let mem = Anon::new(PAGE);
        let g = Guest::new(1)?;
        // SAFETY: `mem` is declared before `g`, so the VM goes first; only
        // the guest touches it.
        unsafe { g.data_slot(mem.addr, PAGE) };
        let (sum, _) = g.run();
        if sum != 0 {
            return Err(format!("the probe guest reported {sum:#x}, not 0"));
        }
        drop(g);
    }
    let hz = tsc_hz();
    Ok(Interleaved::new(format!(
        "KVM vCPU demand paging, anon memslot MISSING, 4 KiB COPY, {} MiB",
        len >> 20
    ))
    .variant("raw", || raw_run(src, len, hz))
    .variant("safe", || safe_run(src, len, hz))
    .run(o.rounds))
}

/// Checks the guest's sum and builds the sample from its run.
fn finish(
    what: &str,
    g: &Guest,
    run: (u32, f64, usize),
    src: &[u8],
    len: usize,
    hz: f64,
) -> Sample {
    let (sum, secs, served) = run;
    assert_eq!(
        sum,
        expected_sum(src, len),
        "{what}: the guest read other bytes"
    );
    Sample::new(len / PAGE, served, secs, g.latencies(len / PAGE, hz))
}

fn raw_run(src: &[u8], len: usize, hz: f64) -> Sample {
    let mem = Anon::new(len);
    let g = Guest::new(len / PAGE).expect("VM");
    let uffd = raw::open_syscall();
    let fd = uffd.as_raw_fd();
    // SAFETY: a fresh mapping that only raw pointers (and the guest) reach.
    unsafe { raw::register(fd, mem.addr, len, sys::UFFDIO_REGISTER_MODE_MISSING) };
    // SAFETY: `mem` is dropped after `g` (the VM) below.
    unsafe { g.data_slot(mem.addr, len) };
    let h = raw::Handler {
        fd,
        base: mem.addr,
        src: src.as_ptr(),
        missing: raw::Missing::Copy { unit: PAGE },
    };
    let mut msgs = raw::Msgs::new(1);
    let pin = pin_cpu();
    let run = with_deadline("raw kvm", Duration::from_secs(120), || {
        std::thread::scope(|s| {
            let handler = s.spawn(|| {
                pin_to(pin);
                let mut served = 0;
                while served < len / PAGE {
                    served += h.serve(&mut msgs);
                }
                served
            });
            let (sum, secs) = s
                .spawn(|| {
                    pin_to(pin);
                    g.run()
                })
                .join()
                .expect("vCPU thread");
            (sum, secs, handler.join().expect("handler"))
        })
    });
    let sample = finish("raw kvm", &g, run, src, len, hz);
    drop(g);
    raw::unregister(fd, mem.addr, len);
    // SAFETY: unregistered; no reference into it.
    unsafe { verify("raw kvm", mem.addr, &src[..len]) };
    sample
}

fn safe_run(src: &[u8], len: usize, hz: f64) -> Sample {
    let mem = Mapping::anonymous(len, Sharing::Private).expect("mmap");
    let g = Guest::new(len / PAGE).expect("VM");
    let uffd = Arc::new(Uffd::new().expect("userfaultfd"));
    // SAFETY: a fresh mapping that only raw pointers (and the guest) reach.
    let region = unsafe {
        Region::copy_capable(uffd, mem.addr(), len, RegisterMode::MISSING, PAGE).expect("register")
    };
    // SAFETY: `mem` is dropped after `g` (the VM) below.
    unsafe { g.data_slot(mem.addr(), len) };
    let mut buf = EventBuffer::with_capacity(1);
    let pin = pin_cpu();
    let run = with_deadline("safe kvm", Duration::from_secs(120), || {
        std::thread::scope(|s| {
            let handler = s.spawn(|| {
                pin_to(pin);
                let mut served = 0;
                while served < len / PAGE {
                    served += safe::serve_region(&region, &mut buf, |f, off| {
                        f.copy(&src[off..off + PAGE])
                    });
                }
                served
            });
            let (sum, secs) = s
                .spawn(|| {
                    pin_to(pin);
                    g.run()
                })
                .join()
                .expect("vCPU thread");
            (sum, secs, handler.join().expect("handler"))
        })
    });
    let sample = finish("safe kvm", &g, run, src, len, hz);
    drop(g);
    drop(region);
    // SAFETY: unregistered; no reference into it.
    unsafe { verify("safe kvm", mem.addr(), &src[..len]) };
    sample
}
