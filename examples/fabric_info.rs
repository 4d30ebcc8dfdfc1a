//! `fabric_info`: every rank prints which fabric and protocol thresholds reach each peer, e.g.
//! `oxrun -n 3 target/release/examples/fabric_info` or with `OXMPI_FABRIC=tcp`.

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    // One write per rank; oxrun forwards whole lines, so lines of different ranks may
    // interleave but never mix.
    print!("{}", universe.fabric_info());
    Ok(())
}
