//! Symbols of the object heapprof is linked into (the executable, or the
//! shared library heapprof is part of), read from its file with a bound on
//! the memory the lookup holds.
//!
//! That object is usually the one with the most debug info in the process
//! (a service's executable carries 100 MB or more), and backtrace's
//! lookup of it holds whatever it parses until the lookup ends: every
//! compilation unit met, and every page of the file it read. And an
//! `addr2line::Context` over the whole file parses every unit's header
//! and abbreviations before its first answer (tens of ms and of MB for
//! such a file), however few addresses are new.
//!
//! So the first lookup indexes the file's units ([`UnitIndex`]: each
//! unit's span in `.debug_info`, the addresses it covers, and whether its
//! entries refer into other units), and the index is kept. Addresses are
//! then looked up unit by unit, each unit's in a context over that unit
//! and the units its entries reach by `DW_FORM_ref_addr` (ThinLTO's
//! imported functions name their origin in another unit), read through a
//! private mapping of `.debug_info` in which every other unit reads as an
//! empty one ([`Narrowable`]), so that offsets between the kept ones hold.
//!
//! An address in no unit's ranges, when the index holds every range the
//! whole file's context would read ([`Place::Nowhere`]), has no frames in
//! the debug info and is named from the symbol table at once. Addresses
//! the index cannot vouch for (in ranges two units claim or that only
//! `.debug_aranges` or line sequences give, outside every range of an
//! incomplete index, in a unit whose references reach another file or
//! more than [`MAX_UNITS_TOGETHER`] units) are looked up in address order, so
//! that each unit's come together, in one context over the whole file;
//! when the units it has parsed pass [`Budget::parsed_bytes`], the context
//! is dropped and a new one made (which parses again only the units the
//! later addresses are in). Either way, when the file pages the lookup
//! touched pass [`Budget::file_bytes`], they are taken out of the
//! process's resident set (`MADV_DONTNEED`; the kernel's page cache keeps
//! them, and a later read maps them again).
//!
//! Objects loaded after heapprof started (`dlopen`) are read here too,
//! without an index kept: backtrace reads its list of loaded objects once
//! and never sees them. Other objects (the C library, the shared
//! libraries the executable needs) stay with backtrace, which reads their
//! symbol tables, or their detached debug files where a debug package is
//! installed; so do files laid out in ways this reader leaves alone:
//! debug info in another file (a `.gnu_debuglink`, a build-ID file under
//! `/usr/lib/debug`), or compressed sections; and so do the addresses in
//! split units (whose debug info is in `.dwo` files or a `.dwp` package)
//! whose file holds the unit of this build ([`SplitFiles`]).
//! What backtrace names gets its path from the symbol table where the
//! debug info gives a short name ([`add_paths`]). A file with no debug
//! info is named from its symbol table, as backtrace does; so is one
//! whose `.gnu_debuglink` names a file of another build (a debug file
//! left from an earlier deploy), or none, which backtrace would follow
//! unchecked.

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

/// The executable mappings of a loaded object read here (heapprof's own,
/// or one loaded after heapprof started), and its file.
pub(super) struct OwnObject {
    mappings: Vec<Mapping>,
}

impl OwnObject {
    /// The loaded object heapprof's code is in, with all of its executable
    /// mappings; `None` if its file has no path.
    pub(super) fn find() -> Option<OwnObject> {
        Self::of(mappings::own_object())
    }

    /// The object whose executable mappings are `mappings` (one object's,
    /// all of them); `None` if it has none or its file has no path.
    pub(super) fn of(mappings: Vec<Mapping>) -> Option<OwnObject> {
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

/// The compilation units of one file's `.debug_info` and the addresses
/// each covers, so that a lookup parses only the units its addresses are
/// in (and those their entries refer to). It holds a few words per unit
/// and per address range (adjacent ranges of one unit merged), and is kept
/// from one lookup to the next.
pub(super) struct UnitIndex {
    /// The file it describes.
    file: FileIdentity,
    /// The compilation units, in section order.
    units: Vec<IndexedUnit>,
    /// (begin, end, index in `units`) of each range of file addresses a
    /// unit covers, sorted. A range only the whole context can place has
    /// the unit [`WHOLE_ONLY`].
    ranges: Vec<(u64, u64, u32)>,
    /// Whether `ranges` holds every address the whole context can place
    /// in a unit, so that an address outside them is in none.
    complete: bool,
}

/// Where the debug info describes an address, as far as an index knows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Place {
    /// In this unit, which a context of its own (and the units it refers
    /// to) describes as the whole context does.
    Unit(u32),
    /// In no unit: the whole context finds no frames there either.
    Nowhere,
    /// Only the whole context can tell.
    WholeOnly,
}

/// A compilation unit in a [`UnitIndex`].
struct IndexedUnit {
    /// Its span in `.debug_info`.
    span: std::ops::Range<usize>,
    refs: Refs,
    /// With [`Refs::ByOffset`], once a lookup has read its entries: the
    /// other units they refer to.
    targets: Option<Box<[u32]>>,
}

/// Where a unit's entries may refer (from the forms in its abbreviation
/// table, [`refs_of`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refs {
    /// Only within the unit: it means the same parsed alone.
    Within,
    /// Also into other units of `.debug_info`, by offset
    /// (`DW_FORM_ref_addr`): it means the same parsed with them.
    ByOffset,
    /// Into another file, to a type signature, by a form the entry picks,
    /// or unreadable: only the whole context reads it.
    Elsewhere,
}

/// The unit of an index range only the whole context can place: more than
/// one unit covers it, or a unit covers it in a way a context over that
/// unit alone does not read (`.debug_aranges`, line sequences).
const WHOLE_ONLY: u32 = u32::MAX;

/// The most units one lookup context is made of; a unit whose references
/// reach more goes to the whole context.
const MAX_UNITS_TOGETHER: usize = 64;

impl UnitIndex {
    /// Reads the unit headers, root entries and abbreviation tables of
    /// `dwarf`, one unit at a time; a unit it cannot read is left out
    /// (its addresses go through the whole context).
    ///
    /// The whole context places an address by each compilation unit's
    /// `DW_AT_ranges`, else its `.debug_aranges` entries, else its
    /// `DW_AT_low_pc`/`DW_AT_high_pc`, else its line sequences; it skips
    /// type and partial units. A context over one unit has no
    /// `.debug_aranges` (see [`dwarf_over`]), so ranges that only those or
    /// the line sequences give are [`WHOLE_ONLY`].
    fn new(file: FileIdentity, dwarf: &gimli::Dwarf<Reader<'_>>) -> UnitIndex {
        use gimli::Section as _;
        let abbrev = dwarf.debug_abbrev.reader().slice();
        let aranges = aranges_by_unit(dwarf);
        let mut complete = aranges.is_some();
        let aranges = aranges.unwrap_or_default();
        let (mut units, mut ranges) = (Vec::new(), Vec::new());
        let mut headers = dwarf.units();
        loop {
            let header = match headers.next() {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(_) => {
                    complete = false;
                    break;
                }
            };
            let start = match (header.debug_info_offset(), header.type_()) {
                (Some(start), gimli::UnitType::Compilation) => start,
                (_, gimli::UnitType::Type { .. } | gimli::UnitType::Partial) => continue,
                _ => {
                    complete = false;
                    continue;
                }
            };
            let span = start.0..start.0 + header.length_including_self();
            let refs = refs_of(abbrev, header.debug_abbrev_offset().0);
            // The whole context skips a unit it cannot read, as this does.
            let Ok(unit) = dwarf.unit(header) else {
                continue;
            };
            let Ok(at) = u32::try_from(units.len()) else {
                complete = false;
                break;
            };
            match push_unit_ranges(dwarf, &unit, &aranges, start.0, at, &mut ranges) {
                Some(true) => {}
                Some(false) => complete = false,
                None => {
                    complete = false;
                    continue;
                }
            }
            units.push(IndexedUnit {
                span,
                refs,
                targets: None,
            });
        }
        ranges.sort_unstable();
        let mut kept: Vec<(u64, u64, u32)> = Vec::with_capacity(ranges.len());
        let mut reach = 0;
        for (begin, end, unit) in ranges {
            match kept.last_mut() {
                Some(last) if begin < reach => {
                    last.1 = last.1.max(end);
                    last.2 = WHOLE_ONLY;
                }
                Some(last) if begin == last.1 && unit == last.2 => last.1 = end,
                _ => kept.push((begin, end, unit)),
            }
            reach = reach.max(end);
        }
        kept.shrink_to_fit();
        units.shrink_to_fit();
        UnitIndex {
            file,
            units,
            ranges: kept,
            complete,
        }
    }

    /// Where the debug info describes `probe`, an address in the file.
    fn place(&self, probe: u64) -> Place {
        let nowhere = if self.complete {
            Place::Nowhere
        } else {
            Place::WholeOnly
        };
        let Some(i) = self.ranges.partition_point(|r| r.0 <= probe).checked_sub(1) else {
            return nowhere;
        };
        let (_, end, unit) = self.ranges[i];
        if probe >= end {
            return nowhere;
        }
        match self.units.get(unit as usize) {
            Some(u) if u.refs != Refs::Elsewhere => Place::Unit(unit),
            _ => Place::WholeOnly,
        }
    }

    /// The unit whose span holds `offset` in `.debug_info`.
    fn unit_holding(&self, offset: usize) -> Option<u32> {
        let i = self
            .units
            .partition_point(|u| u.span.start <= offset)
            .checked_sub(1)?;
        (offset < self.units[i].span.end).then(|| u32::try_from(i).ok())?
    }

