//! Decoding a profile and querying it the way `pprof -top` does.

use std::io::Read;

use prost::Message;

use crate::proto::{Profile, Sample};

/// Index of `alloc_objects` in a sample's values.
pub const ALLOC_OBJECTS: usize = 0;
/// Index of `alloc_space` in a sample's values.
pub const ALLOC_SPACE: usize = 1;
/// Index of `inuse_objects` in a sample's values.
pub const INUSE_OBJECTS: usize = 2;
/// Index of `inuse_space` in a sample's values.
pub const INUSE_SPACE: usize = 3;

/// Writes the current profile and decodes it back.
pub fn take_profile() -> Profile {
    let mut gz = Vec::new();
    heapprof::write_profile(&mut gz).expect("write_profile");
    decode(&gz)
}

/// Decodes a gzipped profile; panics if it is not one.
pub fn decode(gz: &[u8]) -> Profile {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .expect("the profile must be gzip");
    Profile::decode(raw.as_slice()).expect("the profile must decode as profile.proto")
}

/// Entry `i` of the profile's string table.
pub fn string(p: &Profile, i: i64) -> &str {
    &p.string_table[i as usize]
}

/// Function names along a sample's stack, leaf first, inlined frames
/// innermost first.
pub fn stack_names(p: &Profile, s: &Sample) -> Vec<String> {
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
pub fn leaf_name(p: &Profile, s: &Sample) -> String {
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

/// The `profiler tables use N bytes` figure from the profile's comments.
pub fn table_bytes(p: &Profile) -> usize {
    comment_number(p, "profiler tables use ")
}

/// The `N live sampled blocks` figure from the profile's comments.
pub fn live_sampled_blocks(p: &Profile) -> usize {
    let c = p
        .comment
        .iter()
        .map(|&i| string(p, i))
        .find(|c| c.contains(" live sampled blocks"))
        .expect("a comment with the live sampled blocks");
    let after = &c[c.find("heapprof: ").expect("heapprof: prefix") + "heapprof: ".len()..];
    leading_number(after)
}

/// The number right after `before` in the first comment that contains it.
fn comment_number(p: &Profile, before: &str) -> usize {
    let c = p
        .comment
        .iter()
        .map(|&i| string(p, i))
        .find(|c| c.contains(before))
        .unwrap_or_else(|| panic!("no comment containing {before:?}"));
    leading_number(&c[c.find(before).unwrap() + before.len()..])
}

/// The decimal digits `text` starts with, as a number.
fn leading_number(text: &str) -> usize {
    text.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a number")
}

/// The `symbols kept use N bytes` figure from the profile's comments.
pub fn symbol_bytes(p: &Profile) -> usize {
    comment_number(p, "symbols kept use ")
}
