//! Collectives, communicators and topologies over the verbs backend on fake NICs (ranks are
//! threads of this process).

#[macro_use]
#[path = "suites/fixture.rs"]
mod fixture;

use oxmpi_fabric::verbs;

/// Backend name `fabric_info` reports between ranks.
#[allow(dead_code)]
const NAME: &str = "verbs";

thread_ranks!(verbs::fake::world);

#[path = "suites/coll.rs"]
mod coll;
