//! Allocator tuning. Training frees and reallocates hundreds of megabytes of tensor buffers per
//! step; returning them to the OS makes every step page-fault and zero them again (a quarter of
//! the step time when measured). The binary uses mimalloc and tells it to keep freed memory.

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (the same index in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the OS (purge delay -1). Call first thing in
/// `main`; harmless when mimalloc is not the global allocator.
pub fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores an integer option; any option value is valid.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}
