//! Automatic dumps: at exit (`HEAPPROF_OUT`), on a guard, as a periodic
//! series, and the peak profile; a failing output path is reported once.
//! Exit behaviour is tested in child processes (this binary re-run with
//! `HEAPPROF_TEST_CHILD=<scenario>`).

use heapprof_testkit::check::{assert_estimate, assert_sane_values};
use heapprof_testkit::child::{printed_number, run_child, wait_with_timeout};
use heapprof_testkit::profile::{
    ALLOC_SPACE, INUSE_SPACE, cum, decode, live_sampled_blocks, string,
};
use heapprof_testkit::proto;
use heapprof_testkit::watchdog::watchdog;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

/// Runs `child_scenarios` in a child process, as `scenario`; returns its
/// stderr.
fn child(scenario: &str, env: &[(&str, &str)]) -> String {
    let env: Vec<(&str, &str)> = [("HEAPPROF_TEST_CHILD", scenario)]
        .into_iter()
        .chain(env.iter().copied())
        .collect();
    run_child("child_scenarios", &env).1
}

fn read_profile(path: &Path) -> proto::Profile {
    decode(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

#[inline(never)]
fn held_until_exit() -> Vec<Vec<u8>> {
    std::hint::black_box((0..64).map(|_| vec![7u8; 64 * 1024]).collect())
}

#[inline(never)]
fn churn_for(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::black_box(vec![0u8; 64 * 1024]);
    }
}

/// The children's side.
#[test]
fn child_scenarios() {
    match std::env::var("HEAPPROF_TEST_CHILD").as_deref() {
        Ok("exit") => {
            // Held in a leaked Vec so it is live when the process exits.
            std::mem::forget(held_until_exit());
        }
        Ok("churn") => churn_for(Duration::from_millis(
            std::env::var("HEAPPROF_TEST_CHURN_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(900),
        )),
        Ok("small_stacks") => {
            // The harness's thread has the small stack too; this one only
            // starts a series and waits for it.
            let dir = tempfile::tempdir().unwrap();
            let series = heapprof::AutoDump::new(dir.path().join("small.pb.gz"))
                .every(Duration::from_millis(50))
                .start()
                .unwrap();
            let n = wait_for_series(dir.path(), "small", 2, 20, || {
                std::thread::sleep(Duration::from_millis(20))
            });
            series.stop();
            // Reading profiles back (gzip, protobuf) is the test's own
            // work, done on a stack of its own: a debug build of it does
            // not fit in the harness's 64 KiB.
            let reader = std::thread::Builder::new().stack_size(8 << 20);
            let dir = dir.path().to_owned();
            reader
                .spawn(move || {
                    for seq in 1..=n {
                        let p = read_profile(&dir.join(format!("small.{seq:04}.pb.gz")));
                        assert_eq!(p.sample_type.len(), 4);
                    }
                })
                .unwrap()
                .join()
                .unwrap();
            println!("series files={n}");
        }
        Ok("series") => {
            let out = PathBuf::from(std::env::var("HEAPPROF_OUT").unwrap());
            wait_for_series(out.parent().unwrap(), "series", 3, 20, || {
                churn_for(Duration::from_millis(50))
            });
        }
        Ok("exit_busy") => {
            // Threads still allocating and sampling while `exit` writes.
            for t in 0..3 {
                std::thread::spawn(move || {
                    loop {
                        churn_for(Duration::from_millis(10 + t));
                    }
                });
            }
            std::mem::forget(held_until_exit());
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok("fork_exit") => {
            std::mem::forget(held_until_exit());
            let out = std::env::var("HEAPPROF_OUT").unwrap();
            let parent = enter_new_pid_namespace_if_asked();
            // SAFETY: the child only calls `exit` (running the atexit
            // handlers, heapprof's among them); this process is single
            // threaded apart from the harness's main thread, which is
            // waiting for this test.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                if parent.is_some_and(|p| p != std::process::id()) {
                    // SAFETY: ends the child at once: not the case to test.
                    unsafe { libc::_exit(NOT_THE_PARENTS_PID) };
                }
                std::process::exit(0);
            }
            let status = wait_with_timeout(pid, Duration::from_secs(10));
            assert_eq!(status, Ok(0), "the child's exit");
            let written = Path::new(&out).exists();
            println!("forked child exited: profile written by it: {written}");
        }
        Ok("fork_stop") => {
            let dir = tempfile::tempdir().unwrap();
            let series = heapprof::AutoDump::new(dir.path().join("f.pb.gz"))
                .every(Duration::from_millis(20))
                .start()
                .unwrap();
            let parent = enter_new_pid_namespace_if_asked();
            // SAFETY: the child only stops its copy of the handle and calls
            // `_exit`; the parent's other threads are the series' (asleep or
            // writing) and the harness's main thread, waiting for this test.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                if parent.is_some_and(|p| p != std::process::id()) {
                    // SAFETY: ends the child at once: not the case to test.
                    unsafe { libc::_exit(NOT_THE_PARENTS_PID) };
                }
                // The C library gives the child's first thread the series
                // thread's place (its stack, of the same size, was left
                // free by the fork), and with it the same `pthread_t`:
                // stopping must not detach or join that thread.
                let mine = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(50)));
                series.stop();
                // A join of a detached thread fails, and std panics on it.
                mine.join().unwrap();
                // SAFETY: ends the child without running the parent's atexit
                // handlers or destructors. The status says stop() returned
                // and the child's thread was joined: a panic out of either
                // would end this (the child's only) thread with status 0
                // instead.
                unsafe { libc::_exit(STOP_RETURNED) };
            }
            let status = wait_with_timeout(pid, Duration::from_secs(10));
            let returned = status == Ok(STOP_RETURNED);
            println!("stop() in the forked child returned: {returned} ({status:?})");
            series.stop();
        }
        _ => {}
    }
}

