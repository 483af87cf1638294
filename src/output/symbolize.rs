//! Turning return addresses into functions, files and lines, and deciding
//! which frames are allocation machinery rather than the user's code.
//!
//! Symbolization happens only when a profile is written, never while
//! sampling, against the objects loaded then. Results are cached per
//! address while the loader's counts say they hold ([`Cache::follow`]):
//! code does not move while its object stays loaded, so a second profile
//! of a process that has neither met new sites nor loaded or unloaded an
//! object resolves nothing. A sample taken in an object unloaded since is
//! named after whatever is loaded at its address when the profile is
//! written, or left unnamed if nothing is. The parsed debug info, by
//! contrast, is released after each lookup: it is tens of MiB, and it
//! would sit in the heap of the very
//! program being profiled. The object heapprof is linked into (usually the
//! executable, with the most debug info in the process) is read by
//! heapprof's own reader (`own`), which bounds what a lookup holds;
//! other objects by backtrace. What symbolization does keep is measured
//! and reported in `Stats::profiler_bytes`. The cache lock is never held
//! across a lookup (`backtrace::resolve` takes backtrace's own global
//! lock).

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::record::sites::SiteCopy;
use crate::record::stack::{CUT, NOT_UNWOUND, OWN_FRAMES};
use crate::support::lock::{self, Lockable, Mutex, rank};
use crate::support::mappings::{self, LoaderCounts, Mapping};
use crate::support::room;

mod own;

/// What to check when the executable's frames have no names.
pub(crate) fn no_names_hint() -> Cow<'static, str> {
    let unreadable = UNREADABLE.load(Relaxed);
    if let Some(not_read) = NotRead::unpack(unreadable) {
        let why = match not_read {
            Unpacked::Errno(libc::EMFILE | libc::ENFILE) => {
                "too few descriptors left (RLIMIT_NOFILE)? "
            }
            _ => "",
        };
        format!(
            "the last lookup did not read the executable ({}): {why}the next profile tries again",
            not_read.words()
        )
        .into()
    } else if BACKTRACE_LOST.load(Relaxed) {
        "is the executable stripped (`strip = true`, or by a linker that drops the symbol table \
         with the debug info, as `nm` would show), or its debug info in a separate file? This \
         process was forked from one with other threads, and reads names only from the \
         objects' own files (names found before the fork stay)"
            .into()
    } else {
        "is the executable stripped (`strip = true`, or by a linker that drops the symbol table \
         with the debug info, as `nm` would show)? Or, with /proc not mounted, does the path it \
         was started by now name another build?"
            .into()
    }
}

/// Why the last lookup that checked the executable did not read it, as
/// [`NotRead::pack`] packs it; 0 if it was read. One for the process: two
/// profiles built at once may each see the other's.
static UNREADABLE: AtomicU64 = AtomicU64::new(0);

/// Why a lookup does not read a file.
enum NotRead {
    /// It cannot be opened now (descriptors used up, say).
    Error(std::io::Error),
    /// A limit leaves too little to read it ([`lookup_room`],
    /// [`LOOKUP_RESIDENT`]).
    Room(room::Short),
}

/// A [`NotRead`] as [`UNREADABLE`] keeps it.
#[derive(Clone, Copy)]
enum Unpacked {
    Errno(i32),
    /// An error with no `errno`: the file is not a regular one.
    NotRegular,
    /// The limit, and the MiB it left and the lookup asked for.
    Room(room::Limit, u64, u64),
}

/// Tags in [`UNREADABLE`]'s top byte.
const PACKED_ERRNO: u64 = 1;
const PACKED_NOT_REGULAR: u64 = 2;
const PACKED_ROOM: u64 = 3;
/// The most MiB a packed amount holds (24 bits: 16 TiB).
const PACKED_MIB: u64 = (1 << 24) - 1;

impl NotRead {
    /// Packed into one word: a tag in the top byte; an `errno` in the
    /// low 32 bits; or the limit in the next byte, then the MiB it left
    /// (rounded down) and the MiB asked for (rounded up), 24 bits each.
    fn pack(&self) -> u64 {
        let mib = |bytes: u64| (bytes >> 20).min(PACKED_MIB);
        let mib_up = |bytes: u64| bytes.div_ceil(1 << 20).min(PACKED_MIB);
        match self {
            NotRead::Error(e) => match e.raw_os_error() {
                Some(errno) => PACKED_ERRNO << 56 | u64::from(errno as u32),
                None => PACKED_NOT_REGULAR << 56,
            },
            NotRead::Room(short) => {
                PACKED_ROOM << 56
                    | (short.limit as u64) << 48
                    | mib(short.left) << 24
                    | mib_up(short.needed)
            }
        }
    }

    /// What [`NotRead::pack`] packed; `None` for 0 (read) or a word it
    /// does not make.
    fn unpack(word: u64) -> Option<Unpacked> {
        match word >> 56 {
            PACKED_ERRNO => Some(Unpacked::Errno(word as u32 as i32)),
            PACKED_NOT_REGULAR => Some(Unpacked::NotRegular),
            PACKED_ROOM => Some(Unpacked::Room(
                room::Limit::from_u8((word >> 48) as u8)?,
                (word >> 24) & PACKED_MIB,
                word & PACKED_MIB,
            )),
            _ => None,
        }
    }
}

impl Unpacked {
    /// The reason in words.
    fn words(self) -> String {
        match self {
            Unpacked::Errno(errno) => std::io::Error::from_raw_os_error(errno).to_string(),
            Unpacked::NotRegular => "not a regular file".to_owned(),
            Unpacked::Room(limit, left, needed) => room::Short {
                limit,
                left: left << 20,
                needed: needed << 20,
            }
            .words("a lookup may take"),
        }
    }
}

/// One source-level frame at an address. An address yields several when
/// functions were inlined into each other, innermost first.
#[derive(Debug, Clone)]
pub(crate) struct Symbol {
    /// Demangled, without the trailing `::h0123…` hash.
    pub name: String,
    /// The symbol as linked (mangled), for `pprof -symbolize` and friends.
    pub system_name: String,
    pub file: String,
    pub line: u32,
}

/// The frames at one address, innermost first; empty if nothing is known.
pub(crate) type Symbols = Arc<[Symbol]>;

/// Each address's frames, as long as the loader's counts say they hold.
static CACHE: Mutex<{ rank::SYMBOLS }, Option<Cache>> = Mutex::new(None);

/// What [`CACHE`] holds: the frames found at each address, and the
/// loader's counts when they were found.
struct Cache {
    loader: LoaderCounts,
    frames: HashMap<usize, Symbols>,
}

impl Cache {
    /// Forgets what the loader's changes since the entries were found may
    /// have made wrong: after an unload, every address outside the objects
    /// loaded at start (another object may be where the unloaded one was);
    /// after a load, every address nothing was found at (the new object
    /// may be there).
    fn follow(&mut self, now: LoaderCounts, objects: &[Mapping]) {
        if now.unloads != self.loader.unloads {
            self.frames
                .retain(|&addr, _| object_of(objects, addr).is_some_and(|m| m.loaded_at_start));
        } else if now.loads != self.loader.loads {
            self.frames.retain(|_, frames| !frames.is_empty());
        }
        self.loader = now;
    }
}

/// The mapping of `objects` that holds the call before `addr`, a return
/// address.
fn object_of(objects: &[Mapping], addr: usize) -> Option<&Mapping> {
    let call = (addr as u64).wrapping_sub(1);
    objects.iter().find(|m| m.start <= call && call < m.limit)
}

/// Held around every lookup (heapprof's own reader and every call into
/// `backtrace::resolve`), so that the fork handlers can tell whether a
/// thread is inside one of heapprof's lookups when the process forks
/// (backtrace's own lock, which the program may take too, they cannot
/// see: a child never calls backtrace). Nobody who holds backtrace's
/// lock ever asks for this one, so holding it across `resolve` cannot
/// deadlock. It guards what heapprof's own reader keeps between lookups:
/// the unit index of heapprof's object, once a lookup has made it.
static RESOLVING: Mutex<{ rank::SYMBOL_LOOKUP }, Option<own::UnitIndex>> = Mutex::new(None);

/// Whether `fork`'s prepare handler holds [`RESOLVING`] (it found it free).
static HELD_FOR_FORK: AtomicBool = AtomicBool::new(false);

/// Set in a forked child whose parent had other threads: one of them may
/// have held backtrace's lock, so this process never calls backtrace
/// again. heapprof's own
/// reader names what it can of every object; the rest (names in separate
/// debug files) stays unnamed (pprof can name it from the binary, with the
/// profile's mappings).
static BACKTRACE_LOST: AtomicBool = AtomicBool::new(false);

/// Set once a lookup has named an address in a split unit from the
/// symbol table, with no line, because the unit's `.dwo` or `.dwp` is
/// missing, unreadable here or holds another build's units, or the
/// executable was replaced. Never cleared: the frames named so stay
/// cached.
pub(in crate::output) static SPLIT_UNREAD: AtomicBool = AtomicBool::new(false);

/// What a profile says when [`split_debug_unread`].
pub(crate) const SPLIT_UNREAD_NOTE: &str = "heapprof: some frames in split units are named from \
     the symbol table, without lines or inlined calls: their `.dwo` files or `.dwp` package are \
     missing, unreadable or rewritten by a later build, or the executable was replaced since \
     the program started";

