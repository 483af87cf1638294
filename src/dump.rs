//! Profiles written without a call at the right moment: at exit, when a
//! guard is dropped, periodically or on growth, and the peak.
//!
//! Every dump goes through the same code as `write_profile`. A dump that
//! fails is reported on stderr once per kind of dump (the program goes
//! on); later failures of the same kind are silent.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicU32, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::{config, guard, peak, profile, sampler};

/// Writes the current profile to `path`. The error names the path.
pub(crate) fn write_file(path: &Path, options: profile::Options) -> io::Result<()> {
    let _busy = guard::Busy::enter();
    write_atomically(path, |w| {
        let sites = crate::buckets::snapshot();
        let p = profile::build(&sites, sampler::rate(), options);
        profile::encode(&p, w).map(|()| true)
    })
    .map(drop)
}

/// Writes `path` whole or not at all: `write` fills a temporary file
/// beside it, which is renamed over `path` only if `write` succeeded and
/// returned true (false: nothing worth writing, no file). A reader (the
/// next dump's `-base`, a collector watching the directory, a test) never
/// sees half a profile. The error names `path`.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<bool>,
) -> io::Result<bool> {
    let with_path =
        |e: io::Error| io::Error::new(e.kind(), format!("heapprof: {}: {e}", path.display()));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = File::create(&tmp).and_then(|file| {
        let mut w = BufWriter::new(file);
        let wanted = write(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?;
        Ok(wanted)
    });
    match result {
        // A failed rename (say, `path` is a directory) must not leave the
        // temporary file behind either.
        Ok(true) => std::fs::rename(&tmp, path).map(|()| true).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            with_path(e)
        }),
        Ok(false) => {
            let _ = std::fs::remove_file(&tmp);
            Ok(false)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(with_path(e))
        }
    }
}

/// Writes the peak profile to `w`; `Ok(false)` if the heap never reached
/// the size at which peaks are recorded (1 MiB).
pub(crate) fn write_peak<W: io::Write>(w: W) -> io::Result<bool> {
    let _busy = guard::Busy::enter();
    let Some(peak) = peak::copy() else {
        return Ok(false);
    };
    let options = profile::Options {
        comments: vec![peak_comment(&peak)],
        ..Default::default()
    };
    profile::encode(&profile::build(&peak.sites, sampler::rate(), options), w).map(|()| true)
}

/// The comment that marks a peak profile: how large, and when.
pub(crate) fn peak_comment(peak: &peak::Peak) -> String {
    let secs = peak
        .when
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "heapprof peak profile: the live heap at its largest, about {} bytes (sampled estimate), at {secs} s since the Unix epoch",
        peak.live_bytes
    )
}

/// Reports `result`'s error on stderr, once per `flag`.
fn report(result: io::Result<()>, what: &str, flag: &AtomicBool) {
    if let Err(e) = result
        && !flag.swap(true, Relaxed)
    {
        crate::report::warn(format_args!(
            "heapprof: could not write the {what} profile ({e}); further failures of this kind are not reported"
        ));
    }
}

/// `heap.pb.gz` → `heap.peak.pb.gz`, `heap.0003.pb.gz`, …
fn sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stem, ext) = match name.strip_suffix(".pb.gz") {
        Some(stem) => (stem.to_owned(), ".pb.gz"),
        None => (name.clone(), ""),
    };
    path.with_file_name(format!("{stem}.{tag}{ext}"))
}

// ---- At exit -------------------------------------------------------------

static EXIT_PID: AtomicU32 = AtomicU32::new(0);

/// Registers the exit dump if `HEAPPROF_OUT` is set. Called once, on the
/// first allocation, with the reentrancy guard held.
pub(crate) fn register_exit_dump() {
    if config::get().out.is_none() {
        return;
    }
    EXIT_PID.store(std::process::id(), Relaxed);
    // SAFETY: `at_exit` is an `extern "C" fn()` that never unwinds.
    unsafe {
        libc::atexit(at_exit);
    }
}

/// Runs on `exit` (return from `main`, `std::process::exit`). Other
/// threads may still be running and may be mid-sample; the writer takes
/// heapprof's locks one at a time, each held only for short, non-blocking
/// work, so it waits at most for those to finish. A forked child that exits
/// (rather than execs, which drops the handler) does not write: the
/// profile is its parent's.
extern "C" fn at_exit() {
    if EXIT_PID.load(Relaxed) != std::process::id() {
        return;
    }
    let Some(out) = config::get().out.clone() else {
        return;
    };
    static FAILED: AtomicBool = AtomicBool::new(false);
    report(
        write_file(&out, profile::Options::default()),
        "exit",
        &FAILED,
    );
    // No peak yet (the heap never reached 1 MiB): no peak file.
    let peak = write_atomically(&sibling(&out, "peak"), |w| write_peak(w));
    report(peak.map(drop), "peak", &FAILED);
}

// ---- A guard -------------------------------------------------------------

