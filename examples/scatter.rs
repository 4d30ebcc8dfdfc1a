//! `scatter`: rank 0 scatters a list with one item per rank, `[10, 20, 30, 40]` on four ranks
//! (mpi4py's lowercase `scatter`), then `np.linspace(1, size*10, size*10)` in blocks of 10
//! doubles (uppercase `Scatter`); every rank prints what it got.

use oxmpi_examples::{linspace, numpy_f64};

const NUM_DATA_PER_RANK: usize = 10;

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());

    // Objects: one value per rank, (i + 1) * 10.
    let data = (rank == 0).then(|| (1..=i64::from(size)).map(|i| i * 10).collect());
    let data: i64 = world.scatter_obj(data, 0)?;
    println!("Rank {rank} received: {data}");

    // Buffers: the root's array, in rank-order blocks of NUM_DATA_PER_RANK.
    let n = size as usize * NUM_DATA_PER_RANK;
    let send = if rank == 0 {
        linspace(1.0, n as f64, n) // size = 4: [1.0 .. 40.0]
    } else {
        Vec::new() // not read on the other ranks
    };
    let mut recvbuf = [0.0f64; NUM_DATA_PER_RANK];
    world.scatter(&send, &mut recvbuf, 0)?;
    println!("Rank:  {rank} , recvbuf received:  {}", numpy_f64(&recvbuf));
    Ok(())
}
