//! Writing profiles from threads with small stacks. A gzipped profile
//! build takes about 70 KiB of stack, 66 KiB of it the compressor's state
//! that flate2 builds on the stack before boxing it; a user thread of
//! 16 to 64 KiB overflowed, which aborts the process. Each test runs in a
//! child process, so an overflow fails the test instead of the whole run.

use heapprof_testkit::child::{is_child, run_child};
use heapprof_testkit::profile::{INUSE_SPACE, cum, decode};
use heapprof_testkit::watchdog::watchdog;

use std::time::Duration;

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

#[inline(never)]
fn hold(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 4096]).collect()
}

/// Runs `f` on a thread spawned with a stack of `kib` KiB.
fn on_stack_of<R: Send + 'static>(kib: usize, f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .stack_size(kib * 1024)
        .spawn(f)
        .expect("spawn a small-stack thread")
        .join()
        .expect("the small-stack thread")
}

#[test]
fn write_profile_on_a_64_kib_thread() {
    if !is_child() {
        let (stdout, _) = run_child("write_profile_on_a_64_kib_thread", &[]);
        print!("{stdout}");
        return;
    }
    let _watchdog = watchdog("write_profile on a 64 KiB thread", Duration::from_secs(60));
    heapprof::set_sample_rate(64 * 1024);
    let held = hold(1024); // 4 MiB
    // The first profile also symbolizes every site, cold.
    let gz = on_stack_of(64, || {
        let mut gz = Vec::new();
        heapprof::write_profile(&mut gz).unwrap();
        gz
    });
    // Decoded here: flate2's decompressor state is large too.
    let p = decode(&gz);
    assert!(cum(&p, "small_stack::hold", INUSE_SPACE) > 0);
    println!("a {}-byte profile from a 64 KiB thread", gz.len());
    drop(held);
}

/// Every way to write a profile, from the smallest stack a thread can
/// have (16 KiB, glibc's PTHREAD_STACK_MIN).
#[test]
fn every_writer_on_a_16_kib_thread() {
    if !is_child() {
        let (stdout, _) = run_child("every_writer_on_a_16_kib_thread", &[]);
        print!("{stdout}");
        return;
    }
    let _watchdog = watchdog("writers on a 16 KiB thread", Duration::from_secs(60));
    heapprof::set_sample_rate(64 * 1024);
    let held = hold(1024); // 4 MiB: past the 1 MiB of a first peak
    // Only the writing happens on the small thread; decoding (flate2's
    // decompressor state is large too) happens here.
    let written = on_stack_of(16, || {
        let mut written: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut gz = Vec::new();
        heapprof::write_profile(&mut gz).unwrap();
        written.push(("write_profile", gz));
        let mut text = Vec::new();
        heapprof::write_text_profile(&mut text).unwrap();
        written.push(("write_text_profile", text));
        let mut peak = Vec::new();
        heapprof::write_peak_profile(&mut peak).unwrap();
        written.push(("write_peak_profile", peak));
        let mut snap = Vec::new();
        heapprof::snapshot().write_pprof(&mut snap).unwrap();
        written.push(("snapshot().write_pprof", snap));
        #[cfg(feature = "http")]
        {
            let r = heapprof::http::handle("/debug/pprof/heap", "");
            assert_eq!(r.status, 200);
            written.push(("http::handle", r.body));
        }
        written
    });
    for (what, bytes) in &written {
        if *what == "write_text_profile" {
            assert!(bytes.starts_with(b"heap profile: "), "{what}");
        } else {
            assert!(
                cum(&decode(bytes), "small_stack::hold", INUSE_SPACE) > 0,
                "{what}"
            );
        }
        println!("{what} from a 16 KiB thread: {} bytes", bytes.len());
    }
    drop(held);
}

#[inline(never)]
fn sampled_on_a_small_stack() -> Vec<u8> {
    std::hint::black_box(vec![7u8; 3000])
}

