//! Reduction operations (`MPI_Op`): the builtin ops on every numeric type, `MINLOC`/`MAXLOC`
//! on value-index pairs, and user-defined element-wise closures, commutative or not.
//!
//! Kernels are plain element-wise loops over slices, which the compiler vectorizes; integer
//! arithmetic wraps (as C's unsigned types do) rather than panicking.
//!
//! A build for the x86-64 baseline may only use SSE2, which leaves 32-bit multiplies, 32- and
//! 64-bit integer min/max and all 256-bit lanes out. So each loop is compiled three times and
//! picked at run time by the CPU's features ([`zip`], `multiversion`, as Open MPI's `op/avx`
//! component does): AVX2 (x86-64-v3), SSE4.2 (v2) and the baseline. The exceptions, measured
//! on an AMD EPYC with `bench/src/bin/reduce_local.rs`: for `MAX`/`MIN` on floats and 64-bit
//! integers the AVX2 build turns "keep the larger" into masked stores (`vmaskmovps`), 2–4x
//! slower than the baseline's `maxps`. So 64-bit integers take [`zip_no_avx`] (SSE4.2's
//! `pcmpgtq`, about 2x the baseline) and floats [`zip_baseline`] (SSE2's `maxps`/`minps`,
//! unrolled).

use bytemuck::{Pod, Zeroable};
use std::rc::Rc;

/// The builtin reduction operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `MPI_SUM`
    Sum,
    /// `MPI_PROD`
    Prod,
    /// `MPI_MAX`
    Max,
    /// `MPI_MIN`
    Min,
    /// `MPI_LAND` (integers: non-zero is true; the result is 0 or 1)
    Land,
    /// `MPI_LOR`
    Lor,
    /// `MPI_LXOR`
    Lxor,
    /// `MPI_BAND`
    Band,
    /// `MPI_BOR`
    Bor,
    /// `MPI_BXOR`
    Bxor,
    /// `MPI_MINLOC`, on [`Loc`] pairs: the smallest value, and the smallest index among ties.
    MinLoc,
    /// `MPI_MAXLOC`, on [`Loc`] pairs: the largest value, and the smallest index among ties.
    MaxLoc,
}

impl Op {
    /// All builtin ops.
    pub const ALL: [Op; 12] = [
        Op::Sum,
        Op::Prod,
        Op::Max,
        Op::Min,
        Op::Land,
        Op::Lor,
        Op::Lxor,
        Op::Band,
        Op::Bor,
        Op::Bxor,
        Op::MinLoc,
        Op::MaxLoc,
    ];

    /// MPI's name for the op.
    pub fn name(self) -> &'static str {
        match self {
            Op::Sum => "MPI_SUM",
            Op::Prod => "MPI_PROD",
            Op::Max => "MPI_MAX",
            Op::Min => "MPI_MIN",
            Op::Land => "MPI_LAND",
            Op::Lor => "MPI_LOR",
            Op::Lxor => "MPI_LXOR",
            Op::Band => "MPI_BAND",
            Op::Bor => "MPI_BOR",
            Op::Bxor => "MPI_BXOR",
            Op::MinLoc => "MPI_MINLOC",
            Op::MaxLoc => "MPI_MAXLOC",
        }
    }
}

/// Element types the builtin ops apply to.
pub trait Reducible: Pod {
    /// Whether `op` is defined on this type.
    fn supports(op: Op) -> bool;
    /// `into[i] = from[i] op into[i]` (builtin ops are commutative). Unsupported ops leave
    /// `into` unchanged; callers check [`Reducible::supports`] first.
    fn reduce(op: Op, from: &[Self], into: &mut [Self]);
    /// `into[i] = from[i] op other[i]`: a copy of `other` into `into` and
    /// [`Reducible::reduce`] in one pass over memory.
    fn reduce_from(op: Op, from: &[Self], other: &[Self], into: &mut [Self]) {
        into.copy_from_slice(other);
        Self::reduce(op, from, into);
    }
}