    /// The spans of `unit` and of every unit its entries refer to,
    /// directly or through others, sorted; `None` when one of them can be
    /// read only in the whole context, or there are more than
    /// [`MAX_UNITS_TOGETHER`]. `dwarf` is the file's whole debug info, in
    /// which a unit's references are read the first time they are needed.
    fn spans_with_references(
        &mut self,
        unit: u32,
        dwarf: &gimli::Dwarf<Reader<'_>>,
    ) -> Option<Vec<std::ops::Range<usize>>> {
        let mut needed = vec![unit];
        let mut next = 0;
        while let Some(&u) = needed.get(next) {
            next += 1;
            let at = u as usize;
            match self.units[at].refs {
                Refs::Within => continue,
                Refs::Elsewhere => return None,
                Refs::ByOffset => {}
            }
            if self.units[at].targets.is_none() {
                let targets =
                    references_out(dwarf, self.units[at].span.start).and_then(|offsets| {
                        let mut t: Vec<u32> = offsets
                            .into_iter()
                            .map(|o| self.unit_holding(o))
                            .collect::<Option<_>>()?;
                        t.sort_unstable();
                        t.dedup();
                        t.retain(|&x| x != u);
                        Some(t.into_boxed_slice())
                    });
                match targets {
                    Some(t) => self.units[at].targets = Some(t),
                    None => {
                        self.units[at].refs = Refs::Elsewhere;
                        return None;
                    }
                }
            }
            for &t in self.units[at].targets.as_deref().unwrap_or_default() {
                if !needed.contains(&t) {
                    needed.push(t);
                }
            }
            if needed.len() > MAX_UNITS_TOGETHER {
                return None;
            }
        }
        let mut spans: Vec<_> = needed
            .iter()
            .map(|&u| self.units[u as usize].span.clone())
            .collect();
        spans.sort_unstable_by_key(|s| s.start);
        Some(spans)
    }
}

/// The offsets in `.debug_info` that the entries of the unit at `start`
/// refer to by `DW_FORM_ref_addr`; `None` if the unit cannot be read.
fn references_out(dwarf: &gimli::Dwarf<Reader<'_>>, start: usize) -> Option<Vec<usize>> {
    let header = dwarf
        .debug_info
        .header_from_offset(gimli::DebugInfoOffset(start))
        .ok()?;
    let unit = dwarf.unit(header).ok()?;
    let mut entries = unit.header.entries_raw(&unit.abbreviations, None).ok()?;
    let mut offsets = Vec::new();
    while !entries.is_empty() {
        let Some(abbrev) = entries.read_abbreviation().ok()? else {
            continue;
        };
        for spec in abbrev.attributes() {
            if let gimli::AttributeValue::DebugInfoRef(o) =
                entries.read_attribute(*spec).ok()?.value()
            {
                offsets.push(o.0);
            }
        }
    }
    offsets.sort_unstable();
    offsets.dedup();
    Some(offsets)
}

/// Where the entries of a unit whose abbreviation table starts at `offset`
/// in `abbrev` (`.debug_abbrev`) may refer, from the forms of its
/// abbreviations.
fn refs_of(abbrev: &[u8], offset: usize) -> Refs {
    fn scan(r: &mut Reader<'_>) -> gimli::Result<Refs> {
        use gimli::Reader as _;
        let mut refs = Refs::Within;
        while r.read_uleb128()? != 0 {
            r.read_uleb128()?; // tag
            r.read_u8()?; // children
            loop {
                let name = r.read_uleb128()?;
                let form = gimli::DwForm(u16::try_from(r.read_uleb128()?).unwrap_or(u16::MAX));
                match form {
                    gimli::DW_FORM_ref_addr => refs = Refs::ByOffset,
                    gimli::DW_FORM_GNU_ref_alt
                    | gimli::DW_FORM_ref_sup4
                    | gimli::DW_FORM_ref_sup8
                    | gimli::DW_FORM_ref_sig8
                    | gimli::DW_FORM_indirect => return Ok(Refs::Elsewhere),
                    gimli::DW_FORM_implicit_const => {
                        r.read_sleb128()?;
                    }
                    _ => {}
                }
                if name == 0 && form.0 == 0 {
                    break;
                }
            }
        }
        Ok(refs)
    }
    let Some(table) = abbrev.get(offset..) else {
        return Refs::Elsewhere;
    };
    scan(&mut Reader::new(table, gimli::NativeEndian)).unwrap_or(Refs::Elsewhere)
}

/// A private copy-on-write mapping of a file's `.debug_info`, which
/// [`Narrowable::narrow`] makes read as only some of its units: each gap
/// between kept units then starts with a unit header as long as the gap
/// whose abbreviation table is past the end of `.debug_abbrev`, which
/// gimli reports as an error and addr2line skips. The kept units keep
/// their offsets, so references between them, by offset in the whole
/// section, still hold. The file is never written: the headers are in
/// this mapping's private pages, and [`Narrowable::restore`] puts the
/// section's own bytes back. The mapping is read-only but for the pages
/// a header is being written to, so that it commits no memory beyond
/// those (a writable private mapping of the whole section would count
/// all of it against a strict overcommit limit).
struct Narrowable {
    map: Mapped,
    /// Where the section starts in the mapping.
    skip: usize,
    /// The section's length.
    len: usize,
    /// The system's page size.
    page: usize,
    /// The bytes each written header replaced, by offset in the section.
    replaced: Vec<(usize, [u8; Narrowable::HEADER])>,
}

impl Narrowable {
    /// The bytes of a DWARF 4 unit header: 32-bit unit length, version,
    /// abbreviation offset, address size.
    const HEADER: usize = 11;

    /// The `len` bytes at `section_offset` in `file`.
    fn new(file: &File, section_offset: u64, len: usize) -> Option<Narrowable> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        let map_offset = section_offset - section_offset % page;
        let skip = usize::try_from(section_offset - map_offset).ok()?;
        Some(Narrowable {
            map: Mapped::part(file, map_offset, skip.checked_add(len)?)?,
            skip,
            len,
            page: page as usize,
            replaced: Vec::new(),
        })
    }

    /// The section as far as the last of `keep` (sorted, disjoint spans of
    /// whole units), with every gap before it an empty unit; `None` (and
    /// the section as it was) if a gap cannot be one.
    fn narrow(&mut self, keep: &[std::ops::Range<usize>]) -> Option<&[u8]> {
        let end = keep.last()?.end;
        if end > self.len {
            return None;
        }
        let mut from = 0;
        for span in keep {
            if span.start > from && self.empty_unit(from, span.start - from).is_none() {
                self.restore();
                return None;
            }
            from = span.end;
        }
        // SAFETY: the mapping holds `skip + len` bytes and `end <= len`;
        // it lives as long as `self`, and is written only through
        // `&mut self`, which this borrow excludes.
        Some(unsafe { std::slice::from_raw_parts(self.section().cast_const(), end) })
    }

    /// Puts back the bytes [`Narrowable::narrow`] replaced.
    fn restore(&mut self) {
        let replaced = std::mem::take(&mut self.replaced);
        for (at, bytes) in &replaced {
            // SAFETY: `at + HEADER <= len` (checked when it was written),
            // its pages are writable until the loop below (pages shared by
            // two headers too), and `&mut self` excludes every slice of
            // the mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.section().add(*at),
                    Self::HEADER,
                );
            }
        }
        for (at, _) in &replaced {
            self.protect(*at, libc::PROT_READ);
        }
    }

    /// Sets the protection of the pages that hold a header at `at`; whether
    /// it could.
    fn protect(&self, at: usize, protection: libc::c_int) -> bool {
        let first = (self.skip + at) / self.page * self.page;
        let end = self.skip + at + Self::HEADER;
        // SAFETY: `[first, end)` is within the mapping (`at + HEADER <=
        // len`, and `first` is at or after its page-aligned start), and
        // changing its protection moves or frees nothing.
        unsafe {
            libc::mprotect(
                self.map.ptr.cast::<u8>().add(first).cast(),
                end - first,
                protection,
            ) == 0
        }
    }

    /// Writes the header of an empty unit `len` bytes long at `at`.
    fn empty_unit(&mut self, at: usize, len: usize) -> Option<()> {
        let length = u32::try_from(len.checked_sub(4)?)
            .ok()
            .filter(|&l| l < 0xffff_fff0 && len >= Self::HEADER && at + len <= self.len)?;
        let mut header = [0u8; Self::HEADER];
        header[..4].copy_from_slice(&length.to_ne_bytes());
        header[4..6].copy_from_slice(&4u16.to_ne_bytes());
        header[6..10].copy_from_slice(&u32::MAX.to_ne_bytes());
        header[10] = std::mem::size_of::<usize>() as u8;
        if !self.protect(at, libc::PROT_READ | libc::PROT_WRITE) {
            return None;
        }
        let mut was = [0u8; Self::HEADER];
        // SAFETY: `at + HEADER <= at + len <= len` (checked above), so both
        // copies stay inside the mapping, whose pages there are writable
        // now; `&mut self` excludes every slice of it.
        unsafe {
            let here = self.section().add(at);
            std::ptr::copy_nonoverlapping(here, was.as_mut_ptr(), Self::HEADER);
            std::ptr::copy_nonoverlapping(header.as_ptr(), here, Self::HEADER);
        }
        self.replaced.push((at, was));
        Some(())
    }

    /// Takes the mapping's pages out of the resident set, after
    /// [`Narrowable::restore`]: a private page that was written goes back
    /// to the file's contents, which are the bytes `restore` put back.
    fn drop_pages(&mut self) {
        debug_assert!(self.replaced.is_empty());
        self.map.drop_pages();
    }

    /// The section's first byte.
    fn section(&self) -> *mut u8 {
        // SAFETY: `skip <= map.len`: the section starts inside the mapping
        // or, when empty, at its end.
        unsafe { self.map.ptr.cast::<u8>().add(self.skip) }
    }
}