/// Whether some frames of this process's profiles are named without the
/// split debug info they were built with ([`SPLIT_UNREAD_NOTE`]).
pub(crate) fn split_debug_unread() -> bool {
    SPLIT_UNREAD.load(Relaxed)
}

/// For `fork`'s prepare handler, before the fork table's locks. A cold
/// lookup takes a second or so, and `fork` does not wait for it:
/// [`RESOLVING`] is taken only if free.
pub(crate) fn before_fork() {
    let free = RESOLVING.try_lock().map(std::mem::forget).is_some();
    HELD_FOR_FORK.store(free, Relaxed);
}

/// Releases what [`before_fork`] took.
///
/// # Safety
/// Only after `before_fork` on this thread, or in the child it forked.
pub(crate) unsafe fn after_fork() {
    if HELD_FOR_FORK.load(Relaxed) {
        // SAFETY: `before_fork` took it and forgot the guard.
        unsafe { RESOLVING.force_unlock() };
    }
}

/// The cache's lock, for the fork table (`process/fork.rs`).
pub(crate) fn each_lock(f: &mut dyn FnMut(&'static dyn Lockable)) {
    f(&CACHE);
}

/// In a forked child, after [`after_fork`]; `parent_had_others`: whether
/// the parent may have had threads besides the forking one. Then
/// backtrace's lock may be held by a thread that is not here (in a lookup
/// of heapprof's, or in the program's own use of the `backtrace` crate,
/// which no lock of heapprof's shows), so backtrace is not called again.
/// A child of a parent with one thread (a daemon forking at start) keeps
/// it, and the names it finds in separate debug files. If a lookup was
/// under way in the parent, [`RESOLVING`], held by its thread, is taken
/// back, with the unit index it guards forgotten (it may be half made),
/// so that heapprof's own reader goes on naming frames. Not when this
/// thread holds or waits for it (a signal handler's fork that interrupted
/// its own lookup): its copy here goes on with the lookup and releases it.
pub(crate) fn after_fork_in_child(parent_had_others: bool) {
    let held = HELD_FOR_FORK.load(Relaxed);
    if parent_had_others || !held {
        BACKTRACE_LOST.store(true, Relaxed);
    }
    if held {
        return;
    }
    if !lock::this_thread_holds(rank::SYMBOL_LOOKUP) {
        // SAFETY: the child has one thread, this one, which neither holds
        // nor waits for the lock: no reference to its data exists here.
        // The index is overwritten without being dropped.
        unsafe {
            RESOLVING.data_ptr().write(None);
            RESOLVING.force_unlock();
        }
    }
}

/// Resolves every address in `addrs` (return addresses), using and filling
/// the cache.
pub(crate) fn resolve_all(addrs: impl IntoIterator<Item = usize>) -> HashMap<usize, Symbols> {
    resolve_all_within(addrs, own::BUDGET, true)
}

/// The symbols a profile of `sites` shows: every frame's, or with
/// `addresses_only` (the server symbolizes) only the names heapprof gives
/// frames of its own making ([`OWN_FRAMES`]).
pub(crate) fn for_profile(sites: &[SiteCopy], addresses_only: bool) -> HashMap<usize, Symbols> {
    let frames = || sites.iter().flat_map(|s| s.frames.iter().copied());
    if addresses_only {
        let mut out = HashMap::new();
        for addr in frames() {
            if !out.contains_key(&addr)
                && let Some(symbols) = own_frame(addr)
            {
                out.insert(addr, symbols);
            }
        }
        return out;
    }
    // Listed in one allocation of the right size: at a full table the
    // frames number hundreds of thousands, which a list grown by doubling
    // would copy about twice over.
    let mut addrs = Vec::with_capacity(sites.iter().map(|s| s.frames.len()).sum());
    addrs.extend(frames());
    resolve_all(addrs)
}

/// The name under which samples recorded without unwinding appear.
pub(crate) const NOT_UNWOUND_FUNCTION: &str =
    "[heapprof: stack not unwound: too little of the thread's stack left]";

/// The name of the root-most frame of a stack cut at its deepest
/// (`record::stack::MAX_FRAMES`).
pub(crate) const CUT_FUNCTION: &str =
    "[heapprof: stack cut here, at its deepest kept: the callers are not recorded]";

/// The symbols of a frame of heapprof's own making, `None` for any other
/// address.
fn own_frame(addr: usize) -> Option<Symbols> {
    let name = match addr {
        NOT_UNWOUND => NOT_UNWOUND_FUNCTION,
        CUT => CUT_FUNCTION,
        _ => return None,
    };
    Some(Symbols::from(vec![Symbol {
        name: name.to_string(),
        system_name: name.to_string(),
        file: String::new(),
        line: 0,
    }]))
}

/// [`resolve_all`] with the budget of the lookup of heapprof's own object
/// given: heap bytes of parsed debug info, resident bytes of its file.
/// Without the unit index every address goes through the context over the
/// whole file, which both budgets bound; with it, the file budget bounds
/// the pages the per-unit contexts read.
#[cfg(feature = "bench-internals")]
pub(crate) fn resolve_all_with_budget(
    addrs: impl IntoIterator<Item = usize>,
    parsed_bytes: i64,
    file_bytes: u64,
    with_index: bool,
) -> HashMap<usize, Symbols> {
    resolve_all_within(
        addrs,
        own::Budget {
            parsed_bytes,
            file_bytes,
        },
        with_index,
    )
}

fn resolve_all_within(
    addrs: impl IntoIterator<Item = usize>,
    budget: own::Budget,
    with_index: bool,
) -> HashMap<usize, Symbols> {
    // A `Vec` passed in is sorted where it is, not copied.
    let mut wanted: Vec<usize> = addrs.into_iter().collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut out = HashMap::with_capacity(wanted.len());
    for own in OWN_FRAMES {
        if let Ok(at) = wanted.binary_search(&own)
            && let Some(symbols) = own_frame(own)
        {
            wanted.remove(at);
            out.insert(own, symbols);
        }
    }
    if wanted.is_empty() {
        // Nothing to look up, so no walk of the loaded objects either.
        return out;
    }
    // The objects loaded now, and the loader's counts, read before them:
    // an object loaded or unloaded in between changes the counts the next
    // profile reads, which then looks its addresses up again.
    let loader = mappings::loader_counts();
    let objects = mappings::current();
    let mut missing = Vec::new();
    {
        let before = this_thread_net_bytes();
        let mut cache = CACHE.lock();
        let cache = cache.get_or_insert_with(|| Cache {
            loader,
            frames: HashMap::new(),
        });
        cache.follow(loader, &objects);
        // Borrowed: `wanted` is freed after this window, not inside it,
        // where its free would count as bytes given back.
        for &addr in &wanted {
            match cache.frames.get(&addr) {
                Some(frames) => {
                    out.insert(addr, frames.clone());
                }
                None => missing.push(addr),
            }
        }
        // What forgetting gave back (and a first table) is measured, as
        // what a lookup keeps is below.
        KEPT_BYTES.fetch_add(this_thread_net_bytes() - before, Relaxed);
    }
    if missing.is_empty() {
        return out;
    }
    // What the lookup keeps (backtrace's parsed debug info, this cache's
    // entries) is the profiler's memory as much as its tables are: the
    // change in this thread's net allocated bytes across it, less the
    // `resolved` list, which goes away below (`out` was sized up front and
    // does not grow), and less what is found but not cached, which goes
    // away with `out`.
    let before = this_thread_net_bytes();
    let allocated_before = this_thread_allocated_bytes();
    // Addresses in a file that cannot be opened now, or all of them if
    // the process's memory limits leave no room to read their files, are
    // not looked up: unnamed in this profile, and not cached.
    let mut unreadable = unreadable_files(missing.iter().copied(), &objects, Room::Both);
    let (skipped, missing): (Vec<usize>, Vec<usize>) = missing
        .into_iter()
        .partition(|&a| in_files(&objects, a, &unreadable));
    // heapprof's own object (usually the executable, with the most debug
    // info in the process) is read by `own`, within a memory budget; the
    // rest, and what `own` leaves, by backtrace, which knows only the
    // objects loaded when it was first used, so objects loaded later are
    // read by `own` too ([`route`]).
    // In a child forked mid-lookup, `own` reads every object, and what it
    // leaves stays unnamed.
    let backtrace_lost = BACKTRACE_LOST.load(Relaxed);
    let own_object = own::OwnObject::find();
    let mut resolved: Vec<(usize, Symbols)> = {
        let mut resolving = RESOLVING.lock();
        let (mine, others): (Vec<usize>, Vec<usize>) = missing
            .into_iter()
            .partition(|&a| own_object.as_ref().is_some_and(|o| o.contains(a)));
        let mut resolved = Vec::with_capacity(mine.len() + others.len());
        let Routes {
            backtrace: mut for_backtrace,
            later,
            nowhere,
        } = route(others, &objects, loader, backtrace_lost);
        // An address in no object loaded now was in one unloaded since:
        // unnamed, rather than named after what is there now.
        resolved.extend(nowhere.into_iter().map(|a| (a, Symbols::from(Vec::new()))));
        if !mine.is_empty() {
            match own::resolve(
                own_object.as_ref().unwrap(),
                &mine,
                budget,
                with_index.then_some(&mut *resolving),
            ) {
                Some(found) => {
                    resolved.extend(found.resolved);
                    for_backtrace.extend(found.left);
                }
                None => for_backtrace.extend(mine),
            }
        }
        let mut later_objects = Vec::with_capacity(later.len());
        for (object, addrs) in later {
            let left = match own::resolve(&object, &addrs, budget, None) {
                Some(found) => {
                    resolved.extend(found.resolved);
                    found.left
                }
                None => addrs,
            };
            if loader.unloads == 0 {
                // No address has changed objects: backtrace names them if
                // its list holds the object.
                for_backtrace.extend(left);
            } else {
                // Not for certain in backtrace's list as it is now:
                // unnamed (pprof can name them from the profile's mappings).
                resolved.extend(left.into_iter().map(|a| (a, Symbols::from(Vec::new()))));
            }
            later_objects.push(object);
        }
        if backtrace_lost {
            let unnamed = for_backtrace.drain(..);
            resolved.extend(unnamed.map(|a| (a, Symbols::from(Vec::new()))));
        }
        if !for_backtrace.is_empty() {
            let from = resolved.len();
            resolved.extend(for_backtrace.into_iter().map(|a| (a, resolve(a))));
            // backtrace names a function from the debug info alone, which
            // may have only its short name: the objects `own` reads give
            // it its path from their symbol tables.
            for object in own_object.iter().chain(&later_objects) {
                own::add_paths(object, &mut resolved[from..]);
            }
            // backtrace keeps the debug info it parsed (tens of MiB for a
            // binary with debug info, in the heap of the program being
            // profiled) for its next lookup. Our own cache makes the next
            // profile of the same sites need no lookup at all, and a later
            // lookup reloads what it needs in milliseconds, so it is given
            // back now.
            backtrace::clear_symbol_cache();
        }
        resolved
    };
    // The object found for this lookup is not kept: freed inside the
    // window, so that its bytes are not counted as kept.
    drop(own_object);
    trim_heap(this_thread_allocated_bytes() - allocated_before);
    // A file may have become unreadable during the lookup, or the room
    // checked before it taken by another thread (the readers then name
    // nothing, silently): checked again where the lookup named nothing
    // (the skipped addresses' files are unreadable already).
    let unnamed = resolved.iter().filter(|(_, frames)| frames.is_empty());
    let since = unreadable_files(unnamed.map(|&(a, _)| a), &objects, Room::AddressSpace);
    unreadable.extend(since);
    resolved.extend(skipped.into_iter().map(|a| (a, Symbols::from(Vec::new()))));
    let mut not_kept = 0;
    {
        let mut cache = CACHE.lock();
        let cache = cache.get_or_insert_with(|| Cache {
            loader,
            frames: HashMap::new(),
        });
        // Found under the counts read at the start: kept only if no other
        // profile has seen the loader change since (this one's `follow`
        // would then not come again for them). Nothing found in a file
        // that could not be opened, or had no room to be read, is not
        // kept: the next profile tries again, when the program may have
        // descriptors or memory to spare.
        let fresh = cache.loader == loader;
        for (addr, frames) in &resolved {
            let cached = fresh
                && !(frames.is_empty() && in_files(&objects, *addr, &unreadable))
                && match cache.frames.entry(*addr) {
                    // Another profile's lookup of the same address, which
                    // that profile counted: it stays.
                    Entry::Occupied(_) => false,
                    Entry::Vacant(entry) => {
                        entry.insert(frames.clone());
                        true
                    }
                };
            if !cached {
                // Given to this profile alone, and freed after it: not kept.
                not_kept += heap_bytes(frames);
            }
        }
    }
    drop(unreadable);
    let list_bytes = resolved.capacity() * std::mem::size_of::<(usize, Symbols)>();
    let kept = this_thread_net_bytes() - before - (list_bytes + not_kept) as i64;
    KEPT_BYTES.fetch_add(kept, Relaxed);
    out.extend(resolved);
    out
}

/// The heap bytes of a `Symbols` no other holds, as `Symbols::from(Vec)`
/// makes it: Arc's block (two counts, then the frames, padded to their
/// alignment) and each frame's strings.
fn heap_bytes(symbols: &Symbols) -> usize {
    let block = std::alloc::Layout::new::<[usize; 2]>()
        .extend(
            std::alloc::Layout::array::<Symbol>(symbols.len())
                .unwrap_or(std::alloc::Layout::new::<()>()),
        )
        .map_or(0, |(layout, _)| layout.pad_to_align().size());
    let strings: usize = symbols
        .iter()
        .map(|s| s.name.capacity() + s.system_name.capacity() + s.file.capacity())
        .sum();
    block + strings
}

/// Which limits [`unreadable_files`] asks for room under.
#[derive(Clone, Copy)]
enum Room {
    /// Address space and committed memory, where an allocation of the
    /// lookup's fails (and a reader then names nothing, silently):
    /// checked after a lookup too, for the room another thread took.
    AddressSpace,
    /// Those, and the memory limits past which the kernel ends or
    /// throttles the process ([`LOOKUP_RESIDENT`]): before a lookup only,
    /// since the lookup itself raises what is in use.
    Both,
}

/// The files of `objects` that hold some of `addrs` and cannot be read
/// now: not opened (descriptors used up, say); and all of them if the
/// limits in `room` leave too little to read them together
/// ([`lookup_room`], [`LOOKUP_RESIDENT`]). One `open` per file. Sets
/// [`UNREADABLE`] if the executable is among the files checked, and says
/// once per process on stderr that names are lost for now.
fn unreadable_files(
    addrs: impl Iterator<Item = usize>,
    objects: &[Mapping],
    room: Room,
) -> Vec<&str> {
    let mut checked: Vec<(&Mapping, Result<usize, NotRead>)> = Vec::new();
    for addr in addrs {
        // Objects with no file to open (the vDSO, named
        // `linux-vdso.so.1`) are backtrace's to name from memory.
        let Some(object) =
            object_of(objects, addr).filter(|m| m.executable || m.path.starts_with('/'))
        else {
            continue;
        };
        if !checked.iter().any(|(m, _)| m.path == object.path) {
            checked.push((object, readable(object).map_err(NotRead::Error)));
        }
    }
    let files = checked
        .iter()
        .filter_map(|(_, read)| read.as_ref().ok())
        .fold(0usize, |all, &len| all.saturating_add(len));
    let short = if files == 0 {
        None
    } else {
        room::short_of(lookup_room(files)).or_else(|| match room {
            Room::Both => room::memory_short_of(LOOKUP_RESIDENT),
            Room::AddressSpace => None,
        })
    };
    if let Some(short) = short {
        for (_, read) in &mut checked {
            if read.is_ok() {
                *read = Err(NotRead::Room(short));
            }
        }
    }
    for (object, read) in &checked {
        let packed = read.as_ref().err().map_or(0, NotRead::pack);
        if let Some(why) = NotRead::unpack(packed) {
            static SAID: crate::config::report::Once = crate::config::report::Once::new();
            SAID.warn(format_args!(
                "heapprof: cannot read {} to name frames in it ({}); profiles leave them \
                 unnamed until it can be read again",
                crate::config::report::Shown::new(&object.path),
                why.words()
            ));
        }
        if object.executable {
            UNREADABLE.store(packed, Relaxed);
        }
    }
    checked
        .into_iter()
        .filter(|(_, read)| read.is_err())
        .map(|(object, _)| object.path.as_str())
        .collect()
}

/// Whether `addr` is in an object whose file is one of `files`.
fn in_files(objects: &[Mapping], addr: usize, files: &[&str]) -> bool {
    object_of(objects, addr).is_some_and(|m| files.contains(&m.path.as_str()))
}

/// Address space a lookup may take per byte of the files it reads, their
/// own mappings included: heapprof's reader maps a file, and backtrace,
/// which names what that reader leaves, maps it again and parses its
/// debug info into the heap, keeping every file's until the lookup ends.
/// A failed allocation there aborts the program, so a lookup without
/// room for this (and
/// [`LOOKUP_ROOM_EXTRA`]) is not made: the frames stay unnamed in that
/// profile, and the next one tries again. Measured: the first profile of
/// a 39 MB test binary, built on the HTTP server's thread, aborted with up
/// to 150 MiB free (3.8 bytes per byte).
const LOOKUP_ROOM_PER_FILE_BYTE: usize = 4;

/// Address space a lookup may take whatever the size of its files: debug
/// files found elsewhere (the C library's, from `/usr/lib/debug`, 4 MB
/// compressed, took more than 40 MiB to read), the allocator's per-thread
/// heaps, the lookup's tables.
const LOOKUP_ROOM_EXTRA: usize = 64 << 20;

/// Memory a lookup may add to what the process has in use, whatever the
/// size of its files: checked against the limits past which the kernel
/// ends the process (a cgroup's, `HEAPPROF_MEMORY_LIMIT`), where a lookup
/// without this much to spare is not made. The first profile of a 120 MB
/// executable, with the C library's debug file installed, grew the peak
/// resident size by 37.5 MiB (`BENCHMARKS.md`, "The first profile of a big
/// binary"); the executable's reader holds its parsed debug info and its
/// mapped file's pages within fixed budgets (`own.rs`), whatever the
/// file's size.
const LOOKUP_RESIDENT: usize = 64 << 20;

/// The address space a lookup of files of `bytes` in all may take.
fn lookup_room(bytes: usize) -> usize {
    bytes
        .saturating_mul(LOOKUP_ROOM_PER_FILE_BYTE)
        .saturating_add(LOOKUP_ROOM_EXTRA)
}

/// The size of `object`'s file, if it can be opened now. Whether it can
/// be mapped is left to the room asked for all the files of a lookup
/// together ([`lookup_room`]): mapping it here to see would take that
/// much address space, for a moment, from the program's own threads.
fn readable(object: &Mapping) -> std::io::Result<usize> {
    let len = object.open()?.metadata()?.len();
    Ok(usize::try_from(len).unwrap_or(usize::MAX))
}

/// Addresses outside heapprof's own object, sorted by who looks them up
/// ([`route`]).
#[derive(Default)]
struct Routes {
    /// In objects loaded at start, whose names backtrace finds: its list
    /// of objects, read once when it is first used, holds them for certain.
    backtrace: Vec<usize>,
    /// In objects loaded since, object by object, for heapprof's reader.
    later: Vec<(own::OwnObject, Vec<usize>)>,
    /// In no object loaded now: unnamed.
    nowhere: Vec<usize>,
}

/// Sorts `addrs` ([`Routes`]). backtrace's list may have been read after
/// an object loaded later than heapprof's start, or may hold one unloaded
/// since, in whose place another now is: so an address in a later object
/// goes to backtrace only when `own` cannot name it and no object was ever
/// unloaded (then no address can have changed objects). With
/// `own_reads_all`, every object with a file goes to `own`.
fn route(
    addrs: Vec<usize>,
    objects: &[Mapping],
    loader: LoaderCounts,
    own_reads_all: bool,
) -> Routes {
    let mut routes = Routes::default();
    let mut by_object: HashMap<(&str, &str, u64), Vec<usize>> = HashMap::new();
    for addr in addrs {
        match object_of(objects, addr) {
            None => routes.nowhere.push(addr),
            Some(m) if m.path.is_empty() || (m.loaded_at_start && !own_reads_all) => {
                routes.backtrace.push(addr)
            }
            Some(m) => by_object
                .entry((&m.path, &m.build_id, m.base))
                .or_default()
                .push(addr),
        }
    }
    for ((path, build_id, base), addrs) in by_object {
        let object = objects
            .iter()
            .filter(|m| m.path == path && m.build_id == build_id && m.base == base)
            .cloned()
            .collect();
        match own::OwnObject::of(object) {
            Some(object) => routes.later.push((object, addrs)),
            None if loader.unloads == 0 => routes.backtrace.extend(addrs),
            None => routes.nowhere.extend(addrs),
        }
    }
    routes
}

/// Gives back to the system the pages a lookup freed, after a lookup that
/// went through `looked_up` bytes. A lookup frees tens of MiB of parsed
/// debug info in small blocks scattered over glibc's heap, which glibc
/// keeps for reuse: the program's resident size would stay that much
/// higher after its first profile. `malloc_trim` returns every whole free
/// page, but it walks glibc's free lists holding each arena's lock, which
/// stalls the program's allocations in that arena meanwhile, for longer
/// the larger its heap. So it runs only when the lookup went through at
/// least as much as the program holds live: then the pages it returns
/// matter and the heap it walks is small; a program holding more keeps
/// the freed pages for its next lookup. When the inner allocator is
/// another one (jemalloc, mimalloc), glibc's heap holds next to nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap(looked_up: u64) {
    let program = crate::support::registry::totals();
    if looked_up < program.allocated_bytes.saturating_sub(program.freed_bytes) {
        return;
    }
    // A signal handler that allocates while this thread holds an arena
    // lock in `malloc_trim` would wait for it forever; a program that
    // makes such handlers safe by blocking signals around its allocator
    // (`Profiler::wrap` of an allocator that does) has not blocked them
    // here, outside its allocator, so they are held off meanwhile.
    let _held = crate::support::signals::HeldOff::all_but_faults();
    // SAFETY: `malloc_trim` has no preconditions. It takes glibc's arena
    // locks. This runs outside the allocator, holding no lock of the
    // allocation path (a profile is built with at most the HTTP server's
    // build lock, `rank::HTTP_BUILD`, which no allocation waits for), so
    // no thread that holds an arena lock can be waiting for a lock held
    // here.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap(_looked_up: u64) {}

/// Bytes symbolization keeps between profiles: the per-address cache, and
/// whatever backtrace still holds after `clear_symbol_cache`. Measured, not
/// estimated (see `resolve_all`).
static KEPT_BYTES: AtomicI64 = AtomicI64::new(0);

/// What symbolization holds now, in bytes.
pub(crate) fn memory_bytes() -> usize {
    KEPT_BYTES.load(Relaxed).max(0) as usize
}

#[cfg(test)]
thread_local! {
    /// Addresses this thread resolved (not served from the cache), for the
    /// tests, which run on threads of their own.
    pub(crate) static RESOLVED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn resolve(addr: usize) -> Symbols {
    #[cfg(test)]
    RESOLVED.with(|r| r.set(r.get() + 1));
    let mut frames = Vec::new();
    // `resolve` treats the address as a return address and looks up the
    // call instruction before it, which is what we want for every frame.
    backtrace::resolve(addr as *mut std::ffi::c_void, |symbol| {
        let (name, system_name) = match symbol.name() {
            Some(n) => names(n.as_bytes()),
            None => (String::new(), String::new()),
        };
        frames.push(Symbol {
            name,
            system_name,
            file: symbol
                .filename()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            line: symbol.lineno().unwrap_or(0),
        });
    });
    frames.into()
}

/// Whether the program has a function whose name (as a profile gives it)
/// `matches`, in the symbol tables of its loaded objects: the
/// executable's `.symtab`, a library's `.symtab` or at least its
/// `.dynsym`. A function inlined into every caller has no symbol of its
/// own, but its name, `identifier` (the name's last part), is among the
/// strings of the debug info that describes it. `Some(false)` only when
/// every table was read, none matches, and no debug info has
/// `identifier`; `None` when a file could not be read (a stripped
/// executable) or its debug info may name the function. Reads each file
/// through a mapping, and keeps nothing.
pub(crate) fn program_has_function(
    identifier: &str,
    matches: &dyn Fn(&str) -> bool,
) -> Option<bool> {
    use crate::support::mappings;
    let mut objects = Vec::new();
    mappings::each_object(&mut |info, executable| {
        objects.push((mappings::object_name(info), executable))
    });
    let mut read_every_table = true;
    for (name, executable) in objects {
        let (path, needs_symtab) = match name.as_str() {
            _ if executable => (mappings::executable_path(), true),
            // The kernel's vDSO has no file.
            vdso if vdso.starts_with("linux-vdso") || vdso.starts_with("linux-gate") => continue,
            _ => (Some(std::path::PathBuf::from(name)), false),
        };
        match path.and_then(|p| own::has_function(&p, needs_symtab, identifier, matches)) {
            Some(true) => return Some(true),
            Some(false) => {}
            None => read_every_table = false,
        }
    }
    read_every_table.then_some(false)
}

/// A function of the program whose name `matches` and whose code ends in
/// a tail call, as (its name, the callee's): see [`own::tail_call`]. The
/// executable and the libraries are read as [`program_has_function`]
/// reads them; nothing is kept.
pub(crate) fn tail_call(matches: &dyn Fn(&str) -> bool) -> Option<(String, String)> {
    use crate::support::mappings;
    let mut objects = Vec::new();
    mappings::each_object(&mut |info, executable| {
        objects.push((mappings::object_name(info), executable))
    });
    objects.into_iter().find_map(|(name, executable)| {
        let path = match name.as_str() {
            _ if executable => mappings::executable_path()?,
            vdso if vdso.starts_with("linux-vdso") || vdso.starts_with("linux-gate") => {
                return None;
            }
            _ => std::path::PathBuf::from(name),
        };
        own::tail_call(&path, matches)
    })
}

/// A symbol as linked (`bytes`, mangled or not) as (its demangled name
/// without the trailing hash, closures in one form; the name as linked).
/// Rust names are demangled as Rust, then C++ names (`_Z…`, with their
/// parameter types, which tell overloads apart); bytes that are not UTF-8
/// become U+FFFD in both.
fn names(bytes: &[u8]) -> (String, String) {
    let system_name = String::from_utf8_lossy(bytes).into_owned();
    let rust = std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| rustc_demangle::try_demangle(s).ok());
    let name = match rust {
        Some(demangled) => normalize_closures(&format!("{demangled:#}")),
        None => cpp_name(bytes).unwrap_or_else(|| normalize_closures(&system_name)),
    };
    (name, system_name)
}

/// A C++ symbol (`_ZN2ns5KlassIiE6methodEi`) demangled
/// (`ns::Klass<int>::method(int)`); `None` for anything else, or for a
/// name the demangler fails on in any way. cpp_demangle bounds its
/// recursion, so a hostile name cannot overflow the stack; a panic of its
/// own leaves the name mangled rather than fail the profile.
fn cpp_name(bytes: &[u8]) -> Option<String> {
    if !bytes.starts_with(b"_Z") {
        return None;
    }
    std::panic::catch_unwind(|| cpp_demangle::Symbol::new(bytes).ok()?.demangle().ok())
        .ok()
        .flatten()
}

/// Whether a frame is allocation machinery, by its name or, when the debug
/// info only has short names (`debug = "line-tables-only"` gives `reserve`
/// rather than `alloc::raw_vec::RawVec<T>::reserve`), by its source file.
///
/// A full path names its function surely, while its file can be another
/// function's (a binary whose split debug info, `.dwp` or `.dwo`, is
/// missing knows what was inlined only by line: the program's function
/// gets the file of heapprof's code inlined into it), so the file decides
/// for a full path only where the name cannot: a standard trait
/// implemented on a standard type is named alike whoever wrote the impl
/// once demangled (`<alloc::vec::Vec<u8> as
/// core::convert::From<&my::Record>>::from` is the program's own impl):
/// the standard library's impls are in its sources.
pub(crate) fn is_machinery_frame(frame: &Symbol) -> bool {
    if !has_path(&frame.name) {
        return is_machinery_file(&frame.file) || is_machinery(&frame.name);
    }
    if !is_machinery(&frame.name) {
        return false;
    }
    let (subject, implemented) = subject_and_trait(&frame.name);
    if !frame.file.is_empty() && !is_std_file(&frame.file) && !in_std_module(subject) {
        return false;
    }
    let anyones = implemented.is_some() && !subject.starts_with("heapprof::");
    !anyones || frame.file.is_empty() || is_std_file(&frame.file)
}

/// Whether `path`, if it starts with `alloc::` or `core::`, goes on into
/// a module of that standard crate: a program's own crate may have the
/// same name (a binary `src/bin/alloc.rs` is the crate `alloc`), and its
/// `alloc::main` is the program's. Other paths: true.
fn in_std_module(path: &str) -> bool {
    // The modules of each crate, as `library/*/src` has them (`core_arch`
    // and `core_simd` from `library/stdarch` and `library/portable-simd`).
    const ALLOC: &str = "alloc borrow boxed bstr collections ffi fmt raw_vec rc slice str string \
                         sync task vec wtf8";
    const CORE: &str = "alloc any arch array ascii asserting async_iter bool borrow bstr cell \
                        char clone cmp contracts convert core_arch core_simd default error \
                        escape f16 f32 f64 f128 ffi field fmt future hash hint index intrinsics \
                        io iter marker mem net num ops option os panic panicking pat pin \
                        prelude primitive process profiling ptr random range result simd slice \
                        str sync task time tuple ub_checks unicode unit unsafe_binder wtf8";
    let mut parts = path.split("::");
    let modules = match parts.next() {
        Some("alloc") => ALLOC,
        Some("core") => CORE,
        _ => return true,
    };
    parts.next().is_some_and(|module| {
        let module = &module[..module.find('<').unwrap_or(module.len())];
        modules.split_whitespace().any(|m| m == module)
    })
}

/// Whether `file` is a source of the standard library (or of hashbrown,
/// which it vendors).
fn is_std_file(file: &str) -> bool {
    [
        "/library/std/src/",
        "/library/core/src/",
        "/library/alloc/src/",
        "/library/stdarch/",
        "/library/portable-simd/",
    ]
    .iter()
    .any(|p| file.contains(p))
        || is_machinery_file(file)
}

/// Whether `name` says where its function is: a path
/// (`alloc::vec::from_elem`) or a qualified one (`<T as Trait>::f`),
/// rather than the short name `debug = "line-tables-only"` gives
/// (`from_elem<alloc::alloc::Global>`, whose generic arguments have paths
/// of their own).
pub(super) fn has_path(name: &str) -> bool {
    let head = &name[..name.find('<').unwrap_or(name.len())];
    name.starts_with('<') || head.contains("::")
}

/// Whether `full`, a name with its path, names the function `short` (a
/// name without one, perhaps with generic arguments) does:
/// `my_crate::Cache::build` and `build`, `alloc::vec::from_elem` and
/// `from_elem<u8>`, `my_crate::main::{{closure}}` and `{{closure}}`.
pub(super) fn same_function(full: &str, short: &str) -> bool {
    let base = &short[..short.find('<').unwrap_or(short.len())];
    !base.is_empty() && (full == base || full.ends_with(&format!("::{base}")))
}

/// Source files of the allocation path: the standard library's `alloc` and
/// `core` crates, its collections and allocator glue, hashbrown (vendored
/// by std or used directly) and the unwinder, as a directory named after
/// the crate and its version (`hashbrown-0.16.1/`), and heapprof itself.
pub(crate) fn is_machinery_file(file: &str) -> bool {
    const STD_PARTS: &[&str] = &[
        "/library/alloc/src/",
        "/library/core/src/",
        "/library/std/src/collections/",
        "/library/std/src/alloc.rs",
        "/library/std/src/sys/alloc/",
    ];
    const CRATES: &[&str] = &["/hashbrown-", "/backtrace-"];
    const OWN_SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");
    let versioned_crate = |prefix: &str| {
        file.match_indices(prefix).any(|(at, _)| {
            let dir = &file[at + prefix.len()..];
            let dir = &dir[..dir.find('/').unwrap_or(0)];
            !dir.is_empty()
                && dir.starts_with(|c: char| c.is_ascii_digit())
                && dir.contains('.')
                && dir
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
        })
    };
    !file.is_empty()
        && (file.starts_with(OWN_SOURCES)
            || STD_PARTS.iter().any(|p| file.contains(p))
            || CRATES.iter().any(|p| versioned_crate(p)))
}

/// The type a function belongs to and the trait it implements, if any:
/// `(T, Some(Trait))` for `<T as Trait>::method`, `(T, None)` for
/// `<T>::method`, and `(name, None)` otherwise. Brackets inside `T` are
/// skipped, so `<[u8; 4] as Fill>::fill` and `<Vec<(A, B)> as Trait>::f`
/// split at their own ` as `.
fn subject_and_trait(name: &str) -> (&str, Option<&str>) {
    let Some(rest) = name.strip_prefix('<') else {
        return (name, None);
    };
    let bytes = rest.as_bytes();
    let mut depth = 0usize;
    let mut subject_end = None;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'<' | b'[' | b'(' => depth += 1,
            // `->` in a function type closes nothing.
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b'>' | b']' | b')' if depth > 0 => depth -= 1,
            b'>' => {
                return match subject_end {
                    Some(end) => (&rest[..end], Some(&rest[end + " as ".len()..i])),
                    None => (&rest[..i], None),
                };
            }
            b' ' if depth == 0 && subject_end.is_none() && rest[i..].starts_with(" as ") => {
                subject_end = Some(i);
            }
            _ => {}
        }
    }
    (&rest[..subject_end.unwrap_or(rest.len())], None)
}