/// `into[i] = f(from[i], into[i])`, compiled for AVX2, SSE4.2 and the baseline, the best one
/// the CPU runs picked at run time.
#[multiversion::multiversion(targets(
    "x86_64+avx2+avx+fma+sse4.2+sse4.1+ssse3+sse3",
    "x86_64+sse4.2+sse4.1+ssse3+sse3"
))]
fn zip<T: Copy>(from: &[T], into: &mut [T], f: impl Fn(T, T) -> T) {
    for (o, i) in into.iter_mut().zip(from) {
        *o = f(*i, *o);
    }
}

/// `out[i] = f(a[i], b[i])`, compiled as [`zip`] is. Its output is not an input, so the
/// selections compile to `vmaxps` and the like here, without masked stores.
#[multiversion::multiversion(targets(
    "x86_64+avx2+avx+fma+sse4.2+sse4.1+ssse3+sse3",
    "x86_64+sse4.2+sse4.1+ssse3+sse3"
))]
fn zip3<T: Copy>(a: &[T], b: &[T], out: &mut [T], f: impl Fn(T, T) -> T) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f(x, y);
    }
}

/// [`zip`] without the AVX2 build, for `MAX` and `MIN` on 64-bit integers, which it compiles
/// to slow masked stores (see the module doc); SSE4.2 brings their 64-bit compare.
#[multiversion::multiversion(targets("x86_64+sse4.2+sse4.1+ssse3+sse3"))]
fn zip_no_avx<T: Copy>(from: &[T], into: &mut [T], f: impl Fn(T, T) -> T) {
    for (o, i) in into.iter_mut().zip(from) {
        *o = f(*i, *o);
    }
}

/// [`zip`] for the baseline only, for `MAX` and `MIN` on floats: SSE2's `maxps`/`minps` fit
/// them and the AVX2 build turns them into masked stores (see the module doc). Blocks of 16
/// elements unroll the loop, 1.2–1.5x the plain loop's throughput on in-cache data.
#[inline(always)]
fn zip_baseline<T: Copy>(from: &[T], into: &mut [T], f: impl Fn(T, T) -> T) {
    const BLOCK: usize = 16;
    let n = into.len().min(from.len());
    let mut into_blocks = into[..n].chunks_exact_mut(BLOCK);
    let mut from_blocks = from[..n].chunks_exact(BLOCK);
    for (o, i) in (&mut into_blocks).zip(&mut from_blocks) {
        for k in 0..BLOCK {
            o[k] = f(i[k], o[k]);
        }
    }
    let rest = into_blocks.into_remainder();
    for (o, i) in rest.iter_mut().zip(from_blocks.remainder()) {
        *o = f(*i, *o);
    }
}

