//! `allreduce`: like `reduce`, but every rank receives the sum and the maximum of the ranks'
//! values (mpi4py's `Allreduce` with `MPI.SUM` and `MPI.MAX`).

use oxmpi::Op;

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let rank = world.rank();

    let value = [f64::from(rank)];
    println!(" Rank:  {rank}  value =  {:?}", value[0]);
    let mut value_sum = [0.0f64];
    let mut value_max = [0.0f64];
    world.allreduce(&value, &mut value_sum, Op::Sum)?;
    world.allreduce(&value, &mut value_max, Op::Max)?;
    println!(" Rank {rank}: value_sum =     {:?}", value_sum[0]);
    println!(" Rank {rank}: value_max =     {:?}", value_max[0]);
    Ok(())
}
