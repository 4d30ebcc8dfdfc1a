//! Cartesian process topologies (MPI chapter 8): a grid of ranks with optional periodicity,
//! coordinates, shifts, and neighbour exchanges along it.

use crate::comm::Communicator;
use crate::Error;
use bytemuck::Pod;

/// A balanced grid shape for `nodes` ranks in `ndims` dimensions (`MPI_Dims_create` with all
/// dimensions free): factors as equal as possible, largest first.
pub fn dims_create(nodes: u32, ndims: usize) -> Vec<u32> {
    let mut dims = vec![1u32; ndims.max(1)];
    let mut n = nodes.max(1);
    let mut factors = Vec::new();
    let mut f = 2;
    while f * f <= n {
        while n.is_multiple_of(f) {
            factors.push(f);
            n /= f;
        }
        f += 1;
    }
    if n > 1 {
        factors.push(n);
    }
    for f in factors.into_iter().rev() {
        let i = (0..dims.len())
            .min_by_key(|&i| dims[i])
            .expect("ndims >= 1");
        dims[i] *= f;
    }
    dims.sort_unstable_by(|a, b| b.cmp(a));
    dims.truncate(ndims);
    dims
}

/// A communicator with a Cartesian grid (`MPI_Cart_create`). Dereferences to its
/// [`Communicator`], so every point-to-point and collective call works on it.
pub struct CartComm {
    comm: Communicator,
    dims: Vec<u32>,
    periods: Vec<bool>,
}

impl std::fmt::Debug for CartComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CartComm(dims {:?}, periods {:?}, rank {})",
            self.dims,
            self.periods,
            self.comm.rank()
        )
    }
}

impl std::ops::Deref for CartComm {
    type Target = Communicator;
    fn deref(&self) -> &Communicator {
        &self.comm
    }
}

impl Communicator {
    /// Lays the first `dims.iter().product()` ranks out on a grid, row-major (the last
    /// dimension varies fastest); other ranks get `None`. `reorder` is accepted and ignored
    /// (ranks keep their order). Collective over this communicator.
    pub fn cart_create(
        &self,
        dims: &[u32],
        periods: &[bool],
        reorder: bool,
    ) -> Result<Option<CartComm>, Error> {
        let _ = reorder;
        if dims.len() != periods.len() || dims.is_empty() || dims.len() > 24 {
            return Err(Error::InvalidArgument(format!(
                "cart_create: {} dimensions and {} periodicities (1..=24 dimensions, one periodicity each)",
                dims.len(),
                periods.len()
            )));
        }
        let n: u64 = dims.iter().map(|&d| u64::from(d)).product();
        if n == 0 || n > u64::from(self.size()) {
            return Err(Error::InvalidArgument(format!(
                "cart_create: a {dims:?} grid needs {n} ranks; the communicator has {}",
                self.size()
            )));
        }
        let members: Vec<u32> = (0..n as u32).collect();
        let group = self.group().incl(&members)?;
        Ok(self.create(&group)?.map(|comm| CartComm {
            comm,
            dims: dims.to_vec(),
            periods: periods.to_vec(),
        }))
    }
}

impl CartComm {
    /// The grid's shape.
    pub fn dims(&self) -> &[u32] {
        &self.dims
    }

    /// Periodicity of each dimension.
    pub fn periods(&self) -> &[bool] {
        &self.periods
    }

    /// The communicator itself.
    pub fn comm(&self) -> &Communicator {
        &self.comm
    }

    /// Coordinates of `rank` (`MPI_Cart_coords`).
    pub fn coords_of(&self, rank: u32) -> Result<Vec<u32>, Error> {
        crate::progress::check_rank(rank, self.comm.size())?;
        let mut c = vec![0; self.dims.len()];
        let mut r = rank;
        for i in (0..self.dims.len()).rev() {
            c[i] = r % self.dims[i];
            r /= self.dims[i];
        }
        Ok(c)
    }

    /// This rank's coordinates.
    pub fn coords(&self) -> Vec<u32> {
        self.coords_of(self.comm.rank()).expect("own rank is valid")
    }

    /// The rank at `coords` (`MPI_Cart_rank`): periodic dimensions wrap; a coordinate outside
    /// a non-periodic dimension is an error.
    pub fn rank_of(&self, coords: &[i64]) -> Result<u32, Error> {
        if coords.len() != self.dims.len() {
            return Err(Error::InvalidArgument(format!(
                "rank_of: {} coordinates for a {}-dimensional grid",
                coords.len(),
                self.dims.len()
            )));
        }
        let mut r: u64 = 0;
        for (i, &c) in coords.iter().enumerate() {
            let d = i64::from(self.dims[i]);
            let c = if self.periods[i] {
                c.rem_euclid(d)
            } else if (0..d).contains(&c) {
                c
            } else {
                return Err(Error::InvalidArgument(format!(
                    "rank_of: coordinate {c} outside non-periodic dimension {i} of size {d}"
                )));
            };
            r = r * d as u64 + c as u64;
        }
        Ok(r as u32)
    }

