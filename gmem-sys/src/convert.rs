//! Lossless conversions between the memslot layouts.
//!
//! The mainline `kvm_userspace_memory_region2` ends in `pad2[14]`; the KVM
//! userfault postings use its first word as `userfault_bitmap` and keep
//! `pad2[13]`. Both are 160 bytes, so each converts into the other without
//! losing a bit: the bitmap pointer travels in the mainline `pad2[0]`.
//! `kvm_bindings::kvm_userspace_memory_region2` has the mainline layout, so
//! a VMM that already builds memslots with kvm-bindings can hand them to
//! this ABI and back.
//!
//! ```
//! use gmem_sys::kvm_userspace_memory_region2 as Mainline;
//! use gmem_sys::upstream::kvm_userfault_v3::kvm_userspace_memory_region2 as WithBitmap;
//!
//! let slot = WithBitmap { slot: 1, userfault_bitmap: 0x7f00_0000_1000, ..Default::default() };
//! let mainline = Mainline::from(slot);
//! assert_eq!(mainline.pad2[0], 0x7f00_0000_1000);
//! assert_eq!(WithBitmap::from(mainline), slot);
//! ```

use crate::kvm_userspace_memory_region2 as Mainline;
use crate::upstream::kvm_userfault_v3::kvm_userspace_memory_region2 as WithBitmap;
use kvm_bindings::kvm_userspace_memory_region2 as KvmBindings;

impl From<WithBitmap> for Mainline {
    fn from(r: WithBitmap) -> Self {
        let mut pad2 = [0; 14];
        pad2[0] = r.userfault_bitmap;
        pad2[1..].copy_from_slice(&r.pad2);
        Mainline {
            slot: r.slot,
            flags: r.flags,
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            userspace_addr: r.userspace_addr,
            guest_memfd_offset: r.guest_memfd_offset,
            guest_memfd: r.guest_memfd,
            pad1: r.pad1,
            pad2,
        }
    }
}

impl From<Mainline> for WithBitmap {
    fn from(r: Mainline) -> Self {
        let mut pad2 = [0; 13];
        pad2.copy_from_slice(&r.pad2[1..]);
        WithBitmap {
            slot: r.slot,
            flags: r.flags,
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            userspace_addr: r.userspace_addr,
            guest_memfd_offset: r.guest_memfd_offset,
            guest_memfd: r.guest_memfd,
            pad1: r.pad1,
            userfault_bitmap: r.pad2[0],
            pad2,
        }
    }
}

impl From<KvmBindings> for Mainline {
    fn from(r: KvmBindings) -> Self {
        Mainline {
            slot: r.slot,
            flags: r.flags,
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            userspace_addr: r.userspace_addr,
            guest_memfd_offset: r.guest_memfd_offset,
            guest_memfd: r.guest_memfd,
            pad1: r.pad1,
            pad2: r.pad2,
        }
    }
}

impl From<Mainline> for KvmBindings {
    fn from(r: Mainline) -> Self {
        KvmBindings {
            slot: r.slot,
            flags: r.flags,
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            userspace_addr: r.userspace_addr,
            guest_memfd_offset: r.guest_memfd_offset,
            guest_memfd: r.guest_memfd,
            pad1: r.pad1,
            pad2: r.pad2,
        }
    }
}

impl From<KvmBindings> for WithBitmap {
    fn from(r: KvmBindings) -> Self {
        Mainline::from(r).into()
    }
}

impl From<WithBitmap> for KvmBindings {
    fn from(r: WithBitmap) -> Self {
        Mainline::from(r).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte distinct, so a field copied to the wrong place shows.
    fn patterned() -> WithBitmap {
        let mut pad2 = [0; 13];
        for (i, w) in pad2.iter_mut().enumerate() {
            *w = 0x1000 + i as u64;
        }
        WithBitmap {
            slot: 0x0001_0002,
            flags: 0x9,
            guest_phys_addr: 0x1_0000_0000,
            memory_size: 0x20_0000,
            userspace_addr: 0x7f12_3456_7000,
            guest_memfd_offset: 0x4000,
            guest_memfd: 17,
            pad1: 0xdead,
            userfault_bitmap: 0x7f00_dead_b000,
            pad2,
        }
    }

    #[test]
    fn bitmap_travels_in_the_first_pad_word() {
        let m = Mainline::from(patterned());
        assert_eq!(m.pad2[0], 0x7f00_dead_b000);
        assert_eq!(m.pad2[1], 0x1000);
        assert_eq!(m.pad2[13], 0x100c);
        assert_eq!(WithBitmap::from(m), patterned());
    }

    #[test]
    fn round_trips_through_kvm_bindings() {
        let k = KvmBindings::from(patterned());
        assert_eq!(k.pad2[0], 0x7f00_dead_b000);
        assert_eq!(k.slot, 0x0001_0002);
        assert_eq!(WithBitmap::from(k), patterned());
        let m = Mainline::from(patterned());
        assert_eq!(Mainline::from(KvmBindings::from(m)), m);
    }

    #[test]
    fn layouts_have_the_same_size() {
        assert_eq!(size_of::<WithBitmap>(), 160);
        assert_eq!(size_of::<Mainline>(), 160);
        assert_eq!(size_of::<KvmBindings>(), 160);
    }
}