/// The forked child's exit status when `stop()` returned in it, and the
/// child's own thread could be joined after.
const STOP_RETURNED: i32 = 7;

/// The forked child's exit status when it was to have its parent's pid
/// and has not.
const NOT_THE_PARENTS_PID: i32 = 9;

/// With `HEAPPROF_TEST_PID_NAMESPACE=1`: puts the next child this process
/// forks into a new PID namespace, where its pid is 1, and returns this
/// process's pid (1 too when run by [`run_in_pid_namespace`]).
fn enter_new_pid_namespace_if_asked() -> Option<u32> {
    std::env::var_os("HEAPPROF_TEST_PID_NAMESPACE")?;
    // SAFETY: moves no thread; only this process's later children are
    // started in the new namespace.
    let made = unsafe { libc::unshare(libc::CLONE_NEWPID) };
    assert_eq!(
        made,
        0,
        "unshare(CLONE_NEWPID): {}",
        std::io::Error::last_os_error()
    );
    Some(std::process::id())
}

/// Runs `child_scenarios` as `scenario` as the first process of a new PID
/// namespace (pid 1), asking it to fork its child into another one (pid 1
/// again): its stdout, or `None` (after saying why) where this machine
/// cannot make PID namespaces.
fn run_in_pid_namespace(scenario: &str, env: &[(&str, &str)]) -> Option<String> {
    let can = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !can {
        assert!(
            std::env::var_os("HEAPPROF_REQUIRE_NAMESPACES").is_none_or(|v| v != "1"),
            "HEAPPROF_REQUIRE_NAMESPACES=1 but `unshare --pid --fork` failed"
        );
        println!("SKIPPED: `unshare --pid` cannot make a PID namespace here (it needs root)");
        return None;
    }
    let out = std::process::Command::new("unshare")
        .args(["--pid", "--fork"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_scenarios",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HEAPPROF_TEST_CHILD", scenario)
        .env("HEAPPROF_TEST_PID_NAMESPACE", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    Some(stdout)
}

/// A forked child has no copy of the series' thread: stopping its copy of
/// the handle must return, not panic on or wait for a thread that is not
/// there, nor touch a thread of the child's that took its place.
#[test]
fn stopping_a_series_in_a_forked_child_returns() {
    let (stdout, _) = run_child("child_scenarios", &[("HEAPPROF_TEST_CHILD", "fork_stop")]);
    assert!(
        stdout.contains("stop() in the forked child returned: true"),
        "{stdout}"
    );
}

/// `exit` while other threads are mid-allocation and mid-sample: the exit
/// dump must not deadlock on a lock one of them holds, and must decode.
#[test]
fn exit_dump_while_threads_still_sample() {
    let _watchdog = watchdog("exit dump with busy threads", Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("busy.pb.gz");
    for round in 0..5 {
        child(
            "exit_busy",
            &[
                ("HEAPPROF_OUT", out.to_str().unwrap()),
                ("HEAPPROF_SAMPLE_RATE", "4k"),
            ],
        );
        let p = read_profile(&out);
        assert_sane_values(&p);
        assert!(cum(&p, "held_until_exit", INUSE_SPACE) > 0, "round {round}");
        assert!(cum(&p, "churn_for", ALLOC_SPACE) > 0, "round {round}");
    }
}

/// The same where the child has its parent's pid: the first process of a
/// new PID namespace forking into another.
#[test]
fn stopping_a_series_in_a_child_with_the_parents_pid_returns() {
    let Some(stdout) = run_in_pid_namespace("fork_stop", &[]) else {
        return;
    };
    assert!(
        stdout.contains("stop() in the forked child returned: true"),
        "{stdout}"
    );
}

/// A child forked without exec that exits runs the atexit handlers it
/// inherited; the profile is its parent's, so it must not write one.
#[test]
fn a_forked_child_that_exits_writes_no_profile() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("forked.pb.gz");
    let (stdout, _) = run_child(
        "child_scenarios",
        &[
            ("HEAPPROF_TEST_CHILD", "fork_exit"),
            ("HEAPPROF_OUT", out.to_str().unwrap()),
        ],
    );
    assert!(
        stdout.contains("profile written by it: false"),
        "the forked child wrote the exit profile:\n{stdout}"
    );
    assert!(out.exists(), "the parent's exit dump is written");
}

/// The same where the child has its parent's pid: the first process of a
/// new PID namespace forking into another.
#[test]
fn a_child_with_the_parents_pid_writes_no_profile() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("forked.pb.gz");
    let Some(stdout) =
        run_in_pid_namespace("fork_exit", &[("HEAPPROF_OUT", out.to_str().unwrap())])
    else {
        return;
    };
    assert!(
        stdout.contains("profile written by it: false"),
        "the forked child wrote the exit profile:\n{stdout}"
    );
    assert!(out.exists(), "the parent's exit dump is written");
}

#[test]
fn exit_dump_appears_and_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exit.pb.gz");
    child(
        "exit",
        &[
            ("HEAPPROF_OUT", out.to_str().unwrap()),
            ("HEAPPROF_SAMPLE_RATE", "64k"),
        ],
    );
    let p = read_profile(&out);
    // Written as the program ends: it opens on what was allocated, and
    // says why.
    assert_eq!(string(&p, p.default_sample_type), "alloc_space");
    let comments: Vec<&str> = p.comment.iter().map(|&i| string(&p, i)).collect();
    assert!(
        comments.iter().any(|c| c.contains("opens on alloc_space")),
        "{comments:?}"
    );
    // 4 MiB in 64 KiB blocks at a 64 KiB rate, each sampled with
    // p = 1 - 1/e: about 40 samples; 5σ of the rate's bound = 62 %.
    assert_estimate(
        "held_until_exit at exit",
        cum(&p, "held_until_exit", INUSE_SPACE),
        64 * 65536 + 64 * 24,
        65536,
        5.0,
    );
}