/// Writes a profile to a file when dropped: the Rust spelling of Go's
/// `defer profile.Start(profile.MemProfile).Stop()`.
///
/// ```no_run
/// let _profile = heapprof::ProfileGuard::new("mem.pb.gz");
/// // … the whole program: mem.pb.gz is written when `_profile` goes out
/// // of scope at the end of `main` …
/// ```
///
/// A guard made at the top of `main` is dropped last, after the locals
/// declared below it have been freed, so the profile's default view
/// (`inuse_space`, what is live) is usually close to empty. What the run
/// did is in the alloc views (`go tool pprof -sample_index=alloc_space`);
/// what was live at the heap's largest is in the peak profile, which a
/// guard does not write: call [`write_peak_profile`](crate::write_peak_profile)
/// before it drops, or set `HEAPPROF_OUT`, which writes one at exit.
///
/// A failure on drop is reported on stderr; call [`ProfileGuard::finish`]
/// to get it as an error instead.
#[must_use = "the profile is written when the guard is dropped"]
pub struct ProfileGuard {
    path: Option<PathBuf>,
}

impl ProfileGuard {
    /// Starts a guard that writes to `path` when dropped.
    pub fn new(path: impl Into<PathBuf>) -> ProfileGuard {
        ProfileGuard {
            path: Some(path.into()),
        }
    }

    /// Writes the profile now and returns the outcome.
    pub fn finish(mut self) -> io::Result<()> {
        match self.path.take() {
            Some(path) => write_file(&path, profile::Options::default()),
            None => Ok(()),
        }
    }
}

impl Drop for ProfileGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            static FAILED: AtomicBool = AtomicBool::new(false);
            report(
                write_file(&path, profile::Options::default()),
                "guard",
                &FAILED,
            );
        }
    }
}

// ---- Periodically and on growth -------------------------------------------

/// The stack of a series' thread. Set here, not left to std's default,
/// which `RUST_MIN_STACK` may make too small for a profile build: the
/// first build on a thread loads and parses debug info to symbolize.
/// Building and writing two profiles from a cold symbolizer fits in 96 KiB
/// in a release build and in 384 KiB in a debug build (measured on
/// x86_64 with threads of decreasing stack sizes); this is std's usual
/// default, several times either.
const DUMP_THREAD_STACK: usize = 2 << 20;

/// A series of profiles written in the background, numbered so that any
/// two can be compared with `go tool pprof -base`: `heap.0001.pb.gz`,
/// `heap.0002.pb.gz`, … A profile is written whenever any of the chosen
/// triggers fires.
///
/// ```no_run
/// use std::time::Duration;
/// let series = heapprof::AutoDump::new("heap.pb.gz")
///     .every(Duration::from_secs(60))
///     .on_inuse_growth(256 << 20)
///     .start()
///     .expect("start the dump thread");
/// // ... later, if the series should end before the program does:
/// series.stop();
/// ```
#[derive(Clone, Debug)]
pub struct AutoDump {
    path: PathBuf,
    every: Option<Duration>,
    every_allocated: Option<u64>,
    inuse_growth: Option<u64>,
}

impl AutoDump {
    /// A series named after `path` (`x.pb.gz` gives `x.0001.pb.gz`, …).
    pub fn new(path: impl Into<PathBuf>) -> AutoDump {
        AutoDump {
            path: path.into(),
            every: None,
            every_allocated: None,
            inuse_growth: None,
        }
    }

    /// Write a profile every `interval`. A zero interval would write
    /// without pause, so [`start`](AutoDump::start) rejects it.
    pub fn every(mut self, interval: Duration) -> AutoDump {
        self.every = Some(interval);
        self
    }

    /// Write a profile each time the program has allocated another `bytes`
    /// (exact count, freed or not). Zero would be due on every check, so
    /// [`start`](AutoDump::start) rejects it.
    pub fn every_allocated_bytes(mut self, bytes: u64) -> AutoDump {
        self.every_allocated = Some(bytes);
        self
    }

    /// Write a profile each time the estimated live heap has grown by
    /// `bytes` since the last profile of the series. Zero would be due on
    /// every check, so [`start`](AutoDump::start) rejects it; a step larger
    /// than any heap can grow (above `i64::MAX`) never fires.
    pub fn on_inuse_growth(mut self, bytes: u64) -> AutoDump {
        self.inuse_growth = Some(bytes);
        self
    }

    /// Starts the background thread. The series runs until the program
    /// exits, or until [`AutoDumpHandle::stop`]; dropping the handle leaves
    /// it running.
    ///
    /// A trigger set to zero is an error of kind
    /// [`InvalidInput`](io::ErrorKind::InvalidInput): it would always be
    /// due, and the thread would write profiles as fast as it can. So is a
    /// series with no trigger at all, which would never write.
    pub fn start(self) -> io::Result<AutoDumpHandle> {
        self.check()?;
        let _busy = guard::Busy::enter();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_seen = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("heapprof-dump".into())
            .stack_size(DUMP_THREAD_STACK)
            .spawn(move || self.run(&stop_seen))?;
        Ok(AutoDumpHandle {
            stop,
            thread,
            pid: std::process::id(),
        })
    }