macro_rules! int_reducible {
    ($($select:ident: $($t:ty),*;)*) => {$($(
        impl Reducible for $t {
            fn supports(op: Op) -> bool {
                !matches!(op, Op::MinLoc | Op::MaxLoc)
            }
            fn reduce(op: Op, from: &[Self], into: &mut [Self]) {
                match op {
                    Op::Sum => zip(from, into, |a, b| a.wrapping_add(b)),
                    Op::Prod => zip(from, into, |a, b| a.wrapping_mul(b)),
                    Op::Max => $select(from, into, |a, b| if a > b { a } else { b }),
                    Op::Min => $select(from, into, |a, b| if a < b { a } else { b }),
                    Op::Land => zip(from, into, |a, b| ((a != 0) & (b != 0)) as $t),
                    Op::Lor => zip(from, into, |a, b| ((a != 0) | (b != 0)) as $t),
                    Op::Lxor => zip(from, into, |a, b| ((a != 0) ^ (b != 0)) as $t),
                    Op::Band => zip(from, into, |a, b| a & b),
                    Op::Bor => zip(from, into, |a, b| a | b),
                    Op::Bxor => zip(from, into, |a, b| a ^ b),
                    Op::MinLoc | Op::MaxLoc => {}
                }
            }
            fn reduce_from(op: Op, from: &[Self], other: &[Self], into: &mut [Self]) {
                match op {
                    Op::Sum => zip3(from, other, into, |a, b| a.wrapping_add(b)),
                    Op::Prod => zip3(from, other, into, |a, b| a.wrapping_mul(b)),
                    Op::Max => zip3(from, other, into, |a, b| if a > b { a } else { b }),
                    Op::Min => zip3(from, other, into, |a, b| if a < b { a } else { b }),
                    Op::Land => zip3(from, other, into, |a, b| ((a != 0) & (b != 0)) as $t),
                    Op::Lor => zip3(from, other, into, |a, b| ((a != 0) | (b != 0)) as $t),
                    Op::Lxor => zip3(from, other, into, |a, b| ((a != 0) ^ (b != 0)) as $t),
                    Op::Band => zip3(from, other, into, |a, b| a & b),
                    Op::Bor => zip3(from, other, into, |a, b| a | b),
                    Op::Bxor => zip3(from, other, into, |a, b| a ^ b),
                    Op::MinLoc | Op::MaxLoc => {}
                }
            }
        }
    )*)*};
}
int_reducible!(
    zip: i8, i16, i32, i128, u8, u16, u32, u128;
    zip_no_avx: i64, isize, u64, usize;
);

macro_rules! float_reducible {
    ($($t:ty),*) => {$(
        impl Reducible for $t {
            fn supports(op: Op) -> bool {
                matches!(op, Op::Sum | Op::Prod | Op::Max | Op::Min)
            }
            fn reduce(op: Op, from: &[Self], into: &mut [Self]) {
                match op {
                    Op::Sum => zip(from, into, |a, b| a + b),
                    Op::Prod => zip(from, into, |a, b| a * b),
                    Op::Max => zip_baseline(from, into, |a, b| if a > b { a } else { b }),
                    Op::Min => zip_baseline(from, into, |a, b| if a < b { a } else { b }),
                    _ => {}
                }
            }
            fn reduce_from(op: Op, from: &[Self], other: &[Self], into: &mut [Self]) {
                match op {
                    Op::Sum => zip3(from, other, into, |a, b| a + b),
                    Op::Prod => zip3(from, other, into, |a, b| a * b),
                    Op::Max => zip3(from, other, into, |a, b| if a > b { a } else { b }),
                    Op::Min => zip3(from, other, into, |a, b| if a < b { a } else { b }),
                    _ => {}
                }
            }
        }
    )*};
}
float_reducible!(f32, f64);

/// A value with an index, for `MINLOC`/`MAXLOC` (MPI's `MPI_2INT`, `MPI_DOUBLE_INT`, ...).
pub trait Loc: Pod {
    /// The compared value's type.
    type Value: PartialOrd + Copy;
    /// The index's type.
    type Index: Ord + Copy;
    fn value(&self) -> Self::Value;
    fn index(&self) -> Self::Index;
}

macro_rules! loc_types {
    ($($name:ident($v:ty, $i:ty)),*) => {$(
        /// A value-index pair for `MINLOC` and `MAXLOC`.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
        pub struct $name {
            pub value: $v,
            pub index: $i,
        }

        impl $name {
            pub fn new(value: $v, index: $i) -> Self {
                Self { value, index }
            }
        }

        impl Loc for $name {
            type Value = $v;
            type Index = $i;
            fn value(&self) -> $v { self.value }
            fn index(&self) -> $i { self.index }
        }

        impl Reducible for $name {
            fn supports(op: Op) -> bool {
                matches!(op, Op::MinLoc | Op::MaxLoc)
            }
            fn reduce(op: Op, from: &[Self], into: &mut [Self]) {
                match op {
                    Op::MinLoc => zip(from, into, |a, b| loc_pick(a, b, true)),
                    Op::MaxLoc => zip(from, into, |a, b| loc_pick(a, b, false)),
                    _ => {}
                }
            }
        }
    )*};
}
loc_types!(
    LocI32(i32, i32),
    LocI64(i64, i64),
    LocU32(u32, u32),
    LocU64(u64, u64),
    LocF32(f32, i32),
    LocF64(f64, i64)
);

