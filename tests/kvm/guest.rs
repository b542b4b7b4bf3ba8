//! A real-mode guest, hand-assembled: sums `DATA_LEN` bytes from
//! `DATA_GPA` into EBX, stores the sum at `RESULT_GPA`, writes it to port
//! `PORT` (`out dx, eax`) and halts.

use kvm_bindings::kvm_regs;
use kvm_ioctls::VcpuFd;

pub const CODE_GPA: u64 = 0x1000;
pub const DATA_GPA: u64 = 0x2000;
pub const DATA_LEN: usize = 3 * super::PAGE;
pub const RESULT_GPA: u64 = 0x5000;
pub const PORT: u16 = 0x10;

#[rustfmt::skip]
pub const CODE: &[u8] = &[
    0xBE, 0x00, 0x20,             // mov si, DATA_GPA
    0xB9, 0x00, 0x30,             // mov cx, DATA_LEN
    0x66, 0x31, 0xC0,             // xor eax, eax
    0x66, 0x31, 0xDB,             // xor ebx, ebx
    0xFC,                         // cld
    0xAC,                         // 1: lodsb
    0x66, 0x01, 0xC3,             //    add ebx, eax
    0xE2, 0xFA,                   //    loop 1b
    0x66, 0x89, 0x1E, 0x00, 0x50, // mov [RESULT_GPA], ebx
    0x66, 0x89, 0xD8,             // mov eax, ebx
    0xBA, 0x10, 0x00,             // mov dx, PORT
    0x66, 0xEF,                   // out dx, eax
    0xF4,                         // hlt
];

/// The bytes the guest sums: a pattern that differs on every page.
pub fn data() -> Vec<u8> {
    (0..DATA_LEN)
        .map(|i| (i * 7 + i / 4096 * 13) as u8)
        .collect()
}

/// What the guest should report for `data`.
pub fn checksum(data: &[u8]) -> u32 {
    data.iter().map(|&b| u32::from(b)).sum()
}

/// Puts the vCPU in real mode at `CODE_GPA` with flat zero-based segments.
pub fn enter_real_mode(vcpu: &VcpuFd) {
    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    for seg in [
        &mut sregs.cs,
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.ss,
        &mut sregs.fs,
        &mut sregs.gs,
    ] {
        seg.base = 0;
        seg.selector = 0;
    }
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
    let regs = kvm_regs {
        rip: CODE_GPA,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).expect("KVM_SET_REGS");
}

/// Like [`CODE`], but the guest overwrites every byte it has summed with
/// [`OVERWRITE`]: it writes its data pages while it reads them.
#[rustfmt::skip]
pub const WRITING_CODE: &[u8] = &[
    0xBE, 0x00, 0x20,             // mov si, DATA_GPA
    0xB9, 0x00, 0x30,             // mov cx, DATA_LEN
    0x66, 0x31, 0xC0,             // xor eax, eax
    0x66, 0x31, 0xDB,             // xor ebx, ebx
    0xFC,                         // cld
    0xAC,                         // 1: lodsb
    0x66, 0x01, 0xC3,             //    add ebx, eax
    0xC6, 0x44, 0xFF, OVERWRITE,  //    mov byte [si-1], OVERWRITE
    0xE2, 0xF6,                   //    loop 1b
    0x66, 0x89, 0x1E, 0x00, 0x50, // mov [RESULT_GPA], ebx
    0x66, 0x89, 0xD8,             // mov eax, ebx
    0xBA, 0x10, 0x00,             // mov dx, PORT
    0x66, 0xEF,                   // out dx, eax
    0xF4,                         // hlt
];

/// The byte [`WRITING_CODE`] leaves in its data pages.
pub const OVERWRITE: u8 = 0x5A;
