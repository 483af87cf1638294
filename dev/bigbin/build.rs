//! Generates `$OUT_DIR/generated.rs`: `BIGBIN_MODULES` modules (default
//! [`DEFAULT_MODULES`]), each with [`TYPES`] types and generic functions
//! instantiated for each of them, which format, hash, sort and collect
//! (so that the standard library's generic code is instantiated and
//! inlined into each, as in real programs), and [`run`] entry points
//! whose large allocations give the profile one site per instantiation.

use std::fmt::Write as _;

/// Modules when `BIGBIN_MODULES` does not say: enough for a binary of
/// over 100 MB.
const DEFAULT_MODULES: usize = 80;

/// Types per module, each instantiating every generic function.
const TYPES: usize = 8;

fn main() {
    println!("cargo::rerun-if-env-changed=BIGBIN_MODULES");
    println!("cargo::rerun-if-changed=build.rs");
    let modules: usize = std::env::var("BIGBIN_MODULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MODULES);
    let mut out = String::new();
    writeln!(out, "pub const MODULES: usize = {modules};").unwrap();
    writeln!(out, "pub const TYPES: usize = {TYPES};").unwrap();
    for m in 0..modules {
        module(&mut out, m);
    }
    writeln!(out, "pub fn run_all(bytes: usize) -> usize {{").unwrap();
    writeln!(out, "    let mut total = 0;").unwrap();
    for m in 0..modules {
        writeln!(out, "    total += m{m}::run(bytes);").unwrap();
    }
    writeln!(out, "    total\n}}").unwrap();
    let path = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("generated.rs");
    std::fs::write(path, out).unwrap();
}

fn module(out: &mut String, m: usize) {
    writeln!(out, "pub mod m{m} {{").unwrap();
    writeln!(out, "    use crate::Item;").unwrap();
    writeln!(out, "    use std::collections::{{BTreeMap, HashMap}};").unwrap();
    writeln!(out, "    use std::hint::black_box;").unwrap();
    for t in 0..TYPES {
        writeln!(
            out,
            "    #[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct Record{m}x{t} {{ pub id: u64, pub name: String, pub tags: Vec<u32>, pub parent: Option<Box<Record{m}x{t}>> }}
    impl Item for Record{m}x{t} {{
        fn make(i: u64) -> Self {{
            Record{m}x{t} {{ id: i * {k} + {t}, name: format!(\"m{m}t{t}-{{i}}\"), tags: (0..(i % 7) as u32).collect(), parent: None }}
        }}
        fn key(&self) -> u64 {{ self.id ^ {k} }}
    }}",
            k = m * 31 + t * 7 + 1
        )
        .unwrap();
    }
    // Generic functions: each instantiated for every type of the module.
    writeln!(
        out,
        "    #[inline(never)]
    pub fn build<T: Item>(n: u64) -> Vec<T> {{
        let mut v: Vec<T> = (0..n).map(T::make).collect();
        v.sort();
        v.dedup();
        v
    }}
    #[inline(never)]
    pub fn index<T: Item>(items: &[T]) -> HashMap<u64, String> {{
        items.iter().map(|x| (x.key(), format!(\"{{x:?}}\"))).collect()
    }}
    #[inline(never)]
    pub fn group<T: Item>(items: Vec<T>) -> BTreeMap<u64, Vec<T>> {{
        let mut g: BTreeMap<u64, Vec<T>> = BTreeMap::new();
        for x in items {{
            g.entry(x.key() % 5).or_default().push(x);
        }}
        g
    }}
    #[inline(never)]
    pub fn large<T: Item>(bytes: usize) -> usize {{
        let v: Vec<T> = Vec::with_capacity(bytes / std::mem::size_of::<T>().max(1));
        black_box(&v);
        v.capacity()
    }}
    #[inline(never)]
    pub fn work<T: Item>(bytes: usize) -> usize {{
        let items = build::<T>(16);
        let idx = index(&items);
        let g = group(items);
        large::<T>(bytes) + idx.len() + g.len()
    }}"
    )
    .unwrap();
    writeln!(out, "    pub fn run(bytes: usize) -> usize {{").unwrap();
    writeln!(out, "        let mut total = 0;").unwrap();
    for t in 0..TYPES {
        writeln!(out, "        total += work::<Record{m}x{t}>(bytes);").unwrap();
    }
    writeln!(out, "        total\n    }}\n}}").unwrap();
}