/// The type a function belongs to (see [`subject_and_trait`]).
fn subject(name: &str) -> &str {
    subject_and_trait(name).0
}

/// Whether a function is part of how the process, a thread or a test
/// starts, below the program's own code: the C runtime (`_start`,
/// `__libc_start_main`, the C `main`, `start_thread`, `clone3`, and
/// the sanitizers' `asan_thread_start` and `__tsan_thread_start_func`,
/// which their `pthread_create` puts between the C library and the
/// thread's own start), std's
/// runtime and thread start-up (`std::rt::lang_start`, the spawn closures,
/// `catch_unwind`, `FnOnce` call shims, `__rust_begin_short_backtrace`),
/// the test harness, and the workers of async runtimes (tokio, async-std,
/// smol and the executors under them) and of rayon's pools running a task
/// or a job. These are
/// trimmed from the root end of every stack (see `output::pprof::trim`), the way
/// Go stacks end at `main.main` under one `runtime.main`.
pub(crate) fn is_startup(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "_start",
        "main",
        "start_thread",
        "clone",
        "clone3",
        "__libc_start_call_main",
        "__libc_start_main",
        "__libc_start_main_impl",
        "__libc_start_main_alias_2",
        // musl's thread entry, and its process entry's own steps.
        "start",
        "start_c11",
        "libc_start_main_stage2",
        "_start_c",
        // catch_unwind's landing-pad frame, seen in debug builds.
        "__rust_try",
        "asan_thread_start",
        // ThreadSanitizer's, in the same place.
        "__tsan_thread_start_func",
    ];
    const PREFIXES: &[&str] = &[
        "std::rt::",
        "std::panicking::",
        "std::panic::",
        "std::sys::",
        "std::thread::",
        "core::panic::",
        "core::ops::function::",
        "core::future::",
        "core::pin::Pin<",
        "alloc::boxed::Box<",
        "fn(",
        "&dyn core::ops::function::",
        "&mut dyn core::ops::function::",
        "dyn core::ops::function::",
        "test::",
        "tokio::runtime::",
        "tokio::task::",
        "tokio::loom::",
        "tokio::util::",
        "futures_executor::",
        "async_std::task::",
        "async_global_executor::",
        "async_executor::",
        "async_task::",
        "blocking::",
        "smol::",
        "rayon_core::",
        "crossbeam_utils::thread::",
    ];
    EXACT.contains(&name)
        || {
            let subject = subject(name);
            PREFIXES.iter().any(|p| subject.starts_with(p))
        }
        || is_call_once_shim(name)
}