/// The first sampled stack of the process, taken on a 16 KiB thread with
/// DWARF unwinding: the unwinder's rule caches are not built yet, and
/// building them takes more stack than such a thread has, so this stack is
/// unwound without them; the sample still names its call chain.
#[test]
fn the_first_sample_on_a_16_kib_thread() {
    if !is_child() {
        let (stdout, _) = run_child(
            "the_first_sample_on_a_16_kib_thread",
            &[("HEAPPROF_UNWIND", "dwarf")],
        );
        print!("{stdout}");
        return;
    }
    let _watchdog = watchdog("a sample on a 16 KiB thread", Duration::from_secs(60));
    let kept = on_stack_of(16, || {
        heapprof::set_sample_rate(1);
        let kept = sampled_on_a_small_stack();
        heapprof::set_sample_rate(0);
        kept
    });
    let mut gz = Vec::new();
    heapprof::write_profile(&mut gz).unwrap();
    let p = decode(&gz);
    assert!(cum(&p, "small_stack::sampled_on_a_small_stack", INUSE_SPACE) >= 3000);
    println!("sampled and named on a 16 KiB thread");
    drop(kept);
}

/// Runs `f` on `n` threads of `kib` KiB that are all alive at once, so
/// that each has a stack of its own; returns what each returned.
fn on_threads_at_once<R: Send + 'static>(n: usize, kib: usize, f: fn() -> R) -> Vec<R> {
    let all_started = std::sync::Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let all_started = all_started.clone();
            std::thread::Builder::new()
                .stack_size(kib * 1024)
                .spawn(move || {
                    all_started.wait();
                    f()
                })
                .expect("spawn a thread")
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("a thread of the batch"))
        .collect()
}

/// Samples on many 16 KiB threads after threads with ordinary stacks have
/// sampled: the unwinder's rule caches are built by then, and a small
/// thread must not walk with them (their walk takes more stack than it
/// has) but unwind as the first sample above does.
#[test]
fn samples_on_16_kib_threads_once_the_caches_are_built() {
    if !is_child() {
        let (stdout, _) = run_child(
            "samples_on_16_kib_threads_once_the_caches_are_built",
            &[("HEAPPROF_UNWIND", "dwarf"), ("HEAPPROF_SAMPLE_RATE", "1")],
        );
        print!("{stdout}");
        return;
    }
    let _watchdog = watchdog("samples on 16 KiB threads", Duration::from_secs(60));
    let mut kept = on_threads_at_once(32, 1024, sampled_on_a_small_stack);
    kept.extend(on_threads_at_once(64, 16, sampled_on_a_small_stack));
    heapprof::set_sample_rate(0);
    let mut gz = Vec::new();
    heapprof::write_profile(&mut gz).unwrap();
    let p = decode(&gz);
    let named = cum(&p, "small_stack::sampled_on_a_small_stack", INUSE_SPACE);
    assert!(named >= 96 * 3000, "{named} bytes named of {}", 96 * 3000);
    println!("96 samples named, 64 of them on 16 KiB threads");
    drop(kept);
}

/// Calls itself `kib` times, each frame holding a KiB, and allocates at
/// the bottom: a thread's own code using most of a small stack.
#[inline(never)]
fn deep(kib: usize) -> Vec<u8> {
    let mut frame = [0u8; 1024];
    std::hint::black_box(&mut frame);
    if kib == 0 {
        std::hint::black_box(vec![7u8; 3000])
    } else {
        deep(kib - 1)
    }
}

#[inline(never)]
fn held_here() -> Vec<u8> {
    let held = std::hint::black_box(vec![1u8; 8000]);
    std::hint::black_box(());
    held
}

