//! The memory mappings of the executable and the shared libraries, with
//! their GNU build IDs, for the profile's `Mapping` messages.
//!
//! `dl_iterate_phdr` walks the loaded objects in memory: each executable
//! `PT_LOAD` segment becomes one mapping, and the build ID is read from the
//! object's `PT_NOTE` segments, which the loader has mapped. No file is
//! opened, so this works for deleted or replaced binaries too.

use std::ffi::CStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use crate::support::lock::{Lockable, Mutex, rank};

/// Held around `dl_iterate_phdr`, and taken by `fork`'s handlers. The walk
/// holds the dynamic loader's own lock, which glibc does not reset in a
/// forked child: a fork in the middle of our walk would leave the child's
/// next profile waiting for that lock for ever. With this, `fork` waits for
/// the walk to end. (Only heapprof's walks; the symbolizer's are under
/// its own lock, also taken by the handlers.)
static WALKING: Mutex<{ rank::MAPPINGS }, ()> = Mutex::new(());

/// The walk's lock, for the fork table (`process/fork.rs`).
pub(crate) fn each_lock(f: &mut dyn FnMut(&'static dyn Lockable)) {
    f(&WALKING);
}

#[derive(Debug, Clone)]
pub(crate) struct Mapping {
    pub start: u64,
    pub limit: u64,
    pub file_offset: u64,
    pub path: String,
    /// Lower-case hex; empty if the object has none.
    pub build_id: String,
    /// The object's load address (`dlpi_addr`), which its mappings share.
    pub base: u64,
    /// The object was loaded when heapprof started ([`note_first_objects`]),
    /// and is taken to stay loaded.
    pub loaded_at_start: bool,
    /// The mapping is the executable's: its file is opened as
    /// `/proc/self/exe` ([`Mapping::open`]).
    pub executable: bool,
}

impl Mapping {
    /// Opens the object's file: the executable through `/proc/self/exe`,
    /// which is the file the process runs even when that path now names
    /// another (a deploy replaced it) or none (it was deleted).
    /// Where `/proc` is not mounted (or refuses), the executable is opened
    /// by its path (from [`executable_path`]) if the loaded object has a
    /// build ID: the reader then checks that the file's is the same.
    pub(crate) fn open(&self) -> std::io::Result<std::fs::File> {
        if !self.executable {
            return std::fs::File::open(&self.path);
        }
        match std::fs::File::open("/proc/self/exe") {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) && !self.build_id.is_empty() =>
            {
                open_regular(std::path::Path::new(&self.path))
            }
            opened => opened,
        }
    }

    /// The executable, whose path no longer names the file the process
    /// runs (a deploy deleted or replaced it): files found beside that
    /// path (debug files) may be of another build.
    pub(crate) fn replaced(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let id = |m: std::fs::Metadata| (m.dev(), m.ino());
        self.executable
            && std::fs::metadata(&self.path).map(id).ok()
                != std::fs::metadata("/proc/self/exe").map(id).ok()
    }
}

/// What Linux appends to the path of a running file that was deleted or
/// replaced.
const DELETED: &[u8] = b" (deleted)";

/// The executable's path (`/proc/self/exe`'s target), without the
/// `" (deleted)"` Linux appends once a deploy has deleted or replaced the
/// file: profiles, dump names and the Pyroscope name stay the program's
/// (as Go's profiles do).
///
/// Where `/proc` is not mounted (or the link cannot be read), the path the
/// program was started by ([`started_by`]), which may name another file by
/// now: whoever opens it checks the build ID ([`Mapping::open`]).
pub(crate) fn executable_path() -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::env::current_exe() else {
        return started_by();
    };
    let bytes = path.as_os_str().as_bytes();
    Some(match bytes.strip_suffix(DELETED) {
        Some(kept) => std::ffi::OsStr::from_bytes(kept).into(),
        None => path,
    })
}

/// The path `exec` was given for this program ([`read_started_by`]),
/// read at heapprof's first allocation ([`note_started_by`]), before the
/// program can change its working directory.
static STARTED_BY: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();

/// Fills [`STARTED_BY`]. Inside the profiler: it allocates.
pub(crate) fn note_started_by() {
    let _ = STARTED_BY.set(read_started_by());
}

