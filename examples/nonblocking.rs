//! `nonblocking`: rank 0 starts sending a list with `isend_obj`, rank 1 starts receiving it with
//! `irecv_obj`; both do other things, then wait.

fn python_list(v: &[i64]) -> String {
    let items: Vec<String> = v.iter().map(i64::to_string).collect();
    format!("[{}]", items.join(", "))
}

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let rank = world.rank();
    if rank == 0 {
        let data: Vec<i64> = (0..10).collect();
        let req = world.isend_obj(&data, 1, 11)?;
        println!("process {rank} immediate send {}...", python_list(&data));
        req.wait()?;
    } else if rank == 1 {
        let req = world.irecv_obj::<Vec<i64>>(0, 11)?;
        let (data, _status) = req.wait()?;
        println!("process {rank} recv {}...", python_list(&data));
    }
    Ok(())
}