/// A sample on a 16 KiB thread whose own code has used nearly all of it:
/// the program runs without heapprof, so it must run with it. The sample
/// is not unwound (there is no stack left to unwind with) but its bytes
/// are counted, under a name that says why.
#[test]
fn a_sample_with_almost_no_stack_left() {
    if !is_child() {
        // The deepest call, unsampled: the program itself fits its stack.
        let (fits, _) = run_child(
            "a_sample_with_almost_no_stack_left",
            &[("HEAPPROF_SAMPLE_RATE", "0")],
        );
        assert!(fits.contains("the deepest call fits"), "{fits}");
        // Sampled from the start, so that an assertion on the live heap
        // can vouch for every block.
        let (stdout, _) = run_child(
            "a_sample_with_almost_no_stack_left",
            &[("HEAPPROF_SAMPLE_RATE", "1")],
        );
        print!("{stdout}");
        return;
    }
    let _watchdog = watchdog("a sample with no stack left", Duration::from_secs(60));
    if heapprof::sample_rate() == 0 {
        drop(on_stack_of(16, || deep(10)));
        println!("the deepest call fits");
        return;
    }
    let kept: Vec<Vec<u8>> = (0..=10)
        .map(|kib| on_stack_of(16, move || deep(kib)))
        .collect();
    let mut gz = Vec::new();
    heapprof::write_profile(&mut gz).unwrap();
    let p = decode(&gz);
    let named = cum(&p, "small_stack::deep", INUSE_SPACE);
    let not_unwound = cum(&p, "[heapprof: stack not unwound", INUSE_SPACE);
    println!("{named} bytes under deep, {not_unwound} not unwound");
    assert!(not_unwound >= 3000, "no sample without its stack");
    assert!(named >= 3000, "no sample with its stack");
    assert!(named + not_unwound >= 11 * 3000);
    // The bytes under no stack may be deep's: an assertion on deep counts
    // them.
    let snapshot = heapprof::snapshot();
    let bound = |max| {
        std::panic::catch_unwind(|| snapshot.assert_inuse_at_most("small_stack::deep", max)).is_ok()
    };
    assert!(!bound(named), "passed with only the unwound bytes");
    assert!(bound(named + not_unwound));
    // In a delta over the frees of those blocks the not-unwound entry is
    // negative: it must not make room for what grew elsewhere.
    drop(kept);
    let grown = held_here();
    let delta = heapprof::snapshot().delta(&snapshot);
    let passed = std::panic::catch_unwind(|| {
        delta.assert_inuse_at_most("small_stack::held_here", 5000);
    });
    assert!(passed.is_err(), "8000 bytes held passed a bound of 5000");
    drop(grown);
}

/// Allocates in a signal handler: the handler runs on the alternate stack
/// `on_alternate_stack` installs.
extern "C" fn allocate_in_handler(_: libc::c_int) {
    std::mem::forget(std::hint::black_box(vec![5u8; 4000]));
}

/// Installs a 16 KiB alternate signal stack mapped above (`above`) or
/// below the thread's own stack, and raises a signal whose handler
/// allocates, three times.
fn on_alternate_stack(above: bool) {
    const LEN: usize = 16 << 10;
    // SAFETY: the attribute is initialized by pthread_getattr_np and
    // destroyed after; the mapping is new (MAP_FIXED_NOREPLACE fails
    // rather than replace one), read-write, and stays mapped for the
    // process's life; the handler only allocates, synchronously, from
    // `raise` on this thread, which holds no allocator lock then.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_getattr_np(libc::pthread_self(), &mut attr), 0);
        let (mut lo, mut size) = (std::ptr::null_mut(), 0);
        assert_eq!(libc::pthread_attr_getstack(&attr, &mut lo, &mut size), 0);
        libc::pthread_attr_destroy(&mut attr);
        let (lo, hi) = (lo as usize, lo as usize + size);
        // The first free place 64 MiB, 128 MiB, … away (a library may
        // hold the nearer ones, and under AddressSanitizer, whose
        // allocator reserves the space above thread stacks, none is free
        // above), else where the kernel puts it, if on that side.
        let map_at = |at: usize, flags: libc::c_int| {
            libc::mmap(
                at as *mut libc::c_void,
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
                -1,
                0,
            )
        };
        let map = (26..40)
            .map(|shift| {
                let at = if above {
                    hi + (1 << shift)
                } else {
                    lo - (1 << shift)
                };
                map_at(at & !0xfff, libc::MAP_FIXED_NOREPLACE)
            })
            .chain(std::iter::once(map_at(0, 0)))
            .find(|&map| map != libc::MAP_FAILED && (map as usize >= hi) == above)
            .expect("map an alternate stack");
        let alternate = libc::stack_t {
            ss_sp: map,
            ss_flags: 0,
            ss_size: LEN,
        };
        assert_eq!(libc::sigaltstack(&alternate, std::ptr::null_mut()), 0);
        heapprof_testkit::signals::install(libc::SIGUSR2, allocate_in_handler, libc::SA_ONSTACK);
        for _ in 0..3 {
            assert_eq!(libc::raise(libc::SIGUSR2), 0);
        }
    }
}