/// [`STARTED_BY`], or the path read now if it could not be then. Never
/// waits for [`note_started_by`]: a child forked in the middle of it
/// would wait for ever.
fn started_by() -> Option<std::path::PathBuf> {
    STARTED_BY.get().cloned().flatten().or_else(read_started_by)
}

/// The path `exec` was given for this program (`AT_EXECFN`, not `argv[0]`,
/// which the caller of `exec` chooses freely), made absolute against the
/// working directory now when it is relative.
fn read_started_by() -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: getauxval only reads the auxiliary vector the kernel left.
    let at = unsafe { libc::getauxval(libc::AT_EXECFN) };
    if at == 0 {
        return None;
    }
    // SAFETY: a non-zero AT_EXECFN points to a NUL-terminated string the
    // kernel placed on the initial stack, above `main`'s frames, which
    // nothing frees or writes for the life of the process.
    let name = unsafe { CStr::from_ptr(at as *const libc::c_char) };
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(name.to_bytes()));
    if path.as_os_str().is_empty() {
        return None;
    }
    if path.is_absolute() {
        return Some(path.into());
    }
    let path = path.strip_prefix(".").unwrap_or(path);
    Some(std::env::current_dir().ok()?.join(path))
}

/// Opens `path` for reading only if it is a regular file: opening a FIFO
/// or a device there could block, or take input meant for the program.
pub(crate) fn open_regular(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ))
    }
}

/// The objects loaded at heapprof's first allocation, as their load
/// address (`dlpi_addr`) and a hash of their name: the executable and the
/// libraries it needs, which are never unloaded, and whatever the program
/// opened before its first allocation, which it is taken not to close.
/// Another object loaded later at the same address has another name (or
/// the same file's code).
static FIRST_OBJECTS: OnceLock<Box<[(u64, u64)]>> = OnceLock::new();

/// Keeps the object heapprof's code is in loaded for the rest of the
/// process. In a shared library (a `cdylib` a C program or Python loads),
/// heapprof leaves hooks with the C library that point into its code (the
/// exit dump's `atexit`, the fork handlers, each thread's exit
/// destructor), so a `dlclose` that unloaded it would leave them pointing
/// at unmapped memory. Called at heapprof's first allocation, holding no
/// heapprof lock. Nothing for an executable, which no `dlclose` unloads:
/// the loader is not asked about it by name, because the name it gives an
/// executable (`dladdr`'s) is `argv[0]`, which any caller of `exec` sets,
/// and `dlopen` would open whatever file that names (a FIFO: a hang before
/// `main`).
pub(crate) fn keep_own_object_loaded() {
    let here = keep_own_object_loaded as fn() as usize as u64;
    let mut library: Option<std::ffi::CString> = None;
    each_object(&mut |info, executable| {
        let holds_here = program_headers(info).iter().any(|ph| {
            let start = wide(info.dlpi_addr) + wide(ph.p_vaddr);
            ph.p_type == libc::PT_LOAD && start <= here && here - start < wide(ph.p_memsz)
        });
        if holds_here && !executable && !info.dlpi_name.is_null() {
            // SAFETY: a non-null dlpi_name is a NUL-terminated string owned
            // by the loader, valid while `info` is.
            let name = unsafe { CStr::from_ptr(info.dlpi_name) };
            library = (!name.is_empty()).then(|| name.to_owned());
        }
    });
    let Some(library) = library else {
        return;
    };
    // SAFETY: `library` is NUL-terminated, the name the loader lists this
    // loaded library under. `RTLD_NOLOAD` opens only an object already
    // loaded, `RTLD_NODELETE` keeps it loaded for good, and the handle is
    // never closed. Called outside `each_object`, whose walk holds the
    // loader's lock that `dlopen` takes.
    unsafe {
        libc::dlopen(
            library.as_ptr(),
            libc::RTLD_LAZY | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
        );
    }
}