/// Whether a frame is start-up ([`is_startup`]), by its name or, for a
/// short name (`debug = "line-tables-only"` names the standard library's
/// `call_once` and `__rust_begin_short_backtrace` inlined into the
/// program's crate so), by its source file. A short `main` with a file is
/// the program's own `fn main`; C's `main`, which Rust generates, has none.
pub(crate) fn is_startup_frame(frame: &Symbol) -> bool {
    if has_path(&frame.name) || frame.file.is_empty() {
        return is_startup(&frame.name);
    }
    // A short name with the program's file: the C entry points' names are
    // also the program's own functions' (`main`, a thread's `start`). A
    // static musl program's thread entry has musl's file.
    const C_ENTRY_NAMES: &[&str] = &["main", "start", "start_c11"];
    let musl_thread_entry = frame.file.ends_with("src/thread/pthread_create.c")
        && ["start", "start_c11"].contains(&frame.name.as_str());
    is_startup_file(&frame.file)
        || musl_thread_entry
        || (!C_ENTRY_NAMES.contains(&frame.name.as_str()) && is_startup(&frame.name))
}

/// Whether a frame is the standard library's (`core`, `alloc`, `std`), by
/// its source file; false for a frame without one.
pub(crate) fn is_standard_library_frame(frame: &Symbol) -> bool {
    const PARTS: &[&str] = &[
        "/library/core/src/",
        "/library/alloc/src/",
        "/library/std/src/",
    ];
    PARTS.iter().any(|p| frame.file.contains(p))
}

