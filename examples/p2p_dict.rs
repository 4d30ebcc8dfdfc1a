//! `p2p_dict`: rank 0 sends a dictionary {'a': 7, 'b': 3.14} with tag 11; rank 1 receives it
//! as an object and prints it the way Python would.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A value of the dictionary: Python's int or float.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Value {
    Int(i64),
    Float(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
        }
    }
}

fn python_repr(d: &BTreeMap<String, Value>) -> String {
    let items: Vec<String> = d.iter().map(|(k, v)| format!("'{k}': {v}")).collect();
    format!("{{{}}}", items.join(", "))
}

#[allow(clippy::approx_constant)] // the tutorial sends 3.14, not pi
fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    if world.rank() == 0 {
        let data = BTreeMap::from([
            ("a".to_string(), Value::Int(7)),
            ("b".to_string(), Value::Float(3.14)),
        ]);
        world.send_obj(&data, 1, 11)?;
    } else if world.rank() == 1 {
        let (data, _status): (BTreeMap<String, Value>, _) = world.recv_obj(0, 11)?;
        println!("On process 1, data is  {}", python_repr(&data));
    }
    Ok(())
}