/// The numbers of the `{name}.N.pb.gz` files in `dir`, sorted.
fn series_numbers(dir: &Path, name: &str) -> Vec<u32> {
    let mut numbers: Vec<u32> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let file = e.unwrap().file_name().into_string().unwrap();
            file.strip_prefix(name)?
                .strip_prefix('.')?
                .strip_suffix(".pb.gz")?
                .parse()
                .ok()
        })
        .collect();
    numbers.sort();
    numbers
}

/// Waits up to `secs` seconds for `n` files of the series `name` in `dir`,
/// running `meanwhile` between looks (a write takes a few hundred ms on a
/// loaded machine: new addresses reload debug info). Returns how many
/// there are.
fn wait_for_series(
    dir: &Path,
    name: &str,
    n: usize,
    secs: u64,
    mut meanwhile: impl FnMut(),
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while series_numbers(dir, name).len() < n && Instant::now() < deadline {
        meanwhile();
    }
    series_numbers(dir, name).len()
}

#[test]
fn periodic_series_has_increasing_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("series.pb.gz");
    child(
        "series",
        &[
            ("HEAPPROF_OUT", base.to_str().unwrap()),
            ("HEAPPROF_DUMP_EVERY", "1s"),
        ],
    );
    let numbers = series_numbers(dir.path(), "series");
    assert!(
        numbers.len() >= 3,
        "expected three files of a series at 1 s within 20 s: {numbers:?}"
    );
    assert_eq!(
        numbers,
        (1..=numbers.len() as u32).collect::<Vec<_>>(),
        "numbered 1, 2, 3, …"
    );
    for n in &numbers {
        let p = read_profile(&dir.path().join(format!("series.{n:04}.pb.gz")));
        assert_eq!(p.sample_type.len(), 4);
    }
    assert!(
        dir.path().join("series.pb.gz").exists(),
        "the exit dump is written too"
    );
}

