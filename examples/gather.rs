//! `gather`: the reverse of `scatter`, three ways. Every rank sends its rank to rank 0 as an
//! object (mpi4py's lowercase `gather`); every rank sends `(rank + 1) ** 2` and rank 0 reports
//! where each value came from; every rank sends ten doubles,
//! `np.linspace(rank*10 + 1, (rank+1)*10, 10)`, into one array at rank 0 (uppercase `Gather`).

use oxmpi_examples::{linspace, numpy_f64, python_list};

const NUM_DATA_PER_RANK: usize = 10;

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());

    // Objects: the ranks, in rank order, at the root.
    println!("process {rank} send data {rank} to root...");
    if let Some(all) = world.gather_obj(&rank, 0)? {
        println!("process {rank} gather all data {}...", python_list(&all));
    }

    // Objects again: the squares, each reported with the rank it came from.
    let square = (u64::from(rank) + 1).pow(2);
    if let Some(all) = world.gather_obj(&square, 0)? {
        println!("rank = {rank} ...receiving data to other process");
        for (i, value) in all.iter().enumerate().skip(1) {
            println!(" process {rank} receiving {value} from process {i}");
        }
    }

    // Buffers: each rank's block lands at its place in the root's array.
    let first = (rank as usize * NUM_DATA_PER_RANK + 1) as f64;
    let last = ((rank as usize + 1) * NUM_DATA_PER_RANK) as f64;
    let sendbuf = linspace(first, last, NUM_DATA_PER_RANK);
    println!("Rank:  {rank} , sendbuf:  {}", numpy_f64(&sendbuf));
    let mut recvbuf = if rank == 0 {
        vec![0.0f64; NUM_DATA_PER_RANK * size as usize]
    } else {
        Vec::new() // not written on the other ranks
    };
    world.gather(&sendbuf, &mut recvbuf, 0)?;
    if rank == 0 {
        println!("Rank:  {rank} , recvbuf received:  {}", numpy_f64(&recvbuf));
    }
    Ok(())
}
