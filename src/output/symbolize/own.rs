//! Symbols of the object heapprof is linked into (the executable, or the
//! shared library heapprof is part of), read from its file with a bound on
//! the memory the lookup holds.
//!
//! That object is usually the one with the most debug info in the process
//! (a service's executable carries 100 MB or more), and backtrace's
//! lookup of it holds whatever it parses until the lookup ends: every
//! compilation unit met, and every page of the file it read. Here the
//! profile's addresses are looked up in address order, so that each
//! unit's come together, with one `addr2line::Context` over the mapped
//! file; when the units parsed since the context was made pass
//! [`Budget::parsed_bytes`], the context is dropped and a new one made
//! (which parses again only the units the later addresses are in), and
//! when the file pages
//! the lookup touched pass [`Budget::file_bytes`], they are taken out of
//! the process's resident set (`MADV_DONTNEED`; the kernel's page cache
//! keeps them, and a later read maps them again).
//!
//! Other objects (the C library, other shared libraries) stay with
//! backtrace, which reads their symbol tables, or their detached debug
//! files where a debug package is installed; so do files laid out in ways
//! this reader leaves alone: debug info in another file (a `.gnu_debuglink`, a
//! build-ID file under `/usr/lib/debug`, a `.dwp` package, split units),
//! or compressed sections. A file with no debug info is named from its
//! symbol table, as backtrace does.

// ELF sizes and addresses are `u32` in 32-bit files and converted to
// `u64`, which is a conversion to the same type on 64-bit targets.
#![allow(clippy::useless_conversion)]

use std::fs::File;
use std::os::unix::fs::FileExt;

use addr2line::gimli;
use object::NativeEndian;
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader, SectionTable, Sym};

use super::{Symbol, Symbols, this_thread_net_bytes};
use crate::support::mappings::{self, Mapping};

#[cfg(target_pointer_width = "64")]
type Elf = elf::FileHeader64<NativeEndian>;
#[cfg(target_pointer_width = "32")]
type Elf = elf::FileHeader32<NativeEndian>;

type Reader<'a> = gimli::EndianSlice<'a, gimli::NativeEndian>;

/// How much a lookup may hold.
#[derive(Clone, Copy)]
pub(super) struct Budget {
    /// Heap bytes that the units a context has parsed (functions, line
    /// tables, inlined calls) may hold before the context is dropped and
    /// a new one made. The context's own base (unit headers, address
    /// ranges; about 11 MiB for a 100 MB binary) comes on top, as does the
    /// unit being parsed when the budget is passed.
    pub parsed_bytes: i64,
    /// Bytes of the mapped file that may be resident before the lookup
    /// drops them from the process's resident set.
    pub file_bytes: u64,
}

/// The budget of every lookup.
pub(super) const BUDGET: Budget = Budget {
    parsed_bytes: PARSED_BYTES_BUDGET,
    file_bytes: FILE_PAGES_BUDGET,
};

/// [`Budget::parsed_bytes`] of every lookup.
const PARSED_BYTES_BUDGET: i64 = 16 << 20;

/// [`Budget::file_bytes`] of every lookup.
const FILE_PAGES_BUDGET: u64 = 8 << 20;

/// The executable mappings of heapprof's own object, and its file.
pub(super) struct OwnObject {
    mappings: Vec<Mapping>,
}

impl OwnObject {
    /// The loaded object heapprof's code is in, with all of its executable
    /// mappings; `None` if its file has no path.
    pub(super) fn find() -> Option<OwnObject> {
        let mappings = mappings::own_object();
        if mappings.first()?.path.is_empty() {
            return None;
        }
        Some(OwnObject { mappings })
    }

    /// Whether `addr`, a return address, follows a call in this object.
    pub(super) fn contains(&self, addr: usize) -> bool {
        let call = (addr as u64).wrapping_sub(1);
        self.mappings
            .iter()
            .any(|m| m.start <= call && call < m.limit)
    }
}

/// What [`resolve`] found: the frames at each address it looked up, and
/// the addresses it leaves to backtrace.
pub(super) struct Found {
    pub resolved: Vec<(usize, Symbols)>,
    pub left: Vec<usize>,
}