/// Samples in a signal handler on a 16 KiB alternate stack, mapped above
/// and below the thread's stack: the stack pointer is outside the
/// thread's stack, so the stack left is the signal stack's, and the
/// samples are counted (unwound or not, by what is left there) without
/// walking off its end.
#[test]
fn samples_on_an_alternate_signal_stack() {
    if !is_child() {
        let (stdout, _) = run_child(
            "samples_on_an_alternate_signal_stack",
            &[("HEAPPROF_SAMPLE_RATE", "1"), ("HEAPPROF_UNWIND", "dwarf")],
        );
        print!("{stdout}");
        return;
    }
    let _watchdog = watchdog("samples on an alternate stack", Duration::from_secs(60));
    for above in [true, false] {
        std::thread::spawn(move || on_alternate_stack(above))
            .join()
            .expect("the thread with an alternate stack");
    }
    heapprof::set_sample_rate(0);
    let mut gz = Vec::new();
    heapprof::write_profile(&mut gz).unwrap();
    let p = decode(&gz);
    let named = cum(&p, "small_stack::allocate_in_handler", INUSE_SPACE);
    let not_unwound = cum(&p, "[heapprof: stack not unwound", INUSE_SPACE);
    assert!(
        named + not_unwound >= 6 * 4000,
        "{named} + {not_unwound} bytes of {}",
        6 * 4000
    );
    println!("on alternate stacks: {named} bytes unwound, {not_unwound} not");
}

#[inline(never)]
fn on_a_segment(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| std::hint::black_box(vec![3u8; 5000]))
        .collect()
}

/// Samples on a stack segment of the program's own (`stacker`, as deep
/// recursive parsers and compilers use; a coroutine's stack is the same
/// case): its bounds are nobody's to read, so the samples are unwound as
/// on the thread's stack, and named.
#[test]
fn samples_on_a_stack_segment_of_the_programs_own() {
    if !is_child() {
        let (stdout, _) = run_child(
            "samples_on_a_stack_segment_of_the_programs_own",
            &[("HEAPPROF_SAMPLE_RATE", "1")],
        );
        print!("{stdout}");
        return;
    }
    let _watchdog = watchdog("samples on a stack segment", Duration::from_secs(60));
    let kept = stacker::grow(1 << 20, || on_a_segment(50));
    heapprof::set_sample_rate(0);
    let snapshot = heapprof::snapshot();
    let named = snapshot.inuse_bytes_in("small_stack::on_a_segment");
    // The blocks, and in a debug build the vector that holds them.
    assert!(named >= 50 * 5000, "{snapshot}");
    println!("{named} bytes named on a stack segment");
    drop(kept);
}

const PAD: usize = 48;

/// Calls itself `frames` times, each frame a little over `PAD` bytes, and
/// allocates at the bottom; `addrs` gets each frame's address, so that
/// the caller knows the step.
#[inline(never)]
fn descend(frames: usize, addrs: &mut Vec<usize>) -> Vec<u8> {
    let mut pad = [0u8; PAD];
    std::hint::black_box(&mut pad);
    if addrs.len() < addrs.capacity() {
        addrs.push(pad.as_ptr() as usize);
    }
    let v = if frames == 0 {
        std::hint::black_box(vec![7u8; 3000])
    } else {
        descend(frames - 1, addrs)
    };
    std::hint::black_box(&pad);
    v
}

/// The stack an unsampled allocation needs, the thread's first (which
/// registers the thread), with a margin: about 4 KiB unoptimized and
/// 1.5 KiB optimized. The sweep below goes down to this much above the
/// thread's end.
const PROGRAM_NEEDS: usize = if cfg!(debug_assertions) {
    5 << 10
} else {
    2 << 10
};