#[test]
fn failing_output_path_is_reported_once() {
    let stderr = child(
        "churn",
        &[
            ("HEAPPROF_OUT", "/nonexistent-heapprof-dir/x.pb.gz"),
            ("HEAPPROF_DUMP_EVERY", "1s"),
            // Long enough for two periods: two failures, one report.
            ("HEAPPROF_TEST_CHURN_MS", "2500"),
        ],
    );
    let periodic = stderr.matches("could not write the series profile").count();
    let exit = stderr.matches("could not write the exit profile").count();
    assert_eq!((periodic, exit), (1, 1), "one report per kind:\n{stderr}");
    assert!(
        stderr.contains("/nonexistent-heapprof-dir/x."),
        "the path is named:\n{stderr}"
    );
}

/// Held by the tests that move the live heap by tens of MiB. The live
/// estimate is the process's, shared by every test here: a growth series
/// whose baseline is taken during another test's peak sees no growth
/// after it.
static BIG_HEAP_CHANGES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn big_heap_changes() -> std::sync::MutexGuard<'static, ()> {
    BIG_HEAP_CHANGES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The MiB `transient_peak` holds: more than 1.1 times the most any other
/// test here holds (the growth series' four steps), or the peak copy is not
/// taken again (the next is taken 10 % above the last).
const TRANSIENT_MIB: usize = 256;
const _: () = assert!(TRANSIENT_MIB * 10 > GROWTH_STEPS * GROWTH_STEP_MIB * 11);

#[inline(never)]
fn transient_peak() {
    let blocks: Vec<Vec<u8>> = (0..TRANSIENT_MIB).map(|_| vec![1u8; 1 << 20]).collect();
    std::hint::black_box(&blocks);
}