/// Looks up `addrs` (return addresses in `object`, sorted) within
/// `budget`. `None` when the file is one this reader leaves to backtrace.
pub(super) fn resolve(object: &OwnObject, addrs: &[usize], budget: Budget) -> Option<Found> {
    let first = object.mappings.first()?;
    let file = File::open(&first.path).ok()?;
    let map = Mapped::new(&file)?;
    let data = map.bytes();
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, data).ok()?;
    if !plain_layout(&first.path, &sections, endian, data) {
        return None;
    }
    if !first.build_id.is_empty() && build_id(&sections, endian, data)? != first.build_id {
        // Not the file that was loaded (replaced since): its names would
        // be wrong.
        return None;
    }
    let bias = header
        .program_headers(endian, data)
        .ok()?
        .iter()
        .find(|ph| {
            ph.p_type(endian) == elf::PT_LOAD
                && ph.p_flags(endian).contains(elf::PF_X)
                && Into::<u64>::into(ph.p_offset(endian)) == first.file_offset
        })
        .map(|ph| first.start.wrapping_sub(ph.p_vaddr(endian).into()))?;
    let section = |name: &str| -> &[u8] {
        sections
            .section_by_name(endian, name.as_bytes())
            .and_then(|(_, s)| s.data(endian, data).ok())
            .unwrap_or(&[])
    };
    let context = || {
        let dwarf = gimli::Dwarf::load(|id| -> Result<Reader<'_>, ()> {
            Ok(Reader::new(section(id.name()), gimli::NativeEndian))
        })
        .ok()?;
        addr2line::Context::from_dwarf(dwarf).ok()
    };

    let mut resident = FileResident::new();
    let mut cx = context()?;
    map.drop_pages();
    resident.reset();
    let mut parsed_from = this_thread_net_bytes();
    let mut looked_up: Vec<(usize, Vec<Symbol>)> = Vec::with_capacity(addrs.len());
    // (index in `looked_up`, index of the frame or `None` for a new one,
    // address in the file) of frames the debug info does not name.
    let mut unnamed: Vec<(usize, Option<usize>, u64)> = Vec::new();
    let mut left = Vec::new();
    for &addr in addrs {
        if this_thread_net_bytes() - parsed_from > budget.parsed_bytes {
            drop(cx);
            map.drop_pages();
            cx = context()?;
            map.drop_pages();
            resident.reset();
            parsed_from = this_thread_net_bytes();
        }
        #[cfg(test)]
        super::RESOLVED.with(|r| r.set(r.get() + 1));
        // Return addresses: the call is the instruction before.
        let probe = (addr as u64).wrapping_sub(1).wrapping_sub(bias);
        let Some(frames) = frames_at(&cx, probe) else {
            left.push(addr);
            continue;
        };
        let at = looked_up.len();
        if frames.is_empty() {
            unnamed.push((at, None, probe));
        }
        for (i, f) in frames.iter().enumerate() {
            if f.name.is_empty() {
                unnamed.push((at, Some(i), probe));
            }
        }
        looked_up.push((addr, frames));
        if resident.grown() > budget.file_bytes {
            map.drop_pages();
            resident.reset();
        }
    }
    drop(cx);
    if !unnamed.is_empty() {
        let mut probes: Vec<u64> = unnamed.iter().map(|u| u.2).collect();
        probes.sort_unstable();
        probes.dedup();
        let names = symbol_table_names(&sections, endian, data, &probes);
        for (at, frame, probe) in unnamed {
            let name = probes
                .binary_search(&probe)
                .ok()
                .and_then(|i| names[i])
                .unwrap_or_default();
            if name.is_empty() {
                continue;
            }
            let frames = &mut looked_up[at].1;
            match frame {
                Some(i) => (frames[i].name, frames[i].system_name) = super::names(name),
                None => {
                    let (name, system_name) = super::names(name);
                    frames.push(Symbol {
                        name,
                        system_name,
                        file: String::new(),
                        line: 0,
                    });
                }
            }
        }
    }
    Some(Found {
        resolved: looked_up
            .into_iter()
            .map(|(addr, frames)| (addr, frames.into()))
            .collect(),
        left,
    })
}

/// The frames at `probe` (an address in the file), innermost first, names
/// left empty where the debug info has none; `None` when they are in a
/// split unit, whose debug info is in another file.
fn frames_at(cx: &addr2line::Context<Reader<'_>>, probe: u64) -> Option<Vec<Symbol>> {
    let iter = match cx.find_frames(probe) {
        addr2line::LookupResult::Output(iter) => iter,
        addr2line::LookupResult::Load { .. } => return None,
    };
    let mut frames = Vec::new();
    if let Ok(mut iter) = iter {
        while let Ok(Some(frame)) = iter.next() {
            let (name, system_name) = match &frame.function {
                Some(f) => super::names(f.name.slice()),
                None => (String::new(), String::new()),
            };
            let location = frame.location.as_ref();
            frames.push(Symbol {
                name,
                system_name,
                file: location
                    .and_then(|l| l.file)
                    .map(str::to_owned)
                    .unwrap_or_default(),
                line: location.and_then(|l| l.line).unwrap_or(0),
            });
        }
    }
    Some(frames)
}

/// Whether the file holds its own debug info (or none), uncompressed: the
/// layout this reader handles. backtrace reads debug info from another
/// file when one of these points to it, and decompresses sections.
fn plain_layout(
    path: &str,
    sections: &SectionTable<'_, Elf>,
    endian: NativeEndian,
    data: &[u8],
) -> bool {
    if sections
        .section_by_name(endian, b".gnu_debuglink")
        .is_some()
    {
        return false;
    }
    if std::path::Path::new(&format!("{path}.dwp")).exists() {
        return false;
    }
    if let Some(id) = build_id(sections, endian, data)
        && id.len() > 2
        && std::path::Path::new(&format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &id[..2],
            &id[2..]
        ))
        .exists()
    {
        return false;
    }
    sections.iter().all(|s| {
        let name = sections.section_name(endian, s).unwrap_or_default();
        let compressed = name.starts_with(b".zdebug_")
            || (name.starts_with(b".debug_") && s.sh_flags(endian).contains(elf::SHF_COMPRESSED));
        !compressed
    })
}

