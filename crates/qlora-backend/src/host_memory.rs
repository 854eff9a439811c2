//! Keeping freed host memory in the process, so that a training step's tensors reuse it.
//!
//! A Flex training step allocates and frees hundreds of megabytes of `[tokens, features]`
//! buffers. glibc's allocator serves blocks above its mmap threshold (128 KiB at start) with a
//! fresh `mmap` and unmaps them when freed, and trims the heap's free top above its trim
//! threshold: every step's buffers then come back as new pages, which the kernel zeroes on
//! first touch. Measured on the default model's QLoRA step (`perf`, benches/README.md), the
//! kernel's page clearing took 16 % of the step. [`keep_freed_host_memory`] raises both
//! thresholds (the mmap threshold to glibc's maximum, 32 MiB), as the `MALLOC_MMAP_THRESHOLD_`
//! and `MALLOC_TRIM_THRESHOLD_` environment variables would: freed buffers stay in the heap and
//! the next step reuses them. The peak resident memory is what the step needs at its peak, as
//! before; what changes is that it is not handed back between steps.

/// glibc's largest mmap threshold on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Makes the process keep freed host memory for reuse (see the module docs); returns whether
/// the allocator took the setting (only glibc's does; elsewhere this does nothing and returns
/// false). Process-wide, for programs that train on the CPU: call it once at start-up.
pub fn keep_freed_host_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; glibc takes them at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