#[test]
fn guard_and_peak_profile() {
    let _alone = big_heap_changes();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guard.pb.gz");
    let peak_over = {
        let _g = heapprof::ProfileGuard::new(&path);
        transient_peak(); // freed before the guard writes
        std::time::SystemTime::now()
    };
    let now = read_profile(&path);
    assert_eq!(
        cum(&now, "transient_peak", INUSE_SPACE),
        0,
        "the transient is gone"
    );
    assert_eq!(string(&now, now.default_sample_type), "alloc_space");
    assert!(cum(&now, "transient_peak", ALLOC_SPACE) > 0);

    let mut gz = Vec::new();
    heapprof::write_peak_profile(&mut gz).unwrap();
    let peak = decode(&gz);
    let held = cum(&peak, "transient_peak", INUSE_SPACE) as f64;
    // 1 MiB blocks at a 512 KiB rate are sampled with p = 0.86 and weight
    // 1.16: the estimate of 256 of them has a relative error of ~2.5 %. The
    // copy is taken at the last 10 % step below the top, so it shows at
    // least top / 1.1 less a tenth of what else is live. 0.76 fails by
    // chance under 1e-7 of runs with 40 MiB else live, and still refuses
    // a copy three steps early (1 / 1.1^3 = 0.75). Above, 1.2: even every
    // block sampled is 1.16 times the truth.
    let mib = 1024.0 * 1024.0;
    assert!(
        (0.76 * TRANSIENT_MIB as f64 * mib..1.2 * TRANSIENT_MIB as f64 * mib).contains(&held),
        "peak shows {} MiB",
        held / mib
    );
    // Its time is the peak's, not when it was written.
    let over_nanos = peak_over
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        0 < peak.time_nanos && peak.time_nanos <= over_nanos,
        "the peak profile's time {} is after the peak was over ({over_nanos})",
        peak.time_nanos
    );
    let comments: Vec<&str> = peak.comment.iter().map(|&i| string(&peak, i)).collect();
    let marked = comments
        .iter()
        .find(|c| c.contains("peak profile"))
        .unwrap_or_else(|| panic!("{comments:?}"));
    // Its time in RFC 3339 (UTC, seconds): `… at 2026-12-01T16:59:06Z; …`.
    let at = marked
        .rsplit(" at ")
        .next()
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let digits_at = |i: usize| at.as_bytes().get(i).is_some_and(u8::is_ascii_digit);
    assert!(
        at.len() == 20
            && at.ends_with('Z')
            && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
                .iter()
                .all(|&i| digits_at(i))
            && &at[4..5] == "-"
            && &at[10..11] == "T",
        "{marked}"
    );
    // The live sampled blocks it reports are the peak's: most of the
    // transient's, which are gone now. Of its 256 blocks about 221 are
    // sampled, and the copy, a 10 % step below the top, holds at least
    // 1/1.1 of them (about 201, sd 5) less the baseline's share: 100 is
    // about 20σ away.
    let live_at_peak = live_sampled_blocks(&peak);
    let live_now = live_sampled_blocks(&read_profile(&path));
    assert!(
        live_at_peak >= live_now + 100,
        "at the peak {live_at_peak}, now {live_now}"
    );

    let err = heapprof::ProfileGuard::new("/nonexistent-heapprof-dir/g.pb.gz")
        .finish()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent-heapprof-dir/g.pb.gz"),
        "{err}"
    );
}

#[test]
fn auto_dump_api_fires_on_allocated_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let series = heapprof::AutoDump::new(dir.path().join("api.pb.gz"))
        .every_allocated_bytes(32 << 20)
        .start()
        .unwrap();
    // 160 MiB allocated (and freed) in all: several 32 MiB steps.
    for _ in 0..4 {
        churn_for(Duration::from_millis(50));
        for _ in 0..40 {
            std::hint::black_box(vec![0u8; 1 << 20]);
        }
        std::thread::sleep(Duration::from_millis(120));
    }
    // Stopped before its directory goes, or it reports failed writes.
    series.stop();
    let first = dir.path().join("api.0001.pb.gz");
    assert!(first.exists(), "no dump after 160 MiB allocated");
    assert_eq!(read_profile(&first).sample_type.len(), 4);
}

/// Each step of the growth series' test, past its 32 MiB threshold.
const GROWTH_STEP_MIB: usize = 48;
/// The steps that test holds at once.
const GROWTH_STEPS: usize = 4;

#[inline(never)]
fn grow_by(mib: usize) -> Vec<Vec<u8>> {
    (0..mib).map(|_| vec![3u8; 1 << 20]).collect()
}

