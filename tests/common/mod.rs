//! Helpers shared by the integration tests: decoding a profile with
//! heapprof's own prost types and querying it the way `pprof -top` does.
#![allow(dead_code)]

use std::io::Read;

use heapprof::proto::Profile;
use prost::Message;

pub const ALLOC_OBJECTS: usize = 0;
pub const ALLOC_SPACE: usize = 1;
pub const INUSE_OBJECTS: usize = 2;
pub const INUSE_SPACE: usize = 3;

/// Writes the current profile and decodes it back.
pub fn take_profile() -> Profile {
    let mut gz = Vec::new();
    heapprof::write_profile(&mut gz).expect("write_profile");
    decode(&gz)
}

pub fn decode(gz: &[u8]) -> Profile {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .expect("the profile must be gzip");
    Profile::decode(raw.as_slice()).expect("the profile must decode as profile.proto")
}

pub fn string(p: &Profile, i: i64) -> &str {
    &p.string_table[i as usize]
}

/// Function names along a sample's stack, leaf first, inlined frames
/// innermost first.
pub fn stack_names(p: &Profile, s: &heapprof::proto::Sample) -> Vec<String> {
    let mut names = Vec::new();
    for id in &s.location_id {
        let loc = &p.location[*id as usize - 1];
        assert_eq!(loc.id, *id, "location ids are dense");
        for line in &loc.line {
            let f = &p.function[line.function_id as usize - 1];
            names.push(string(p, f.name).to_owned());
        }
    }
    names
}

/// The leaf function of a sample: what `pprof -top` calls flat.
pub fn leaf_name(p: &Profile, s: &heapprof::proto::Sample) -> String {
    stack_names(p, s).into_iter().next().unwrap_or_default()
}

/// Sum of value `index` over samples whose stack contains a function whose
/// name contains `needle` (pprof's cum column).
pub fn cum(p: &Profile, needle: &str, index: usize) -> i64 {
    p.sample
        .iter()
        .filter(|s| stack_names(p, s).iter().any(|n| n.contains(needle)))
        .map(|s| s.value[index])
        .sum()
}

/// Sum of value `index` over samples whose leaf function contains `needle`
/// (pprof's flat column).
pub fn flat(p: &Profile, needle: &str, index: usize) -> i64 {
    p.sample
        .iter()
        .filter(|s| leaf_name(p, s).contains(needle))
        .map(|s| s.value[index])
        .sum()
}

/// Asserts `estimate` is within `sigmas` standard errors of `truth`, where
/// the relative standard error of a site holding `truth` bytes sampled at
/// `rate` is 1/sqrt(truth/rate) (a Poisson count of samples).
pub fn assert_estimate(what: &str, estimate: i64, truth: usize, rate: usize, sigmas: f64) {
    let rel_se = 1.0 / ((truth as f64) / rate as f64).sqrt();
    let tolerance = (sigmas * rel_se).max(0.005);
    let rel = (estimate as f64 - truth as f64).abs() / truth as f64;
    assert!(
        rel <= tolerance,
        "{what}: estimate {estimate} vs truth {truth}: off by {:.1} %, tolerance {:.1} % ({sigmas} × {:.1} %)",
        rel * 100.0,
        tolerance * 100.0,
        rel_se * 100.0
    );
    println!(
        "{what}: estimate {estimate}, truth {truth}, off by {:.2} % (tolerance {:.1} %)",
        rel * 100.0,
        tolerance * 100.0
    );
}
