//! Signal handlers for the tests that allocate or free inside one.

/// Installs `handler` for `signal` with `flags` (`SA_RESTART`,
/// `SA_ONSTACK`) and an empty mask; panics if the system refuses.
///
/// # Safety
/// `handler` must do only what is safe wherever `signal` may interrupt
/// the threads it is delivered to (the tests arrange that: allocating
/// through heapprof while the interrupted code holds no allocator lock,
/// say).
pub unsafe fn install(
    signal: libc::c_int,
    handler: extern "C" fn(libc::c_int),
    flags: libc::c_int,
) {
    // SAFETY: an all-zero `sigaction` is a valid value of the plain C
    // struct; its fields are set below, and `sigaction` only reads it.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = flags;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(signal, &action, std::ptr::null_mut()),
            0,
            "install a handler for signal {signal}"
        );
    }
}
