//! Collectives on `serde` values (mpi4py's lowercase `bcast`, `scatter`, `gather`,
//! `allgather`, `alltoall`, `reduce`, `allreduce`, `scan`, `exscan`).
//!
//! Values are encoded with the same compact codec as `send_obj`; the lengths move first
//! (a collective of `u64`s), then the bytes with the matching `v` collective, so the same
//! schedules and algorithms carry them. Reductions of values apply the closure in rank order
//! (`x0 op x1 op ...`), so it need not be commutative.

use crate::comm::{decode, encode, Communicator};
use crate::Error;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn displs(counts: &[usize]) -> Vec<usize> {
    counts
        .iter()
        .scan(0, |off, &c| {
            let d = *off;
            *off += c;
            Some(d)
        })
        .collect()
}

fn lens(v: &[u64]) -> Vec<usize> {
    v.iter().map(|&l| l as usize).collect()
}

fn split_decode<D: DeserializeOwned>(bytes: &[u8], counts: &[usize]) -> Result<Vec<D>, Error> {
    let mut out = Vec::with_capacity(counts.len());
    let mut off = 0;
    for &c in counts {
        out.push(decode(&bytes[off..off + c])?);
        off += c;
    }
    Ok(out)
}

impl Communicator {
    /// Broadcasts `root`'s value (mpi4py's `bcast`): the root passes `Some(value)`, the others
    /// `None`; every rank gets the value.
    pub fn bcast_obj<T: Serialize + DeserializeOwned>(
        &self,
        value: Option<T>,
        root: u32,
    ) -> Result<T, Error> {
        crate::progress::check_rank(root, self.size())?;
        if self.rank() == root {
            let v = value.ok_or_else(|| {
                Error::InvalidArgument("bcast_obj: the root must pass Some(value)".into())
            })?;
            let mut bytes = encode(&v)?;
            self.bcast(&mut [bytes.len() as u64], root)?;
            self.bcast(&mut bytes, root)?;
            Ok(v)
        } else {
            let mut len = [0u64];
            self.bcast(&mut len, root)?;
            let mut bytes = vec![0u8; len[0] as usize];
            self.bcast(&mut bytes, root)?;
            decode(&bytes)
        }
    }

    /// Gathers every rank's value at `root`, in rank order (mpi4py's `gather`); `None`
    /// elsewhere.
    pub fn gather_obj<T: Serialize + DeserializeOwned>(
        &self,
        value: &T,
        root: u32,
    ) -> Result<Option<Vec<T>>, Error> {
        crate::progress::check_rank(root, self.size())?;
        let bytes = encode(value)?;
        let at_root = self.rank() == root;
        let mut all = vec![0u64; if at_root { self.size() as usize } else { 0 }];
        self.gather(&[bytes.len() as u64], &mut all, root)?;
        let counts = lens(&all);
        let mut out = vec![0u8; counts.iter().sum()];
        let d = displs(&counts);
        if at_root {
            self.gatherv(&bytes, &mut out, &counts, &d, root)?;
            split_decode(&out, &counts).map(Some)
        } else {
            self.gatherv(&bytes, &mut out, &[], &[], root)?;
            Ok(None)
        }
    }

    /// Gathers every rank's value on every rank (mpi4py's `allgather`).
    pub fn allgather_obj<T: Serialize + DeserializeOwned>(
        &self,
        value: &T,
    ) -> Result<Vec<T>, Error> {
        let bytes = encode(value)?;
        let mut all = vec![0u64; self.size() as usize];
        self.allgather(&[bytes.len() as u64], &mut all)?;
        let counts = lens(&all);
        let mut out = vec![0u8; counts.iter().sum()];
        self.allgatherv(&bytes, &mut out, &counts, &displs(&counts))?;
        split_decode(&out, &counts)
    }

