//! `parallel_map`: the tutorial's parameter sweep. A map of the turnover frequency (TOF) of
//! CO oxidation over a grid of O2 and CO partial pressures, `np.linspace(1e-5, 0.5, 40)` each:
//! rank 0 builds the 40 x 40 grid of (pO2, pCO) pairs, scatters it by rows (`scatterv`, so any
//! number of ranks works, rows shared out as evenly as they go), every rank computes the TOF
//! of its points, and rank 0 gathers the table back (`gatherv`).
//!
//! Each TOF comes from integrating a mean-field Langmuir-Hinshelwood model to steady state,
//! a few hundred microseconds of floating point per point. Before the parallel sweep, rank 0
//! computes the whole table alone; it checks that both tables agree bit for bit and prints
//! the checksum, the two times and `speed-up vs 1 rank: X.XX`.

use std::time::Instant;

use oxmpi_examples::linspace;

/// Grid points along pO2 (rows) and pCO (columns).
const N_O2: usize = 40;
const N_CO: usize = 40;

/// Rate constants of the model (arbitrary units).
const K_CO_ADS: f64 = 1.0;
const K_CO_DES: f64 = 0.05;
const K_O2_ADS: f64 = 2.0;
const K_O_DES: f64 = 0.001;
const K_R: f64 = 5.0;
/// Integration: classical Runge-Kutta, fixed steps.
const DT: f64 = 0.01;
const STEPS: usize = 10_000;

/// Time derivatives of the CO and O coverages.
fn rates(p_o2: f64, p_co: f64, co: f64, o: f64) -> (f64, f64) {
    let free = (1.0 - co - o).max(0.0);
    let r = K_R * co * o;
    (
        K_CO_ADS * p_co * free - K_CO_DES * co - r,
        2.0 * K_O2_ADS * p_o2 * free * free - 2.0 * K_O_DES * o * o - r,
    )
}

/// The steady-state TOF at one point: the expensive function being mapped.
fn tof(p_o2: f64, p_co: f64) -> f64 {
    let (mut co, mut o) = (0.0f64, 0.0f64);
    for _ in 0..STEPS {
        let (a1, b1) = rates(p_o2, p_co, co, o);
        let (a2, b2) = rates(p_o2, p_co, co + 0.5 * DT * a1, o + 0.5 * DT * b1);
        let (a3, b3) = rates(p_o2, p_co, co + 0.5 * DT * a2, o + 0.5 * DT * b2);
        let (a4, b4) = rates(p_o2, p_co, co + DT * a3, o + DT * b3);
        co += DT / 6.0 * (a1 + 2.0 * a2 + 2.0 * a3 + a4);
        o += DT / 6.0 * (b1 + 2.0 * b2 + 2.0 * b3 + b4);
    }
    K_R * co * o
}

fn map(points: &[[f64; 2]]) -> Vec<f64> {
    points.iter().map(|&[p_o2, p_co]| tof(p_o2, p_co)).collect()
}

/// Rows per rank, as even as they go (the first `rows % size` ranks get one more).
fn row_counts(rows: usize, size: usize) -> Vec<usize> {
    (0..size)
        .map(|r| rows / size + usize::from(r < rows % size))
        .collect()
}

fn offsets(counts: &[usize]) -> Vec<usize> {
    counts
        .iter()
        .scan(0, |off, &c| {
            let d = *off;
            *off += c;
            Some(d)
        })
        .collect()
}

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());

    // The grid, row-major: row i holds (pO2[i], pCO[j]) for every j.
    let grid: Vec<[f64; 2]> = if rank == 0 {
        let p_o2s = linspace(1e-5, 0.5, N_O2);
        let p_cos = linspace(1e-5, 0.5, N_CO);
        p_o2s
            .iter()
            .flat_map(|&a| p_cos.iter().map(move |&b| [a, b]))
            .collect()
    } else {
        Vec::new()
    };

    // The reference: the whole table on rank 0 alone (the others wait at the barrier).
    let serial = (rank == 0).then(|| {
        let t = Instant::now();
        let table = map(&grid);
        (table, t.elapsed().as_secs_f64())
    });

    // The sweep: rows to every rank, TOFs back to rank 0.
    world.barrier()?;
    let t = Instant::now();
    let rows = row_counts(N_O2, size as usize);
    let counts: Vec<usize> = rows.iter().map(|r| r * N_CO).collect();
    let displs = offsets(&counts);
    let mut mine = vec![[0.0f64; 2]; counts[rank as usize]];
    world.scatterv(&grid, &counts, &displs, &mut mine, 0)?;
    let first_row = displs[rank as usize] / N_CO;
    println!(
        "process {rank} computing rows {first_row}..{} ({} x {N_CO} points)",
        first_row + rows[rank as usize],
        rows[rank as usize]
    );
    let tofs = map(&mine);
    let mut table = if rank == 0 {
        vec![0.0f64; N_O2 * N_CO]
    } else {
        Vec::new()
    };
    world.gatherv(&tofs, &mut table, &counts, &displs, 0)?;
    let parallel_s = t.elapsed().as_secs_f64();

    if let Some((serial_table, serial_s)) = serial {
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let checksum: f64 = table.iter().sum();
        let (min, max) = table
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        let ranks = if size == 1 { "rank" } else { "ranks" };
        println!("parameter grid: {N_O2} pO2 x {N_CO} pCO points over {size} {ranks}");
        println!("TOF table: min {min:.6e}, max {max:.6e}, checksum {checksum:?}");
        println!(
            "parallel table equals the serial table: {}",
            bits(&table) == bits(&serial_table)
        );
        println!(
            "serial (1 rank): {serial_s:.3} s, parallel ({size} {ranks}): {parallel_s:.3} s, {:.0} us per point",
            serial_s / (N_O2 * N_CO) as f64 * 1e6
        );
        println!("speed-up vs 1 rank: {:.2}", serial_s / parallel_s);
    }
    Ok(())
}
