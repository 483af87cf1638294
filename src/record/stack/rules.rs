//! DWARF unwinding with each return address's unwind rule cached, for the
//! objects that stay loaded for the life of the process.
//!
//! libgcc's `_Unwind_Backtrace` finds and interprets a function's call
//! frame information (`.eh_frame`) for every frame of every stack. A
//! program allocates from a few thousand call sites at most, so the same
//! return addresses come back sample after sample: `framehop` reduces one
//! address's CFI to a small rule (where the caller's stack pointer, frame
//! pointer and return address are) the first time and keeps it in a table
//! of fixed size keyed by address, after which a frame costs a table
//! lookup and two stack reads.
//!
//! framehop's table is direct-mapped (an address goes to entry `address %
//! ENTRIES`), so two return addresses on one stack that share an entry
//! evict each other at every sample, and each then costs a search of
//! `.eh_frame_hdr` and an FDE's evaluation, about fifteen times a cached
//! frame (callgrind). Which addresses share an entry depends on where the
//! linker and the loader put the code: of a stack's `n (n - 1) / 2` pairs
//! each shares one with odds `1 / ENTRIES`, so most stacks of 50 frames
//! (an async service's) have such a pair. So each pool slot holds [`WAYS`]
//! tables, and a [`Directory`] makes their entries `WAYS`-way sets: an
//! address goes to the table that holds it already, or else takes the
//! entry of the one used least recently. Addresses evict each other only
//! when more than `WAYS` of them that share an entry are used in turn (on
//! one stack, or on stacks sampled one after another).
//!
//! What [`capture`] vouches for, and when it returns `None` so that the
//! caller asks libgcc for the whole stack instead:
//!
//! * **No signal frame**: a stack through the signal trampoline (a
//!   sample in a signal handler) is libgcc's, which reads the registers
//!   the kernel saved ([`is_signal_return`]).
//! * **Objects that are never unloaded**: the executable, the C library,
//!   and the object heapprof is linked into. Their `.eh_frame` bytes are
//!   read where the loader mapped them, so they must stay mapped. A frame
//!   anywhere else (a `dlopen`ed library, a C library's own thread) hands
//!   the stack to libgcc, which follows the loader's current list.
//! * **Reads inside the thread's stack**: between the stack pointer of
//!   [`capture`] and the top of the thread's stack, 8-byte aligned; a
//!   rule that points elsewhere ends the walk with an error, not a fault.
//! * **Stack to spare**: the walk needs [`STACK_TO_WALK_CACHED`] of the
//!   thread's stack left, and building a slot's caches
//!   [`STACK_TO_BUILD_A_CACHE`]; a thread with less (a small thread of a
//!   pool, deep recursion) hands the stack to libgcc, whose walk needs
//!   less, rather than overflow.
//! * **A free slot**: the rules live in a pool of [`POOL_SIZE`] slots of
//!   caches, each taken by one unwinding thread at a time and never waited
//!   for; when every one is in use, libgcc unwinds.
//! * **No disagreement so far**: `stack.rs` compares one stack in
//!   `RECHECK_EVERY` with libgcc's and turns this unwinder off for good
//!   ([`disable`]) if they differ.
//!
//! Nothing here takes a lock or allocates while unwinding:
//! [`load`] builds the tables on heapprof's first allocation, and a
//! slot's caches are allocated when it is first taken.

use std::cell::UnsafeCell;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, MustNotAllocateDuringUnwind, Unwinder as _,
};
use gimli::{
    BaseAddresses, EhFrame, EhFrameHdr, EndianSlice, LittleEndian, ParsedEhFrameHdr, UnwindSection,
};

use super::Stack;

/// Slots of rule caches, shared by all threads (one at a time each). A
/// slot holds [`WAYS`] caches, each framehop's table of [`ENTRIES`] rules
/// (16 bytes each) and its CFI evaluation context (24 848 bytes), about
/// 32 KiB with framehop 0.16, and a [`Directory`] (28 KiB), allocated when
/// the slot is first taken: this many bound heapprof's memory for them at
/// about `POOL_SIZE * (WAYS * 32 + 28)` KiB (1.2 MiB) however many threads
/// there are, and leave a free slot to every sample but those taken while
/// more threads than this unwind at once.
pub(super) const POOL_SIZE: usize = 8;

/// Rule caches per slot: the ways of each entry's set ([`Directory`]).
pub(super) const WAYS: usize = 4;

/// Entries in one framehop rule cache (its `CACHE_ENTRY_COUNT`, not
/// exported): an address's rule lives in entry `address % ENTRIES`. A test
/// (`framehop_tables_have_this_many_entries`) checks the number.
const ENTRIES: usize = 509;

