//! Pinning the calling process to one CPU (what `oxrun --bind-to core` asks of each rank).

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