/// Samples taken with every amount of stack left on a 16 KiB thread, in
/// steps finer than heapprof's frames, from the top of the thread down to
/// what the program itself needs to allocate there: whatever the code
/// layout, a large frame taken before a stack check on the sample path
/// runs some sample off the thread's stack. Each sample is its thread's
/// first, so with frame pointers too (the default) it is checked against
/// the DWARF unwinder, the walk with the largest frames.
#[test]
fn samples_at_every_depth_of_a_16_kib_thread() {
    if !is_child() {
        for unwind in ["dwarf", "auto"] {
            let (stdout, _) = run_child(
                "samples_at_every_depth_of_a_16_kib_thread",
                &[("HEAPPROF_UNWIND", unwind), ("HEAPPROF_SAMPLE_RATE", "0")],
            );
            print!("{unwind}: {stdout}");
        }
        return;
    }
    let _watchdog = watchdog("samples at every depth", Duration::from_secs(120));
    let mut addrs = Vec::with_capacity(2);
    drop(descend(1, &mut addrs));
    let step = addrs[0] - addrs[1];
    let left = on_stack_of(16, heapprof_testkit::process::stack_left);
    let deepest = left.saturating_sub(PROGRAM_NEEDS) / step;
    println!("{left} bytes left on the thread, frames of {step} bytes: {deepest} deep");
    // Finer than the smallest frame heapprof has on this path.
    assert!(step <= 256, "frames of {step} bytes step too far");
    // The deepest, unsampled: the program itself fits its stack.
    drop(on_stack_of(16, move || descend(deepest, &mut Vec::new())));
    heapprof::set_sample_rate(1);
    let kept: Vec<Vec<u8>> = (0..=deepest)
        .map(|n| on_stack_of(16, move || descend(n, &mut Vec::new())))
        .collect();
    heapprof::set_sample_rate(0);
    let mut gz = Vec::new();
    heapprof::write_profile(&mut gz).unwrap();
    let p = decode(&gz);
    let named = cum(&p, "small_stack::descend", INUSE_SPACE);
    let not_unwound = cum(&p, "[heapprof: stack not unwound", INUSE_SPACE);
    println!("{named} bytes under descend, {not_unwound} not unwound");
    // Both kinds: the descent crossed the stack heapprof needs to unwind.
    assert!(named >= 3000 && not_unwound >= 3000);
    drop(kept);
}

/// What a sample may need beyond an unsampled allocation on a signal
/// handler's alternate stack, at the most, as the test below measures it
/// (in steps of [`ALT_STEP`] bytes): recording one with too little stack
/// left is not tried (`stack::STACK_TO_RECORD`). Measured: 128 bytes
/// optimized, 0 unoptimized; recording regardless, 640 in both.
const SAMPLE_BEYOND_UNSAMPLED_AT_MOST: usize = 512;

/// The step of the alternate stack sizes tried.
const ALT_STEP: usize = 128;

static HANDLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static KEPT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Allocates a block of 16 to 3 000 bytes and frees it, and swaps a kept
/// box for a new one, freeing the last.
extern "C" fn allocate_and_free_in_handler(_: libc::c_int) {
    use std::sync::atomic::Ordering::Relaxed;
    let n = HANDLED.fetch_add(1, Relaxed);
    let block: Vec<u8> = Vec::with_capacity(16 + n % 3000);
    let kept = Box::into_raw(Box::new(n)) as usize;
    let last = KEPT.swap(kept, Relaxed);
    if last != 0 {
        // SAFETY: `last` came from `Box::into_raw` of a `Box<usize>`,
        // swapped out of `KEPT` by this handler alone.
        drop(unsafe { Box::from_raw(last as *mut usize) });
    }
    drop(std::hint::black_box(block));
}