#[inline(always)]
fn loc_pick<L: Loc>(a: L, b: L, min: bool) -> L {
    let (va, vb) = (a.value(), b.value());
    let a_wins = if min { va < vb } else { va > vb };
    if a_wins || (va == vb && a.index() < b.index()) {
        a
    } else {
        b
    }
}

/// The element-wise function of a [`UserOp`].
type ElementFn<T> = dyn Fn(&T, &T) -> T;

/// A user-defined op (`MPI_Op_create`): an element-wise function `f(a, b)` where `a` comes
/// from lower ranks than `b`.
pub struct UserOp<T> {
    f: Rc<ElementFn<T>>,
    commutative: bool,
}

impl<T> Clone for UserOp<T> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            commutative: self.commutative,
        }
    }
}

impl<T> UserOp<T> {
    /// A commutative op: algorithms may combine in any order.
    pub fn commutative(f: impl Fn(&T, &T) -> T + 'static) -> Self {
        Self {
            f: Rc::new(f),
            commutative: true,
        }
    }

    /// A non-commutative op: the result is `x0 op x1 op ... op x(p-1)` in rank order.
    pub fn non_commutative(f: impl Fn(&T, &T) -> T + 'static) -> Self {
        Self {
            f: Rc::new(f),
            commutative: false,
        }
    }
}

/// An op applicable to elements of type `T`: a builtin [`Op`] or a [`UserOp`].
pub trait ReduceOp<T>: Clone + 'static {
    /// Whether operands may be combined in any order.
    fn is_commutative(&self) -> bool;
    /// Why the op cannot apply to `T`, if it cannot.
    fn check(&self) -> Result<(), String>;
    /// `into = from op into` when `from_left`, else `into = into op from`, element-wise.
    fn apply(&self, from: &[T], into: &mut [T], from_left: bool);
    /// `into = from op other` (`other op from` unless `from_left`): a copy of `other` into
    /// `into` and [`ReduceOp::apply`] in one pass over memory.
    fn apply_from(&self, from: &[T], other: &[T], into: &mut [T], from_left: bool)
    where
        T: Copy,
    {
        into.copy_from_slice(other);
        self.apply(from, into, from_left);
    }
    /// The builtin op this is, if it is one (its kernels can be shared).
    fn builtin(&self) -> Option<Op> {
        None
    }
}

impl<T: Reducible> ReduceOp<T> for Op {
    fn is_commutative(&self) -> bool {
        true
    }
    fn check(&self) -> Result<(), String> {
        if T::supports(*self) {
            Ok(())
        } else {
            Err(format!(
                "{} is not defined on {}",
                self.name(),
                std::any::type_name::<T>()
            ))
        }
    }
    #[inline]
    fn apply(&self, from: &[T], into: &mut [T], _from_left: bool) {
        T::reduce(*self, from, into)
    }
    #[inline]
    fn apply_from(&self, from: &[T], other: &[T], into: &mut [T], _from_left: bool) {
        T::reduce_from(*self, from, other, into)
    }
    fn builtin(&self) -> Option<Op> {
        Some(*self)
    }
}

impl<T: Pod> ReduceOp<T> for UserOp<T> {
    fn is_commutative(&self) -> bool {
        self.commutative
    }
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
    fn apply(&self, from: &[T], into: &mut [T], from_left: bool) {
        let f = &*self.f;
        if from_left {
            for (o, i) in into.iter_mut().zip(from) {
                *o = f(i, o);
            }
        } else {
            for (o, i) in into.iter_mut().zip(from) {
                *o = f(o, i);
            }
        }
    }
    fn apply_from(&self, from: &[T], other: &[T], into: &mut [T], from_left: bool) {
        let f = &*self.f;
        let pairs = into.iter_mut().zip(from.iter().zip(other));
        if from_left {
            pairs.for_each(|(o, (a, b))| *o = f(a, b));
        } else {
            pairs.for_each(|(o, (a, b))| *o = f(b, a));
        }
    }
}

