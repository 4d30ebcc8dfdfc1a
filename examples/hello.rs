//! `hello`: every rank reports itself (mpi4py: `print(f"Rank {rank} out of {size} processes")`).

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    println!("Rank {} out of {} processes", world.rank(), world.size());
    Ok(())
}