/// The `.debug_aranges` sets of `dwarf` as (unit offset in `.debug_info`,
/// set offset), sorted; `None` when the section cannot be read.
fn aranges_by_unit(
    dwarf: &gimli::Dwarf<Reader<'_>>,
) -> Option<Vec<(usize, gimli::DebugArangesOffset<usize>)>> {
    let mut sets = Vec::new();
    let mut headers = dwarf.debug_aranges.headers();
    while let Some(header) = headers.next().ok()? {
        sets.push((header.debug_info_offset().0, header.offset()));
    }
    sets.sort_unstable_by_key(|s| s.0);
    Some(sets)
}

/// Pushes onto `ranges` the addresses the whole context places in `unit`
/// (at `offset` in `.debug_info`, number `at` in the index), in the order
/// of preference [`UnitIndex::new`] gives: `Some(true)` when all are
/// there, `Some(false)` when some may be missing (a set or sequence that
/// cannot be read), `None` when the unit's own ranges cannot be read (the
/// whole context fails on such a unit; it is left out).
fn push_unit_ranges(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
    aranges: &[(usize, gimli::DebugArangesOffset<usize>)],
    offset: usize,
    at: u32,
    ranges: &mut Vec<(u64, u64, u32)>,
) -> Option<bool> {
    let mut cursor = unit.entries();
    let has_ranges_attr = cursor
        .next_dfs()
        .ok()??
        .attr_value(gimli::DW_AT_ranges)
        .is_some();
    let before = ranges.len();
    let mut own = dwarf.unit_ranges(unit).ok()?;
    loop {
        match own.next() {
            Ok(Some(r)) if r.begin < r.end => ranges.push((r.begin, r.end, at)),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                ranges.truncate(before);
                return None;
            }
        }
    }
    let own_end = ranges.len();
    let mut all = true;
    let mut from_sets = false;
    if !has_ranges_attr {
        let first = aranges.partition_point(|s| s.0 < offset);
        for &(_, set) in aranges[first..].iter().take_while(|s| s.0 == offset) {
            let Ok(header) = dwarf.debug_aranges.header(set) else {
                all = false;
                continue;
            };
            let mut entries = header.entries();
            loop {
                match entries.next() {
                    Ok(Some(e)) if e.length() != 0 => {
                        // A set inside the unit's own range is read the
                        // same either way.
                        let r = e.range();
                        let inside = ranges[before..own_end]
                            .iter()
                            .any(|o| o.0 <= r.begin && r.end <= o.1);
                        if !inside {
                            ranges.push((r.begin, r.end, WHOLE_ONLY));
                        }
                        from_sets = true;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => {
                        all = false;
                        break;
                    }
                }
            }
        }
    }
    if ranges.len() == before
        && !from_sets
        && let Some(program) = unit.line_program.clone()
    {
        match program.sequences() {
            Ok((_, sequences)) => ranges.extend(
                sequences
                    .iter()
                    .filter(|q| q.start < q.end)
                    .map(|q| (q.start, q.end, WHOLE_ONLY)),
            ),
            Err(_) => all = false,
        }
    }
    Some(all)
}

/// Which file, as the file system sees it: an index made from one file
/// is not used for another put in its place.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
    len: u64,
    modified: (i64, i64),
}

impl FileIdentity {
    fn of(file: &File) -> Option<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata().ok()?;
        Some(FileIdentity {
            device: m.dev(),
            inode: m.ino(),
            len: m.len(),
            modified: (m.mtime(), m.mtime_nsec()),
        })
    }
}

/// The debug info whose `.debug_info` is `info` (all of the section when
/// `whole`, else one unit's span of it) and whose other sections are
/// `section`'s. `.debug_aranges` names units by their offset in the whole
/// section, so debug info over one unit goes without it (the unit's own
/// ranges say the same).
fn dwarf_over<'a>(
    info: &'a [u8],
    whole: bool,
    section: impl Fn(&str) -> &'a [u8],
) -> Option<gimli::Dwarf<Reader<'a>>> {
    gimli::Dwarf::load(|id| -> Result<Reader<'a>, ()> {
        let bytes = match id {
            gimli::SectionId::DebugInfo => info,
            gimli::SectionId::DebugAranges if !whole => &[],
            _ => section(id.name()),
        };
        Ok(Reader::new(bytes, gimli::NativeEndian))
    })
    .ok()
}

/// What a lookup has found so far.
struct Lookup {
    looked_up: Vec<(usize, Vec<Symbol>)>,
    /// (index in `looked_up`, index of the frame or `None` for a new one,
    /// address in the file) of frames the debug info does not name.
    unnamed: Vec<(usize, Option<usize>, u64)>,
    /// Addresses left to backtrace.
    left: Vec<usize>,
    /// Where the object's split units are ([`frames_at`]).
    split: SplitFiles,
}

impl Lookup {
    /// Looks up `addr`, at `probe` in the file, in `cx`.
    fn one(&mut self, cx: &addr2line::Context<Reader<'_>>, addr: usize, probe: u64) {
        match frames_at(cx, probe, &mut self.split) {
            Some(frames) => self.found(addr, probe, frames),
            None => self.left.push(addr),
        }
    }

    /// Takes `frames` as what the debug info says of `addr`, at `probe`
    /// in the file; the symbol table names those it leaves unnamed, and
    /// gives the function the address is in its path where the debug info
    /// has only its short name (`debug = "line-tables-only"`), so that
    /// `inuse_bytes_in("my_crate::build")` finds it in every build.
    fn found(&mut self, addr: usize, probe: u64, frames: Vec<Symbol>) {
        #[cfg(test)]
        super::RESOLVED.with(|r| r.set(r.get() + 1));
        let at = self.looked_up.len();
        if frames.is_empty() {
            self.unnamed.push((at, None, probe));
        }
        let outermost = frames.len().wrapping_sub(1);
        for (i, f) in frames.iter().enumerate() {
            if f.name.is_empty() || (i == outermost && !super::has_path(&f.name)) {
                self.unnamed.push((at, Some(i), probe));
            }
        }
        self.looked_up.push((addr, frames));
    }
}

