//! Inclusive and exclusive prefix reductions: recursive doubling (MPICH's, any op) and a
//! linear chain (any op; fewest messages, `p - 1` steps deep).

use crate::schedule::{Builder, Group, Span};

/// Recursive doubling scan (`exclusive`: exscan, rank 0's output untouched).
pub fn recursive_doubling(b: &mut Builder, g: &Group, input: Span, output: Span, exclusive: bool) {
    let (p, r) = (g.size(), g.rank);
    let n = input.len;
    let partial = Span::new(b.tmp(n), 0, n);
    let t = Span::new(b.tmp(n), 0, n);
    b.copy(input, partial);
    if !exclusive {
        b.copy(input, output);
    }
    let mut first = true;
    let mut mask = 1;
    while mask < p {
        let dst = r ^ mask;
        if dst < p {
            b.send(g, dst, partial);
            b.recv(g, dst, t);
            b.round();
            if r > dst {
                b.reduce(t, partial, true);
                if exclusive && first {
                    b.copy(t, output);
                    first = false;
                } else {
                    b.reduce(t, output, true);
                }
            } else {
                b.reduce(t, partial, false);
            }
        }
        mask <<= 1;
    }
    b.round();
}

/// Linear chain: rank `r` receives the prefix of ranks `0..r` from `r - 1`, combines, passes
/// it on.
pub fn linear(b: &mut Builder, g: &Group, input: Span, output: Span, exclusive: bool) {
    let (p, r) = (g.size(), g.rank);
    let n = input.len;
    if r == 0 {
        if !exclusive {
            b.copy(input, output);
        }
        if p > 1 {
            b.send(g, 1, input);
        }
        b.round();
        return;
    }
    let t = Span::new(b.tmp(n), 0, n);
    b.recv(g, r - 1, t);
    b.round();
    if exclusive {
        b.copy(t, output);
        if r + 1 < p {
            let acc = Span::new(b.tmp(n), 0, n);
            b.copy(input, acc);
            b.reduce(t, acc, true);
            b.send(g, r + 1, acc);
        }
    } else {
        b.copy(input, output);
        b.reduce(t, output, true);
        if r + 1 < p {
            b.send(g, r + 1, output);
        }
    }
    b.round();
}
