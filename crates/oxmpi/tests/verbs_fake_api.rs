//! The point-to-point API over the verbs backend on fake NICs (ranks are threads of this
//! process): credits, inline sends, RDMA-read rendezvous and the registration cache under
//! the whole suite.

#[macro_use]
#[path = "suites/fixture.rs"]
mod fixture;

use oxmpi_fabric::verbs;

/// Backend name `fabric_info` reports between ranks.
#[allow(dead_code)]
const NAME: &str = "verbs";

thread_ranks!(verbs::fake::world);

#[path = "suites/api.rs"]
mod api;