/// A reduction over raw bytes, as the executor applies it.
pub trait Kernel {
    /// Element size in bytes.
    fn elem(&self) -> usize;
    /// Reduces `from` into `into` (see [`Step::Reduce`](crate::schedule::Step::Reduce)).
    fn apply(&self, from: &[u8], into: &mut [u8], from_left: bool);
    /// Reduces `from` with `other` into `into` (see
    /// [`Step::ReduceFrom`](crate::schedule::Step::ReduceFrom)).
    fn apply_from(&self, from: &[u8], other: &[u8], into: &mut [u8], from_left: bool);
}

/// The byte-level kernel of op `O` on `T`.
pub struct TypedKernel<T, O> {
    op: O,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: Pod, O: ReduceOp<T>> TypedKernel<T, O> {
    pub fn new(op: O) -> Self {
        Self {
            op,
            _t: std::marker::PhantomData,
        }
    }
}

impl<T: Pod, O: ReduceOp<T>> Kernel for TypedKernel<T, O> {
    fn elem(&self) -> usize {
        std::mem::size_of::<T>()
    }

    fn apply(&self, from: &[u8], into: &mut [u8], from_left: bool) {
        match (
            bytemuck::try_cast_slice::<u8, T>(from),
            bytemuck::try_cast_slice_mut::<u8, T>(into),
        ) {
            (Ok(f), Ok(i)) => self.op.apply(f, i, from_left),
            (_, into_cast) => {
                // Misaligned bytes (never from oxmpi's own buffers): work on aligned copies.
                let f: Vec<T> = bytemuck::pod_collect_to_vec(from);
                match into_cast {
                    Ok(i) => self.op.apply(&f, i, from_left),
                    Err(_) => {
                        let mut i: Vec<T> = bytemuck::pod_collect_to_vec(into);
                        self.op.apply(&f, &mut i, from_left);
                        into.copy_from_slice(bytemuck::cast_slice(&i));
                    }
                }
            }
        }
    }