#[cfg(test)]
thread_local! {
    /// Contexts over the whole file this thread made, for the tests.
    pub(super) static WHOLE_CONTEXTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Addresses this thread looked up in one unit's context.
    pub(super) static PER_UNIT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Addresses this thread's index placed in no unit.
    pub(super) static NOWHERE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Looks up `addrs` (return addresses in `object`, sorted) within
/// `budget`, through the unit index in `index` (made or made again there
/// when it is missing or describes another file) unless `index` is `None`.
/// `None` when the file is one this reader leaves to backtrace.
pub(super) fn resolve(
    object: &OwnObject,
    addrs: &[usize],
    budget: Budget,
    index: Option<&mut Option<UnitIndex>>,
) -> Option<Found> {
    let first = object.mappings.first()?;
    let file = first.open().ok()?;
    let identity = FileIdentity::of(&file)?;
    let map = Mapped::new(&file)?;
    let data = map.bytes();
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, data).ok()?;
    // The debug info of a file laid out otherwise is left to backtrace,
    // which finds it beside the path: for an executable a deploy replaced,
    // of another build, so only its own symbol table names it.
    let symbol_table_only = !plain_layout(&first.path, &sections, endian, data);
    if symbol_table_only && !first.replaced() {
        return None;
    }
    if !is_loaded_build(first, &sections, endian, data) {
        return None;
    }
    let bias = load_bias(header, endian, data, first)?;
    let section = |name: &str| -> &[u8] {
        sections
            .section_by_name(endian, name.as_bytes())
            .and_then(|(_, s)| s.data(endian, data).ok())
            .unwrap_or(&[])
    };
    let (debug_info, info_offset) = sections
        .section_by_name(endian, b".debug_info")
        .filter(|_| !symbol_table_only)
        .and_then(|(_, s)| Some((s.data(endian, data).ok()?, s.sh_offset(endian).into())))
        .unwrap_or((&[], 0));
    // The file's debug info, and a context over all of it.
    let dwarf = || dwarf_over(debug_info, true, section);
    let context = || addr2line::Context::from_dwarf(dwarf()?).ok();

    // Return addresses: the call is the instruction before.
    let probe_of = |addr: usize| (addr as u64).wrapping_sub(1).wrapping_sub(bias);
    let mut resident = FileResident::new();
    let mut lookup = Lookup {
        looked_up: Vec::with_capacity(addrs.len()),
        unnamed: Vec::new(),
        left: Vec::new(),
        split: SplitFiles::of(first),
    };
    // (unit, address) of the addresses the index vouches for, and the rest.
    let (mut by_unit, mut whole): (Vec<(u32, usize)>, Vec<usize>) = (Vec::new(), Vec::new());
    match index {
        Some(slot) => {
            if slot.as_ref().is_none_or(|i| i.file != identity) {
                *slot = None; // the old index goes before the new one is made
                *slot = dwarf().map(|d| UnitIndex::new(identity, &d));
                map.drop_pages();
                resident.reset();
            }
            for &addr in addrs {
                match slot.as_ref().map(|i| i.place(probe_of(addr))) {
                    Some(Place::Unit(unit)) => by_unit.push((unit, addr)),
                    Some(Place::Nowhere) => {
                        #[cfg(test)]
                        NOWHERE.with(|c| c.set(c.get() + 1));
                        lookup.found(addr, probe_of(addr), Vec::new())
                    }
                    _ => whole.push(addr),
                }
            }
            by_unit.sort_unstable();
            let whole_dwarf = dwarf()?;
            let mut narrowable = if by_unit.is_empty() {
                None
            } else {
                Narrowable::new(&file, info_offset, debug_info.len())
            };
            for group in by_unit.chunk_by(|a, b| a.0 == b.0) {
                let spans = slot
                    .as_mut()?
                    .spans_with_references(group[0].0, &whole_dwarf);
                let cx = spans.zip(narrowable.as_mut()).and_then(|(spans, n)| {
                    let info = n.narrow(&spans)?;
                    addr2line::Context::from_dwarf(dwarf_over(info, false, |name| section(name))?)
                        .ok()
                });
                let Some(cx) = cx else {
                    if let Some(n) = narrowable.as_mut() {
                        n.restore();
                    }
                    whole.extend(group.iter().map(|&(_, addr)| addr));
                    continue;
                };
                // The narrowed pages cannot be dropped while their headers
                // are written (dropping would bring the file's bytes back
                // under the context), so going over the budget drops the
                // file's pages at once and the narrowed ones after restore.
                let mut over = false;
                for &(_, addr) in group {
                    #[cfg(test)]
                    PER_UNIT.with(|c| c.set(c.get() + 1));
                    lookup.one(&cx, addr, probe_of(addr));
                    if resident.grown() > budget.file_bytes {
                        map.drop_pages();
                        resident.reset();
                        over = true;
                    }
                }
                drop(cx);
                if let Some(n) = narrowable.as_mut() {
                    n.restore();
                    if over || resident.grown() > budget.file_bytes {
                        n.drop_pages();
                        map.drop_pages();
                        resident.reset();
                    }
                }
            }
        }
        None => whole.extend_from_slice(addrs),
    }

    if !whole.is_empty() {
        whole.sort_unstable();
        #[cfg(test)]
        WHOLE_CONTEXTS.with(|c| c.set(c.get() + 1));
        let mut cx = context()?;
        map.drop_pages();
        resident.reset();
        let mut parsed_from = this_thread_net_bytes();
        for addr in whole {
            if this_thread_net_bytes() - parsed_from > budget.parsed_bytes {
                drop(cx);
                map.drop_pages();
                cx = context()?;
                map.drop_pages();
                resident.reset();
                parsed_from = this_thread_net_bytes();
            }
            lookup.one(&cx, addr, probe_of(addr));
            if resident.grown() > budget.file_bytes {
                map.drop_pages();
                resident.reset();
            }
        }
    }
    let Lookup {
        mut looked_up,
        unnamed,
        left,
        split,
    } = lookup;
    if split.unread {
        super::SPLIT_UNREAD.store(true, std::sync::atomic::Ordering::Relaxed);
    }
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
                Some(i) => {
                    take_table_name(&mut frames[i], name);
                }
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

/// What to add to an address in the file at `data` to get where it is
/// loaded: the distance between the file's executable segment and the
/// mapping `first` of it.
fn load_bias(header: &Elf, endian: NativeEndian, data: &[u8], first: &Mapping) -> Option<u64> {
    header
        .program_headers(endian, data)
        .ok()?
        .iter()
        .find(|ph| {
            ph.p_type(endian) == elf::PT_LOAD
                && ph.p_flags(endian).contains(elf::PF_X)
                && Into::<u64>::into(ph.p_offset(endian)) == first.file_offset
        })
        .map(|ph| first.start.wrapping_sub(ph.p_vaddr(endian).into()))
}

/// Names `frame` `name`, from the symbol table, where the debug info left
/// it unnamed or gave it only the short name of that function.
fn take_table_name(frame: &mut Symbol, name: &[u8]) -> bool {
    let (full, system_name) = super::names(name);
    let same = frame.name.is_empty() || super::same_function(&full, &frame.name);
    if same {
        (frame.name, frame.system_name) = (full, system_name);
    }
    same
}

/// Gives the outermost frame at each of `found` that is in `object` (an
/// address that backtrace named, from debug info it read in another file: a
/// `.dwp`, a `.gnu_debuglink` file, split units, or compressed sections)
/// its path from the file's symbol table, where that debug info has only
/// the function's short name (`debug = "line-tables-only"`): what
/// [`resolve`] does with the debug info it reads, so that
/// `inuse_bytes_in("my_crate::build")` finds the function whichever way
/// its debug info is laid out.
pub(super) fn add_paths(object: &OwnObject, found: &mut [(usize, Symbols)]) {
    let short: Vec<usize> = (0..found.len())
        .filter(|&i| {
            let (addr, frames) = &found[i];
            object.contains(*addr)
                && frames
                    .last()
                    .is_some_and(|f| !f.name.is_empty() && !super::has_path(&f.name))
        })
        .collect();
    if !short.is_empty() {
        // Nothing to add where the file cannot be read.
        let _ = add_paths_at(object, found, &short);
    }
}

/// [`add_paths`] for the entries of `found` at the indices `short`.
fn add_paths_at(object: &OwnObject, found: &mut [(usize, Symbols)], short: &[usize]) -> Option<()> {
    let first = object.mappings.first()?;
    let map = Mapped::new(&first.open().ok()?)?;
    let data = map.bytes();
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, data).ok()?;
    if !is_loaded_build(first, &sections, endian, data) {
        return None;
    }
    let bias = load_bias(header, endian, data, first)?;
    let probe_of = |addr: usize| (addr as u64).wrapping_sub(1).wrapping_sub(bias);
    let mut probes: Vec<u64> = short.iter().map(|&i| probe_of(found[i].0)).collect();
    probes.sort_unstable();
    probes.dedup();
    let names = symbol_table_names(&sections, endian, data, &probes);
    for &i in short {
        let probe = probe_of(found[i].0);
        let Some(name) = probes.binary_search(&probe).ok().and_then(|j| names[j]) else {
            continue;
        };
        let mut frames = found[i].1.to_vec();
        if let Some(outer) = frames.last_mut()
            && take_table_name(outer, name)
        {
            found[i].1 = frames.into();
        }
    }
    Some(())
}

/// Whether the file read is the build `first` maps (by its build ID, where
/// it has one): not another build a deploy put at the path since, whose
/// names would be wrong.
fn is_loaded_build(
    first: &Mapping,
    sections: &SectionTable<'_, Elf>,
    endian: NativeEndian,
    data: &[u8],
) -> bool {
    first.build_id.is_empty()
        || build_id(sections, endian, data).as_deref() == Some(first.build_id.as_str())
}

