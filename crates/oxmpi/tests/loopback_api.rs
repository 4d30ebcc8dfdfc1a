//! The point-to-point API over the loopback fabric (ranks are threads of this process).

#[macro_use]
#[path = "suites/fixture.rs"]
mod fixture;

use oxmpi_fabric::loopback;

/// Backend name `fabric_info` reports between ranks.
#[allow(dead_code)]
const NAME: &str = "loopback";

thread_ranks!(loopback::world);

#[path = "suites/api.rs"]
mod api;
