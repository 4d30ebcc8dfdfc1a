//! The point-to-point API over the loopback fabric (ranks are threads of this process).

use oxmpi::Universe;
use oxmpi_fabric::{loopback, Fabric};

/// Backend name `fabric_info` reports between ranks.
#[allow(dead_code)]
const NAME: &str = "loopback";

/// `n` connected fabrics; element `r` belongs to rank `r`.
fn fabrics(n: u32) -> Vec<Box<dyn Fabric + Send>> {
    loopback::world(n)
        .into_iter()
        .map(|f| Box::new(f) as Box<dyn Fabric + Send>)
        .collect()
}

/// Runs `f(universe)` on `n` thread-ranks and propagates panics.
fn threads(n: u32, f: impl Fn(Universe) + Send + Sync + Copy + 'static) {
    let handles: Vec<_> = fabrics(n)
        .into_iter()
        .map(|fab| std::thread::spawn(move || f(Universe::from_fabric(fab))))
        .collect();
    for h in handles {
        h.join().expect("thread-rank panicked");
    }
}

#[path = "suites/api.rs"]
mod api;
