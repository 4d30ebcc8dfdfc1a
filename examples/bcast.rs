//! `bcast`: rank 0 broadcasts a dictionary `{'key1': [1, 2, 3], 'key2': ('abc', 'xyz')}` as an
//! object (mpi4py's lowercase `bcast`), then the length of an array and the array itself,
//! `np.linspace(0.0, 3.14, 10)`, as a buffer (uppercase `Bcast`); every rank prints both.

use oxmpi_examples::{linspace, numpy_f64};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A value of the dictionary: a Python list of ints or a tuple of strings.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Value {
    List(Vec<i64>),
    Tuple(Vec<String>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::List(v) => write!(f, "{}", oxmpi_examples::python_list(v)),
            Value::Tuple(v) => {
                let items: Vec<String> = v.iter().map(|s| format!("'{s}'")).collect();
                let comma = if items.len() == 1 { "," } else { "" };
                write!(f, "({}{comma})", items.join(", "))
            }
        }
    }
}

fn python_repr(d: &BTreeMap<String, Value>) -> String {
    let items: Vec<String> = d.iter().map(|(k, v)| format!("'{k}': {v}")).collect();
    format!("{{{}}}", items.join(", "))
}

#[allow(clippy::approx_constant)] // the tutorial's 3.14, not pi
fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let rank = world.rank();

    // A dictionary: only the root has it; bcast_obj hands every rank a copy.
    let data = (rank == 0).then(|| {
        BTreeMap::from([
            ("key1".to_string(), Value::List(vec![1, 2, 3])),
            (
                "key2".to_string(),
                Value::Tuple(vec!["abc".to_string(), "xyz".to_string()]),
            ),
        ])
    });
    let data = world.bcast_obj(data, 0)?;
    println!("Rank:  {rank} , data:  {}", python_repr(&data));

    // An array: the root broadcasts its length first, so the others can allocate, then the
    // values straight from one buffer into the others.
    let num_data = world.bcast_obj((rank == 0).then_some(10usize), 0)?;
    let mut data = if rank == 0 {
        linspace(0.0, 3.14, num_data)
    } else {
        vec![0.0f64; num_data]
    };
    world.bcast(&mut data, 0)?;
    println!("Rank:  {rank} , data received:  {}", numpy_f64(&data));
    Ok(())
}