/// In a child: raises a signal 2 000 times whose handler allocates and
/// frees on an alternate stack of `HEAPPROF_TEST_ALT_STACK` bytes with a
/// guard page below it, so that an overflow faults.
#[test]
fn child_on_a_small_alternate_stack() {
    let Some(size) = std::env::var("HEAPPROF_TEST_ALT_STACK")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
    else {
        return;
    };
    // SAFETY: the mapping is new and stays mapped for the process's life;
    // its lowest page is made inaccessible, the rest is the alternate
    // stack; the handler runs synchronously from `raise` on this thread,
    // which holds no allocator lock then.
    unsafe {
        let page = 4096;
        let map = libc::mmap(
            std::ptr::null_mut(),
            size + page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        assert_eq!(libc::mprotect(map, page, libc::PROT_NONE), 0);
        let alternate = libc::stack_t {
            ss_sp: map.cast::<u8>().add(page).cast(),
            ss_flags: 0,
            ss_size: size,
        };
        assert_eq!(libc::sigaltstack(&alternate, std::ptr::null_mut()), 0);
        heapprof_testkit::signals::install(
            libc::SIGUSR1,
            allocate_and_free_in_handler,
            libc::SA_ONSTACK,
        );
        let before = heapprof::snapshot();
        for _ in 0..2000 {
            assert_eq!(libc::raise(libc::SIGUSR1), 0);
        }
        if std::env::var_os("HEAPPROF_TEST_ALT_ASSERT").is_some() {
            // The handler's samples were dropped: the assertion must not
            // pass for want of them.
            let delta = heapprof::snapshot().delta(&before);
            let outcome = std::panic::catch_unwind(|| {
                delta.assert_inuse_at_most("small_stack::allocate_and_free_in_handler", 0)
            });
            let message = outcome
                .err()
                .and_then(|p| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            println!("ASSERTION: {}", message.lines().next().unwrap_or("passed"));
        }
    }
}

/// Runs `child_on_a_small_alternate_stack` with an alternate stack of
/// `size` bytes at `rate`, asserting on the handler's samples if
/// `assert`: its stdout, `None` if it failed.
fn on_alternate_stack_of(size: usize, rate: &str, assert: bool) -> Option<String> {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "--exact",
            "child_on_a_small_alternate_stack",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HEAPPROF_TEST_CHILD", "1")
        .env("HEAPPROF_TEST_ALT_STACK", size.to_string())
        .env("HEAPPROF_SAMPLE_RATE", rate);
    if assert {
        child.env("HEAPPROF_TEST_ALT_ASSERT", "1");
    }
    let out = child.output().expect("start the child");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The smallest alternate stack, in steps of [`ALT_STEP`] bytes, on which
/// the handler above runs 2 000 times at `rate`.
fn smallest_alternate_stack(rate: &str) -> usize {
    let runs = |size: usize| on_alternate_stack_of(size, rate, false).is_some();
    let (mut fails, mut runs_at) = (ALT_STEP, 64 * ALT_STEP);
    assert!(runs(runs_at), "the handler overflows {runs_at} bytes");
    while runs_at - fails > ALT_STEP {
        let mid = (fails + runs_at) / 2 / ALT_STEP * ALT_STEP;
        if runs(mid) {
            runs_at = mid;
        } else {
            fails = mid;
        }
    }
    runs_at
}

/// A signal handler that allocates on a small alternate stack (which
/// allocating there at all asks for) needs little more stack when its
/// allocations are samples: at rate 1, every one is, against
/// `HEAPPROF_SAMPLE_RATE=0`, where only the countdown's end is.
#[test]
fn samples_on_a_small_alternate_stack_need_little_more() {
    if is_child() {
        return;
    }
    let unsampled = smallest_alternate_stack("0");
    let sampled = smallest_alternate_stack("1");
    println!("alternate stack needed: {unsampled} bytes unsampled, {sampled} sampled");
    assert!(
        sampled <= unsampled + SAMPLE_BEYOND_UNSAMPLED_AT_MOST,
        "samples need {sampled} bytes of alternate stack, unsampled allocations {unsampled}"
    );
    // There the handler's samples are dropped, and an assertion on it
    // counts what they stood for. The stack a run needs varies by a step
    // or so (where the signal lands; the kernel's signal frame, whose
    // size follows the register state in use): the first of the next few
    // sizes that runs, all well short of what recording would need.
    let stdout = (0..4)
        .find_map(|step| on_alternate_stack_of(sampled + step * ALT_STEP, "1", true))
        .expect("the child at its smallest stack, or a few steps more");
    assert!(
        stdout.contains("ASSERTION: heapprof: `small_stack::allocate_and_free_in_handler` added")
            && stdout.contains("in samples heapprof dropped"),
        "{stdout}"
    );
}