/// Which of a slot's [`WAYS`] caches holds the rule of each frame, so that
/// together they act as one cache of `WAYS`-way sets, and which frames
/// have passed [`capture`]'s checks (in a kept object, not the signal
/// trampoline: both facts about an address that never change, since kept
/// objects are never unloaded). Its tags are hints for framehop: framehop
/// checks the address in its entry itself, so a stale tag costs a cache
/// miss, never a wrong rule.
struct Directory {
    /// [`ENTRIES`] sets, entry `i` of every cache in `sets[i]`.
    sets: Box<[Set]>,
    /// Lookups so far (wrapping), the clock of [`Set::used`].
    clock: u32,
}

/// One entry's set: the frame each cache's entry was last given
/// ([`Directory::tag`]; 0 for none), and when that way was last used.
#[derive(Clone, Copy)]
struct Set {
    tags: [u64; WAYS],
    used: [u32; WAYS],
    /// Whether the tagged frame ends the walk ([`Way::Last`]).
    ends: [bool; WAYS],
}

/// Where [`Directory::way`] sends a frame.
enum Way {
    /// To the cache whose entry it was given last; the frame passed the
    /// checks.
    Known(usize),
    /// Nowhere: the frame passed the checks and no FDE describes it, so the
    /// walk ends with it.
    Last,
    /// To the cache whose entry it is to take, once it passes the checks
    /// ([`Directory::place`]).
    New(usize),
}

impl Directory {
    /// Marks a walk's first frame in a tag: its address is an instruction
    /// pointer, checked as such, and must not stand for a return address
    /// whose lookup address is the same. No user-space address has it.
    const FIRST_FRAME: u64 = 1 << 63;

    fn new() -> Directory {
        let empty = Set {
            tags: [0; WAYS],
            used: [0; WAYS],
            ends: [false; WAYS],
        };
        Directory {
            sets: vec![empty; ENTRIES].into_boxed_slice(),
            clock: 0,
        }
    }

    /// The tag of `frame`: its lookup address, with [`Self::FIRST_FRAME`]
    /// set for a walk's first frame; none for a lookup address no code can
    /// have (0, or one with that bit: a corrupt stack), which is then never
    /// known and always checked.
    fn tag(frame: FrameAddress) -> Option<u64> {
        let lookup = frame.address_for_lookup();
        if lookup == 0 || lookup & Self::FIRST_FRAME != 0 {
            return None;
        }
        let first = if frame.is_return_address() {
            0
        } else {
            Self::FIRST_FRAME
        };
        Some(lookup | first)
    }

    fn set(&mut self, frame: FrameAddress) -> &mut Set {
        &mut self.sets[(frame.address_for_lookup() % ENTRIES as u64) as usize]
    }

    /// The cache to look `frame` up in: the way whose entry holds it, or
    /// else the way of its set used least recently. Plain `while` loops:
    /// each frame of each sample asks, in a debug build unoptimized, where
    /// each step of an iterator is a call.
    fn way(&mut self, frame: FrameAddress) -> Way {
        self.clock = self.clock.wrapping_add(1);
        let clock = self.clock;
        let tag = Self::tag(frame);
        let set = self.set(frame);
        if let Some(tag) = tag {
            let mut way = 0;
            while way < WAYS {
                if set.tags[way] == tag {
                    set.used[way] = clock;
                    return if set.ends[way] {
                        Way::Last
                    } else {
                        Way::Known(way)
                    };
                }
                way += 1;
            }
        }
        // The oldest: the longest since use, on a clock that wraps (the
        // last of equals).
        let mut oldest = 0;
        let mut way = 1;
        while way < WAYS {
            if clock.wrapping_sub(set.used[way]) >= clock.wrapping_sub(set.used[oldest]) {
                oldest = way;
            }
            way += 1;
        }
        Way::New(oldest)
    }

    /// Gives `frame`, which passed the checks, the entry of cache `way`;
    /// `ends` when no FDE describes it.
    fn place(&mut self, frame: FrameAddress, way: usize, ends: bool) {
        let clock = self.clock;
        if let Some(tag) = Self::tag(frame) {
            let set = self.set(frame);
            set.tags[way] = tag;
            set.used[way] = clock;
            set.ends[way] = ends;
        }
    }
}

/// The stack a thread needs left to walk with the cached rules. framehop
/// is compiled with the program's profile, which heapprof cannot see, and
/// unoptimized its walk takes about 45 KiB of stack (optimized, 5 KiB). A
/// thread with less left (a 16 KiB thread, say) unwinds with libgcc,
/// which needs much less (`stack::STACK_TO_UNWIND` covers it), whether or
/// not the caches are built.
pub(super) const STACK_TO_WALK_CACHED: usize = 64 << 10;