/// Source files of the standard library's process, thread and test
/// start-up, and of the calls a closure is started through.
fn is_startup_file(file: &str) -> bool {
    const PARTS: &[&str] = &[
        "/library/std/src/rt.rs",
        "/library/std/src/panicking.rs",
        "/library/std/src/panic.rs",
        "/library/std/src/sys/backtrace.rs",
        "/library/std/src/thread/",
        "/library/std/src/sys/thread/",
        "/library/core/src/ops/function.rs",
        "/library/core/src/panic/",
        "/library/test/src/",
    ];
    PARTS.iter().any(|p| file.contains(p))
}

/// The `FnOnce::call_once` shim a closure is called through, named by its
/// impl (`<f::{{closure}} as core::ops::function::FnOnce<()>>::call_once`),
/// as the symbol table names it where debug info has no entry for it (an
/// AddressSanitizer build). Debug info names the same shim by its trait,
/// `core::ops::function::FnOnce::call_once`, which the prefixes above
/// match.
fn is_call_once_shim(name: &str) -> bool {
    name.starts_with('<')
        && name.contains(" as core::ops::function::FnOnce<")
        && name.ends_with(">::call_once")
}

/// Closure names as one form: symbols carry `{{closure}}` (legacy
/// mangling) or `{closure#0}` (v0 mangling, debug info) for the same
/// closure, and a profile mixing both splits one function in two.
pub(crate) fn normalize_closures(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find("{closure#") {
        let after = &rest[at + "{closure#".len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with('}') {
            out.push_str(&rest[..at]);
            out.push_str("{{closure}}");
            rest = &after[digits + 1..];
        } else {
            out.push_str(&rest[..at + 1]);
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Whether a function is part of the allocation path rather than code that
/// decided to allocate: the profiler itself, the allocator shims, and the
/// standard library's allocation and collection internals that only pass a
/// request on (`RawVec` growth, `vec![x; n]`, `String` pushes, `format!`,
/// `Box::new`, `HashMap` inserts, `collect`, `to_vec`, `clone`…). These
/// are trimmed from the leaf end of every stack, the way Go hides
/// `mallocgc`, `makeslice`, `growslice` and `mapassign`, so that `-top`
/// shows the user's functions as the flat entries.
///
/// The test is on the function's *subject* (`T` of `<T as Trait>::method`)
/// and its trait: an impl is machinery only when the standard library owns
/// both, so the user's own `impl Clone for MyType` and `impl MyTrait for
/// [u8; 4]` (or `for Vec<u8>`, or a blanket `for T`) stay visible, while
/// `<alloc::string::String as core::clone::Clone>::clone` is trimmed.
/// heapprof's own functions are machinery whatever trait they implement.
pub(crate) fn is_machinery(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "heapprof::",
        "backtrace::",
        "__rust_",
        "__rustc::",
        "__rdl_",
        "__rg_",
        "alloc::",
        "core::",
        "hashbrown::",
        "std::alloc::",
        "std::collections::",
        "std::sys::alloc::",
        "std::sys::pal::unix::alloc::",
    ];
    let (subject, implemented) = subject_and_trait(name);
    if subject.starts_with("heapprof::") {
        return true;
    }
    // Primitive types, slices, references, pointers, tuples, and a generic
    // parameter (`<T as alloc::…>`): only the standard library has inherent
    // impls on them.
    const PRIMITIVES: &[&str] = &[
        "str", "bool", "char", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32",
        "i64", "i128", "isize", "f32", "f64",
    ];
    let machinery = |path: &str| PREFIXES.iter().any(|p| path.starts_with(p));
    // Any trait of the standard library's (`std::io::Write` too): its impl
    // on a standard type is the standard library's.
    let std_trait = |path: &str| {
        ["core::", "alloc::", "std::", "hashbrown::"]
            .iter()
            .any(|p| path.starts_with(p))
    };
    let builtin = subject.starts_with(['[', '&', '*', '('])
        || PRIMITIVES.contains(&subject)
        || (subject.len() == 1 && subject.bytes().all(|b| b.is_ascii_uppercase()));
    (builtin || machinery(subject)) && implemented.is_none_or(std_trait)
}

/// What this thread has allocated, heapprof's own calls included.
fn this_thread_allocated_bytes() -> u64 {
    crate::thread::with(|l| l.counters.all_counted().allocated_bytes).unwrap_or(0)
}

/// Bytes this thread has allocated minus bytes it has freed, heapprof's
/// own included: the change across a stretch of code run on this thread
/// is what that code kept.
fn this_thread_net_bytes() -> i64 {
    crate::thread::with(|l| {
        let c = l.counters.all_counted();
        c.allocated_bytes.wrapping_sub(c.freed_bytes) as i64
    })
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{
        Symbol, is_machinery, is_machinery_file, is_machinery_frame, is_startup, is_startup_frame,
        normalize_closures, subject_and_trait,
    };

    /// A frame named `name` in `file`.
    fn frame(name: &str, file: &str) -> Symbol {
        Symbol {
            name: name.into(),
            system_name: String::new(),
            file: file.into(),
            line: 1,
        }
    }

    #[test]
    fn rust_and_cpp_names_are_demangled() {
        let (name, system) = super::names(b"_ZN2ns5KlassIiE6methodEiPFvmEm");
        assert_eq!(
            name,
            "ns::Klass<int>::method(int, void (*)(unsigned long), unsigned long)"
        );
        assert_eq!(system, "_ZN2ns5KlassIiE6methodEiPFvmEm");
        let rust = super::names(b"_ZN8my_crate4work17h0123456789abcdefE").0;
        assert_eq!(rust, "my_crate::work");
        assert_eq!(super::names(b"c_function").0, "c_function");
        assert_eq!(super::names(b"_Znot a symbol").0, "_Znot a symbol");
    }

    /// `debug = "line-tables-only"` names the program's frames, and the
    /// standard library's inlined into them, without their paths.
    #[test]
    fn start_up_frames_with_short_names_are_known_by_their_files() {
        let std = "/rustc/x/library";
        for (name, file) in [
            (
                "call_once<fn(), ()>",
                format!("{std}/core/src/ops/function.rs"),
            ),
            (
                "__rust_begin_short_backtrace",
                format!("{std}/std/src/sys/backtrace.rs"),
            ),
            ("main", String::new()),
            (
                "std::rt::lang_start_internal",
                format!("{std}/std/src/rt.rs"),
            ),
            ("start_thread", "./nptl/pthread_create.c".into()),
            ("start", String::new()),
            // A static musl program's thread entry, with musl's file.
            ("start", "src/thread/pthread_create.c".into()),
            (
                "start_c11",
                "/build/musl/src/thread/pthread_create.c".into(),
            ),
            (
                "libc_start_main_stage2",
                "src/env/__libc_start_main.c".into(),
            ),
        ] {
            assert!(is_startup_frame(&frame(name, &file)), "{name} {file}");
        }
        for (name, file) in [
            ("main", "/work/app/src/main.rs"),
            ("start", "/work/app/src/worker.rs"),
            ("start", "/work/app/src/thread/pthread_create.rs"),
            ("gamma_small", "/work/app/src/main.rs"),
            ("app::main", "/work/app/src/main.rs"),
        ] {
            assert!(!is_startup_frame(&frame(name, file)), "{name} {file}");
        }
    }

    #[test]
    fn a_short_name_is_the_same_function_as_its_full_path() {
        use super::same_function;
        assert!(same_function("my_crate::Cache::build", "build"));
        assert!(same_function("alloc::vec::from_elem", "from_elem<u8>"));
        assert!(same_function("my_crate::main::{{closure}}", "{{closure}}"));
        assert!(!same_function("my_crate::rebuild", "build"));
        assert!(!same_function("my_crate::other", "build"));
        assert!(!same_function("my_crate::build", "<u8>"));
    }

    #[test]
    fn subjects_and_traits_split_at_their_own_as() {
        for (name, subject, implemented) in [
            ("my_crate::f", "my_crate::f", None),
            ("<[u8; 4] as my::Fill>::fill", "[u8; 4]", Some("my::Fill")),
            (
                "<alloc::raw_vec::RawVec<u8>>::reserve",
                "alloc::raw_vec::RawVec<u8>",
                None,
            ),
            (
                "<Vec<<A as B>::C> as core::ops::Drop>::drop",
                "Vec<<A as B>::C>",
                Some("core::ops::Drop"),
            ),
            (
                "<fn() -> u8 as core::ops::function::FnOnce<()>>::call_once",
                "fn() -> u8",
                Some("core::ops::function::FnOnce<()>"),
            ),
            ("<unclosed as x", "unclosed", None),
        ] {
            assert_eq!(subject_and_trait(name), (subject, implemented), "{name}");
        }
    }

    /// The frames heapprof makes (for a sample it did not unwind, for the
    /// end of a stack it cut) are named in every profile, including one
    /// the server symbolizes.
    #[test]
    fn own_frames_are_named_even_for_the_server() {
        use crate::record::stack::{CUT, NOT_UNWOUND};
        let own = own_frames_are_named_even_for_the_server as *const () as usize;
        for addresses_only in [false, true] {
            let site = crate::record::sites::SiteCopy {
                frames: vec![own, NOT_UNWOUND, CUT, own],
                counts: Default::default(),
                overflow: false,
                labels: Default::default(),
                serial: 0,
                id: 0,
            };
            let resolved = super::for_profile(&[site], addresses_only);
            for (addr, name) in [
                (NOT_UNWOUND, super::NOT_UNWOUND_FUNCTION),
                (CUT, super::CUT_FUNCTION),
            ] {
                assert_eq!(resolved[&addr][0].name, name, "{addresses_only}");
            }
            assert_eq!(resolved.contains_key(&own), !addresses_only);
        }
    }

    #[test]
    fn closures_have_one_name() {
        assert_eq!(
            normalize_closures("app::run::{closure#0}::{closure#12}"),
            "app::run::{{closure}}::{{closure}}"
        );
        assert_eq!(
            normalize_closures("app::run::{{closure}}"),
            "app::run::{{closure}}"
        );
        assert_eq!(normalize_closures("a::{closure#x}"), "a::{closure#x}");
        assert_eq!(normalize_closures("{closure#"), "{closure#");
    }

    #[test]
    fn start_up_frames_are_told_from_the_programs() {
        for name in [
            "_start",
            "main",
            "__libc_start_call_main",
            "start_thread",
            "asan_thread_start",
            "__tsan_thread_start_func",
            "<app::main::{{closure}} as core::ops::function::FnOnce<()>>::call_once",
            "std::rt::lang_start_internal",
            "std::rt::lang_start::{{closure}}",
            "std::sys::backtrace::__rust_begin_short_backtrace",
            "core::ops::function::FnOnce::call_once",
            "<fn() -> core::result::Result<(), alloc::string::String> as core::ops::function::FnOnce<()>>::call_once",
            "<alloc::boxed::Box<dyn core::ops::function::FnOnce<()>> as core::ops::function::FnOnce<()>>::call_once",
            "<std::sys::thread::unix::Thread>::new::thread_start",
            "<&dyn core::ops::function::Fn<(), Output = i32> + core::marker::Sync as core::ops::function::FnOnce<()>>::call_once",
            "test::run_test_in_process",
            "tokio::runtime::task::harness::Harness<T,S>::poll",
            "<rayon_core::job::StackJob<L,F,R> as rayon_core::job::Job>::execute",
            "rayon_core::registry::WorkerThread::wait_until_cold",
            "async_global_executor::threading::thread_main_loop",
            "<async_task::raw::RawTask<F,T,S,M>>::run",
            "smol::spawn::spawn::global::{{closure}}",
            "blocking::Executor::grow_pool::{{closure}}",
            "crossbeam_utils::thread::ScopedThreadBuilder::spawn::{{closure}}",
        ] {
            assert!(is_startup(name), "{name}");
        }
        for name in [
            "app::main",
            "app::worker::{{closure}}",
            "<app::Cache as core::clone::Clone>::clone",
            "std::fs::read",
            "mainly::run",
            "<app::Task as core::ops::function::FnMut<()>>::call_mut",
            "<app::Call as core::ops::function::FnOnce<()>>::call_once_with",
        ] {
            assert!(!is_startup(name), "{name}");
        }
    }

    #[test]
    fn a_second_lookup_is_served_from_the_cache() {
        let here = a_second_lookup_is_served_from_the_cache as *const () as usize + 1;
        let addrs = [here, here + 4, here + 8];
        let first = super::resolve_all(addrs);
        assert!(
            first[&here]
                .iter()
                .any(|f| f.name.contains("a_second_lookup")),
            "{first:?}"
        );
        let before = super::RESOLVED.with(std::cell::Cell::get);
        let second = super::resolve_all(addrs);
        assert_eq!(
            super::RESOLVED.with(std::cell::Cell::get),
            before,
            "nothing resolved again"
        );
        assert_eq!(second[&here][0].name, first[&here][0].name);
    }

    /// Return addresses in this test binary: this thread's stack, and
    /// points inside a few functions, one without debug info (`_start`,
    /// from the C runtime's object file).
    fn addresses_here() -> Vec<usize> {
        // SAFETY: `_start` is the C runtime's entry point, defined in every
        // executable; only its address is taken, it is never called.
        unsafe extern "C" {
            fn _start();
        }
        let mut addrs = Vec::new();
        backtrace::trace(|frame| {
            addrs.push(frame.ip() as usize);
            true
        });
        for f in [
            addresses_here as *const () as usize,
            super::names as *const () as usize,
            super::own::resolve as *const () as usize,
            _start as *const () as usize,
        ] {
            addrs.extend([f + 1, f + 5, f + 17]);
        }
        let object = super::own::OwnObject::find().unwrap();
        addrs.retain(|&a| object.contains(a));
        addrs.sort_unstable();
        addrs.dedup();
        addrs
    }

    fn same_frames(own: &[super::Symbol], backtrace: &[super::Symbol]) -> bool {
        own.len() == backtrace.len()
            && own.iter().zip(backtrace).all(|(a, b)| {
                a.name == b.name
                    && a.system_name == b.system_name
                    && a.file == b.file
                    && a.line == b.line
            })
    }

    #[test]
    fn own_object_names_what_backtrace_names() {
        let addrs = addresses_here();
        assert!(addrs.len() > 8, "{addrs:x?}");
        let object = super::own::OwnObject::find().unwrap();
        let tiny = super::own::Budget {
            parsed_bytes: 0,
            file_bytes: 0,
        };
        let mut index = None;
        for (budget, index) in [
            (super::own::BUDGET, None),
            (tiny, None),
            (super::own::BUDGET, Some(&mut index)),
        ] {
            let found =
                super::own::resolve(&object, &addrs, budget, index).expect("a plain layout");
            assert!(found.left.is_empty(), "{:x?}", found.left);
            assert_eq!(found.resolved.len(), addrs.len());
            for (addr, frames) in &found.resolved {
                let theirs = super::resolve(*addr);
                assert!(
                    same_frames(frames, &theirs),
                    "{addr:#x}: own {frames:#?} backtrace {theirs:#?}"
                );
            }
            let named = |name: &str| {
                found
                    .resolved
                    .iter()
                    .any(|(_, frames)| frames.iter().any(|f| f.name.contains(name)))
            };
            assert!(named("addresses_here"), "{:#?}", found.resolved);
            assert!(named("_start"), "{:#?}", found.resolved);
        }
        backtrace::clear_symbol_cache();
    }

    /// Addresses every `STRIDE` bytes across heapprof's own object's code,
    /// as return addresses.
    fn addresses_across_the_object() -> Vec<usize> {
        const STRIDE: usize = 997;
        let mut addrs = Vec::new();
        for m in crate::support::mappings::own_object() {
            addrs.extend((m.start as usize + 1..m.limit as usize).step_by(STRIDE));
        }
        addrs
    }

    /// The unit index sends each address to one unit's context, or to the
    /// whole file's; either way the frames are the ones the whole file's
    /// context finds.
    #[test]
    fn the_unit_index_finds_what_the_whole_context_finds() {
        let addrs = addresses_across_the_object();
        assert!(addrs.len() > 1000, "{}", addrs.len());
        let object = super::own::OwnObject::find().unwrap();
        let budget = super::own::BUDGET;
        let whole = super::own::resolve(&object, &addrs, budget, None).unwrap();
        let mut index = None;
        let per_unit = super::own::PER_UNIT.with(|c| c.get());
        let nowhere = super::own::NOWHERE.with(|c| c.get());
        let whole_contexts = super::own::WHOLE_CONTEXTS.with(|c| c.get());
        let indexed = super::own::resolve(&object, &addrs, budget, Some(&mut index)).unwrap();
        let vouched = super::own::PER_UNIT.with(|c| c.get()) - per_unit;
        let nowhere = super::own::NOWHERE.with(|c| c.get()) - nowhere;
        let whole_contexts = super::own::WHOLE_CONTEXTS.with(|c| c.get()) - whole_contexts;
        println!(
            "{} addresses: {vouched} in one unit's context, {nowhere} in no unit, {whole_contexts} whole contexts",
            addrs.len()
        );
        assert!(
            vouched * 2 > addrs.len(),
            "the index vouches for {vouched} of {} addresses",
            addrs.len()
        );
        // This binary holds code without debug info (the standard
        // library's own dependencies): the index says so itself.
        assert!(nowhere > 0, "no address placed in no unit");
        let by_addr =
            |found: super::own::Found| -> std::collections::HashMap<usize, super::Symbols> {
                found.resolved.into_iter().collect()
            };
        let (whole_left, indexed_left) = (whole.left.clone(), indexed.left.clone());
        assert_eq!(whole_left, indexed_left);
        let (whole, indexed) = (by_addr(whole), by_addr(indexed));
        assert_eq!(whole.len(), indexed.len());
        let mut named = 0;
        for (addr, frames) in &whole {
            let theirs = &indexed[addr];
            assert!(
                same_frames(frames, theirs),
                "{addr:#x}: whole {frames:#?} indexed {theirs:#?}"
            );
            named += usize::from(frames.iter().any(|f| !f.file.is_empty()));
        }
        assert!(
            named * 2 > whole.len(),
            "{named} of {} have a file",
            whole.len()
        );
    }

    /// Once the index is made, a lookup of addresses it vouches for parses
    /// their units alone, not the whole file's headers.
    #[test]
    fn a_lookup_with_the_index_makes_no_whole_context() {
        let object = super::own::OwnObject::find().unwrap();
        let mut index = None;
        let in_functions = |offset: usize| -> Vec<usize> {
            let mut addrs: Vec<usize> = [
                super::names as *const () as usize,
                super::normalize_closures as *const () as usize,
                super::own::resolve as *const () as usize,
            ]
            .iter()
            .map(|f| f + offset)
            .collect();
            addrs.sort_unstable();
            addrs
        };
        super::own::resolve(
            &object,
            &in_functions(1),
            super::own::BUDGET,
            Some(&mut index),
        )
        .unwrap();
        assert!(index.is_some());
        let before = super::own::WHOLE_CONTEXTS.with(|c| c.get());
        let later = in_functions(9);
        let found =
            super::own::resolve(&object, &later, super::own::BUDGET, Some(&mut index)).unwrap();
        assert_eq!(found.resolved.len(), later.len());
        assert!(
            found
                .resolved
                .iter()
                .any(|(_, frames)| frames.iter().any(|f| f.name.ends_with("::names"))),
            "{:#?}",
            found.resolved
        );
        assert_eq!(super::own::WHOLE_CONTEXTS.with(|c| c.get()), before);
        // Without the index, the same lookup needs one.
        super::own::resolve(&object, &later, super::own::BUDGET, None).unwrap();
        assert_eq!(super::own::WHOLE_CONTEXTS.with(|c| c.get()), before + 1);
    }

    /// Under v0 mangling the program's own `impl From<&Record> for
    /// Vec<u8>` is named like the standard library's impls; its file says
    /// whose it is.
    #[test]
    fn a_standard_trait_on_a_standard_type_is_the_programs_by_its_file() {
        let from = "<alloc::vec::Vec<u8> as core::convert::From<&my::Record>>::from";
        assert!(!is_machinery_frame(&frame(from, "/work/my/src/lib.rs")));
        assert!(is_machinery_frame(&frame(from, "")));
        let io = "<alloc::vec::Vec<u8> as std::io::Write>::write_all";
        assert!(is_machinery_frame(&frame(
            io,
            "/rustc/x/library/std/src/io/impls.rs"
        )));
        let std_impl =
            "<alloc::vec::Vec<T> as core::iter::traits::collect::FromIterator<T>>::from_iter";
        assert!(is_machinery_frame(&frame(
            std_impl,
            "/rustc/x/library/alloc/src/vec/mod.rs"
        )));
        // A name that is machinery without a trait stays so in any file
        // (inlined into the program's, or with its paths remapped).
        assert!(is_machinery_frame(&frame(
            "alloc::raw_vec::finish_grow",
            "/src/x.rs"
        )));
        // The program's own crate named `alloc` or `core` (a binary
        // `src/bin/alloc.rs`): its functions are not the standard
        // library's, where the file says so.
        for name in ["alloc::main", "alloc::grow", "core::churn::{{closure}}"] {
            assert!(!is_machinery_frame(&frame(name, "/work/app/src/bin/x.rs")));
            assert!(is_machinery_frame(&frame(name, "")), "{name}");
        }
        assert!(is_machinery_frame(&frame(
            "core::ptr::drop_in_place<alloc::grow::Thing>",
            "/work/app/src/bin/alloc.rs"
        )));
        assert!(is_machinery_frame(&frame(
            "heapprof::record::alloc",
            "/remapped/record/mod.rs"
        )));
        let own = "<heapprof::Profiler<A> as core::alloc::global::GlobalAlloc>::alloc";
        assert!(is_machinery_frame(&frame(own, "/remapped/lib.rs")));
        // Split debug info left behind: the program's function with the
        // file of what was inlined into it.
        let own_file = concat!(env!("CARGO_MANIFEST_DIR"), "/src/fast.rs");
        assert!(!is_machinery_frame(&frame("my::beta_pages", own_file)));
        assert!(is_machinery_frame(&frame(
            "reserve",
            "/rustc/x/library/alloc/src/raw_vec.rs"
        )));
        assert!(!is_machinery_frame(&frame(
            "reserve",
            "/work/my/src/lib.rs"
        )));
        // A short name with generic arguments, whose paths are theirs.
        assert!(is_machinery_frame(&frame(
            "from_elem<alloc::alloc::Global>",
            "/rustc/x/library/alloc/src/vec/spec_from_elem.rs"
        )));
    }

    #[test]
    fn trims_by_file_when_names_are_short() {
        for file in [
            "/rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/alloc/src/alloc.rs",
            "/rust/deps/hashbrown-0.16.1/src/raw/mod.rs",
            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/backtrace-0.3.77/src/backtrace/mod.rs",
            "/rustc/x/library/std/src/collections/hash/map.rs",
            concat!(env!("CARGO_MANIFEST_DIR"), "/src/record/mod.rs"),
        ] {
            assert!(is_machinery_file(file), "{file}");
        }
        for file in [
            "",
            "/work/app/src/main.rs",
            "/rustc/x/library/std/src/fs.rs",
            "/rustc/x/library/std/src/rt.rs",
            "/home/me/backtrace-tool/src/main.rs",
            "/home/me/app/src/hashbrown-util/mod.rs",
            "/home/me/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/backtrace-ext-0.2.1/src/lib.rs",
            "/home/me/hashbrown-2/main.rs",
        ] {
            assert!(!is_machinery_file(file), "{file}");
        }
    }

    #[test]
    fn trims_allocation_machinery() {
        for name in [
            "__rust_alloc",
            "__rustc::__rust_alloc",
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "__rdl_alloc",
            "alloc::raw_vec::RawVec<T,A>::grow_one",
            "alloc::raw_vec::finish_grow",
            "alloc::vec::from_elem",
            "alloc::fmt::format::format_inner",
            "<alloc::string::String as core::fmt::Write>::write_str",
            "<alloc::vec::Vec<T> as core::iter::traits::collect::FromIterator<T>>::from_iter",
            "<str as alloc::string::ToString>::to_string",
            "<[T] as alloc::slice::hack::ConvertVec>::to_vec",
            "<T as alloc::string::SpecToString>::spec_to_string",
            "core::fmt::write",
            "std::collections::hash::map::HashMap<K,V,S>::insert",
            "hashbrown::raw::RawTable<T,A>::reserve_rehash",
            "<heapprof::Profiler<A> as core::alloc::global::GlobalAlloc>::alloc",
            "heapprof::record::alloc",
            "<alloc::raw_vec::RawVec<u8>>::reserve",
            "backtrace::backtrace::libunwind::trace",
            "<alloc::vec::Vec<u8> as std::io::Write>::write_all",
            "<&mut W as std::io::Write>::write_all",
            "<&[u8] as std::io::Read>::read_to_end",
        ] {
            assert!(is_machinery(name), "{name} should be trimmed");
        }
    }

    #[test]
    fn keeps_user_and_runtime_code() {
        for name in [
            "batch_job::add_map",
            "<batch_job::Record as core::clone::Clone>::clone",
            "my_crate::Tokenizer::next",
            "std::fs::read_to_string",
            "std::rt::lang_start_internal",
            "main",
            "",
            "Trie::insert",
            "<[u8; 4] as my_crate::Fill>::fill",
            "<(u32, alloc::string::String) as my_crate::Encode>::encode",
            "<alloc::vec::Vec<u8> as my_crate::BufExt>::put",
            "<T as my_crate::Describe>::describe",
            "<&str as my_crate::Intern>::intern",
        ] {
            assert!(!is_machinery(name), "{name} should be kept");
        }
    }
}
