//! The example programs live beside this file (`hello.rs`, `p2p_dict.rs`, ...) and are built
//! with `cargo build --release --examples`; `tests/run_examples.rs` runs each through `oxrun`
//! and checks what it prints.
//!
//! This library holds the little that several examples share: numpy's `linspace` and the way
//! Python prints lists and numpy prints float arrays, so the examples' output reads like the
//! tutorials'.

use std::fmt::Display;

/// `num` evenly spaced values from `start` to `stop` inclusive, computed the way numpy's
/// `np.linspace(start, stop, num)` does (`i * step + start`, the last one exactly `stop`), so
/// the values are bit-for-bit numpy's.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = v.last_mut() {
        *last = stop;
    }
    v
}

/// A Python list: `[1, 2, 3]`.
pub fn python_list<T: Display>(v: &[T]) -> String {
    let items: Vec<String> = v.iter().map(T::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// A float array the way numpy's `str()` prints it with its default options (at most 8
/// decimals, trailing zeros dropped, columns aligned on the decimal point):
/// `[0.         0.34888889 3.14      ]`, `[ 1.  2. 10.]`.
///
/// Two differences, both deliberate: the array stays on one line (numpy wraps at 75
/// columns; a wrapped line could be interleaved with other ranks' output), and values numpy
/// would switch to scientific notation for (magnitudes from 1e8, below 1e-4, or spanning more
/// than a factor 1000) are still printed positionally.
pub fn numpy_f64(v: &[f64]) -> String {
    let parts: Vec<(String, String)> = v
        .iter()
        .map(|x| {
            let s = format!("{x:.8}");
            let s = s.trim_end_matches('0');
            let (int, frac) = s.split_once('.').unwrap_or((s, ""));
            (int.to_string(), frac.to_string())
        })
        .collect();
    let left = parts.iter().map(|(i, _)| i.len()).max().unwrap_or(0);
    let right = parts.iter().map(|(_, f)| f.len()).max().unwrap_or(0);
    let items: Vec<String> = parts
        .iter()
        .map(|(i, f)| format!("{i:>left$}.{f:<right$}"))
        .collect();
    format!("[{}]", items.join(" "))
}

#[cfg(test)]
#[allow(clippy::approx_constant)] // the tutorials' 3.14, not pi
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy() {
        assert_eq!(linspace(1.0, 4.0, 4), vec![1.0, 2.0, 3.0, 4.0]);
        let v = linspace(0.0, 3.14, 10);
        assert_eq!(v.len(), 10);
        assert_eq!(v[9], 3.14);
        assert_eq!(v[1], 3.14 / 9.0);
    }

    #[test]
    fn arrays_print_like_numpy() {
        // np.linspace(0.0, 3.14, 10)
        assert_eq!(
            numpy_f64(&linspace(0.0, 3.14, 10)),
            "[0.         0.34888889 0.69777778 1.04666667 1.39555556 1.74444444 \
             2.09333333 2.44222222 2.79111111 3.14      ]"
        );
        // np.linspace(1, 10, 10)
        assert_eq!(
            numpy_f64(&linspace(1.0, 10.0, 10)),
            "[ 1.  2.  3.  4.  5.  6.  7.  8.  9. 10.]"
        );
        assert_eq!(numpy_f64(&[-1.5, 2.0]), "[-1.5  2. ]");
        assert_eq!(numpy_f64(&[]), "[]");
        assert_eq!(python_list(&[1, 2, 3]), "[1, 2, 3]");
    }
}