    /// Scatters `root`'s values, one per rank (mpi4py's `scatter`): the root passes
    /// `Some(values)` with exactly one value per rank, the others `None`.
    pub fn scatter_obj<T: Serialize + DeserializeOwned>(
        &self,
        values: Option<Vec<T>>,
        root: u32,
    ) -> Result<T, Error> {
        crate::progress::check_rank(root, self.size())?;
        let p = self.size() as usize;
        let (send, counts) = if self.rank() == root {
            let values = values.ok_or_else(|| {
                Error::InvalidArgument("scatter_obj: the root must pass Some(values)".into())
            })?;
            if values.len() != p {
                return Err(Error::BufferSize {
                    what: "scatter_obj",
                    buffer: "values",
                    expected: p,
                    got: values.len(),
                });
            }
            let enc: Vec<Vec<u8>> = values.iter().map(|v| encode(v)).collect::<Result<_, _>>()?;
            let counts: Vec<usize> = enc.iter().map(Vec::len).collect();
            (enc.concat(), counts)
        } else {
            (Vec::new(), Vec::new())
        };
        let lens64: Vec<u64> = counts.iter().map(|&c| c as u64).collect();
        let mut mine = [0u64];
        self.scatter(&lens64, &mut mine, root)?;
        let mut bytes = vec![0u8; mine[0] as usize];
        self.scatterv(&send, &counts, &displs(&counts), &mut bytes, root)?;
        decode(&bytes)
    }

    /// Sends `values[j]` to rank `j` and returns the value from each rank (mpi4py's
    /// `alltoall`).
    pub fn alltoall_obj<T: Serialize + DeserializeOwned>(
        &self,
        values: Vec<T>,
    ) -> Result<Vec<T>, Error> {
        let p = self.size() as usize;
        if values.len() != p {
            return Err(Error::BufferSize {
                what: "alltoall_obj",
                buffer: "values",
                expected: p,
                got: values.len(),
            });
        }
        let enc: Vec<Vec<u8>> = values.iter().map(|v| encode(v)).collect::<Result<_, _>>()?;
        let send_counts: Vec<usize> = enc.iter().map(Vec::len).collect();
        let send_lens: Vec<u64> = send_counts.iter().map(|&c| c as u64).collect();
        let mut recv_lens = vec![0u64; p];
        self.alltoall(&send_lens, &mut recv_lens)?;
        let recv_counts = lens(&recv_lens);
        let mut out = vec![0u8; recv_counts.iter().sum()];
        self.alltoallv(
            &enc.concat(),
            &send_counts,
            &displs(&send_counts),
            &mut out,
            &recv_counts,
            &displs(&recv_counts),
        )?;
        split_decode(&out, &recv_counts)
    }

    /// Reduces every rank's value with `op` at `root`, in rank order (mpi4py's `reduce`);
    /// `None` elsewhere.
    pub fn reduce_obj<T: Serialize + DeserializeOwned>(
        &self,
        value: &T,
        op: impl Fn(T, T) -> T,
        root: u32,
    ) -> Result<Option<T>, Error> {
        Ok(self
            .gather_obj(value, root)?
            .and_then(|all| all.into_iter().reduce(op)))
    }

    /// Reduces every rank's value with `op`, in rank order, on every rank (mpi4py's
    /// `allreduce`).
    pub fn allreduce_obj<T: Serialize + DeserializeOwned>(
        &self,
        value: &T,
        op: impl Fn(T, T) -> T,
    ) -> Result<T, Error> {
        let all = self.allgather_obj(value)?;
        Ok(all
            .into_iter()
            .reduce(op)
            .expect("a communicator has at least one rank"))
    }

    /// Inclusive prefix reduction of values (mpi4py's `scan`).
    pub fn scan_obj<T: Serialize + DeserializeOwned>(
        &self,
        value: &T,
        op: impl Fn(T, T) -> T,
    ) -> Result<T, Error> {
        let all = self.allgather_obj(value)?;
        let upto = self.rank() as usize + 1;
        Ok(all
            .into_iter()
            .take(upto)
            .reduce(op)
            .expect("at least this rank's value"))
    }

    /// Exclusive prefix reduction of values (mpi4py's `exscan`): `None` on rank 0.
    pub fn exscan_obj<T: Serialize + DeserializeOwned>(
        &self,
        value: &T,
        op: impl Fn(T, T) -> T,
    ) -> Result<Option<T>, Error> {
        let all = self.allgather_obj(value)?;
        Ok(all.into_iter().take(self.rank() as usize).reduce(op))
    }
}
