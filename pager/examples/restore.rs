//! Restores 1 GiB of guest memory from `guest.mem` with the page server,
//! replaying and re-recording the working set in `guest.ws` (the library
//! example of the README).

use std::sync::Arc;

use userfault::mem::{Mapping, Sharing};
use userfault::uffd::{Features, RegisterMode, Uffd};
use userfault_pager::source::FileSource;
use userfault_pager::{Config, Range, Server, WorkingSet};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let snapshot = Arc::new(FileSource::open("guest.mem")?);
    let guest = Mapping::anonymous(1 << 30, Sharing::Private)?;
    let uffd = Arc::new(
        Uffd::builder()
            .non_blocking(true)
            .request_features(Features::EVENT_REMOVE)
            .create()?,
    );
    // SAFETY: guest memory is reached only through raw pointers (by the guest).
    let reg = unsafe { uffd.register(guest.addr(), guest.len(), RegisterMode::MISSING)? };

    let server = Server::start(
        uffd,
        &[Range::new(reg, 0)], // served from offset 0 of the snapshot
        snapshot,
        Config {
            threads: 4,
            working_set: WorkingSet::load("guest.ws").ok(),
            record: true,
            ..Config::default()
        },
    )?;
    // ... run the guest; server.stats() meanwhile: faults, pages, latency ...
    let report = server.wait(); // Exit::Complete once every page is in
    if let Some(ws) = &report.recorded {
        ws.save("guest.ws")?;
    }
    println!(
        "{:?}: {} demand faults",
        report.exit, report.stats.demand_faults
    );
    Ok(())
}