/// `on_inuse_growth`: a profile each time the live heap has grown by the
/// step since the last one; `every`: on a timer.
#[test]
fn auto_dump_api_fires_on_growth_and_on_a_timer() {
    let _alone = big_heap_changes();
    let dir = tempfile::tempdir().unwrap();
    let growth_series = heapprof::AutoDump::new(dir.path().join("growth.pb.gz"))
        .on_inuse_growth(32 << 20)
        .start()
        .unwrap();
    let timer_series = heapprof::AutoDump::new(dir.path().join("timer.pb.gz"))
        .every(Duration::from_millis(100))
        .start()
        .unwrap();
    let pause = || std::thread::sleep(Duration::from_millis(20));
    // Four steps of 48 MiB held, each past the 32 MiB growth threshold,
    // each given time to be dumped before the next. Each 1 MiB block is
    // seen with p = 1 - e^-2 and stands for 1/p MiB, so a step's estimate
    // falls below the threshold when 27 or fewer of its 48 blocks are
    // seen: 3e-7 of steps. One step may merge with the next; two misses
    // would be needed to leave fewer than three dumps.
    let mut held = Vec::new();
    for step in 1..=GROWTH_STEPS {
        held.push(grow_by(GROWTH_STEP_MIB));
        wait_for_series(dir.path(), "growth", step, 5, pause);
    }
    let growth = series_numbers(dir.path(), "growth").len();
    let timer = wait_for_series(dir.path(), "timer", 4, 20, pause);
    growth_series.stop();
    timer_series.stop();
    println!(
        "{} MiB held in {GROWTH_STEP_MIB} MiB steps: {growth} growth dumps, {timer} timer dumps",
        GROWTH_STEPS * GROWTH_STEP_MIB
    );
    assert!(growth >= 3, "one dump per 32 MiB step: {growth}");
    assert!(timer >= 4, "a dump every 100 ms: {timer} within 20 s");
    let p = read_profile(&dir.path().join("growth.0003.pb.gz"));
    assert!(
        cum(&p, "grow_by", INUSE_SPACE) > 64 << 20,
        "the third dump sees the growth"
    );
    drop(held);
}

/// `AutoDumpHandle::stop`: once it returns, the series writes nothing
/// more, and what it wrote is whole.
#[test]
fn a_stopped_series_writes_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let series = heapprof::AutoDump::new(dir.path().join("stop.pb.gz"))
        .every(Duration::from_millis(20))
        .start()
        .unwrap();
    let files = || {
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while files().len() < 2 {
        assert!(Instant::now() < deadline, "no second dump: {:?}", files());
        std::thread::sleep(Duration::from_millis(10));
    }
    series.stop();
    let at_stop = files();
    // Ten periods: a series that kept running would write about ten more.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(files(), at_stop, "files written after stop() returned");
    for name in &at_stop {
        assert!(
            name.ends_with(".pb.gz"),
            "a temporary file left behind: {name}"
        );
        assert_eq!(read_profile(&dir.path().join(name)).sample_type.len(), 4);
    }
}

/// A series started again on the same path, in this process or a later
/// run, numbers its files after those already there: it replaces none,
/// and its numbers follow theirs even where older files were removed.
#[test]
fn a_series_started_again_writes_over_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("again.pb.gz");
    let run_until = |files: usize| {
        let series = heapprof::AutoDump::new(&base)
            .every(Duration::from_millis(20))
            .start()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while series_numbers(dir.path(), "again").len() < files {
            assert!(Instant::now() < deadline, "no dump {files}");
            std::thread::sleep(Duration::from_millis(10));
        }
        series.stop();
    };
    run_until(2);
    let first: Vec<(u32, Vec<u8>)> = series_numbers(dir.path(), "again")
        .into_iter()
        .map(|n| {
            (
                n,
                std::fs::read(dir.path().join(format!("again.{n:04}.pb.gz"))).unwrap(),
            )
        })
        .collect();
    run_until(first.len() + 2);
    let numbers = series_numbers(dir.path(), "again");
    assert_eq!(
        numbers,
        (1..=numbers.len() as u32).collect::<Vec<_>>(),
        "numbered on from the first series"
    );
    for (n, bytes) in &first {
        let now = std::fs::read(dir.path().join(format!("again.{n:04}.pb.gz"))).unwrap();
        assert!(now == *bytes, "the first series' file {n} was written over");
    }
    // The older files rotated away but the last: a third series numbers
    // on after it, not into the gap.
    let last = *numbers.last().unwrap();
    for &n in &numbers[..numbers.len() - 1] {
        std::fs::remove_file(dir.path().join(format!("again.{n:04}.pb.gz"))).unwrap();
    }
    run_until(2);
    let after_rotation = series_numbers(dir.path(), "again");
    assert_eq!(
        after_rotation[..2],
        [last, last + 1],
        "numbered on after the files left"
    );
}