    fn apply_from(&self, from: &[u8], other: &[u8], into: &mut [u8], from_left: bool) {
        match (
            bytemuck::try_cast_slice::<u8, T>(from),
            bytemuck::try_cast_slice::<u8, T>(other),
            bytemuck::try_cast_slice_mut::<u8, T>(into),
        ) {
            (Ok(f), Ok(o), Ok(i)) => self.op.apply_from(f, o, i, from_left),
            _ => {
                // Misaligned bytes (never from oxmpi's own buffers): the copy, then a
                // reduction that handles them.
                into.copy_from_slice(other);
                self.apply(from, into, from_left);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_on_integers_and_floats() {
        let mut v = [1i32, -5, 7, 0];
        <Op as ReduceOp<i32>>::apply(&Op::Max, &[3, -9, 7, 2], &mut v, true);
        assert_eq!(v, [3, -5, 7, 2]);
        let mut b = [0b1100u8, 0, 3];
        u8::reduce(Op::Bxor, &[0b1010, 0, 1], &mut b);
        assert_eq!(b, [0b0110, 0, 2]);
        let mut l = [1u16, 0, 5];
        u16::reduce(Op::Land, &[7, 9, 0], &mut l);
        assert_eq!(l, [1, 0, 0]);
        let mut w = [u8::MAX];
        u8::reduce(Op::Sum, &[2], &mut w);
        assert_eq!(w, [1]);
        assert!(<Op as ReduceOp<f64>>::check(&Op::Band).is_err());
        assert!(<Op as ReduceOp<LocF64>>::check(&Op::Sum).is_err());
        let mut f = [1.5f64, 2.0];
        f64::reduce(Op::Prod, &[2.0, 0.5], &mut f);
        assert_eq!(f, [3.0, 1.0]);
    }

    #[test]
    fn loc_ties_take_the_smaller_index() {
        let mut v = [LocF64::new(1.0, 4), LocF64::new(2.0, 1)];
        LocF64::reduce(
            Op::MinLoc,
            &[LocF64::new(1.0, 2), LocF64::new(3.0, 0)],
            &mut v,
        );
        assert_eq!(v, [LocF64::new(1.0, 2), LocF64::new(2.0, 1)]);
        let mut m = [LocI32::new(5, 9)];
        LocI32::reduce(Op::MaxLoc, &[LocI32::new(5, 3)], &mut m);
        assert_eq!(m, [LocI32::new(5, 3)]);
    }

    #[test]
    fn user_ops_keep_operand_order_and_kernels_handle_misalignment() {
        let cat = UserOp::non_commutative(|a: &u32, b: &u32| a * 10 + b);
        let mut into = [2u32];
        cat.apply(&[1], &mut into, true);
        assert_eq!(into, [12]);
        cat.apply(&[3], &mut into, false);
        assert_eq!(into, [123]);
        let k = TypedKernel::<u32, Op>::new(Op::Sum);
        let mut raw = [0u8; 9];
        raw[1..5].copy_from_slice(&5u32.to_ne_bytes());
        let from = 7u32.to_ne_bytes();
        k.apply(&from, &mut raw[1..5], true);
        assert_eq!(u32::from_ne_bytes(raw[1..5].try_into().unwrap()), 12);
    }

    /// `apply_from` (`into = from op other` in one pass) gives what a copy of `other` and
    /// `apply` give: every builtin op on integers, floats and locations, user ops in both
    /// operand orders, and misaligned bytes.
    #[test]
    fn reduce_from_equals_a_copy_then_a_reduction() {
        fn check<T: Reducible + PartialEq + std::fmt::Debug>(make: impl Fn(usize) -> T) {
            for op in Op::ALL.into_iter().filter(|&op| T::supports(op)) {
                for n in [0usize, 1, 7, 16, 33, 100] {
                    let from: Vec<T> = (0..n).map(&make).collect();
                    let other: Vec<T> = (0..n).map(|i| make(i * 5 + 2)).collect();
                    let mut want = other.clone();
                    <Op as ReduceOp<T>>::apply(&op, &from, &mut want, true);
                    let mut got = vec![make(999); n];
                    <Op as ReduceOp<T>>::apply_from(&op, &from, &other, &mut got, true);
                    assert_eq!(got, want, "{op:?} on {n}");
                }
            }
        }
        check(|i| (i as i32).wrapping_mul(-7919) ^ 0x55);
        check(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        check(|i| (i as u8).wrapping_mul(37));
        check(|i| ((i as f64) * 0.61).cos() * 100.0);
        check(|i| ((i as f32) * 1.3).sin());
        check(|i| LocF64::new((i % 7) as f64, i as i64));

        let cat = UserOp::non_commutative(|a: &u32, b: &u32| a * 10 + b);
        let mut into = [0u32; 2];
        cat.apply_from(&[1, 2], &[3, 4], &mut into, true);
        assert_eq!(into, [13, 24]);
        cat.apply_from(&[1, 2], &[3, 4], &mut into, false);
        assert_eq!(into, [31, 42]);

        let k = TypedKernel::<u32, Op>::new(Op::Max);
        let mut raw = [0u8; 9];
        let (from, other) = (9u32.to_ne_bytes(), 4u32.to_ne_bytes());
        k.apply_from(&from, &other, &mut raw[1..5], true);
        assert_eq!(u32::from_ne_bytes(raw[1..5].try_into().unwrap()), 9);
    }
}
