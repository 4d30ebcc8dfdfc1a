//! `p2p_array`: rank 0 sends the integers 0..10 as an `i32` buffer (no serialization: mpi4py's
//! uppercase `Send`/`Recv`); rank 1 receives them into a preallocated array.

fn numpy_repr(v: &[i32]) -> String {
    let items: Vec<String> = v.iter().map(i32::to_string).collect();
    format!("[{}]", items.join(" "))
}

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let rank = world.rank();
    if rank == 0 {
        let data: Vec<i32> = (0..10).collect();
        world.send(&data, 1, 11)?;
        println!(
            "process {rank} Send buffer-like array {}...",
            numpy_repr(&data)
        );
    } else if rank == 1 {
        let mut data = [0i32; 10];
        world.recv_into(&mut data, 0, 11)?;
        println!(
            "process {rank} recv buffer-like array {}...",
            numpy_repr(&data)
        );
    }
    Ok(())
}
