//! `reduce`: every rank holds one double, its rank; rank 0 receives their sum and their
//! maximum (mpi4py's `Reduce` with `MPI.SUM` and `MPI.MAX`).

use oxmpi::Op;

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let rank = world.rank();

    let value = [f64::from(rank)];
    println!(" Rank:  {rank}  value =  {:?}", value[0]);
    let mut value_sum = [0.0f64];
    let mut value_max = [0.0f64];
    world.reduce(&value, &mut value_sum, Op::Sum, 0)?;
    world.reduce(&value, &mut value_max, Op::Max, 0)?;
    if rank == 0 {
        println!(" Rank 0: value_sum =     {:?}", value_sum[0]);
        println!(" Rank 0: value_max =     {:?}", value_max[0]);
    }
    Ok(())
}