/// Notes which objects are loaded now, once, and whether the first is the
/// executable ([`namespace_of_its_own`]): called at heapprof's first
/// allocation, holding no heapprof lock.
pub(crate) fn note_first_objects() {
    if FIRST_OBJECTS.get().is_some() {
        return;
    }
    let mut objects = Vec::new();
    let mut executable_first = None;
    each_object(&mut |info, executable| {
        executable_first.get_or_insert(executable);
        objects.push(first_object(info));
    });
    // musl has no `dlmopen`, and a program started through its loader
    // (`ld-musl-x86_64.so.1 ./prog`) is listed first under its name with
    // the loader's program headers: never a namespace of its own there.
    let own = if executable_first == Some(false) && !cfg!(target_env = "musl") {
        OWN
    } else {
        SHARED
    };
    NAMESPACE.store(own, Relaxed);
    let _ = FIRST_OBJECTS.set(objects.into_boxed_slice());
}

/// Whether heapprof's object is in a loader namespace of its own, with a
/// C library of its own (a library loaded by `dlmopen` into a new
/// namespace): there, the C library's thread-exit callbacks (thread-local
/// and `pthread` key destructors) never run, and a `pthread` key it makes
/// names a slot the host's C library gives out too. `None` until
/// [`note_first_objects`] has looked.
pub(crate) fn namespace_of_its_own() -> Option<bool> {
    match NAMESPACE.load(Relaxed) {
        OWN => Some(true),
        SHARED => Some(false),
        _ => None,
    }
}

/// [`namespace_of_its_own`]: not known yet, a namespace of its own, or the
/// executable's.
static NAMESPACE: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const OWN: u8 = 1;
const SHARED: u8 = 2;

/// What [`FIRST_OBJECTS`] holds of a loaded object.
fn first_object(info: &libc::dl_phdr_info) -> (u64, u64) {
    let mut hash = std::hash::DefaultHasher::new();
    if !info.dlpi_name.is_null() {
        // SAFETY: a non-null dlpi_name is a NUL-terminated string owned by
        // the loader, valid while `info` is.
        std::hash::Hash::hash(unsafe { CStr::from_ptr(info.dlpi_name) }, &mut hash);
    }
    (wide(info.dlpi_addr), std::hash::Hasher::finish(&hash))
}

/// How many objects the loader has loaded and unloaded since the process
/// started (glibc's `dlpi_adds` and `dlpi_subs`): an address keeps its
/// meaning while `unloads` stays the same.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) struct LoaderCounts {
    pub loads: u64,
    pub unloads: u64,
}

/// The loader's counts now.
pub(crate) fn loader_counts() -> LoaderCounts {
    let mut counts = LoaderCounts::default();
    each_object(&mut |info, _| {
        counts = LoaderCounts {
            loads: info.dlpi_adds,
            unloads: info.dlpi_subs,
        }
    });
    counts
}

/// Calls `f` with each loaded object (the executable, then the shared
/// libraries, in the loader's order) and whether it is the executable,
/// holding [`WALKING`] and the loader's lock: `f` must not allocate
/// through a path that takes either (heapprof's own allocations are fine)
/// and must not keep pointers into an object past the call unless that
/// object can never be unloaded.
///
/// The executable is the first object listed (glibc's and musl's
/// loaders, dynamic or static, list it first) when it is the one glibc
/// names "" or the one whose program headers the kernel loaded
/// (`AT_PHDR`; musl names the executable by its path, static musl by
/// "/proc/self/exe"). The first object of a namespace of its own (heapprof
/// in a library loaded by `dlmopen`, where glibc lists only that
/// namespace) is neither, and no object there is the executable.
pub(crate) fn each_object(f: &mut dyn FnMut(&libc::dl_phdr_info, bool)) {
    let _walking = WALKING.lock();
    // SAFETY: getauxval has no preconditions; it returns 0 for an entry
    // the kernel did not pass.
    let loaded_by_kernel = unsafe { libc::getauxval(libc::AT_PHDR) } as usize;
    let mut first = true;
    let mut listed = |info: &libc::dl_phdr_info| {
        let executable = std::mem::replace(&mut first, false)
            && ((loaded_by_kernel != 0 && info.dlpi_phdr as usize == loaded_by_kernel)
                || unnamed(info));
        f(info, executable)
    };
    let mut f: &mut dyn FnMut(&libc::dl_phdr_info) = &mut listed;
    // SAFETY: `visit` matches the callback type dl_iterate_phdr expects,
    // and `f` outlives the call, which is synchronous.
    unsafe {
        libc::dl_iterate_phdr(
            Some(visit),
            (&mut f as *mut &mut dyn FnMut(&libc::dl_phdr_info)).cast(),
        );
    }
}