/// The stack a thread needs left to build a slot's caches and then walk:
/// framehop builds each cache (its CFI context alone is 25 KiB) as a
/// value and, unoptimized, moves it through several frames before it is
/// boxed; a first sample that builds takes about 131 KiB there. A thread
/// with less unwinds with libgcc until another thread has built the
/// caches of a slot it takes.
pub(super) const STACK_TO_BUILD_A_CACHE: usize = 192 << 10;

/// What the walk the cached one is checked against (`_Unwind_Backtrace`,
/// the platform's) does at a frame no FDE describes, found once by
/// [`probe_without_fde`]: the cached walk ends as the platform's does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WithoutFde {
    /// It stops before the frame: LLVM's libunwind, which Rust links into
    /// static musl programs.
    Omitted,
    /// It reports the frame, then stops: libgcc's, which glibc programs
    /// and dynamic musl ones link.
    Last,
    /// It reports the frame and walks on past it, by a guess the cached
    /// rules do not make: such stacks are left to it.
    WalkedPast,
}

impl WithoutFde {
    /// What a walk that gave `frames` (leaf first) from below the function
    /// at `[start, end)`, which no FDE describes, did at its frame.
    fn seen(frames: &[usize], (start, end): (usize, usize)) -> WithoutFde {
        match frames.iter().position(|f| (start..end).contains(f)) {
            None => WithoutFde::Omitted,
            Some(at) if at + 1 == frames.len() => WithoutFde::Last,
            Some(_) => WithoutFde::WalkedPast,
        }
    }
}

/// The bounds, as [start, end), of a function with no unwind information
/// (no `.cfi_*` directives, so no FDE), as a C library's assembly can be:
/// called as `extern "C" fn(f: extern "C" fn(*mut u8), arg: *mut u8)`, it
/// calls `f(arg)` on a 16-byte aligned stack and returns. It keeps a
/// frame record, so that a frame-pointer guess at its frame walks on. Its
/// code sits in a section of its own, outside the FDE of the function
/// that names it, and its labels are local, so two copies of heapprof in
/// one program do not clash. Never inlined: each copy of the assembly
/// would emit a function of its own.
#[inline(never)]
pub(super) fn code_without_fde() -> (usize, usize) {
    let (start, end): (usize, usize);
    // SAFETY: only computes two addresses; the code it emits into another
    // section runs only when called through `call_without_fde`.
    unsafe {
        std::arch::asm!(
            ".pushsection .text.heapprof_without_fde,\"ax\",@progbits",
            ".p2align 4",
            "2:",
            // A landing pad for the indirect call, where indirect branch
            // tracking is enforced; a `nop` elsewhere.
            "endbr64",
            "push rbp",
            "mov rbp, rsp",
            "mov rax, rdi",
            "mov rdi, rsi",
            "call rax",
            "pop rbp",
            "ret",
            "3:",
            ".popsection",
            "lea {start}, [rip + 2b]",
            "lea {end}, [rip + 3b]",
            start = out(reg) start,
            end = out(reg) end,
            options(nomem, nostack, preserves_flags)
        )
    };
    (start, end)
}

/// Calls `f(arg)` from [`code_without_fde`]'s function: `f`'s caller is a
/// frame no FDE describes.
pub(super) fn call_without_fde(f: extern "C" fn(*mut u8), arg: *mut u8) {
    type Call = unsafe extern "C" fn(extern "C" fn(*mut u8), *mut u8);
    // SAFETY: the address is the start of the function `code_without_fde`
    // emits, which has exactly this signature.
    let call: Call = unsafe { std::mem::transmute::<usize, Call>(code_without_fde().0) };
    // SAFETY: the function calls `f(arg)` with the stack aligned as the C
    // ABI asks, restores `rbp`, and returns; it writes only `rax` and
    // `rdi`, which the ABI lets a callee change.
    unsafe { call(f, arg) }
}

/// What the platform's walk does at a frame no FDE describes: it is asked
/// for a stack from below [`code_without_fde`]'s function, and the frame
/// looked for among those it reports. Runs `_Unwind_Backtrace`, so no
/// heapprof lock may be held.
fn probe_without_fde() -> WithoutFde {
    extern "C" fn below(out: *mut u8) {
        let stack = super::capture_libgcc(super::Entered::NONE);
        let seen = WithoutFde::seen(stack.frames(), code_without_fde());
        // SAFETY: `out` is the `WithoutFde` `probe_without_fde` passed,
        // alive and not otherwise borrowed during this call.
        unsafe { out.cast::<WithoutFde>().write(seen) };
    }
    let mut seen = WithoutFde::WalkedPast;
    call_without_fde(below, (&raw mut seen).cast());
    seen
}

