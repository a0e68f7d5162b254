//! The kernel's clocks, in nanoseconds.

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// CLOCK_BOOTTIME: the clock the kernel programs stamp records with.
pub fn boot_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME) as u64
}

/// CLOCK_REALTIME: nanoseconds since the Unix epoch.
pub fn realtime_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME)
}