/// Whether the loader gives the object no name (glibc's executable).
fn unnamed(info: &libc::dl_phdr_info) -> bool {
    // SAFETY: a non-null dlpi_name is a NUL-terminated string owned by the
    // loader, valid while `info` is: its first byte is readable.
    info.dlpi_name.is_null() || unsafe { *info.dlpi_name } == 0
}

/// `dl_iterate_phdr`'s callback for [`each_object`].
///
/// # Safety
/// Called only by `dl_iterate_phdr`, from [`each_object`]: `info` points to
/// a valid `dl_phdr_info` for the duration of the call, and `data` is the
/// `&mut &mut dyn FnMut` that `each_object` passed, not otherwise borrowed.
unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: as the function's contract says.
    let (info, f) = unsafe {
        (
            &*info,
            &mut *(data as *mut &mut dyn FnMut(&libc::dl_phdr_info)),
        )
    };
    f(info);
    0
}

/// A program header of this target's ELF class.
#[cfg(target_pointer_width = "64")]
pub(crate) type ProgramHeader = libc::Elf64_Phdr;
/// A program header of this target's ELF class.
#[cfg(target_pointer_width = "32")]
pub(crate) type ProgramHeader = libc::Elf32_Phdr;

/// An ELF address, offset or size of this target's class, as 64 bits.
pub(crate) fn wide<T: Into<u64>>(x: T) -> u64 {
    x.into()
}

/// The program headers of a loaded object: none where the loader gives
/// no table (`from_raw_parts` needs a non-null pointer even for none).
pub(crate) fn program_headers(info: &libc::dl_phdr_info) -> &[ProgramHeader] {
    if info.dlpi_phdr.is_null() {
        return &[];
    }
    // SAFETY: a non-null dlpi_phdr points to dlpi_phnum program headers,
    // mapped for as long as the object is loaded (at least the `info`'s
    // borrow).
    unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
}

/// The executable's mappings first (pprof treats the first mapping as the
/// main binary), then the libraries', each group in address order.
pub(crate) fn current() -> Vec<Mapping> {
    let mut found: Vec<(bool, Mapping)> = Vec::new();
    each_object(&mut |info, executable| collect(info, executable, &mut found));
    let exe = executable_path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut mappings: Vec<(bool, Mapping)> = found
        .into_iter()
        .map(|(is_main, mut m)| {
            if is_main {
                m.path = exe.to_owned();
                m.executable = true;
            }
            (is_main, m)
        })
        .collect();
    mappings.sort_by_key(|(is_main, m)| (!is_main, m.start));
    let mut mappings: Vec<Mapping> = mappings.into_iter().map(|(_, m)| m).collect();
    with_absolute_paths(&mut mappings);
    mappings
}

/// Gives the mappings of objects the loader knows by a relative path
/// (`dlopen("./libfoo.so")`) the path the kernel has for them, from
/// `/proc/self/maps`: the relative one names another file, or none, once
/// the program changes its directory.
fn with_absolute_paths(mappings: &mut [Mapping]) {
    let relative = |m: &Mapping| !m.path.is_empty() && !m.path.starts_with('/');
    if !mappings.iter().any(relative) {
        return;
    }
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    // "start-end perms offset dev inode path"
    let regions: Vec<(u64, u64, &str)> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, ' ');
            let (start, end) = fields.next()?.split_once('-')?;
            let path = fields.nth(4)?.trim_start();
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            path.starts_with('/').then_some((start, end, path))
        })
        .collect();
    for m in mappings.iter_mut().filter(|m| relative(m)) {
        if let Some(&(_, _, path)) = regions
            .iter()
            .find(|&&(start, end, _)| start <= m.start && m.start < end)
        {
            m.path = path.to_owned();
        }
    }
}

