//! `MPI_Reduce_local`: one reduction between two buffers of this process, with the ops and
//! kernels the collectives use (builtin ops run the runtime-dispatched SIMD loops of
//! `oxmpi_collectives::ops`; user ops their closure).

use crate::Error;
use bytemuck::Pod;
use oxmpi_collectives::ReduceOp;

/// Combines `input` into `inout` element by element: `inout[i] = input[i] op inout[i]`, with
/// `input` the left operand (it matters for non-commutative user ops), as `MPI_Reduce_local`
/// and mpi4py's `Op.Reduce_local` do. Needs no communicator and sends nothing.
///
/// Errors: [`Error::InvalidOp`] when `op` is not defined on `T` (`Op::Band` on `f64`, say),
/// [`Error::BufferSize`] when the two buffers differ in length; `inout` is then unchanged.
///
/// ```
/// let mut acc = [1.0f32, 5.0, 3.0];
/// oxmpi::reduce_local(&[4.0, 2.0, 3.0], &mut acc, oxmpi::Op::Max)?;
/// assert_eq!(acc, [4.0, 5.0, 3.0]);
/// # Ok::<(), oxmpi::Error>(())
/// ```
pub fn reduce_local<T: Pod, O: ReduceOp<T>>(
    input: &[T],
    inout: &mut [T],
    op: O,
) -> Result<(), Error> {
    op.check().map_err(Error::InvalidOp)?;
    if input.len() != inout.len() {
        return Err(Error::BufferSize {
            what: "reduce_local",
            buffer: "inout",
            expected: input.len(),
            got: inout.len(),
        });
    }
    op.apply(input, inout, true);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LocF64, Op, UserOp};

    #[test]
    fn builtin_ops_combine_in_place() {
        let mut acc = [1i32, -7, 12, 0];
        reduce_local(&[2, 3, -4, 0], &mut acc, Op::Sum).unwrap();
        assert_eq!(acc, [3, -4, 8, 0]);
        reduce_local(&[2, 3, -4, 0], &mut acc, Op::Prod).unwrap();
        assert_eq!(acc, [6, -12, -32, 0]);
        reduce_local(&[7, 3, -40, 1], &mut acc, Op::Min).unwrap();
        assert_eq!(acc, [6, -12, -40, 0]);
        reduce_local(&[0b1100, 0b1010, 1, 1], &mut acc, Op::Bxor).unwrap();
        assert_eq!(acc, [6 ^ 0b1100, -12 ^ 0b1010, -40 ^ 1, 1]);

        let mut loc = [LocF64::new(2.0, 5), LocF64::new(1.0, 0)];
        reduce_local(
            &[LocF64::new(2.0, 3), LocF64::new(0.5, 9)],
            &mut loc,
            Op::MaxLoc,
        )
        .unwrap();
        assert_eq!(loc, [LocF64::new(2.0, 3), LocF64::new(1.0, 0)]);
    }

    #[test]
    fn the_input_is_the_left_operand_of_a_user_op() {
        // "a then b" as a string of digits: non-commutative.
        let concat = UserOp::non_commutative(|a: &u32, b: &u32| a * 10 + b);
        let mut acc = [2u32, 7];
        reduce_local(&[1, 3], &mut acc, concat).unwrap();
        assert_eq!(acc, [12, 37]);
    }

    #[test]
    fn an_undefined_op_or_mismatched_lengths_are_errors_that_change_nothing() {
        let mut acc = [1.5f64, 2.5];
        let e = reduce_local(&[1.0, 1.0], &mut acc, Op::Band).unwrap_err();
        assert!(matches!(e, Error::InvalidOp(_)), "{e:?}");
        let e = reduce_local(&[1.0], &mut acc, Op::Sum).unwrap_err();
        assert!(
            matches!(
                e,
                Error::BufferSize {
                    expected: 1,
                    got: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(acc, [1.5, 2.5]);
    }

    /// The dispatched SIMD loops against a plain scalar fold, on lengths around every vector
    /// width (remainders included) and values that exercise wrapping and signs.
    #[test]
    fn simd_kernels_agree_with_a_scalar_loop() {
        fn check<T: Pod + PartialEq + std::fmt::Debug + crate::Reducible>(
            make: impl Fn(usize) -> T,
            scalar: impl Fn(Op, T, T) -> T,
        ) {
            for op in Op::ALL {
                if !T::supports(op) {
                    continue;
                }
                for n in [0usize, 1, 3, 7, 8, 15, 16, 31, 33, 64, 65, 127, 1000] {
                    let a: Vec<T> = (0..n).map(&make).collect();
                    let b: Vec<T> = (0..n).map(|i| make(i * 7 + 3)).collect();
                    let mut got = b.clone();
                    reduce_local(&a, &mut got, op).unwrap();
                    let want: Vec<T> = a.iter().zip(&b).map(|(&x, &y)| scalar(op, x, y)).collect();
                    assert_eq!(got, want, "{op:?} on {n} {}", std::any::type_name::<T>());
                }
            }
        }
        macro_rules! ints {
            ($($t:ty),*) => {$(
                check::<$t>(
                    |i| (i as $t).wrapping_mul(0x9E37_79B9u32 as $t).wrapping_sub(i as $t / 3),
                    |op, x, y| match op {
                        Op::Sum => x.wrapping_add(y),
                        Op::Prod => x.wrapping_mul(y),
                        Op::Max => x.max(y),
                        Op::Min => x.min(y),
                        Op::Land => ((x != 0) && (y != 0)) as $t,
                        Op::Lor => ((x != 0) || (y != 0)) as $t,
                        Op::Lxor => ((x != 0) != (y != 0)) as $t,
                        Op::Band => x & y,
                        Op::Bor => x | y,
                        Op::Bxor => x ^ y,
                        Op::MinLoc | Op::MaxLoc => unreachable!(),
                    },
                );
            )*};
        }
        ints!(i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize);
        macro_rules! floats {
            ($($t:ty),*) => {$(
                check::<$t>(
                    |i| (i as $t * 0.37).sin() * 1e3 - 17.0,
                    |op, x, y| match op {
                        Op::Sum => x + y,
                        Op::Prod => x * y,
                        Op::Max => if x > y { x } else { y },
                        Op::Min => if x < y { x } else { y },
                        _ => unreachable!(),
                    },
                );
            )*};
        }
        floats!(f32, f64);
    }
}
