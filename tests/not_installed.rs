//! A program that calls heapprof without installing it as the global
//! allocator gets a clear error, not an empty profile.

#[test]
fn write_profile_says_the_allocator_is_missing() {
    let _some_allocation = vec![0u8; 1 << 20];
    let err = heapprof::write_profile(Vec::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::Other);
    assert!(err.to_string().contains("#[global_allocator]"), "{err}");
}
