//! Buffers made with `mmap(2)` rather than the allocator, for what a
//! handler thread must be able to get while it applies events.
//!
//! A process that serves its own memory and forks holds the allocator's
//! locks (glibc's `fork`) until the FORK event is read. A handler thread
//! applying an earlier FORK under the order lock's write side must not wait
//! for them: the event that would release them waits for that lock. `mmap`
//! takes none of them (and a fork has released its `mmap_lock` by the time
//! it waits for its event to be read).

use std::marker::PhantomData;

use userfault::mem::{Mapping, Sharing};

use crate::error::Error;

/// Up to `capacity` values of `T` in a private anonymous mapping of their
/// own, which nothing else maps, registers or refers to.
pub(crate) struct MapBuf<T: Copy> {
    map: Mapping,
    capacity: usize,
    len: usize,
    _values: PhantomData<T>,
}

impl<T: Copy> MapBuf<T> {
    /// `mmap(NULL, …, MAP_PRIVATE | MAP_ANONYMOUS)`: room for `capacity`
    /// values, none of them there yet.
    ///
    /// # Errors
    ///
    /// [`Error::Uffd`] with the `mmap` errno.
    pub fn with_capacity(capacity: usize) -> Result<MapBuf<T>, Error> {
        let bytes = capacity
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| Error::Config(format!("{capacity} values do not fit a mapping")))?
            .max(1);
        let map = Mapping::anonymous(bytes, Sharing::Private)?;
        Ok(MapBuf {
            map,
            capacity,
            len: 0,
            _values: PhantomData,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Replaces the contents with `values`; false (and nothing changed)
    /// when they do not fit.
    pub fn set(&mut self, values: &[T]) -> bool {
        if values.len() > self.capacity {
            return false;
        }
        // SAFETY: the mapping holds `capacity` values of `T` (checked in
        // `with_capacity`), starts on a page boundary (aligned for any `T`
        // up to a page), is readable and writable, and only this value
        // reaches it; `values` lives elsewhere, so the ranges do not
        // overlap. `T: Copy`: nothing is dropped or duplicated.
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                self.map.as_ptr().cast::<T>(),
                values.len(),
            );
        }
        self.len = values.len();
        true
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: the first `len` values were written by `set` (or, for
        // `zeroed`, are zero bytes, which the caller's `T` accepts); the
        // mapping is aligned and ours alone, and `&self` keeps it mapped
        // and unchanged while the slice lives.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<T>(), self.len) }
    }
}

impl MapBuf<u8> {
    /// `len` zero bytes (a fresh anonymous mapping reads as zeros).
    ///
    /// # Errors
    ///
    /// As [`with_capacity`](Self::with_capacity).
    pub fn zeroed(len: usize) -> Result<MapBuf<u8>, Error> {
        let mut buf = MapBuf::with_capacity(len)?;
        buf.len = len;
        Ok(buf)
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes of the mapping, which is ours alone and
        // writable; `&mut self` makes this the only reference into it.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr(), self.len) }
    }
}

impl<T: Copy> std::fmt::Debug for MapBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_overflow_is_refused() {
        let mut b = MapBuf::<(u64, u32)>::with_capacity(3).expect("mmap");
        assert!(b.as_slice().is_empty());
        assert!(b.set(&[(1, 2), (3, 4)]));
        assert_eq!(b.as_slice(), &[(1, 2), (3, 4)]);
        assert!(!b.set(&[(0, 0); 4]), "more than the capacity");
        assert_eq!(b.as_slice(), &[(1, 2), (3, 4)], "unchanged");
        assert!(b.set(&[]));
        assert!(b.as_slice().is_empty());
        let mut z = MapBuf::zeroed(10_000).expect("mmap");
        assert!(z.as_slice().iter().all(|&v| v == 0));
        z.as_mut_slice()[9_999] = 7;
        assert_eq!(z.as_slice()[9_999], 7);
        let empty = MapBuf::<u8>::zeroed(0).expect("mmap");
        assert!(empty.as_slice().is_empty());
    }
}
