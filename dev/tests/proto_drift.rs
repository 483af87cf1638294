//! The generated pprof types in `src/output/proto/perftools.profiles.rs` are checked
//! in, so that building heapprof needs no `protoc` and no build script. This
//! test regenerates them from `proto/profile.proto` with a pure-Rust compiler
//! (protox + prost-build) and fails if the checked-in file has drifted.
//!
//! It lives in the `heapprof-dev` workspace member, whose dependencies
//! (protox, prost-build) heapprof's own tests do not need. To refresh the
//! file after editing the .proto, from the repository root:
//! `HEAPPROF_REGENERATE_PROTO=1 cargo test -p heapprof-dev --test proto_drift`

use std::path::Path;

#[test]
fn generated_types_match_the_proto() {
    // heapprof's own directory: this crate is `dev/` inside it.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let fds = protox::compile([root.join("proto/profile.proto")], [root.join("proto")])
        .expect("proto/profile.proto must compile");
    let out = tempfile::tempdir().unwrap();
    prost_build::Config::new()
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("prost-build must generate Rust from the descriptor set");
    let fresh = std::fs::read_to_string(out.path().join("perftools.profiles.rs")).unwrap();
    let checked_in_path = root.join("src/output/proto/perftools.profiles.rs");
    if std::env::var_os("HEAPPROF_REGENERATE_PROTO").is_some() {
        std::fs::write(&checked_in_path, &fresh).unwrap();
    }
    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "src/output/proto/perftools.profiles.rs is out of date with proto/profile.proto; \
         run HEAPPROF_REGENERATE_PROTO=1 cargo test -p heapprof-dev --test proto_drift"
    );
}
