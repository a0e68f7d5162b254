//! The C allocator's heap. The agent's threads (event loop, blocking pool,
//! sensor workers) would each get a glibc arena of their own, and large
//! answers (an inventory of 10,000 namespaces is megabytes of JSON) leave
//! freed pages behind: both count in the agent's RSS. musl keeps no
//! arenas and returns memory itself, so there these do nothing.

/// At most two arenas for the whole process; call before threads start.
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: a plain allocator setting, made before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands freed heap pages back to the kernel (after a large answer).
pub fn release_free_pages() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