/// Bytes of a loaded object, read where the loader mapped them. Only the
/// objects [`load`] keeps (never unloaded) are borrowed this way.
#[derive(Clone, Copy, Default)]
struct Mapped(&'static [u8]);

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0
    }
}

type RuleCache = CacheX86_64<MustNotAllocateDuringUnwind>;

/// The kept objects' unwind tables, and where their code is.
struct Tables {
    unwinder: UnwinderX86_64<Mapped, MustNotAllocateDuringUnwind>,
    kept: Vec<Object>,
    /// Where the walk ends at a frame no FDE describes.
    without_fde: WithoutFde,
}

type Section = EndianSlice<'static, LittleEndian>;

/// The code of the x86_64 Linux signal trampoline, where a signal
/// handler returns (glibc's and musl's `__restore_rt`): `mov rax, 15`
/// (`rt_sigreturn`), `syscall`.
const SIGNAL_RETURN: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

impl Tables {
    /// The kept object whose code holds `address`, if one does.
    fn kept_at(&self, address: usize) -> Option<&Object> {
        self.kept
            .iter()
            .find(|k| k.code.0 <= address && address < k.code.1)
    }
}

/// Whether `address`, in a kept code segment that ends at `end`, is the
/// signal trampoline, a signal handler's return address: the frame above
/// it is the interrupted code, whose registers the kernel saved on the
/// stack. libgcc reads them there; the cached rules do not (framehop
/// takes the trampoline for an ordinary frame and skips the interrupted
/// one), so a stack through it is left to libgcc. One byte is read for
/// any other frame.
fn is_signal_return(address: usize, end: usize) -> bool {
    let fits = address
        .checked_add(SIGNAL_RETURN.len())
        .is_some_and(|last| last <= end);
    if !fits {
        return false;
    }
    // SAFETY: the bytes lie in a kept object's code segment (the caller's
    // `end`, checked above), mapped readable for the life of the process.
    let code = unsafe { std::slice::from_raw_parts(address as *const u8, SIGNAL_RETURN.len()) };
    code[0] == SIGNAL_RETURN[0] && code == SIGNAL_RETURN
}

// Every thread that samples reads the published tables.
const _: () = {
    const fn shared_by_threads<T: Sync>() {}
    shared_by_threads::<Tables>()
};

/// The tables, once [`load`] has published them; never freed.
static TABLES: AtomicPtr<Tables> = AtomicPtr::new(std::ptr::null_mut());
/// Set by [`disable`]: every stack goes to libgcc from then on.
static DISABLED: AtomicBool = AtomicBool::new(false);

/// Builds the tables from the objects loaded now, once (later calls do
/// nothing). Takes the loader's lock through `dl_iterate_phdr`, so it
/// runs where no heapprof lock is held: the first allocation that reaches
/// heapprof.
pub(super) fn load() {
    if !TABLES.load(Ordering::Acquire).is_null() {
        return;
    }
    let own = load as *const () as usize;
    let mut unwinder = UnwinderX86_64::new();
    let mut kept = Vec::new();
    crate::support::mappings::each_object(&mut |info, executable| {
        if let Some(object) = Object::read(info, executable)
            && object.kept(own)
            && object.parsed_hdr.table().is_some()
        {
            unwinder.add_module(object.module());
            kept.push(object);
        }
    });
    if kept.is_empty() {
        return;
    }
    let without_fde = probe_without_fde();
    let tables = Box::into_raw(Box::new(Tables {
        unwinder,
        kept,
        without_fde,
    }));
    if TABLES
        .compare_exchange(
            std::ptr::null_mut(),
            tables,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        // SAFETY: `tables` came from Box::into_raw above and was not
        // published: another thread's tables won.
        drop(unsafe { Box::from_raw(tables) });
    }
}

/// Whether [`capture`] unwinds: the tables are built and not disabled.
pub(super) fn in_use() -> bool {
    !DISABLED.load(Ordering::Relaxed) && !TABLES.load(Ordering::Acquire).is_null()
}

/// What the platform's walk does at a frame no FDE describes, once
/// [`load`] has probed it.
#[cfg(test)]
pub(super) fn without_fde() -> Option<WithoutFde> {
    // SAFETY: as in `capture`.
    unsafe { TABLES.load(Ordering::Acquire).as_ref() }.map(|t| t.without_fde)
}

/// Stops [`capture`] for the rest of the process.
pub(super) fn disable() {
    DISABLED.store(true, Ordering::Relaxed);
}

