//! Every example, run through `oxrun` over shared memory and TCP, prints what the mpi4py
//! tutorial it comes from prints.

use std::path::PathBuf;
use std::process::Command;

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf()
}

/// Runs `example` on `n` ranks; returns its stdout lines, sorted (ranks print concurrently).
fn run(example: &str, n: u32, fabric: &str) -> Vec<String> {
    let oxrun = target_dir().join("oxrun");
    let prog = target_dir().join("examples").join(example);
    assert!(
        oxrun.exists() && prog.exists(),
        "build the workspace first (scripts/test.sh does)"
    );
    let out = Command::new(oxrun)
        .arg("-n")
        .arg(n.to_string())
        .arg(prog)
        .env("OXMPI_FABRIC", fabric)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{example}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

fn for_each_fabric(f: impl Fn(&str)) {
    for fabric in ["shm", "tcp"] {
        f(fabric);
    }
}

#[test]
fn hello_prints_every_rank() {
    for_each_fabric(|fabric| {
        let expected: Vec<String> = (0..4)
            .map(|r| format!("Rank {r} out of 4 processes"))
            .collect();
        assert_eq!(run("hello", 4, fabric), expected);
    });
}

#[test]
fn p2p_dict_prints_the_dictionary() {
    for_each_fabric(|fabric| {
        assert_eq!(
            run("p2p_dict", 2, fabric),
            vec!["On process 1, data is  {'a': 7, 'b': 3.14}"]
        );
    });
}

#[test]
fn p2p_array_prints_both_sides() {
    for_each_fabric(|fabric| {
        assert_eq!(
            run("p2p_array", 2, fabric),
            vec![
                "process 0 Send buffer-like array [0 1 2 3 4 5 6 7 8 9]...",
                "process 1 recv buffer-like array [0 1 2 3 4 5 6 7 8 9]...",
            ]
        );
    });
}

#[test]
fn nonblocking_prints_both_sides() {
    for_each_fabric(|fabric| {
        assert_eq!(
            run("nonblocking", 2, fabric),
            vec![
                "process 0 immediate send [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]...",
                "process 1 recv [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]...",
            ]
        );
    });
}

#[test]
fn fabric_info_names_the_fabric_of_every_peer() {
    for fabric in ["shm", "tcp"] {
        let lines = run("fabric_info", 3, fabric);
        assert_eq!(lines.len(), 9, "{lines:?}");
        for me in 0..3 {
            for peer in 0..3 {
                let name = if me == peer { "self" } else { fabric };
                let prefix = format!("rank {me} -> {peer}: {name} (");
                // e.g. "rank 0 -> 1: shm (eager <= 8192 B, rndv/read 8193..=524288 B, ...)"
                assert!(
                    lines.iter().any(|l| l.starts_with(&prefix)),
                    "{prefix} missing in {lines:?}"
                );
            }
        }
    }
}

/// numpy's `str()` of an array of whole numbers: `[ 1.  2. 10.]`.
fn numpy_whole(v: &[i64]) -> String {
    let width = v.iter().map(|x| x.to_string().len()).max().unwrap_or(0);
    let items: Vec<String> = v.iter().map(|x| format!("{x:>width$}.")).collect();
    format!("[{}]", items.join(" "))
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

#[test]
fn bcast_prints_the_dictionary_and_the_array_on_every_rank() {
    // print('Rank: ',rank,', data: ' ,data) and print('Rank: ',rank, ', data received: ',data)
    // with data = np.linspace(0.0, 3.14, 10)
    let array = "[0.         0.34888889 0.69777778 1.04666667 1.39555556 1.74444444 \
                 2.09333333 2.44222222 2.79111111 3.14      ]";
    for_each_fabric(|fabric| {
        for n in [1, 4] {
            let expected = sorted(
                (0..n)
                    .flat_map(|r| {
                        [
                            format!(
                                "Rank:  {r} , data:  {{'key1': [1, 2, 3], 'key2': ('abc', 'xyz')}}"
                            ),
                            format!("Rank:  {r} , data received:  {array}"),
                        ]
                    })
                    .collect(),
            );
            assert_eq!(run("bcast", n, fabric), expected, "{n} ranks");
        }
    });
}

#[test]
fn scatter_gives_every_rank_its_item_and_its_block() {
    for_each_fabric(|fabric| {
        for n in [3, 4] {
            let expected = sorted(
                (0..n as i64)
                    .flat_map(|r| {
                        let block: Vec<i64> = (r * 10 + 1..=r * 10 + 10).collect();
                        [
                            format!("Rank {r} received: {}", (r + 1) * 10),
                            format!("Rank:  {r} , recvbuf received:  {}", numpy_whole(&block)),
                        ]
                    })
                    .collect(),
            );
            assert_eq!(run("scatter", n, fabric), expected, "{n} ranks");
        }
    });
    // The tutorial's four ranks, spelled out.
    let lines = run("scatter", 4, "shm");
    for want in [
        "Rank 0 received: 10",
        "Rank 3 received: 40",
        "Rank:  0 , recvbuf received:  [ 1.  2.  3.  4.  5.  6.  7.  8.  9. 10.]",
        "Rank:  3 , recvbuf received:  [31. 32. 33. 34. 35. 36. 37. 38. 39. 40.]",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "{want:?} missing in {lines:?}"
        );
    }
}

#[test]
fn gather_collects_ranks_squares_and_blocks_at_the_root() {
    for_each_fabric(|fabric| {
        let all: Vec<i64> = (1..=40).collect();
        let mut expected = vec![
            "process 0 gather all data [0, 1, 2, 3]...".to_string(),
            "rank = 0 ...receiving data to other process".to_string(),
            " process 0 receiving 4 from process 1".to_string(),
            " process 0 receiving 9 from process 2".to_string(),
            " process 0 receiving 16 from process 3".to_string(),
            format!("Rank:  0 , recvbuf received:  {}", numpy_whole(&all)),
        ];
        for r in 0..4i64 {
            expected.push(format!("process {r} send data {r} to root..."));
            let block: Vec<i64> = (r * 10 + 1..=r * 10 + 10).collect();
            expected.push(format!("Rank:  {r} , sendbuf:  {}", numpy_whole(&block)));
        }
        assert_eq!(run("gather", 4, fabric), sorted(expected));
        // One rank gathers only itself.
        assert_eq!(
            run("gather", 1, fabric),
            sorted(vec![
                "process 0 send data 0 to root...".to_string(),
                "process 0 gather all data [0]...".to_string(),
                "rank = 0 ...receiving data to other process".to_string(),
                "Rank:  0 , sendbuf:  [ 1.  2.  3.  4.  5.  6.  7.  8.  9. 10.]".to_string(),
                "Rank:  0 , recvbuf received:  [ 1.  2.  3.  4.  5.  6.  7.  8.  9. 10.]"
                    .to_string(),
            ])
        );
    });
}

#[test]
fn reduce_prints_sum_and_max_at_the_root() {
    for_each_fabric(|fabric| {
        for n in [1u32, 4] {
            let mut expected: Vec<String> = (0..n)
                .map(|r| format!(" Rank:  {r}  value =  {r}.0"))
                .collect();
            expected.push(format!(" Rank 0: value_sum =     {}.0", n * (n - 1) / 2));
            expected.push(format!(" Rank 0: value_max =     {}.0", n - 1));
            assert_eq!(run("reduce", n, fabric), sorted(expected), "{n} ranks");
        }
    });
}

#[test]
fn allreduce_prints_sum_and_max_on_every_rank() {
    for_each_fabric(|fabric| {
        for n in [3u32, 4] {
            let expected: Vec<String> = (0..n)
                .flat_map(|r| {
                    [
                        format!(" Rank:  {r}  value =  {r}.0"),
                        format!(" Rank {r}: value_sum =     {}.0", n * (n - 1) / 2),
                        format!(" Rank {r}: value_max =     {}.0", n - 1),
                    ]
                })
                .collect();
            assert_eq!(run("allreduce", n, fabric), sorted(expected), "{n} ranks");
        }
    });
}

/// What `halo` prints on a `rows` x `cols` grid: cell (i, j) of rank r holds 100 r + 10 i + j,
/// and each side shows the neighbour's facing edge (its last row for the north side, ...).
fn halo_expected(rows: i64, cols: i64, periodic: bool) -> Vec<String> {
    let rank_at = |y: i64, x: i64| {
        let (y, x) = if periodic {
            (y.rem_euclid(rows), x.rem_euclid(cols))
        } else {
            (y, x)
        };
        ((0..rows).contains(&y) && (0..cols).contains(&x)).then_some(y * cols + x)
    };
    let mut lines = vec![format!(
        "grid {rows} x {cols}{}, 4 x 4 cells per rank, cell (i, j) of rank r = 100 r + 10 i + j",
        if periodic { ", periodic" } else { "" }
    )];
    for r in 0..rows * cols {
        let (y, x) = (r / cols, r % cols);
        // side, neighbour, the neighbour's cells (i, j) facing this rank
        let sides = [
            ("north", rank_at(y - 1, x), [(3, 0), (3, 1), (3, 2), (3, 3)]),
            ("south", rank_at(y + 1, x), [(0, 0), (0, 1), (0, 2), (0, 3)]),
            ("west", rank_at(y, x - 1), [(0, 3), (1, 3), (2, 3), (3, 3)]),
            ("east", rank_at(y, x + 1), [(0, 0), (1, 0), (2, 0), (3, 0)]),
        ];
        let parts: Vec<String> = sides
            .iter()
            .map(|(name, nb, cells)| match nb {
                Some(nb) => {
                    let v: Vec<i64> = cells.iter().map(|(i, j)| 100 * nb + 10 * i + j).collect();
                    format!("{name} {nb} {}", numpy_whole(&v))
                }
                None => format!("{name} none"),
            })
            .collect();
        lines.push(format!("rank {r} at ({y}, {x}): {}", parts.join(", ")));
    }
    lines
}

/// Like [`run`], with arguments and the output in the order printed.
fn run_args(example: &str, n: u32, fabric: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new(target_dir().join("oxrun"))
        .arg("-n")
        .arg(n.to_string())
        .arg(target_dir().join("examples").join(example))
        .args(args)
        .env("OXMPI_FABRIC", fabric)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{example}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn halo_fills_every_border_from_the_right_neighbour() {
    for_each_fabric(|fabric| {
        // dims_create: 4 -> 2 x 2, 6 -> 3 x 2; rank 0 prints the lines in rank order.
        assert_eq!(run_args("halo", 4, fabric, &[]), halo_expected(2, 2, false));
        assert_eq!(run_args("halo", 6, fabric, &[]), halo_expected(3, 2, false));
        assert_eq!(
            run_args("halo", 4, fabric, &["--periodic"]),
            halo_expected(2, 2, true)
        );
    });
    assert_eq!(
        run_args("halo", 6, "shm", &["--periodic"]),
        halo_expected(3, 2, true)
    );
    assert_eq!(run_args("halo", 1, "shm", &[]), halo_expected(1, 1, false));
    // The 2 x 2 grid, spelled out for rank 0.
    assert_eq!(
        halo_expected(2, 2, false)[1],
        "rank 0 at (0, 0): north none, south 2 [200. 201. 202. 203.], west none, \
         east 1 [100. 110. 120. 130.]"
    );
}

#[test]
fn parallel_map_matches_the_serial_table_and_reports_a_speed_up() {
    let checksum = |lines: &[String]| -> String {
        let l = lines
            .iter()
            .find(|l| l.starts_with("TOF table: "))
            .unwrap_or_else(|| panic!("no TOF table line in {lines:?}"));
        l.clone()
    };
    let one = run("parallel_map", 1, "shm");
    let reference = checksum(&one);
    for (n, fabric) in [(3, "shm"), (4, "tcp")] {
        let lines = run("parallel_map", n, fabric);
        assert_eq!(checksum(&lines), reference, "{n} ranks over {fabric}");
        assert!(lines.contains(&"parallel table equals the serial table: true".to_string()));
        assert!(lines.contains(&format!(
            "parameter grid: 40 pO2 x 40 pCO points over {n} ranks"
        )));
        let speed_up = lines
            .iter()
            .find_map(|l| l.strip_prefix("speed-up vs 1 rank: "))
            .unwrap_or_else(|| panic!("no speed-up line in {lines:?}"));
        assert!(speed_up.parse::<f64>().is_ok(), "{speed_up:?}");
        if n == 3 {
            // 40 rows over 3 ranks: 14, 13, 13.
            for want in [
                "process 0 computing rows 0..14 (14 x 40 points)",
                "process 1 computing rows 14..27 (13 x 40 points)",
                "process 2 computing rows 27..40 (13 x 40 points)",
            ] {
                assert!(
                    lines.iter().any(|l| l == want),
                    "{want:?} missing in {lines:?}"
                );
            }
        }
    }
    assert!(one.contains(&"process 0 computing rows 0..40 (40 x 40 points)".to_string()));
    assert!(one.contains(&"parallel table equals the serial table: true".to_string()));
}
