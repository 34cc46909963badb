fn main() -> std::process::ExitCode {
    keep_freed_memory();
    quiet_on_closed_pipe();
    ember_cli::main()
}

/// `ember generate | head`: when the reader goes away, end quietly like other Unix tools
/// instead of panicking in `println!` (Rust ignores SIGPIPE by default).
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Training allocates and frees the same large buffers (activations, logits chunks,
/// gradients) every step. glibc hands blocks over 32 MB straight back to the kernel, so
/// each step paid for fresh zeroed pages again (13% of a CPU KD step went to page
/// faults). Keep blocks up to 1 GiB in the heap and freed memory mapped, as a caching
/// allocator would; `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...` still overrides.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // SAFETY: mallopt only changes allocator thresholds; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}