    /// Source and destination of a shift by `disp` along `dim` (`MPI_Cart_shift`): the
    /// rank `disp` steps back and the one `disp` steps forward; `None` past the edge of a
    /// non-periodic dimension (`MPI_PROC_NULL`).
    pub fn shift(&self, dim: usize, disp: i64) -> Result<(Option<u32>, Option<u32>), Error> {
        if dim >= self.dims.len() {
            return Err(Error::InvalidArgument(format!(
                "shift: dimension {dim} of a {}-dimensional grid",
                self.dims.len()
            )));
        }
        let me: Vec<i64> = self.coords().iter().map(|&c| i64::from(c)).collect();
        let at = |delta: i64| {
            let mut c = me.clone();
            c[dim] += delta;
            self.rank_of(&c).ok()
        };
        Ok((at(-disp), at(disp)))
    }

    /// The neighbours in MPI's order: for each dimension, the one below, then the one above
    /// (`None` past a non-periodic edge).
    pub fn neighbors(&self) -> Vec<Option<u32>> {
        (0..self.dims.len())
            .flat_map(|d| {
                let (lo, hi) = self.shift(d, 1).expect("dimension in range");
                [lo, hi]
            })
            .collect()
    }

    /// Sends block `i` of `send` to neighbour `i` and receives block `i` of `recv` from
    /// neighbour `i` (`MPI_Neighbor_alltoall`); blocks facing a missing neighbour are
    /// neither sent nor written.
    pub fn neighbor_alltoall<T: Pod>(&self, send: &[T], recv: &mut [T]) -> Result<(), Error> {
        let k = 2 * self.dims.len();
        if !send.len().is_multiple_of(k) || recv.len() != send.len() {
            return Err(Error::BufferSize {
                what: "neighbor_alltoall",
                buffer: "send and receive (equal, 2 x dimensions blocks)",
                expected: send.len().div_ceil(k) * k,
                got: recv.len(),
            });
        }
        let n = send.len() / k;
        self.neighbor_exchange(|i| &send[i * n..(i + 1) * n], recv, n)
    }

    /// Sends `send` to every neighbour and receives block `i` of `recv` from neighbour `i`
    /// (`MPI_Neighbor_allgather`).
    pub fn neighbor_allgather<T: Pod>(&self, send: &[T], recv: &mut [T]) -> Result<(), Error> {
        let k = 2 * self.dims.len();
        if recv.len() != send.len() * k {
            return Err(Error::BufferSize {
                what: "neighbor_allgather",
                buffer: "receive",
                expected: send.len() * k,
                got: recv.len(),
            });
        }
        self.neighbor_exchange(|_| send, recv, send.len())
    }

    /// The exchange behind both neighbour collectives, on the collective context. A message
    /// travelling up dimension `d` has tag kind `2d + 1`, down `2d`, so the two messages
    /// between the same pair of ranks (a periodic dimension of size 2) never mix.
    fn neighbor_exchange<'a, T: Pod>(
        &self,
        block: impl Fn(usize) -> &'a [T],
        recv: &mut [T],
        n: usize,
    ) -> Result<(), Error> {
        if n == 0 {
            return Ok(());
        }
        let nbrs = self.neighbors();
        let seq = self.comm.shared.coll_seq.get();
        self.comm.shared.coll_seq.set(seq.wrapping_add(1));
        let tag = |kind: usize| (((seq & 0x00FF_FFFF) << 7) | (64 + kind as u32)) as i32;
        let coll = self.comm.coll_view();
        coll.scope(|s| {
            let mut reqs = Vec::with_capacity(2 * nbrs.len());
            for (i, chunk) in recv.chunks_mut(n).take(nbrs.len()).enumerate() {
                if let Some(src) = nbrs[i] {
                    // Block i comes from the neighbour below (i even), which sent it up.
                    let kind = if i % 2 == 0 { i + 1 } else { i - 1 };
                    reqs.push(s.irecv(chunk, src, tag(kind))?);
                }
            }
            for (i, nb) in nbrs.iter().enumerate() {
                if let Some(dst) = *nb {
                    reqs.push(s.isend(block(i), dst, tag(i))?);
                }
            }
            crate::wait_all(&mut reqs).map(drop)
        })
    }
}