/// The frames at `probe` (an address in the file), innermost first, names
/// left empty where the debug info has none; `None` when they are in a
/// split unit whose debug info is in another file, for backtrace to read.
///
/// Where backtrace would not find the unit's debug info of this build
/// ([`SplitFiles::hold`]: a `.dwo` deleted or rewritten by a later build,
/// a binary copied without its `.dwp`, an executable a deploy replaced),
/// none: the symbol table names the function, with no line. The skeleton unit's line table alone would
/// give the innermost inlined code's file and line (heapprof's own
/// `GlobalAlloc::alloc`) to the program's function.
fn frames_at(
    cx: &addr2line::Context<Reader<'_>>,
    probe: u64,
    split: &mut SplitFiles,
) -> Option<Vec<Symbol>> {
    let iter = match cx.find_frames(probe) {
        addr2line::LookupResult::Output(iter) => iter,
        addr2line::LookupResult::Load { load, .. } => {
            return (!split.hold(&load)).then(Vec::new);
        }
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

/// Where backtrace finds the debug info of the object's split units: in
/// a `.dwp` package beside the object, looked up by the unit's ID, or else
/// in the `.dwo` file the unit names, which backtrace reads unchecked.
/// Here the package's index and each `.dwo` file (once per lookup) are
/// read for the IDs of the units they hold, and a unit is left to
/// backtrace only where one of them holds its ID. A `.dwo` rewritten
/// since the object was built (cargo builds again over the same file
/// names while a binary built earlier is kept) holds a unit of another
/// ID, whose names and lines are wrong for the object's code.
///
/// The ID is a hash of the unit's entries, without their line numbers in
/// LLVM's: a unit rebuilt where only lines moved keeps its ID (backtrace
/// gives the later build's line numbers, with the right names), and one
/// whose entries changed gets another (its lines are not read then, even
/// where they would still be right).
#[derive(Default)]
struct SplitFiles {
    /// The `.debug_cu_index` of the `.dwp` beside the object, if there is
    /// one this reader reads (a copy: a few bytes a unit).
    package: Option<Vec<u8>>,
    /// Whether the executable's path no longer names the running file (a
    /// deploy replaced it, or `/proc` is not there to tell): backtrace
    /// opens the executable by that path, which then names another file
    /// or none (Linux appends " (deleted)"), so no split unit is left to
    /// it.
    replaced: bool,
    /// The ID of the first unit of each `.dwo` file read; none for a
    /// file that is missing or not read here.
    read: std::collections::HashMap<std::path::PathBuf, Option<gimli::DwoId>>,
    /// Whether a unit was found without its debug info of this build.
    unread: bool,
}

impl SplitFiles {
    /// For the object whose (executable) mapping is `first`.
    fn of(first: &Mapping) -> SplitFiles {
        SplitFiles {
            package: package_index(std::path::Path::new(&format!("{}.dwp", first.path))),
            replaced: first.replaced(),
            ..SplitFiles::default()
        }
    }

    /// Whether backtrace finds the unit `load` asks for, of this build.
    fn hold(&mut self, load: &addr2line::SplitDwarfLoad<Reader<'_>>) -> bool {
        let held = !self.replaced && (self.in_package(load.dwo_id) || self.in_split_file(load));
        self.unread |= !held;
        held
    }

    /// Whether the `.dwp`'s index lists unit `id`.
    fn in_package(&self, id: gimli::DwoId) -> bool {
        self.package.as_deref().is_some_and(|index| {
            gimli::DebugCuIndex::new(index, gimli::NativeEndian)
                .index()
                .is_ok_and(|index| index.find(id.0).is_some())
        })
    }

    /// Whether the `.dwo` file `load` names holds its unit.
    fn in_split_file(&mut self, load: &addr2line::SplitDwarfLoad<Reader<'_>>) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let Some(name) = &load.path else {
            return false;
        };
        let name = std::path::Path::new(std::ffi::OsStr::from_bytes(name.slice()));
        let path = match &load.comp_dir {
            Some(dir) if name.is_relative() => {
                std::path::Path::new(std::ffi::OsStr::from_bytes(dir.slice())).join(name)
            }
            _ => name.to_path_buf(),
        };
        *self
            .read
            .entry(path)
            .or_insert_with_key(|path| split_unit(path))
            == Some(load.dwo_id)
    }
}

/// A copy of the `.debug_cu_index` of the package at `path`; `None` where
/// there is none, or none this reader reads (not ELF, a compressed
/// index): the `.dwo` files decide then.
fn package_index(path: &std::path::Path) -> Option<Vec<u8>> {
    ReadElf::open(path)?.section(b".debug_cu_index", SPLIT_SECTION_MAX, false)
}

/// The ID of the first unit of the `.dwo` file at `path`, the one
/// backtrace reads (addr2line takes a `.dwo`'s first unit as the split
/// unit, unchecked); `None` for a file that is missing, not a regular file
/// (a FIFO's open would wait for a writer), or not read here (not ELF, cut
/// short, compressed sections, a first unit that is not a compilation
/// unit): backtrace would take the skeleton unit's lines from it, which
/// give the innermost inlined code's line to the function, or another
/// unit's names.
fn split_unit(path: &std::path::Path) -> Option<gimli::DwoId> {
    let elf = ReadElf::open(path)?;
    let abbrev = elf.section(b".debug_abbrev.dwo", SPLIT_SECTION_MAX, false)?;
    let info = elf.section(b".debug_info.dwo", FIRST_ENTRY_BYTES, true)?;
    let dwarf = gimli::Dwarf::load(|id| -> Result<Reader<'_>, ()> {
        let bytes = match id {
            gimli::SectionId::DebugInfo => &info[..],
            gimli::SectionId::DebugAbbrev => &abbrev[..],
            _ => &[],
        };
        Ok(Reader::new(bytes, gimli::NativeEndian))
    })
    .ok()?;
    let unit = dwarf.units().next().ok()??;
    match unit.type_() {
        // DWARF 5 gives the ID in the unit's header.
        gimli::UnitType::SplitCompilation(id) => Some(id),
        // DWARF 4 (rustc's default), in an attribute of its root entry.
        gimli::UnitType::Compilation => {
            let abbrevs = unit.abbreviations(&dwarf.debug_abbrev).ok()?;
            let mut entries = unit.entries(&abbrevs);
            match entries
                .next_dfs()
                .ok()??
                .attr_value(gimli::DW_AT_GNU_dwo_id)
            {
                Some(gimli::AttributeValue::DwoId(id)) => Some(id),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The most bytes of a section of a split debug file read whole (a
/// `.dwo`'s abbreviations, a package's index); a file with a larger one
/// is read as none.
const SPLIT_SECTION_MAX: usize = 16 << 20;

/// Bytes of a `.dwo`'s `.debug_info.dwo` read for its first unit's header
/// and root entry, which names its producer, name and directory by string
/// index and gives the ID.
const FIRST_ENTRY_BYTES: usize = 16 << 10;

/// An ELF file whose sections are read with `pread` into the heap, not
/// mapped: a build may cut a `.dwo` or `.dwp` short and write it again
/// while it is read (a build over the same names is what the ID check is
/// for), and a mapped page past the new end would fault (`SIGBUS`).
struct ReadElf {
    file: File,
    endian: NativeEndian,
    headers: Vec<<Elf as FileHeader>::SectionHeader>,
    names: Vec<u8>,
}

impl ReadElf {
    /// The regular file at `path`, if it is ELF of this target's class.
    fn open(path: &std::path::Path) -> Option<ReadElf> {
        use object::read::elf::SectionHeader as _;
        let file = mappings::open_regular(path).ok()?;
        let head = read_aligned(&file, 0, std::mem::size_of::<Elf>())?;
        let header = Elf::parse(object::pod::bytes_of_slice(&head[..])).ok()?;
        let endian = header.endian().ok()?;
        let entry = std::mem::size_of::<<Elf as FileHeader>::SectionHeader>();
        let count = usize::from(header.e_shnum(endian));
        // No index: more sections than the header counts, whose count is
        // elsewhere (no split debug file has so many), or no names.
        let names_at = usize::from(header.e_shstrndx(endian).index()?);
        if count == 0 || names_at >= count || usize::from(header.e_shentsize(endian)) != entry {
            return None;
        }
        let table = read_aligned(&file, header.e_shoff(endian).into(), count * entry)?;
        let table = object::pod::bytes_of_slice(&table[..]);
        let headers: Vec<<Elf as FileHeader>::SectionHeader> =
            object::pod::slice_from_all_bytes(&table[..count * entry])
                .ok()?
                .to_vec();
        let names = &headers[names_at];
        let names = read_bytes(
            &file,
            names.sh_offset(endian).into(),
            usize::try_from(names.sh_size(endian))
                .ok()?
                .min(SPLIT_SECTION_MAX),
        )?;
        Some(ReadElf {
            file,
            endian,
            headers,
            names,
        })
    }

    /// The section called `name`, uncompressed; at most `most` bytes of
    /// it, and none of a longer one unless `prefix` (whose first unit's
    /// length, if longer than the bytes read, is cut to them, so that
    /// gimli reads the unit's header and first entries from them).
    fn section(&self, name: &[u8], most: usize, prefix: bool) -> Option<Vec<u8>> {
        use object::read::elf::SectionHeader as _;
        let strings = object::read::StringTable::new(&self.names[..], 0, self.names.len() as u64);
        let table = SectionTable::<Elf>::new(&self.headers, strings);
        let (_, header) = table.section_by_name(self.endian, name)?;
        if header.sh_flags(self.endian).contains(elf::SHF_COMPRESSED) {
            return None;
        }
        let len = usize::try_from(header.sh_size(self.endian)).ok()?;
        if len > most && !prefix {
            return None;
        }
        let mut bytes = read_bytes(
            &self.file,
            header.sh_offset(self.endian).into(),
            len.min(most),
        )?;
        if len > most {
            cut_first_unit(&mut bytes);
        }
        Some(bytes)
    }
}

/// Cuts the length of the unit at the start of `info` to the bytes there.
fn cut_first_unit(info: &mut [u8]) {
    let n = info.len();
    if n >= 12 && info[..4] == [0xff; 4] {
        // 64-bit DWARF: an escape, then the length in 8 bytes.
        let had = u64::from_ne_bytes(info[4..12].try_into().unwrap_or([0; 8]));
        info[4..12].copy_from_slice(&had.min(n as u64 - 12).to_ne_bytes());
    } else if n >= 4 {
        let had = u32::from_ne_bytes(info[..4].try_into().unwrap_or([0; 4]));
        let most = u32::try_from(n - 4).unwrap_or(u32::MAX);
        info[..4].copy_from_slice(&had.min(most).to_ne_bytes());
    }
}

/// `len` bytes of `file` from `offset`.
fn read_bytes(file: &File, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut bytes = vec![0; len];
    file.read_exact_at(&mut bytes, offset).ok()?;
    Some(bytes)
}

/// `len` bytes of `file` from `offset`, in words, so that ELF structures
/// can be read from them in place.
fn read_aligned(file: &File, offset: u64, len: usize) -> Option<Vec<u64>> {
    let mut words = vec![0u64; len.div_ceil(8)];
    let bytes = object::pod::bytes_of_slice_mut(&mut words[..]);
    file.read_exact_at(&mut bytes[..len], offset).ok()?;
    Some(words)
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
    // backtrace looks for a debug file by build ID first: a file there is
    // of this build.
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
    if let Some((_, link)) = sections.section_by_name(endian, b".gnu_debuglink") {
        // backtrace follows the link and checks nothing: a debug file of
        // another build there would give confident wrong names, where the
        // file's own symbol table, read here, gives right ones. A file is
        // of this build if it has its build ID or, for a file linked
        // without one, the checksum the link carries.
        let named = link.data(endian, data).unwrap_or(&[]);
        let target = debuglink_target(path, named);
        return match build_id(sections, endian, data) {
            Some(wanted) => target.is_none_or(|f| file_build_id(&f).as_ref() != Some(&wanted)),
            None => target.is_none_or(|f| !has_link_checksum(&f, named, endian)),
        };
    }
    sections.iter().all(|s| {
        let name = sections.section_name(endian, s).unwrap_or_default();
        let compressed = name.starts_with(b".zdebug_")
            || (name.starts_with(b".debug_") && s.sh_flags(endian).contains(elf::SHF_COMPRESSED));
        !compressed
    })
}

/// The file a `.gnu_debuglink` section (`link`: a file name, NUL, padding
/// and a CRC) names, where backtrace looks for it: beside the object at
/// `path`, in `.debug/` there, or under `/usr/lib/debug` at the object's
/// directory.
fn debuglink_target(path: &str, link: &[u8]) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let name = link.split(|&b| b == 0).next().filter(|n| !n.is_empty())?;
    let name = std::path::Path::new(std::ffi::OsStr::from_bytes(name));
    let object = std::fs::canonicalize(path).ok()?;
    let dir = object.parent()?;
    [
        dir.join(name),
        dir.join(".debug").join(name),
        std::path::Path::new("/usr/lib/debug")
            .join(dir.strip_prefix("/").ok()?)
            .join(name),
    ]
    .into_iter()
    .find(|f| *f != object && f.is_file())
}

/// Whether the file at `path` has the CRC-32 that a `.gnu_debuglink`
/// section (`link`: a file name, NUL, padding to 4 bytes, then the CRC in
/// the object's byte order) gives for it.
fn has_link_checksum(path: &std::path::Path, link: &[u8], endian: NativeEndian) -> bool {
    use object::Endian;
    let Some(name_end) = link.iter().position(|&b| b == 0) else {
        return false;
    };
    let at = (name_end + 1).next_multiple_of(4);
    let Some(crc) = link.get(at..at + 4) else {
        return false;
    };
    let crc: [u8; 4] = crc.try_into().unwrap_or_default();
    let wanted = if endian.is_big_endian() {
        u32::from_be_bytes(crc)
    } else {
        u32::from_le_bytes(crc)
    };
    let Ok(file) = File::open(path) else {
        return false;
    };
    Mapped::new(&file).is_some_and(|map| crc32fast::hash(map.bytes()) == wanted)
}

/// Calls `f` with the ELF file at `path` mapped (its bytes, byte order
/// and sections) and its symbol table: `.symtab`, or `.dynsym` where the
/// file has no `.symtab` and `needs_symtab` is false. `None` if the file
/// cannot be read or has no such table.
fn with_symbols<R>(
    path: &std::path::Path,
    needs_symtab: bool,
    f: impl FnOnce(
        &[u8],
        NativeEndian,
        &SectionTable<'_, Elf>,
        &object::read::elf::SymbolTable<'_, Elf>,
    ) -> Option<R>,
) -> Option<R> {
    let file = File::open(path).ok()?;
    let map = Mapped::new(&file)?;
    let data = map.bytes();
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, data).ok()?;
    let mut table = sections.symbols(endian, data, elf::SHT_SYMTAB).ok()?;
    if table.is_empty() {
        if needs_symtab {
            return None;
        }
        table = sections.symbols(endian, data, elf::SHT_DYNSYM).ok()?;
    }
    f(data, endian, &sections, &table)
}

/// Whether the ELF file at `path` has a function symbol whose name, as
/// [`super::names`] gives it, `matches`: from `.symtab`, or `.dynsym` where
/// `needs_symtab` is false and the file has no `.symtab` (a shared
/// library's exported functions). Where none matches but the file's debug
/// info may name such a function inlined into its callers (`identifier`,
/// the name's last part, is among its strings, or they are compressed, or
/// kept in another file), or the file cannot be read, or has no table to
/// look in: `None`. Nothing is kept.
pub(super) fn has_function(
    path: &std::path::Path,
    needs_symtab: bool,
    identifier: &str,
    matches: &dyn Fn(&str) -> bool,
) -> Option<bool> {
    with_symbols(path, needs_symtab, |data, endian, sections, table| {
        function_in(
            data,
            endian,
            sections,
            table,
            identifier,
            needs_symtab,
            matches,
        )
    })
}

/// [`has_function`] in one file's mapped bytes and symbol table.
fn function_in(
    data: &[u8],
    endian: NativeEndian,
    sections: &SectionTable<'_, Elf>,
    table: &object::read::elf::SymbolTable<'_, Elf>,
    identifier: &str,
    needs_symtab: bool,
    matches: &dyn Fn(&str) -> bool,
) -> Option<bool> {
    let strings = table.strings();
    let found = table.iter().any(|sym| {
        sym.st_type() == elf::STT_FUNC
            && sym.st_shndx(endian) != elf::SHN_UNDEF
            && strings
                .get(sym.st_name(endian))
                .is_ok_and(|bytes| matches(&super::names(bytes).0))
    });
    if found {
        return Some(true);
    }
    // Debug info kept in another file (an executable's `.gnu_debuglink`,
    // or split units that name their `.dwo` files) may name the function
    // there. (The system's libraries link their debug files too, and hold
    // none of the program's functions.)
    if needs_symtab
        && sections
            .section_by_name(endian, b".gnu_debuglink")
            .is_some()
    {
        return None;
    }
    let Some((_, debug_strings)) = sections.section_by_name(endian, b".debug_str") else {
        return Some(false);
    };
    let compressed = debug_strings.sh_flags(endian).contains(elf::SHF_COMPRESSED);
    let bytes = debug_strings.data(endian, data).ok()?;
    let mut wanted = Vec::with_capacity(identifier.len() + 2);
    wanted.push(0);
    wanted.extend_from_slice(identifier.as_bytes());
    wanted.push(0);
    let contains = |needle: &[u8]| memchr::memmem::find(bytes, needle).is_some();
    let named = identifier.is_empty()
        || compressed
        || bytes.starts_with(&wanted[1..])
        || contains(&wanted)
        || contains(b".dwo\0");
    (!named).then_some(false)
}

/// A function of the ELF file at `path` whose name (as [`super::names`]
/// gives it) `matches` and whose code ends in a jump to another function
/// (a tail call, which leaves the first off every stack of what the
/// second allocates), as (its name, where it jumps: the other's name, or
/// what the jump reads its target from); `None` if there is none or the
/// file cannot be read. Only the executable's `.symtab` or a library's
/// `.dynsym` is read; nothing is kept.
pub(super) fn tail_call(
    path: &std::path::Path,
    matches: &dyn Fn(&str) -> bool,
) -> Option<(String, String)> {
    with_symbols(path, false, |data, endian, sections, table| {
        tail_call_in(data, endian, sections, table, matches)
    })
}

/// [`tail_call`] in one file's mapped bytes and symbol table.
fn tail_call_in(
    data: &[u8],
    endian: NativeEndian,
    sections: &SectionTable<'_, Elf>,
    table: &object::read::elf::SymbolTable<'_, Elf>,
    matches: &dyn Fn(&str) -> bool,
) -> Option<(String, String)> {
    let strings = table.strings();
    let functions: Vec<_> = table
        .iter()
        .filter(|sym| sym.st_type() == elf::STT_FUNC && sym.st_shndx(endian) != elf::SHN_UNDEF)
        .collect();
    let name =
        |sym: &&<Elf as FileHeader>::Sym| strings.get(sym.st_name(endian)).ok().map(super::names);
    for sym in &functions {
        let Some((own, _)) = name(sym).filter(|(n, _)| matches(n)) else {
            continue;
        };
        let Some(index) = sym.st_shndx(endian).index() else {
            continue;
        };
        let Ok(section) = sections.section(object::SectionIndex(usize::from(index))) else {
            continue;
        };
        let (start, size) = (sym.st_value(endian), sym.st_size(endian));
        let code = start
            .checked_sub(section.sh_addr(endian))
            .and_then(|into| section.sh_offset(endian).checked_add(into))
            .and_then(|offset| usize::try_from(offset).ok())
            .zip(usize::try_from(size).ok())
            .and_then(|(at, len)| data.get(at..at.checked_add(len)?));
        let callee = match code.and_then(|code| last_jump(code, start)) {
            Some(Jump::To(target)) => functions
                .iter()
                .find(|f| f.st_value(endian) == target && target != start)
                .and_then(&name)
                .map(|(callee, _)| format!("`{callee}`")),
            Some(Jump::Register) => Some("an address in a register".into()),
            Some(Jump::Table) => Some("an address read from memory".into()),
            None => None,
        };
        if let Some(callee) = callee {
            return Some((own, callee));
        }
    }
    None
}

/// Where a function's last instruction jumps.
enum Jump {
    /// To this address.
    To(u64),
    /// To an address in a register.
    Register,
    /// To an address read from memory (a vtable, the global offset
    /// table).
    Table,
}

/// Where the last instruction of `code`, a function at address `start`,
/// jumps, if it is a jump: x86-64's `jmp rel32`, `jmp rel8`, `jmp *reg`,
/// `jmp *disp8(reg)` and `jmp *disp32(%rip)`, AArch64's `b` and `br`. (Bytes that only look
/// like a direct jump at the end give an address that [`tail_call`] then
/// finds no function starting at.)
fn last_jump(code: &[u8], start: u64) -> Option<Jump> {
    let end = start.checked_add(code.len() as u64)?;
    let from_end = |n: usize| code.get(code.len().checked_sub(n)?..);
    if cfg!(target_arch = "x86_64") {
        if let Some(&[0xE9, a, b, c, d]) = from_end(5) {
            let displacement = i64::from(i32::from_le_bytes([a, b, c, d]));
            return Some(Jump::To(end.wrapping_add_signed(displacement)));
        }
        if let Some(&[0xFF, 0x25, ..]) = from_end(6) {
            return Some(Jump::Table);
        }
        // `jmp *8(%rax)`: through a vtable (not `%rsp`'s form, 0x64,
        // which takes one byte more).
        if let Some(&[0xFF, 0x60..=0x63 | 0x65..=0x67, _]) = from_end(3) {
            return Some(Jump::Table);
        }
        match *from_end(2)? {
            [0xEB, near] => Some(Jump::To(end.wrapping_add_signed(i64::from(near as i8)))),
            // `jmp *%rax` .. `jmp *%rdi`, and with a REX prefix the rest.
            [0xFF, 0xE0..=0xE7] => Some(Jump::Register),
            _ => None,
        }
    } else if cfg!(target_arch = "aarch64") {
        let tail: [u8; 4] = from_end(4)?.try_into().ok()?;
        let word = u32::from_le_bytes(tail);
        if word & 0xFC00_0000 == 0x1400_0000 {
            // imm26, sign-extended, in instructions of 4 bytes.
            let words = i64::from(((word << 6) as i32) >> 6);
            return Some(Jump::To((end - 4).wrapping_add_signed(words * 4)));
        }
        // `br xN` (not `ret`, which is `br` of x30 under its own opcode).
        (word & 0xFFFF_FC1F == 0xD61F_0000).then_some(Jump::Register)
    } else {
        None
    }
}

/// The GNU build ID of the ELF file at `path`, if it has one.
fn file_build_id(path: &std::path::Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let map = Mapped::new(&file)?;
    let data = map.bytes();
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    build_id(&header.sections(endian, data).ok()?, endian, data)
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

/// A file, or part of one, mapped private and read-only: only a
/// [`Narrowable`] that owns one writes to it, and never asks for its
/// bytes.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    /// All of `file`.
    fn new(file: &File) -> Option<Mapped> {
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        Mapped::part(file, 0, len)
    }

    /// `len` bytes of `file` from `offset`, a multiple of the page size.
    fn part(file: &File, offset: u64, len: usize) -> Option<Mapped> {
        use std::os::fd::AsRawFd;
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
                libc::off_t::try_from(offset).ok()?,
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
    /// private and each page holds the file's contents (the only writer,
    /// [`Narrowable`], puts them back before it calls this), which the
    /// next read maps again: slices into it stay valid.
    fn drop_pages(&self) {
        // SAFETY: the range is this mapping, whole. MADV_DONTNEED on a
        // private file mapping whose written pages hold the file's bytes
        // again discards nothing a reader could tell from the file.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::single_range_in_vec_init)]

    use super::{
        Elf, FileIdentity, Narrowable, Place, SplitFiles, UnitIndex, dwarf_over, frames_at,
        plain_layout, split_unit,
    };
    use object::read::elf::{FileHeader, SectionHeader};
    use std::path::{Path, PathBuf};

    /// Two C files, one with a function in a section of its own (so its
    /// unit has more than one range), built by gcc with `flags`.
    fn c_program(dir: &Path, flags: &[&str]) -> PathBuf {
        std::fs::write(
            dir.join("main.c"),
            "int helper(int);\n\
             __attribute__((noinline, section(\".text.apart\"))) int apart(int x) { return x * 3 + 1; }\n\
             int main(int argc, char **argv) { (void)argv; return helper(argc) + apart(argc); }\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("other.c"),
            "static int twice(int x) { return x * 2; }\n\
             __attribute__((noinline)) int helper(int x) { int s = 0; for (int i = 0; i < x; i++) s += twice(i); return s; }\n",
        )
        .unwrap();
        c_program_from_sources(dir, flags)
    }

    /// The program of the C files [`c_program`] wrote in `dir`, built by
    /// gcc with `flags`.
    fn c_program_from_sources(dir: &Path, flags: &[&str]) -> PathBuf {
        let exe = dir.join("program");
        let out = std::process::Command::new("gcc")
            .args(flags)
            .arg("-O1")
            .arg("-o")
            .arg(&exe)
            .arg("main.c")
            .arg("other.c")
            .current_dir(dir)
            .output()
            .expect("gcc runs (it links every Rust program on this platform)");
        assert!(out.status.success(), "gcc {flags:?}: {out:?}");
        exe
    }

    /// The index of the file at `path`, and for every address of its
    /// `.text` where the whole file's context finds frames, where the
    /// index places it; with how many `.text` addresses it places nowhere.
    fn placed_where_the_whole_context_finds_frames(path: &Path) -> (bool, Vec<Place>, usize) {
        let data = std::fs::read(path).unwrap();
        let data = &data[..];
        let header = Elf::parse(data).unwrap();
        let endian = header.endian().unwrap();
        let sections = header.sections(endian, data).unwrap();
        let section = |name: &str| -> &[u8] {
            sections
                .section_by_name(endian, name.as_bytes())
                .and_then(|(_, s)| s.data(endian, data).ok())
                .unwrap_or(&[])
        };
        let dwarf = dwarf_over(section(".debug_info"), true, section).unwrap();
        let file = std::fs::File::open(path).unwrap();
        let index = UnitIndex::new(FileIdentity::of(&file).unwrap(), &dwarf);
        let cx = addr2line::Context::from_dwarf(
            dwarf_over(section(".debug_info"), true, section).unwrap(),
        )
        .unwrap();
        let (_, text) = sections.section_by_name(endian, b".text").unwrap();
        let start = text.sh_addr(endian);
        let (mut found, mut nowhere) = (Vec::new(), 0);
        for probe in start..start + text.sh_size(endian) {
            let place = index.place(probe);
            nowhere += usize::from(place == Place::Nowhere);
            if frames_at(&cx, probe, &mut SplitFiles::default()).is_some_and(|f| !f.is_empty()) {
                found.push(place);
            }
        }
        (index.complete, found, nowhere)
    }

    /// An address the index places in no unit is one the whole context
    /// finds no frames at, in each way gcc lays units out; code without
    /// debug info (the C runtime's start-up) is placed nowhere.
    #[test]
    fn the_index_places_nowhere_only_what_no_unit_describes() {
        for flags in [
            &["-g"][..],
            &["-g", "-gdwarf-4"],
            &["-g", "-ffunction-sections"],
            &["-g", "-gdwarf-4", "-ffunction-sections"],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let exe = c_program(dir.path(), flags);
            let (complete, found, nowhere) = placed_where_the_whole_context_finds_frames(&exe);
            assert!(complete, "{flags:?}: the index is not complete");
            assert!(
                found.len() > 16,
                "{flags:?}: {} addresses found",
                found.len()
            );
            assert!(
                found.iter().all(|p| *p != Place::Nowhere),
                "{flags:?}: an address the whole context names is placed nowhere"
            );
            assert!(nowhere > 0, "{flags:?}: nothing placed nowhere");
        }
    }

    /// Units whose debug info lives in another file (split DWARF's
    /// skeletons) leave the index incomplete: nothing is placed nowhere.
    /// Runs `tool` with `args` in `dir`, which must succeed.
    fn run(dir: &Path, tool: &str, args: &[&str]) {
        let out = std::process::Command::new(tool)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("{tool} runs (binutils, which gcc needs): {e}"));
        assert!(out.status.success(), "{tool} {args:?}: {out:?}");
    }

    /// Whether this reader takes the file at `path` (see `plain_layout`).
    fn read_here(path: &Path) -> bool {
        let data = std::fs::read(path).unwrap();
        let header = Elf::parse(&data[..]).unwrap();
        let endian = header.endian().unwrap();
        let sections = header.sections(endian, &data[..]).unwrap();
        plain_layout(path.to_str().unwrap(), &sections, endian, &data)
    }

    /// A file whose `.gnu_debuglink` names a debug file of its own build
    /// is left to backtrace, which reads that file; one whose named file is
    /// of another build, or missing, is read here, from its own symbol
    /// table: backtrace would take the other build's names.
    #[test]
    fn a_debug_file_of_another_build_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let exe = c_program(&a, &["-g"]);
        let other = c_program(&b, &["-g", "-fno-omit-frame-pointer"]);
        run(
            &a,
            "objcopy",
            &["--only-keep-debug", "program", "program.debug"],
        );
        run(&a, "strip", &["--strip-debug", "program"]);
        run(
            &a,
            "objcopy",
            &["--add-gnu-debuglink=program.debug", "program"],
        );
        assert!(!read_here(&exe), "its own build's debug file");

        let stale = a.join("program.debug");
        let other = other.to_str().unwrap();
        run(
            &b,
            "objcopy",
            &["--only-keep-debug", other, stale.to_str().unwrap()],
        );
        assert!(read_here(&exe), "another build's debug file");
        std::fs::remove_file(&stale).unwrap();
        assert!(read_here(&exe), "no debug file");
    }

    /// The same for files linked without a build ID, told apart by the
    /// checksum the link carries.
    #[test]
    fn without_build_ids_a_debug_file_of_another_build_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let exe = c_program(&a, &["-g", "-Wl,--build-id=none"]);
        let other = c_program(
            &b,
            &["-g", "-Wl,--build-id=none", "-fno-omit-frame-pointer"],
        );
        run(
            &a,
            "objcopy",
            &["--only-keep-debug", "program", "program.debug"],
        );
        run(&a, "strip", &["--strip-debug", "program"]);
        run(
            &a,
            "objcopy",
            &["--add-gnu-debuglink=program.debug", "program"],
        );
        assert!(!read_here(&exe), "its own build's debug file");

        let stale = a.join("program.debug");
        let other = other.to_str().unwrap();
        run(
            &b,
            "objcopy",
            &["--only-keep-debug", other, stale.to_str().unwrap()],
        );
        assert!(read_here(&exe), "another build's debug file");
    }

    /// How many addresses of the `.text` of the program at `exe` are in
    /// split units left to backtrace, and whether the rest have no frames
    /// and were found so for want of their split debug info.
    fn left_to_backtrace(exe: &Path) -> (usize, bool) {
        left_to_backtrace_with(exe, SplitFiles::default())
    }

    /// As [`left_to_backtrace`], with the package `split` says.
    fn left_to_backtrace_with(exe: &Path, mut split: SplitFiles) -> (usize, bool) {
        let data = std::fs::read(exe).unwrap();
        let data = &data[..];
        let header = Elf::parse(data).unwrap();
        let endian = header.endian().unwrap();
        let sections = header.sections(endian, data).unwrap();
        let section = |name: &str| -> &[u8] {
            sections
                .section_by_name(endian, name.as_bytes())
                .and_then(|(_, s)| s.data(endian, data).ok())
                .unwrap_or(&[])
        };
        let (_, text) = sections.section_by_name(endian, b".text").unwrap();
        let start = text.sh_addr(endian);
        let cx = addr2line::Context::from_dwarf(
            dwarf_over(section(".debug_info"), true, section).unwrap(),
        )
        .unwrap();
        let (mut left, mut rest) = (0, 0);
        for probe in start..start + text.sh_size(endian) {
            match frames_at(&cx, probe, &mut split) {
                None => left += 1,
                Some(frames) => {
                    assert!(frames.is_empty(), "{probe:#x} named from the skeleton");
                    rest += 1;
                }
            }
        }
        (left, rest > 0 && split.unread)
    }

    /// The `.dwo` files in `dir`.
    fn split_files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "dwo"))
            .collect()
    }

    /// Split units whose `.dwo` is there are left to backtrace; where it
    /// is gone, or the executable was replaced, the symbol table names
    /// their addresses, with no line.
    #[test]
    fn split_units_without_their_files_are_named_without_lines() {
        let dir = tempfile::tempdir().unwrap();
        let exe = c_program(dir.path(), &["-g", "-gsplit-dwarf"]);
        assert!(left_to_backtrace(&exe).0 > 0, "the .dwo files are there");
        // backtrace would read the file now at the executable's path.
        let replaced = SplitFiles {
            replaced: true,
            ..SplitFiles::default()
        };
        assert_eq!(
            left_to_backtrace_with(&exe, replaced),
            (0, true),
            "the executable replaced"
        );
        let files = split_files(dir.path());
        assert!(!files.is_empty(), "gcc wrote .dwo files in {dir:?}");
        files.iter().for_each(|f| std::fs::remove_file(f).unwrap());
        assert_eq!(
            left_to_backtrace(&exe),
            (0, true),
            "the .dwo files are gone"
        );
    }

    /// A program kept while a later build rewrites the `.dwo` files it
    /// names (same names, other units) has its split units named from the
    /// symbol table too, with DWARF 4's IDs (an attribute, as rustc
    /// writes them) and DWARF 5's (in the unit header).
    #[test]
    fn split_units_whose_files_a_later_build_rewrote_are_named_without_lines() {
        for version in ["-gdwarf-4", "-gdwarf-5"] {
            let dir = tempfile::tempdir().unwrap();
            let flags = ["-g", "-gsplit-dwarf", version];
            let exe = c_program(dir.path(), &flags);
            let kept = dir.path().join("kept");
            std::fs::copy(&exe, &kept).unwrap();
            let (left, _) = left_to_backtrace(&kept);
            assert!(left > 0, "{version}: the .dwo files are of this build");
            let before: Vec<_> = split_files(dir.path())
                .into_iter()
                .map(|f| std::fs::read(f).unwrap())
                .collect();
            // The same sources a line lower: the same functions, other
            // declaration lines, so other units under the same file names.
            for source in ["main.c", "other.c"] {
                let path = dir.path().join(source);
                let text = std::fs::read_to_string(&path).unwrap();
                std::fs::write(&path, format!("\n{text}")).unwrap();
            }
            let exe = c_program_from_sources(dir.path(), &flags);
            let after: Vec<_> = split_files(dir.path())
                .into_iter()
                .map(|f| std::fs::read(f).unwrap())
                .collect();
            assert_eq!(before.len(), after.len(), "{version}: the same .dwo names");
            assert!(before != after, "{version}: the .dwo files were rewritten");
            assert_eq!(left_to_backtrace(&exe).0, left, "{version}: new build");
            assert_eq!(left_to_backtrace(&kept), (0, true), "{version}: kept build");
        }
    }

    /// A `.dwo` whose first unit is longer than the bytes read for its
    /// root entry is still read for its ID, in DWARF 4 and 5.
    #[test]
    fn a_long_split_unit_is_read_for_its_id() {
        for version in ["-gdwarf-4", "-gdwarf-5"] {
            let dir = tempfile::tempdir().unwrap();
            let mut source =
                String::from("int main(int argc, char **argv) { (void)argv; return argc; }\n");
            for i in 0..2000 {
                source.push_str(&format!(
                    "int function_{i}(int x) {{ return x * {i} + 1; }}\n"
                ));
            }
            std::fs::write(dir.path().join("long.c"), source).unwrap();
            let exe = dir.path().join("long");
            let out = std::process::Command::new("gcc")
                .args(["-g", "-gsplit-dwarf", version, "-O1", "-o"])
                .arg(&exe)
                .arg("long.c")
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "gcc: {out:?}");
            let files = split_files(dir.path());
            assert_eq!(files.len(), 1);
            let elf = super::ReadElf::open(&files[0]).unwrap();
            let info = elf.section(b".debug_info.dwo", usize::MAX, false).unwrap();
            assert!(
                info.len() > super::FIRST_ENTRY_BYTES,
                "{version}: {} bytes",
                info.len()
            );
            assert!(split_unit(&files[0]).is_some(), "{version}");
            assert!(left_to_backtrace(&exe).0 > 0, "{version}");
        }
    }

    /// A `.dwo` cut short or not ELF (a build writing it, a disk full)
    /// is read as no file: backtrace would take the skeleton's lines.
    #[test]
    fn split_files_cut_short_are_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let exe = c_program(dir.path(), &["-g", "-gsplit-dwarf"]);
        let files = split_files(dir.path());
        let (left, _) = left_to_backtrace(&exe);
        assert!(left > 0);
        let whole = std::fs::read(&files[0]).unwrap();
        for cut in [0, 100, whole.len() / 2] {
            for f in &files {
                let bytes = std::fs::read(f).unwrap();
                std::fs::write(f, &bytes[..cut.min(bytes.len())]).unwrap();
            }
            assert_eq!(left_to_backtrace(&exe), (0, true), "cut at {cut}");
        }
        for f in &files {
            std::fs::write(f, b"not an ELF file at all").unwrap();
        }
        assert_eq!(left_to_backtrace(&exe), (0, true), "not ELF");
    }

    /// A `.dwp` package beside the program is read by unit ID: one of this
    /// build holds its units; one of a later build (or an empty file) does
    /// not, and the `.dwo` files, backtrace's next place, are checked then.
    #[test]
    fn a_package_holds_only_the_units_of_its_build() {
        let dir = tempfile::tempdir().unwrap();
        // binutils' dwp reads DWARF 4's split units.
        let flags = ["-g", "-gsplit-dwarf", "-gdwarf-4"];
        let exe = c_program(dir.path(), &flags);
        let package = |exe: &Path| {
            let out = std::process::Command::new("dwp")
                .arg("-e")
                .arg(exe)
                .arg("-o")
                .arg(dir.path().join("program.dwp"))
                .current_dir(dir.path())
                .output()
                .expect("binutils' dwp runs (binutils comes with the C toolchain)");
            assert!(out.status.success(), "dwp: {out:?}");
            let index = super::package_index(&dir.path().join("program.dwp"));
            assert!(index.is_some(), "the package has a unit index");
            SplitFiles {
                package: index,
                ..SplitFiles::default()
            }
        };
        let (left, _) = left_to_backtrace(&exe);
        let own = package(&exe);
        split_files(dir.path())
            .iter()
            .for_each(|f| std::fs::remove_file(f).unwrap());
        assert_eq!(left_to_backtrace_with(&exe, own).0, left, "its own package");

        // A kept build beside a later build's package and `.dwo` files.
        let kept = dir.path().join("kept");
        std::fs::copy(&exe, &kept).unwrap();
        for source in ["main.c", "other.c"] {
            let path = dir.path().join(source);
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(
                &path,
                format!("int moved_{}(void) {{ return 1; }}\n{text}", source.len()),
            )
            .unwrap();
        }
        let exe = c_program_from_sources(dir.path(), &flags);
        let later = package(&exe);
        assert_eq!(
            left_to_backtrace_with(&kept, later),
            (0, true),
            "later package"
        );
        let empty = dir.path().join("empty.dwp");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(super::package_index(&empty), None);
        assert_eq!(left_to_backtrace(&kept), (0, true), "later .dwo files");
    }

    /// A FIFO where a `.dwo` is named is not opened (the open would
    /// wait for a writer) and counts as no file.
    #[test]
    fn a_fifo_named_as_a_split_file_is_no_file() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("unit.dwo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        assert_eq!(split_unit(&fifo), None);
        assert_eq!(split_unit(&dir.path().join("gone.dwo")), None);
    }

    #[test]
    fn skeleton_units_leave_the_index_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let exe = c_program(dir.path(), &["-g", "-gsplit-dwarf"]);
        let (complete, _, nowhere) = placed_where_the_whole_context_finds_frames(&exe);
        assert!(!complete);
        assert_eq!(nowhere, 0);
    }

    /// Narrowing writes an empty unit's header at the start of each gap
    /// and nothing else; restoring puts the section's bytes back, so the
    /// next narrowing sees the file's units.
    #[test]
    fn narrowing_writes_only_the_gaps_headers_and_restoring_undoes_them() {
        let section_offset = 4096 + 100;
        let len = 16_000;
        let file_bytes: Vec<u8> = (0..section_offset + len + 50)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let section = &file_bytes[section_offset..section_offset + len];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object");
        std::fs::write(&path, &file_bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut n = Narrowable::new(&file, section_offset as u64, len).unwrap();
        let length_at = |bytes: &[u8], at: usize| {
            u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize + 4
        };

        let narrowed = n.narrow(&[2000..3000, 9000..12_000]).unwrap().to_vec();
        assert_eq!(narrowed.len(), 12_000);
        assert_eq!(length_at(&narrowed, 0), 2000);
        assert_eq!(length_at(&narrowed, 3000), 6000);
        for at in [0, 3000] {
            assert_eq!(&narrowed[at + 4..at + 6], &4u16.to_ne_bytes());
            assert_eq!(&narrowed[at + 6..at + 10], &u32::MAX.to_ne_bytes());
        }
        assert_eq!(&narrowed[11..3000], &section[11..3000]);
        assert_eq!(&narrowed[3011..], &section[3011..12_000]);
        n.restore();

        let narrowed = n.narrow(&[3000..4000]).unwrap().to_vec();
        assert_eq!(length_at(&narrowed, 0), 3000);
        assert_eq!(&narrowed[11..], &section[11..4000]);
        n.restore();
        assert_eq!(n.narrow(&[0..len]).unwrap(), section);
        // A gap too short for a header is refused, and leaves nothing.
        assert!(n.narrow(&[0..100, 105..200]).is_none());
        assert_eq!(n.narrow(&[0..len]).unwrap(), section);
        n.restore();
        n.drop_pages();
        assert_eq!(n.narrow(&[0..len]).unwrap(), section);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            file_bytes,
            "the file is not written"
        );
    }
}