/// The file's GNU build ID, in lower-case hex.
fn build_id(sections: &SectionTable<'_, Elf>, endian: NativeEndian, data: &[u8]) -> Option<String> {
    for section in sections.iter() {
        if let Ok(Some(mut notes)) = section.notes(endian, data) {
            while let Ok(Some(note)) = notes.next() {
                if note.name() == elf::ELF_NOTE_GNU && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                    return Some(note.desc().iter().map(|b| format!("{b:02x}")).collect());
                }
            }
        }
    }
    None
}

/// For each of `probes` (sorted, distinct), the name of the function or
/// object symbol at the highest address at or below it, if that symbol's
/// extent reaches it: backtrace's rule, from `.symtab`, or `.dynsym` in a
/// file without one. One pass over the table, holding nothing but one
/// candidate per probe: the symbol that starts at or below a probe and
/// above every earlier probe is filed under that probe, and each probe's
/// answer is the highest candidate filed under it or an earlier one.
fn symbol_table_names<'a>(
    sections: &SectionTable<'a, Elf>,
    endian: NativeEndian,
    data: &'a [u8],
    probes: &[u64],
) -> Vec<Option<&'a [u8]>> {
    let mut none = vec![None; probes.len()];
    let Ok(mut table) = sections.symbols(endian, data, elf::SHT_SYMTAB) else {
        return none;
    };
    if table.is_empty() {
        match sections.symbols(endian, data, elf::SHT_DYNSYM) {
            Ok(t) => table = t,
            Err(_) => return none,
        }
    }
    let mut filed: Vec<Option<(u64, u64, u32)>> = vec![None; probes.len()];
    for sym in table.iter() {
        let kind = sym.st_type();
        if (kind != elf::STT_FUNC && kind != elf::STT_OBJECT)
            || sym.st_shndx(endian) == elf::SHN_UNDEF
        {
            continue;
        }
        let address: u64 = sym.st_value(endian).into();
        let i = probes.partition_point(|&p| p < address);
        if i < probes.len() && filed[i].is_none_or(|(a, _, _)| a < address) {
            filed[i] = Some((address, sym.st_size(endian).into(), sym.st_name(endian)));
        }
    }
    let strings = table.strings();
    let mut best: Option<(u64, u64, u32)> = None;
    for (i, &probe) in probes.iter().enumerate() {
        if let Some(f) = filed[i]
            && best.is_none_or(|b| b.0 < f.0)
        {
            best = Some(f);
        }
        none[i] = best
            .filter(|&(address, size, _)| probe <= address.saturating_add(size))
            .and_then(|(_, _, name)| strings.get(name).ok());
    }
    none
}

/// A file mapped read-only, private, whole.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn new(file: &File) -> Option<Mapped> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        if len == 0 {
            return None;
        }
        // SAFETY: a new private read-only mapping of an open file, at an
        // address the kernel picks; nothing else refers to that range.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(Mapped { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is a readable mapping of `len` bytes that lives
        // until `self` is dropped, and nothing writes to it.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }

    /// Takes the mapping's pages out of the resident set. The mapping is
    /// private and never written, so each page holds the file's contents,
    /// which the next read maps again: slices into it stay valid.
    fn drop_pages(&self) {
        // SAFETY: the range is this mapping, whole. MADV_DONTNEED on a
        // private file mapping with no written pages discards nothing but
        // the page-table entries.
        unsafe {
            libc::madvise(self.ptr, self.len, libc::MADV_DONTNEED);
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, unmapped once; no slice of it
        // outlives `self` (`bytes` borrows it).
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// The process's resident file-backed pages (`/proc/self/statm`, third
/// field: file and shared memory), read without allocating.
struct FileResident {
    statm: Option<File>,
    at_reset: u64,
    page: u64,
}

impl FileResident {
    fn new() -> FileResident {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        let mut r = FileResident {
            statm: File::open("/proc/self/statm").ok(),
            at_reset: 0,
            page,
        };
        r.reset();
        r
    }

    fn now(&self) -> u64 {
        let mut buf = [0u8; 128];
        let Some(Ok(n)) = self.statm.as_ref().map(|f| f.read_at(&mut buf, 0)) else {
            return 0;
        };
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|s| s.split_ascii_whitespace().nth(2))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |pages| pages * self.page)
    }

    fn reset(&mut self) {
        self.at_reset = self.now();
    }

    fn grown(&self) -> u64 {
        self.now().saturating_sub(self.at_reset)
    }
}