/// A trigger of zero is always due: the series would write profiles as
/// fast as the disk takes them. `start` refuses it, naming the builder.
#[test]
fn zero_triggers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = || heapprof::AutoDump::new(dir.path().join("zero.pb.gz"));
    let cases = [
        (base().every(Duration::ZERO), "every(Duration::ZERO)"),
        (base().every_allocated_bytes(0), "every_allocated_bytes(0)"),
        (base().on_inuse_growth(0), "on_inuse_growth(0)"),
    ];
    for (series, name) in cases {
        match series.start() {
            Ok(handle) => {
                handle.stop();
                panic!("{name} was accepted");
            }
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{name}: {e}");
                assert!(e.to_string().contains(name), "{name}: {e}");
            }
        }
    }
    let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(written.is_empty(), "files written: {written:?}");
}

/// A series with no trigger would poll forever and never write: `start`
/// refuses it and names the builders that set one.
#[test]
fn a_series_without_a_trigger_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = heapprof::AutoDump::new(dir.path().join("none.pb.gz"))
        .start()
        .map(|handle| handle.stop())
        .expect_err("a series with no trigger was accepted");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("no trigger"), "{e}");
}

/// A growth step above `i64::MAX` cannot be reached: it must never fire
/// (a cast to i64 would wrap it to a negative step, due on every check).
#[test]
fn a_huge_growth_step_never_fires() {
    let _alone = big_heap_changes();
    let dir = tempfile::tempdir().unwrap();
    let series = heapprof::AutoDump::new(dir.path().join("huge.pb.gz"))
        .on_inuse_growth(u64::MAX)
        .start()
        .unwrap();
    // Several 50 ms polls, with the heap growing by 8 MiB meanwhile.
    let held = grow_by(8);
    std::thread::sleep(Duration::from_millis(300));
    series.stop();
    drop(held);
    let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(written.is_empty(), "files written: {written:?}");
}

/// A profile that is written but cannot take its name (here the name is a
/// non-empty directory, so the rename fails) is an error, and leaves no
/// temporary file beside it.
#[test]
fn a_failed_rename_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let taken = dir.path().join("taken.pb.gz");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("keep"), b"x").unwrap();
    let err = heapprof::ProfileGuard::new(&taken).finish().unwrap_err();
    assert!(err.to_string().contains("taken.pb.gz"), "{err}");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["taken.pb.gz"], "left behind: {names:?}");
}

/// `HEAPPROF_DUMP_EVERY` below the floor (1 s) is raised to it, said once
/// on stderr: a millisecond period does not fill the directory.
#[test]
fn a_tiny_dump_period_is_raised_to_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("tiny.pb.gz");
    let started = std::time::Instant::now();
    let stderr = child(
        "churn",
        &[
            ("HEAPPROF_OUT", base.to_str().unwrap()),
            ("HEAPPROF_DUMP_EVERY", "1ms"),
            ("HEAPPROF_TEST_CHURN_MS", "2500"),
        ],
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("HEAPPROF_DUMP_EVERY"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("1ms") && lines[0].contains("using 1s"),
        "{}",
        lines[0]
    );
    // One per second of the child's life (2.5 s of churn, more on a loaded
    // machine), plus the first; at 1 ms it would be hundreds.
    let lived = started.elapsed().as_secs_f64();
    let n = series_numbers(dir.path(), "tiny").len();
    println!("series at HEAPPROF_DUMP_EVERY=1ms over {lived:.1} s: {n} files");
    assert!(
        n >= 1 && n as f64 <= lived.ceil() + 1.0,
        "{n} files in {lived:.1} s"
    );
}

/// The series' thread has its own stack size: with `RUST_MIN_STACK` at
/// 64 KiB (which std gives every thread spawned without a size), a series
/// still writes its profiles instead of overflowing its stack.
#[test]
fn a_series_works_with_a_tiny_default_stack() {
    let stdout = run_child(
        "child_scenarios",
        &[
            ("HEAPPROF_TEST_CHILD", "small_stacks"),
            ("RUST_MIN_STACK", "65536"),
        ],
    )
    .0;
    // The child stops the series once it sees two; a third may be written
    // before it looks when the machine is loaded.
    let files = printed_number(&stdout, "series files=");
    assert!(files >= 2, "{stdout}");
}