/// The path the loader gives a loaded object; empty for the executable.
pub(crate) fn object_name(info: &libc::dl_phdr_info) -> String {
    if info.dlpi_name.is_null() {
        return String::new();
    }
    // SAFETY: a non-null dlpi_name is a NUL-terminated string owned by the
    // loader, valid while `info` is.
    unsafe { CStr::from_ptr(info.dlpi_name) }
        .to_string_lossy()
        .into_owned()
}

/// The executable mappings of the object heapprof's code is in (the
/// executable, or the shared library heapprof is linked into), in address
/// order; empty if none holds it.
pub(crate) fn own_object() -> Vec<Mapping> {
    let here = own_object as fn() -> Vec<Mapping> as usize as u64;
    let all = current();
    let Some(own) = all.iter().find(|m| m.start <= here && here < m.limit) else {
        return Vec::new();
    };
    let (path, build_id) = (own.path.clone(), own.build_id.clone());
    all.into_iter()
        .filter(|m| m.path == path && m.build_id == build_id)
        .collect()
}

/// Adds one object's executable segments to `found`.
fn collect(info: &libc::dl_phdr_info, is_main: bool, found: &mut Vec<(bool, Mapping)>) {
    let name = object_name(info);
    let phdrs = program_headers(info);
    let loaded_at_start = FIRST_OBJECTS
        .get()
        .is_some_and(|first| first.contains(&first_object(info)));
    let mut build_id = String::new();
    for ph in phdrs.iter().filter(|ph| ph.p_type == libc::PT_NOTE) {
        let start = info.dlpi_addr as usize + ph.p_vaddr as usize;
        // SAFETY: a PT_NOTE segment of a loaded object lies inside one of
        // its PT_LOAD segments, which the loader mapped readable.
        let notes = unsafe { std::slice::from_raw_parts(start as *const u8, ph.p_memsz as usize) };
        if let Some(id) = gnu_build_id(notes) {
            build_id = id;
            break;
        }
    }
    for ph in phdrs {
        if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
            let start = wide(info.dlpi_addr) + wide(ph.p_vaddr);
            found.push((
                is_main,
                Mapping {
                    start,
                    limit: start + wide(ph.p_memsz),
                    file_offset: wide(ph.p_offset),
                    path: name.clone(),
                    build_id: build_id.clone(),
                    base: wide(info.dlpi_addr),
                    loaded_at_start,
                    executable: false,
                },
            ));
        }
    }
}

/// Finds the `NT_GNU_BUILD_ID` note in an ELF note segment: a sequence of
/// (namesz, descsz, type) u32 headers, each followed by the name and the
/// descriptor padded to 4 bytes.
fn gnu_build_id(mut notes: &[u8]) -> Option<String> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let pad = |n: usize| n.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let (namesz, descsz, kind) = (
            word(notes, 0)? as usize,
            word(notes, 4)? as usize,
            word(notes, 8)?,
        );
        let name = notes.get(12..12 + namesz)?;
        let desc_at = 12 + pad(namesz);
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        notes = notes.get(desc_at + pad(descsz)..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_build_id_note_after_another_note() {
        let mut notes = Vec::new();
        // An ABI-tag note first: name "GNU\0", 16-byte descriptor, type 1.
        for w in [4u32, 16, 1] {
            notes.extend_from_slice(&w.to_ne_bytes());
        }
        notes.extend_from_slice(b"GNU\0");
        notes.extend_from_slice(&[0; 16]);
        for w in [4u32, 4, 3] {
            notes.extend_from_slice(&w.to_ne_bytes());
        }
        notes.extend_from_slice(b"GNU\0");
        notes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(gnu_build_id(&notes).as_deref(), Some("deadbeef"));
        assert_eq!(gnu_build_id(&notes[..20]), None);
    }

    #[test]
    fn finds_the_executable_first() {
        let maps = current();
        assert!(!maps.is_empty());
        let here = finds_the_executable_first as *const () as u64;
        assert!(maps[0].start <= here && here < maps[0].limit, "{maps:?}");
        assert!(maps[0].path.contains("heapprof"), "{}", maps[0].path);
    }
}
