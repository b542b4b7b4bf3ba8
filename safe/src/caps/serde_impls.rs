//! `Serialize` for [`Status`] and for the crate's values that appear in
//! [`Capabilities`](super::Capabilities), in the shapes the module docs
//! describe.

use std::any::TypeId;

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeStruct, Serializer};

use super::Status;
use crate::error::Errno;
use crate::kvm::{CandidateBit, GmemNumbering};
use crate::uffd::{Features, Ioctls, KernelApi, RegisterMode};

impl<T: Serialize + 'static> Serialize for Status<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match self {
            Status::Supported(value) => {
                map.serialize_entry("status", "supported")?;
                // A unit value says nothing beyond "supported".
                if TypeId::of::<T>() != TypeId::of::<()>() {
                    map.serialize_entry("value", value)?;
                }
            }
            Status::Unsupported { errno, reason } => {
                map.serialize_entry("status", "unsupported")?;
                map.serialize_entry("errno", errno)?;
                map.serialize_entry("reason", reason)?;
            }
            Status::NotProbed { why } => {
                map.serialize_entry("status", "not_probed")?;
                map.serialize_entry("why", why)?;
            }
        }
        map.end()
    }
}

impl Serialize for Errno {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Errno", 2)?;
        st.serialize_field("name", &self.name())?;
        st.serialize_field("code", &self.raw())?;
        st.end()
    }
}

/// `{"bits": "0x…", "names": [...], "unknown": "0x…"}`.
fn bit_set<S: Serializer>(
    s: S,
    bits: u64,
    names: Vec<&'static str>,
    unknown: u64,
) -> Result<S::Ok, S::Error> {
    let mut st = s.serialize_struct("BitSet", 3)?;
    st.serialize_field("bits", &format!("{bits:#x}"))?;
    st.serialize_field("names", &names)?;
    st.serialize_field("unknown", &format!("{unknown:#x}"))?;
    st.end()
}

macro_rules! serialize_bitflags {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let names = self.iter_names().map(|(name, _)| name).collect();
                let unknown = self.bits() & !<$ty>::all().iter_names().fold(0, |a, (_, f)| a | f.bits());
                bit_set(s, self.bits(), names, unknown)
            }
        }
    )*};
}

serialize_bitflags!(Features, Ioctls, RegisterMode);

/// A register mode as its names joined by `|` (`"MISSING|MINOR"`).
pub(super) fn mode_label<S: Serializer>(mode: &RegisterMode, s: S) -> Result<S::Ok, S::Error> {
    let names: Vec<&str> = mode.iter_names().map(|(name, _)| name).collect();
    s.serialize_str(&names.join("|"))
}

impl Serialize for KernelApi {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("KernelApi", 2)?;
        st.serialize_field("features", &self.features())?;
        st.serialize_field("ioctls", &self.ioctls())?;
        st.end()
    }
}

impl Serialize for CandidateBit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (result, errno) = match *self {
            CandidateBit::Refused(e) => ("refused", Some(e)),
            CandidateBit::NotWrite(e) => ("not_write", Some(e)),
            CandidateBit::Write => ("write", None),
        };
        let mut st = s.serialize_struct("CandidateBit", 2)?;
        st.serialize_field("result", result)?;
        st.serialize_field("errno", &errno)?;
        st.end()
    }
}

impl Serialize for GmemNumbering {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            GmemNumbering::Mainline => "mainline",
            GmemNumbering::UpstreamWrite => "upstream_write",
            GmemNumbering::Firecracker => "firecracker",
            GmemNumbering::DirectMapRemoval => "direct_map_removal",
            GmemNumbering::Unknown => "unknown",
        })
    }
}