    /// Rejects the triggers that are always due, and a series with none.
    fn check(&self) -> io::Result<()> {
        if self.every.is_none() && self.every_allocated.is_none() && self.inuse_growth.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "heapprof: an AutoDump with no trigger would never write a profile; \
                 set every, every_allocated_bytes or on_inuse_growth",
            ));
        }
        let zero = if self.every == Some(Duration::ZERO) {
            "AutoDump::every(Duration::ZERO)"
        } else if self.every_allocated == Some(0) {
            "AutoDump::every_allocated_bytes(0)"
        } else if self.inuse_growth == Some(0) {
            "AutoDump::on_inuse_growth(0)"
        } else {
            return Ok(());
        };
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "heapprof: {zero} would write a profile on every check, without pause; use a step above zero"
            ),
        ))
    }

    fn run(self, stop: &AtomicBool) {
        let _busy = guard::Busy::enter();
        let poll = self.every.map_or(Duration::from_millis(50), |e| {
            e.min(Duration::from_millis(50))
        });
        let mut last_time = Instant::now();
        let mut last_allocated = crate::stats().allocated_bytes;
        let mut last_inuse = peak::live_estimate();
        // The live estimate is an i64; a step above its range is clamped
        // (it never fires) rather than cast, which would wrap it negative
        // and make it due on every check.
        let inuse_growth = self
            .inuse_growth
            .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        static FAILED: AtomicBool = AtomicBool::new(false);
        for seq in 1.. {
            loop {
                // Woken early by `AutoDumpHandle::stop`; a spurious wake-up
                // only polls sooner.
                std::thread::park_timeout(poll);
                if stop.load(Acquire) {
                    return;
                }
                let allocated = crate::stats().allocated_bytes;
                let inuse = peak::live_estimate();
                let due = self.every.is_some_and(|e| last_time.elapsed() >= e)
                    || self
                        .every_allocated
                        .is_some_and(|n| allocated.saturating_sub(last_allocated) >= n)
                    || inuse_growth.is_some_and(|n| inuse.saturating_sub(last_inuse) >= n);
                if due {
                    (last_time, last_allocated, last_inuse) = (Instant::now(), allocated, inuse);
                    break;
                }
            }
            let path = sibling(&self.path, &format!("{seq:04}"));
            report(
                write_file(&path, profile::Options::default()),
                "periodic",
                &FAILED,
            );
        }
    }
}

/// A running [`AutoDump`] series.
#[derive(Debug)]
pub struct AutoDumpHandle {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    /// The process that started the thread: a forked child has no copy of
    /// it, and joining it there would wait forever.
    pid: u32,
}

impl AutoDumpHandle {
    /// Ends the series: waits for a profile being written, if any, to be
    /// complete, and returns once the thread has exited. No file of the
    /// series is created after this returns. In a child forked after
    /// `start`, which has no copy of the thread, it returns at once.
    pub fn stop(self) {
        let _busy = guard::Busy::enter();
        self.stop.store(true, Release);
        if std::process::id() != self.pid {
            return;
        }
        self.thread.thread().unpark();
        // The thread catches nothing, but nothing it calls panics; a join
        // error would only repeat a panic message already printed.
        let _ = self.thread.join();
    }
}

/// Starts the series configured by the environment, once, if any trigger
/// is set. Called from the sampled path (never the first allocation), so
/// the runtime is up; spawning allocates, which the guard sends straight to
/// the inner allocator.
///
/// Spawning from inside the allocator must not panic (that would abort):
/// it is not tried on a thread whose thread-locals are being torn down,
/// where std's spawn may panic; that sample leaves the start to a later
/// one. A panic anyway is caught and reported.
pub(crate) fn start_from_env() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    let c = config::get();
    if (c.dump_every.is_none() && c.dump_every_allocated.is_none() && c.dump_inuse_growth.is_none())
        || !crate::counters::thread_alive()
        || STARTED.swap(true, Relaxed)
    {
        return;
    }
    let mut series = AutoDump::new(
        c.out
            .clone()
            .unwrap_or_else(|| PathBuf::from("heapprof.pb.gz")),
    );
    series.every = c.dump_every;
    series.every_allocated = c.dump_every_allocated;
    series.inuse_growth = c.dump_inuse_growth;
    let started = std::panic::catch_unwind(move || series.start().map(drop))
        .unwrap_or_else(|_| Err(io::Error::other("spawning the thread panicked")));
    if let Err(e) = started {
        crate::report::warn(format_args!(
            "heapprof: could not start the periodic dump thread: {e}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::sibling;
    use std::path::Path;

    #[test]
    fn series_names() {
        assert_eq!(
            sibling(Path::new("/tmp/heap.pb.gz"), "0003"),
            Path::new("/tmp/heap.0003.pb.gz")
        );
        assert_eq!(sibling(Path::new("heap"), "peak"), Path::new("heap.peak"));
    }
}
