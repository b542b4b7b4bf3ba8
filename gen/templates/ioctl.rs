//! ioctl request-number encoding: `_IO`, `_IOR`, `_IOW` and `_IOWR` as const fns.
//!
//! A request number packs a direction, a size, a type and a command number
//! into 32 bits. Most architectures use the layout of
//! `<asm-generic/ioctl.h>` (14 size bits; "write" = 1, "read" = 2); powerpc,
//! mips and sparc use 13 size bits and 1/2/4 for none/read/write.
//!
//! The numbers are `u32`, the width seccomp filters compare; pass them to
//! `ioctl(2)` with `as` into the request type of the C library.

#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "mips32r6",
    target_arch = "mips64r6",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
mod arch {
    pub const SIZEBITS: u32 = 14;
    pub const NONE: u32 = 0;
    pub const WRITE: u32 = 1;
    pub const READ: u32 = 2;
}

#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "mips32r6",
    target_arch = "mips64r6",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
mod arch {
    pub const SIZEBITS: u32 = 13;
    pub const NONE: u32 = 1;
    pub const WRITE: u32 = 4;
    pub const READ: u32 = 2;
}

/// Bits of the command-number field (`_IOC_NRBITS`).
pub const NRBITS: u32 = 8;
/// Bits of the type field (`_IOC_TYPEBITS`).
pub const TYPEBITS: u32 = 8;
/// Bits of the size field on this architecture (`_IOC_SIZEBITS`).
pub const SIZEBITS: u32 = arch::SIZEBITS;
/// Shift of the command-number field (`_IOC_NRSHIFT`).
pub const NRSHIFT: u32 = 0;
/// Shift of the type field (`_IOC_TYPESHIFT`).
pub const TYPESHIFT: u32 = NRSHIFT + NRBITS;
/// Shift of the size field (`_IOC_SIZESHIFT`).
pub const SIZESHIFT: u32 = TYPESHIFT + TYPEBITS;
/// Shift of the direction field (`_IOC_DIRSHIFT`).
pub const DIRSHIFT: u32 = SIZESHIFT + SIZEBITS;
/// Direction: no data transferred (`_IOC_NONE`).
pub const DIR_NONE: u32 = arch::NONE;
/// Direction: user space writes, the kernel reads (`_IOC_WRITE`).
pub const DIR_WRITE: u32 = arch::WRITE;
/// Direction: the kernel writes, user space reads (`_IOC_READ`).
pub const DIR_READ: u32 = arch::READ;

/// Encodes a request number from its four fields (`_IOC`).
///
/// Evaluated at compile time for every generated constant; a size that does
/// not fit the size field or a type or number above 255 stops the build.
#[doc(alias = "_IOC")]
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    assert!(ty < (1 << TYPEBITS) && nr < (1 << NRBITS));
    assert!(size < (1 << SIZEBITS));
    (dir << DIRSHIFT) | ((size as u32) << SIZESHIFT) | (ty << TYPESHIFT) | (nr << NRSHIFT)
}

/// A request number that carries no argument struct (`_IO`).
#[doc(alias = "_IO")]
pub const fn io(ty: u32, nr: u32) -> u32 {
    ioc(DIR_NONE, ty, nr, 0)
}

/// A request number whose argument the kernel writes (`_IOR`).
#[doc(alias = "_IOR")]
pub const fn ior(ty: u32, nr: u32, size: usize) -> u32 {
    ioc(DIR_READ, ty, nr, size)
}

/// A request number whose argument the kernel reads (`_IOW`).
#[doc(alias = "_IOW")]
pub const fn iow(ty: u32, nr: u32, size: usize) -> u32 {
    ioc(DIR_WRITE, ty, nr, size)
}

/// A request number whose argument the kernel reads and writes (`_IOWR`).
#[doc(alias = "_IOWR")]
pub const fn iowr(ty: u32, nr: u32, size: usize) -> u32 {
    ioc(DIR_READ | DIR_WRITE, ty, nr, size)
}