/// The stack of the caller of this function, return addresses leaf first
/// like libgcc's (this function's own frame first), or `None` when these
/// tables cannot vouch for every frame (see the module comment).
/// `(stack_bottom, stack_top)` are the calling thread's stack bounds.
#[inline(never)]
pub(super) fn capture(
    (stack_bottom, stack_top): (usize, usize),
    entered: super::Entered,
) -> Option<Stack> {
    if DISABLED.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: a non-null TABLES points to tables that `load` published
    // and nothing ever frees.
    let tables = unsafe { TABLES.load(Ordering::Acquire).as_ref() }?;
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: reads the instruction pointer and two registers; no memory
    // is touched. `ip` is an address inside this function, and `sp`/`bp`
    // are this function's own at that address: the unwind rule for `ip`
    // describes exactly this register state.
    unsafe {
        std::arch::asm!(
            "lea {ip}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) ip,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags)
        )
    };
    let lowest = sp as usize;
    // Not on the thread's stack (a signal handler's alternate stack, or
    // bounds unknown): the rules could read nothing there.
    if !(stack_bottom..stack_top).contains(&lowest) {
        return None;
    }
    let stack_left = lowest - stack_bottom;
    if stack_left < STACK_TO_WALK_CACHED {
        return None;
    }
    let mut slot = Taken::any(stack_top)?;
    let caches = slot.caches(stack_left)?;
    let mut read_stack = |address: u64| -> Result<u64, ()> {
        let address = address as usize;
        if address < lowest
            || !address.is_multiple_of(8)
            || address.checked_add(8).is_none_or(|end| end > stack_top)
        {
            return Err(());
        }
        // SAFETY: `address` is 8-byte aligned and lies between this
        // function's stack pointer and the top of this thread's stack:
        // the part of the stack in use, which is mapped and readable.
        Ok(unsafe { *(address as *const u64) })
    };
    let mut regs = UnwindRegsX86_64::new(ip, sp, bp);
    // framehop's `iter_frames`, one frame at a time so that each frame
    // takes the cache the directory gives it: this function's own address
    // first, then each caller's return address.
    let mut frame = FrameAddress::from_instruction_pointer(ip);
    let mut stack = Stack::empty(entered);
    // The stack pointer above the frame unwound last, whose function
    // returns to `frame`.
    let mut callee_cfa = 0;
    loop {
        let address = frame.address() as usize;
        // An address is checked when this slot's directory does not know
        // it (the first time, or after its way went to another address):
        // what the checks ask of it never changes.
        let way = match caches.directory.way(frame) {
            Way::Known(way) => Some(way),
            Way::Last => None,
            Way::New(way) => {
                let kept = tables.kept_at(address)?;
                if is_signal_return(address, kept.code.1) {
                    return None;
                }
                let ends = !kept.describes(frame.address_for_lookup())?;
                caches.directory.place(frame, way, ends);
                (!ends).then_some(way)
            }
        };
        // Without an FDE the walk ends, as the platform's walk does.
        let Some(way) = way else {
            match tables.without_fde {
                WithoutFde::Omitted => {}
                WithoutFde::Last => {
                    stack.push(address, callee_cfa);
                }
                WithoutFde::WalkedPast => return None,
            }
            return Some(stack);
        };
        if !stack.push(address, callee_cfa) {
            return Some(stack);
        }
        let cache = &mut caches.rules[way];
        match tables
            .unwinder
            .unwind_frame(frame, &mut regs, cache, &mut read_stack)
        {
            // A null return address is an error, as in `iter_frames`.
            Ok(Some(caller)) => {
                frame = FrameAddress::from_return_address(caller)?;
                callee_cfa = regs.sp() as usize;
            }
            Ok(None) => return Some(stack),
            Err(_) => return None,
        }
    }
}

/// Builds every slot's caches, as threads that sampled with stack to
/// spare would have.
#[cfg(test)]
pub(super) fn build_every_slot() {
    let taken: Vec<Taken> = (0..POOL_SIZE).filter_map(|_| Taken::any(0)).collect();
    for mut slot in taken {
        assert!(slot.caches(STACK_TO_BUILD_A_CACHE).is_some());
    }
}

/// Whether the tables vouch for frames at `address`.
#[cfg(test)]
pub(super) fn covers(address: usize) -> bool {
    // SAFETY: as in `capture`.
    unsafe { TABLES.load(Ordering::Acquire).as_ref() }.is_some_and(|t| t.kept_at(address).is_some())
}

/// One slot of the pool.
struct Slot {
    /// Set while a thread unwinds with this slot's caches.
    busy: AtomicBool,
    /// Allocated by the first thread that takes the slot.
    caches: UnsafeCell<Option<Caches>>,
}

