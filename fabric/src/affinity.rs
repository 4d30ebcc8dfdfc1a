//! Pinning the calling process to one CPU (what `oxrun --bind-to core` asks of each rank),
//! and finding the CPU it is pinned to.

use crate::sys::cvt;

/// Pins the calling process to `cpu`.
pub fn bind_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes a bit inside `set`; `cpu` is bounded by the check below.
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "cpu index too large",
        ));
    }
    // SAFETY: as above, `cpu` is within the set.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 = this process; `set` is a valid cpu_set_t of the given size.
    cvt(unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) })?;
    Ok(())
}

/// The one CPU the calling process may run on, if its affinity allows exactly one.
pub fn single_cpu() -> Option<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 = this process; `set` is a writable cpu_set_t of the given size.
    cvt(unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) })
        .ok()?;
    // SAFETY: CPU_ISSET reads a bit inside `set`, initialized above, for each index below its
    // size in bits.
    let mut cpus = (0..8 * std::mem::size_of::<libc::cpu_set_t>())
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) });
    match (cpus.next(), cpus.next()) {
        (Some(cpu), None) => Some(cpu),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_cpu_is_the_one_bound_to() {
        // In a thread of its own: binding applies to the calling thread, and the test
        // harness's other threads keep theirs.
        std::thread::spawn(|| {
            let Some(cpu) = (0..1024).find(|&c| bind_to_cpu(c).is_ok()) else {
                return;
            };
            assert_eq!(single_cpu(), Some(cpu));
        })
        .join()
        .unwrap();
    }
}
