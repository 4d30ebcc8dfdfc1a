//! `halo`: the ranks form a 2-D Cartesian grid (`dims_create`, `cart_create`); each owns a
//! 4 x 4 block of doubles inside a frame of ghost cells and fills the frame with one-cell
//! borders from its four neighbours in one `neighbor_alltoall`. Rank 0 gathers a line from
//! every rank and prints them in rank order: the rank's coordinates, and for each side the
//! neighbour's rank and the border received from it (`none` at the edge of the grid).
//!
//! Cell `(i, j)` of rank `r` holds `100 r + 10 i + j`, so every border shows where it came
//! from. Dimension 0 runs north to south (rows), dimension 1 west to east (columns).
//! `halo --periodic` wraps both dimensions around.

use oxmpi_examples::numpy_f64;

/// Interior cells per side.
const B: usize = 4;
/// Side of the block with its ghost frame.
const W: usize = B + 2;

fn main() -> Result<(), oxmpi::Error> {
    let periodic = std::env::args().any(|a| a == "--periodic");
    let universe = oxmpi::init()?;
    let world = universe.world();
    let dims = oxmpi::dims_create(world.size(), 2);
    // The grid uses every rank (dims multiply to size); a rank outside it would get None.
    let line = match world.cart_create(&dims, &[periodic, periodic], false)? {
        Some(cart) => Some(exchange(&cart)?),
        None => None,
    };

    if let Some(lines) = world.gather_obj(&line, 0)? {
        println!(
            "grid {} x {}{}, {B} x {B} cells per rank, cell (i, j) of rank r = 100 r + 10 i + j",
            dims[0],
            dims[1],
            if periodic { ", periodic" } else { "" }
        );
        for l in lines.into_iter().flatten() {
            println!("{l}");
        }
    }
    Ok(())
}

/// Fills this rank's ghost frame from its neighbours; returns the line that reports it.
fn exchange(cart: &oxmpi::CartComm) -> Result<String, oxmpi::Error> {
    let rank = cart.rank();
    // The block with its frame, row-major; ghosts start as NaN.
    let mut field = vec![f64::NAN; W * W];
    for i in 0..B {
        for j in 0..B {
            field[(i + 1) * W + j + 1] = f64::from(rank * 100) + (10 * i + j) as f64;
        }
    }

    // Blocks in neighbour order (north, south, west, east): the interior's first row, last
    // row, first column and last column go to the neighbour on that side.
    let row = |i: usize| (1..=B).map(move |j| (i, j));
    let col = |j: usize| (1..=B).map(move |i| (i, j));
    let edges: [Vec<(usize, usize)>; 4] = [
        row(1).collect(),
        row(B).collect(),
        col(1).collect(),
        col(B).collect(),
    ];
    let ghosts: [Vec<(usize, usize)>; 4] = [
        row(0).collect(),
        row(B + 1).collect(),
        col(0).collect(),
        col(B + 1).collect(),
    ];
    let send: Vec<f64> = edges
        .iter()
        .flatten()
        .map(|&(i, j)| field[i * W + j])
        .collect();
    let mut recv = vec![f64::NAN; 4 * B];
    cart.neighbor_alltoall(&send, &mut recv)?;
    for (ghost, block) in ghosts.iter().zip(recv.chunks(B)) {
        for (&(i, j), &v) in ghost.iter().zip(block) {
            field[i * W + j] = v;
        }
    }

    // Report the frame, side by side, with the neighbours `shift` names.
    let (north, south) = cart.shift(0, 1)?;
    let (west, east) = cart.shift(1, 1)?;
    let sides = [
        ("north", north),
        ("south", south),
        ("west", west),
        ("east", east),
    ];
    let report: Vec<String> = sides
        .iter()
        .zip(&ghosts)
        .map(|(&(name, nb), ghost)| match nb {
            Some(nb) => {
                let border: Vec<f64> = ghost.iter().map(|&(i, j)| field[i * W + j]).collect();
                format!("{name} {nb} {}", numpy_f64(&border))
            }
            None => format!("{name} none"),
        })
        .collect();
    let c = cart.coords();
    Ok(format!(
        "rank {rank} at ({}, {}): {}",
        c[0],
        c[1],
        report.join(", ")
    ))
}