/// A slot's [`WAYS`] rule caches and which holds what.
struct Caches {
    rules: [Box<RuleCache>; WAYS],
    directory: Directory,
}

// SAFETY: `caches` is touched only by the thread that set `busy` (an
// acquire exchange from false), until it clears it (a release store).
unsafe impl Sync for Slot {}

static POOL: [Slot; POOL_SIZE] = [const {
    Slot {
        busy: AtomicBool::new(false),
        caches: UnsafeCell::new(None),
    }
}; POOL_SIZE];

/// A slot of the pool this thread holds until the value drops.
struct Taken(&'static Slot);

impl Taken {
    /// A free slot, trying first the one `stack_top` (distinct for each
    /// thread) points to, so that a thread tends to meet its own rules.
    fn any(stack_top: usize) -> Option<Taken> {
        let first = (stack_top >> 12) % POOL_SIZE;
        (0..POOL_SIZE)
            .map(|i| &POOL[(first + i) % POOL_SIZE])
            .find(|slot| {
                slot.busy
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            })
            .map(Taken)
    }

    /// The slot's caches, built on first use (one after another, so the
    /// stack holds one at a time); `None` when they are not built yet and
    /// the thread has less than [`STACK_TO_BUILD_A_CACHE`] of stack left
    /// (`stack_left` bytes).
    fn caches(&mut self, stack_left: usize) -> Option<&mut Caches> {
        // SAFETY: this thread holds the slot (`busy`), so nothing else
        // touches the caches until `Taken` drops; the borrow is tied to
        // `self`.
        let caches = unsafe { &mut *self.0.caches.get() };
        if caches.is_none() {
            if stack_left < STACK_TO_BUILD_A_CACHE {
                return None;
            }
            *caches = Some(Caches {
                rules: std::array::from_fn(|_| Box::new(RuleCache::new_in())),
                directory: Directory::new(),
            });
        }
        caches.as_mut()
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

/// What [`load`] reads of one loaded object.
struct Object {
    /// The load bias: where the object's address 0 lies in memory.
    bias: usize,
    /// Its executable segment (the first, if several), in memory.
    code: (usize, usize),
    /// `.eh_frame_hdr` (the `PT_GNU_EH_FRAME` segment), in memory.
    eh_frame_hdr: &'static [u8],
    /// `.eh_frame`, from where the header points to the end of the
    /// segment that holds it (framehop finds each entry through the
    /// header's table, so the end need not be exact).
    eh_frame: &'static [u8],
    /// The header as gimli reads it, with `bases`.
    parsed_hdr: ParsedEhFrameHdr<Section>,
    /// In-memory addresses of both sections.
    bases: BaseAddresses,
    name: String,
    /// The program's executable ([`crate::support::mappings::each_object`]).
    executable: bool,
}

impl Object {
    /// The object's code and unwind sections, if it has both.
    fn read(info: &libc::dl_phdr_info, executable: bool) -> Option<Object> {
        let bias = info.dlpi_addr as usize;
        let phdrs = crate::support::mappings::program_headers(info);
        let segment = |ph: &libc::Elf64_Phdr| {
            let start = bias + ph.p_vaddr as usize;
            (start, start + ph.p_memsz as usize)
        };
        let code = phdrs
            .iter()
            .find(|ph| ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0)
            .map(segment)?;
        let (hdr_start, hdr_end) = phdrs
            .iter()
            .find(|ph| ph.p_type == libc::PT_GNU_EH_FRAME)
            .map(segment)?;
        // SAFETY: PT_GNU_EH_FRAME lies inside a PT_LOAD segment the loader
        // mapped readable; the object stays loaded while `info` is given
        // to us, and for good if `kept` keeps it.
        let eh_frame_hdr: &'static [u8] =
            unsafe { std::slice::from_raw_parts(hdr_start as *const u8, hdr_end - hdr_start) };
        let hdr_bases = BaseAddresses::default().set_eh_frame_hdr(hdr_start as u64);
        let parsed_hdr = EhFrameHdr::new(eh_frame_hdr, LittleEndian)
            .parse(&hdr_bases, 8)
            .ok()?;
        // Linkers write the pointer PC-relative; an indirect one is refused.
        let gimli::Pointer::Direct(eh_frame_start) = parsed_hdr.eh_frame_ptr() else {
            return None;
        };
        let eh_frame_start = usize::try_from(eh_frame_start).ok()?;
        let (_, eh_frame_end) = phdrs
            .iter()
            .filter(|ph| ph.p_type == libc::PT_LOAD)
            .map(segment)
            .find(|&(start, end)| start <= eh_frame_start && eh_frame_start < end)?;
        // SAFETY: as above: `eh_frame_start..eh_frame_end` is the rest of a
        // mapped PT_LOAD segment.
        let eh_frame: &'static [u8] = unsafe {
            std::slice::from_raw_parts(eh_frame_start as *const u8, eh_frame_end - eh_frame_start)
        };
        let name = crate::support::mappings::object_name(info);
        Some(Object {
            bias,
            code,
            eh_frame_hdr,
            eh_frame,
            parsed_hdr,
            bases: hdr_bases.set_eh_frame(eh_frame_start as u64),
            name,
            executable,
        })
    }

    /// Whether the object can never be unloaded: the executable, the C
    /// library (glibc's `libc.so.6`; musl's is its dynamic loader,
    /// `ld-musl-<arch>.so.1`), or the object holding `own` (heapprof's
    /// code, which runs only while its object is loaded).
    fn kept(&self, own: usize) -> bool {
        let file = self.name.rsplit('/').next().unwrap_or("");
        self.executable
            || file.starts_with("libc.so")
            || file.starts_with("ld-musl-")
            || (self.code.0 <= own && own < self.code.1)
    }

    /// Whether an FDE describes the code at `address` (a frame's lookup
    /// address); `None` when the tables cannot say (no search table in
    /// `.eh_frame_hdr`, which [`load`] does not keep, or an FDE or CIE
    /// gimli cannot read), for the caller to leave the stack to libgcc.
    /// The platform's walk ends at a frame whose address no FDE covers
    /// ([`WithoutFde`]), as at a thread's first function in a C library
    /// whose assembly carries none (static musl's).
    fn describes(&self, address: u64) -> Option<bool> {
        let table = self.parsed_hdr.table()?;
        let eh_frame = EhFrame::new(self.eh_frame, LittleEndian);
        match table.fde_for_address(&eh_frame, &self.bases, address, EhFrame::cie_from_offset) {
            Ok(_) => Some(true),
            Err(gimli::Error::NoUnwindInfoForAddress) => Some(false),
            Err(_) => None,
        }
    }

    fn module(&self) -> framehop::Module<Mapped> {
        let relative = |start: usize, len: usize| {
            let from = (start - self.bias) as u64;
            from..from + len as u64
        };
        let eh_frame_start = self.eh_frame.as_ptr() as usize;
        let hdr_start = self.eh_frame_hdr.as_ptr() as usize;
        framehop::Module::new(
            self.name.clone(),
            self.code.0 as u64..self.code.1 as u64,
            self.bias as u64,
            ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: Some(relative(self.code.0, self.code.1 - self.code.0)),
                eh_frame_svma: Some(relative(eh_frame_start, self.eh_frame.len())),
                eh_frame: Some(Mapped(self.eh_frame)),
                eh_frame_hdr_svma: Some(relative(hdr_start, self.eh_frame_hdr.len())),
                eh_frame_hdr: Some(Mapped(self.eh_frame_hdr)),
                ..Default::default()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{Directory, ENTRIES, Mapped, RuleCache, WAYS, Way, WithoutFde};
    use framehop::x86_64::{UnwindRegsX86_64, UnwinderX86_64};
    use framehop::{FrameAddress, MustNotAllocateDuringUnwind, Unwinder as _};

    /// A walk's answer is read from where the frame without FDE is in it.
    #[test]
    fn the_walk_at_a_frame_without_fde_is_read_from_its_frames() {
        let code = (0x1000, 0x1010);
        let seen = |frames: &[usize]| WithoutFde::seen(frames, code);
        assert_eq!(seen(&[0x5000, 0x5100]), WithoutFde::Omitted);
        assert_eq!(seen(&[]), WithoutFde::Omitted);
        assert_eq!(seen(&[0x5000, 0x1008]), WithoutFde::Last);
        assert_eq!(seen(&[0x5000, 0x1000, 0x6000]), WithoutFde::WalkedPast);
        assert_eq!(seen(&[0x5000, 0x1010]), WithoutFde::Omitted);
    }

    /// Looks each frame up in the cache `pick` chooses among `caches`;
    /// returns the lookups that missed. With no module loaded, framehop
    /// caches its fallback rule for every address.
    fn misses(
        caches: &mut [Box<RuleCache>; WAYS],
        mut pick: impl FnMut(FrameAddress) -> usize,
        frames: &[FrameAddress],
    ) -> u64 {
        let unwinder: UnwinderX86_64<Mapped, MustNotAllocateDuringUnwind> = UnwinderX86_64::new();
        let missed = |caches: &[Box<RuleCache>; WAYS]| -> u64 {
            caches.iter().map(|c| c.stats().misses()).sum()
        };
        let before = missed(caches);
        for &frame in frames {
            let mut regs = UnwindRegsX86_64::new(frame.address(), 0x1000, 0);
            let cache = &mut caches[pick(frame)];
            let _ = unwinder.unwind_frame(frame, &mut regs, cache, &mut |_| Err(()));
        }
        missed(caches) - before
    }

    /// A walk's first frame at `ip`.
    fn first(ip: u64) -> FrameAddress {
        FrameAddress::from_instruction_pointer(ip)
    }

    /// A frame returning to the address after `lookup` (framehop looks
    /// it up at `lookup`).
    fn returning_after(lookup: u64) -> FrameAddress {
        FrameAddress::from_return_address(lookup + 1).unwrap()
    }

    impl Directory {
        /// The way for `frame`, placed as `capture` places a frame that
        /// passes its checks.
        fn pick(&mut self, frame: FrameAddress) -> usize {
            match self.way(frame) {
                Way::Known(way) => way,
                Way::New(way) => {
                    self.place(frame, way, false);
                    way
                }
                Way::Last => unreachable!("no frame is placed as the last"),
            }
        }
    }

    fn new_caches() -> [Box<RuleCache>; WAYS] {
        std::array::from_fn(|_| Box::new(RuleCache::new_in()))
    }

    /// `ENTRIES` is framehop's: in one cache, addresses `ENTRIES` apart
    /// evict each other and addresses closer than that do not.
    #[test]
    fn framehop_tables_have_this_many_entries() {
        let a = 0x5555_0000_1234;
        let mut caches = new_caches();
        let apart = [a, a + ENTRIES as u64, a].map(first);
        assert_eq!(misses(&mut caches, |_| 0, &apart), 3);
        for k in 1..ENTRIES as u64 {
            let mut caches = new_caches();
            assert_eq!(
                misses(&mut caches, |_| 0, &[a, a + k, a].map(first)),
                2,
                "{k}"
            );
        }
    }

    /// Up to `WAYS` frames of one stack that share an entry each miss
    /// once, however the code is laid out, the walk's first frame among
    /// them; and a frame used at every sample keeps its rule while others
    /// that share its entry come and go.
    #[test]
    fn addresses_that_share_an_entry_keep_their_rules() {
        for base in [0x40_1000, 0x5555_0000_1234, 0x7f12_3456_789a] {
            let stack: Vec<FrameAddress> = std::iter::once(first(base))
                .chain((1..WAYS as u64).map(|k| returning_after(base + k * ENTRIES as u64)))
                .collect();
            let samples = stack.repeat(20);
            let mut directory = Directory::new();
            let mut caches = new_caches();
            let missed = misses(&mut caches, |f| directory.pick(f), &samples);
            assert_eq!(missed, WAYS as u64, "{base:#x}");

            // The hot frame, then one of many others in its entry, in turn.
            let others =
                (1..=50).map(|k| returning_after(base + (WAYS as u64 + k) * ENTRIES as u64));
            let turns: Vec<FrameAddress> = others
                .flat_map(|other| [returning_after(base), other])
                .collect();
            let mut directory = Directory::new();
            let mut caches = new_caches();
            let hot_missed = misses(&mut caches, |f| directory.pick(f), &turns) - 50; // each other frame misses once
            assert_eq!(hot_missed, 1, "{base:#x}");
        }
    }

    /// A frame is known only as what it was checked as: an instruction
    /// pointer does not vouch for the return address one past it, which
    /// framehop looks up at the same address.
    #[test]
    fn a_first_frame_does_not_vouch_for_a_return_address() {
        let mut directory = Directory::new();
        let ip = 0x5555_0000_1234;
        directory.pick(first(ip));
        assert!(matches!(directory.way(first(ip)), Way::Known(_)));
        let returning = returning_after(ip);
        assert_eq!(returning.address_for_lookup(), ip);
        assert!(matches!(directory.way(returning), Way::New(_)));
    }

    /// No tag stands for an address no code has: an empty way, or one
    /// with the first frame's mark, as a first frame or as a return
    /// address.
    #[test]
    fn impossible_addresses_are_never_known() {
        let mut directory = Directory::new();
        let marked = 0x5555_0000_1234 | Directory::FIRST_FRAME;
        directory.pick(first(marked));
        assert!(matches!(directory.way(first(marked)), Way::New(_)));
        assert!(matches!(
            directory.way(returning_after(marked)),
            Way::New(_)
        ));
        let zero = returning_after(0);
        directory.pick(zero);
        assert!(matches!(directory.way(zero), Way::New(_)));
    }
}
