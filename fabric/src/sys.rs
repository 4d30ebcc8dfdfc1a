//! Thin helpers over libc: one place that turns a -1 return into `io::Error`.

use std::io;

/// Converts a libc return value (-1 on error, errno set) into a `Result`.
pub(crate) fn cvt<T: Copy + PartialOrd + From<i8>>(ret: T) -> io::Result<T> {
    if ret < T::from(0) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Like [`cvt`] but retries on `EINTR`.
pub(crate) fn cvt_retry<T: Copy + PartialOrd + From<i8>>(
    mut f: impl FnMut() -> T,
) -> io::Result<T> {
    loop {
        match cvt(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
