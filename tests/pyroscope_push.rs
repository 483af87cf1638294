//! The Pyroscope pusher against a stand-in for Pyroscope's `/ingest` on
//! loopback (`heapprof_testkit::pyroscope`), which reads each request as
//! the server does: the query, the headers, the `profile` field of the
//! multipart form. The profiles go to the real `go tool pprof` when Go is
//! installed (skipped, saying so, otherwise, unless
//! `HEAPPROF_REQUIRE_GO=1`).
//!
//! The sample rate is 1 in every test of this binary: each allocation is
//! recorded, so the numbers are exact.

use heapprof::pyroscope::Pusher;
use heapprof_testkit::child::{is_child, run_child, wait_with_timeout};
use heapprof_testkit::profile::{ALLOC_SPACE, INUSE_SPACE, cum, decode, flat, stack_names, string};
use heapprof_testkit::proto::Profile;
use heapprof_testkit::pyroscope::{Pending, Push, Receiver};
use heapprof_testkit::tools::{go_available, go_pprof, top_rows};
use heapprof_testkit::watchdog::watchdog;
use std::io::{Read, Write};

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[global_allocator]
static ALLOC: heapprof::Profiler = heapprof::Profiler::new();

const MIB: usize = 1 << 20;

/// How long a test waits for a push that should come within a period or
/// two.
const PUSH_WITHIN: Duration = Duration::from_secs(20);

// The helpers that keep memory push into a vector the caller made with
// room, so that its own buffer is not counted in them.

#[inline(never)]
fn kept_before_start(kept: &mut Vec<Vec<u8>>, n: usize) {
    assert!(kept.capacity() - kept.len() >= n, "room made by the caller");
    for _ in 0..n {
        kept.push(vec![1u8; MIB]);
    }
}

#[inline(never)]
fn churned_between(n: usize) -> usize {
    let mut sum = 0;
    for _ in 0..n {
        sum += std::hint::black_box(vec![2u8; MIB]).len();
    }
    sum
}

#[inline(never)]
fn kept_between(kept: &mut Vec<Vec<u8>>, n: usize) {
    assert!(kept.capacity() - kept.len() >= n, "room made by the caller");
    for _ in 0..n {
        kept.push(vec![3u8; MIB]);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn next_push(receiver: &Receiver) -> Pending {
    let pending = receiver
        .next(PUSH_WITHIN)
        .unwrap_or_else(|| panic!("no push within {PUSH_WITHIN:?}"));
    pending.push();
    pending
}

/// The profile of a push, decoded.
fn profile_of(push: &Push) -> Profile {
    decode(&push.profile)
}

/// Bytes in `function`'s own samples (pprof's flat) at `index`.
fn bytes_at(p: &Profile, function: &str, index: usize) -> i64 {
    flat(p, function, index)
}

/// The checks every push must pass: Pyroscope's ingest query.
fn check_request(push: &Push, name: &str) {
    assert_eq!(push.method, "POST");
    assert_eq!(push.path, "/ingest");
    assert_eq!(push.param("name"), name);
    assert_eq!(push.param("format"), "pprof");
    assert_eq!(push.param("spyName"), "heapprof");
    let (from, until) = push.from_until();
    assert!(from <= until, "from {from} after until {until}");
    assert!(
        until <= unix_now() && unix_now() - until < 60,
        "until {until} is not now"
    );
    assert_eq!(push.filename, "profile.pprof");
    assert!(
        push.profile.starts_with(&[0x1f, 0x8b]),
        "the profile is gzipped"
    );
}

/// Two pushes and the last one from `stop`: alloc values are what was
/// allocated in each period, inuse values what is live at the push,
/// whenever it was allocated; the pusher's own work shows in none of them.
#[test]
fn pushes_alloc_deltas_and_inuse_absolute() {
    let _watchdog = watchdog(
        "pushes_alloc_deltas_and_inuse_absolute",
        Duration::from_secs(120),
    );
    heapprof::set_sample_rate(1);
    let receiver = Receiver::start();
    let mut before = Vec::with_capacity(8);
    kept_before_start(&mut before, 8);
    let started = unix_now();
    let pusher = Pusher::new(receiver.url(), "heapprof-test")
        .label("env", "ci")
        .label("region", "eu-1")
        .every(Duration::from_secs(1))
        .basic_auth("user", "secret")
        .tenant("tenant-1")
        .start()
        .expect("start the pusher");
    let name = "heapprof-test{env=ci,region=eu-1}";

    // The first push: nothing of ours allocated since `start`, the 8 MiB
    // from before it live.
    let first = next_push(&receiver);
    let p1 = first.push();
    check_request(p1, name);
    assert!(p1.from_until().0 >= started, "{:?}", p1.from_until());
    assert_eq!(p1.header("x-scope-orgid"), Some("tenant-1"));
    // base64("user:secret")
    assert_eq!(p1.header("authorization"), Some("Basic dXNlcjpzZWNyZXQ="));
    assert!(
        p1.header("user-agent")
            .unwrap_or("")
            .starts_with("heapprof/"),
        "{:?}",
        p1.header("user-agent")
    );
    let prof1 = profile_of(p1);
    assert_eq!(bytes_at(&prof1, "kept_before_start", ALLOC_SPACE), 0);
    assert_eq!(
        bytes_at(&prof1, "kept_before_start", INUSE_SPACE),
        8 * MIB as i64
    );
    assert!(
        string(&prof1, prof1.doc_url).contains("docs.rs/heapprof/"),
        "doc_url: {:?}",
        string(&prof1, prof1.doc_url)
    );

    // The second period starts at the first push's copy of the table,
    // taken before it was sent: what happens while its answer is held
    // is in the second push.
    let first_until = p1.from_until().1;
    let churned = churned_between(16);
    let mut between = Vec::with_capacity(4);
    kept_between(&mut between, 4);
    first.answer(200, "");

    let second = next_push(&receiver);
    let p2 = second.push();
    check_request(p2, name);
    assert_eq!(
        p2.from_until().0,
        first_until,
        "each period starts where the last ended"
    );
    let prof2 = profile_of(p2);
    let values = |f: &str| {
        (
            bytes_at(&prof2, f, ALLOC_SPACE),
            bytes_at(&prof2, f, INUSE_SPACE),
        )
    };
    assert_eq!(values("churned_between"), (16 * MIB as i64, 0));
    assert_eq!(values("kept_between"), (4 * MIB as i64, 4 * MIB as i64));
    assert_eq!(values("kept_before_start"), (0, 8 * MIB as i64));
    // The second period holds the first push being sent and answered: at
    // rate 1, any allocation of the pusher's thread would be here.
    let pushers_own: Vec<Vec<String>> = prof2
        .sample
        .iter()
        .map(|s| stack_names(&prof2, s))
        .filter(|stack| {
            stack.iter().any(|f| {
                f.contains("ureq") || f.contains("rustls") || f.contains("heapprof::pyroscope")
            })
        })
        .collect();
    assert!(
        pushers_own.is_empty(),
        "the pusher's own allocations were recorded: {pushers_own:#?}"
    );
    assert!(
        cum(
            &prof2,
            "pushes_alloc_deltas_and_inuse_absolute",
            ALLOC_SPACE
        ) >= 20 * MIB as i64
    );
    let second_profile = p2.profile.clone();
    second.answer(200, "");

    // `stop` pushes the last period (nothing of ours allocated in it) and
    // returns once it is answered.
    let stopping = std::thread::spawn(move || pusher.stop());
    let last = next_push(&receiver);
    check_request(last.push(), name);
    let prof3 = profile_of(last.push());
    assert_eq!(bytes_at(&prof3, "churned_between", ALLOC_SPACE), 0);
    assert_eq!(
        bytes_at(&prof3, "kept_between", INUSE_SPACE),
        4 * MIB as i64
    );
    last.answer(200, "");
    stopping.join().unwrap();
    assert!(
        receiver.next(Duration::from_millis(1500)).is_none(),
        "a push after stop"
    );
    assert_eq!(churned, 16 * MIB);
    drop((before, between));

    // The real pprof reads the second push the same way.
    if !go_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("second.pb.gz");
    std::fs::write(&path, second_profile).unwrap();
    let path = path.to_str().unwrap();
    let row = |top: &str, f: &str| {
        top_rows(top)
            .into_iter()
            .find(|r| r.1.contains(f))
            .map_or(0.0, |r| r.0)
    };
    let alloc = go_pprof(&["-sample_index=alloc_space", "-top", path]);
    assert_eq!(row(&alloc, "churned_between"), 16.0 * MIB as f64, "{alloc}");
    assert_eq!(row(&alloc, "kept_before_start"), 0.0, "{alloc}");
    let inuse = go_pprof(&["-sample_index=inuse_space", "-top", path]);
    assert_eq!(
        row(&inuse, "kept_before_start"),
        8.0 * MIB as f64,
        "{inuse}"
    );
    assert_eq!(row(&inuse, "kept_between"), 4.0 * MIB as f64, "{inuse}");
    assert_eq!(row(&inuse, "churned_between"), 0.0, "{inuse}");
}

#[inline(never)]
fn kept_under_labels(kept: &mut Vec<Vec<u8>>) {
    kept.push(std::hint::black_box(vec![3u8; MIB]));
}

/// Pyroscope makes each sample's labels part of a series' name and refuses
/// a whole push for one key that is not `[A-Za-z_][A-Za-z0-9_]*`, or that
/// is reserved or already among the push's own labels. A push carries the
/// program's labels under keys it accepts, and leaves out those it cannot;
/// `write_profile` keeps them as given.
#[test]
fn sample_labels_are_pushed_under_keys_pyroscope_accepts() {
    let _watchdog = watchdog(
        "sample_labels_are_pushed_under_keys_pyroscope_accepts",
        Duration::from_secs(120),
    );
    heapprof::set_sample_rate(1);
    let receiver = Receiver::start();
    let mut kept = Vec::with_capacity(1);
    let given = [
        ("http.route", "/x"),
        ("tenant-id", "acme"),
        ("9lives", "b"),
        ("region", "from-the-sample"),
        ("service_name", "s"),
        ("pyroscope_spy", "s"),
        ("__name__", "n"),
        ("http_route", "taken by http.route"),
        ("ключ", "значение"),
    ];
    heapprof::with_labels(&given, || kept_under_labels(&mut kept));
    let pusher = Pusher::new(receiver.url(), "labels-test")
        .label("region", "eu-1")
        .every(Duration::from_secs(1))
        .start()
        .expect("start the pusher");
    let first = next_push(&receiver);
    let profile = profile_of(first.push());
    first.answer(200, "");
    let stopping = std::thread::spawn(move || pusher.stop());
    next_push(&receiver).answer(200, "");
    stopping.join().unwrap();

    let keys_of = |p: &Profile| -> Vec<String> {
        let sample = p
            .sample
            .iter()
            .find(|s| {
                stack_names(p, s)
                    .iter()
                    .any(|f| f.contains("kept_under_labels"))
            })
            .expect("the sample of kept_under_labels");
        let mut keys: Vec<String> = sample
            .label
            .iter()
            .map(|l| string(p, l.key).to_owned())
            .filter(|k| k != "thread")
            .collect();
        keys.sort();
        keys
    };
    // Not `____`, which reads as a name of the server's: dropped.
    assert_eq!(
        keys_of(&profile),
        ["_9lives", "http_route", "tenant_id", "u043au043bu044eu0447"]
    );
    // The first label of a key keeps it: `http.route`'s value, not that of
    // the later `http_route`.
    let route = profile
        .sample
        .iter()
        .flat_map(|s| &s.label)
        .find(|l| string(&profile, l.key) == "http_route")
        .map(|l| string(&profile, l.str).to_owned());
    assert_eq!(route.as_deref(), Some("/x"));

    let mut written = Vec::new();
    heapprof::write_profile(&mut written).unwrap();
    let mut as_given: Vec<&str> = given.iter().map(|(k, _)| *k).collect();
    as_given.sort();
    assert_eq!(keys_of(&decode(&written)), as_given);
    drop(kept);
}

/// Lines of `stderr` that report a failed push.
fn push_warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("could not push the profile to Pyroscope"))
        .collect()
}

/// A server that answers errors: one warning for several failures, the
/// pushes go on, and the one that gets through covers the failed periods.
#[test]
fn failed_pushes_warn_once_and_the_next_covers_them() {
    if is_child() {
        let url = std::env::var("RECEIVER_URL").unwrap();
        heapprof::set_sample_rate(1);
        let pusher = Pusher::new(url, "failing")
            .every(Duration::from_secs(1))
            .start()
            .unwrap();
        let before = heapprof::stats().allocations;
        std::thread::sleep(Duration::from_secs(
            std::env::var("CHILD_SECONDS").unwrap().parse().unwrap(),
        ));
        // Pushes built profiles meanwhile, on heapprof's thread: none of
        // that is counted as the program's.
        println!(
            "program_allocations={}",
            heapprof::stats().allocations - before
        );
        pusher.stop();
        return;
    }
    let _watchdog = watchdog("failed_pushes", Duration::from_secs(120));
    let receiver = Receiver::start();
    let url = receiver.url();
    let child = std::thread::spawn(move || {
        run_child(
            "failed_pushes_warn_once_and_the_next_covers_them",
            &[("RECEIVER_URL", &url), ("CHILD_SECONDS", "6")],
        )
    });
    let mut pushes = Vec::new();
    while let Some(pending) = receiver.next(PUSH_WITHIN) {
        let (from, until) = pending.push().from_until();
        // Three failures, then success.
        let status = if pushes.len() < 3 { 500 } else { 200 };
        pushes.push((from, until, status));
        // Longer than the part a warning quotes: its start is quoted.
        let body = format!("ingester unavailable{}", "; try again later".repeat(20));
        pending.answer(status, &body);
        if pushes.len() > 3 && child.is_finished() {
            break;
        }
    }
    let (stdout, stderr) = child.join().unwrap();
    println!("pushes (from, until, status): {pushes:?}\nchild:\n{stdout}\n{stderr}");
    assert!(pushes.len() >= 4, "{pushes:?}");
    let program = heapprof_testkit::child::printed_number(&stdout, "program_allocations=");
    assert!(program < 20, "the program's allocations: {stdout}");
    let warnings = push_warnings(&stderr);
    assert_eq!(warnings.len(), 1, "one warning a minute at most: {stderr}");
    assert!(
        !stderr.contains("the last profile"),
        "the last push succeeded: {stderr}"
    );
    assert!(
        warnings[0].contains("500") && warnings[0].contains("ingester unavailable"),
        "{}",
        warnings[0]
    );
    // The pushes after failures start where the last success ended: the
    // first push's start.
    assert_eq!(pushes[3].0, pushes[0].0, "{pushes:?}");
    assert_eq!(pushes[1].0, pushes[0].0, "{pushes:?}");
}

/// A server that is busy (`429` with `Retry-After`) gets no push until the
/// time it asked for, though the period is shorter, and the warning says
/// so; one that redirects is not followed, and the warning names where it
/// points, without the password the address carries.
#[test]
fn a_server_that_asks_to_wait_is_left_alone_and_redirects_are_named() {
    /// The wait the busy server asks for, four periods.
    const WAIT: Duration = Duration::from_secs(4);
    if is_child() {
        let pushers: Vec<_> = ["BUSY_URL", "MOVED_URL"]
            .into_iter()
            .map(|var| {
                let url = std::env::var(var).unwrap();
                Pusher::new(url, var)
                    .every(Duration::from_secs(1))
                    .start()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_secs(
            std::env::var("CHILD_SECONDS").unwrap().parse().unwrap(),
        ));
        pushers.into_iter().for_each(|p| p.stop());
        return;
    }
    let _watchdog = watchdog("a_server_that_asks_to_wait", Duration::from_secs(120));
    let (busy, moved) = (Receiver::start(), Receiver::start());
    let (busy_url, moved_url) = (busy.url(), moved.url());
    let (busy_at, moved_at) = (busy_url.clone(), moved_url.clone());
    let child = std::thread::spawn(move || {
        run_child(
            "a_server_that_asks_to_wait_is_left_alone_and_redirects_are_named",
            &[
                ("BUSY_URL", &busy_url),
                ("MOVED_URL", &moved_url),
                ("CHILD_SECONDS", "8"),
            ],
        )
    });
    let child_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let redirects = std::thread::spawn({
        let child_done = child_done.clone();
        move || {
            let mut answered = 0;
            while !child_done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(pending) = moved.next(Duration::from_millis(200)) {
                    // A password longer than the part of an answer quoted.
                    let to = format!(
                        "http://user:hunter2{}@elsewhere.example/ingest?token=sesame",
                        "x".repeat(300)
                    );
                    pending.answer_with(308, &[("Location", &to)], "");
                    answered += 1;
                }
            }
            answered
        }
    });
    let mut arrivals = Vec::new();
    while !child.is_finished() {
        let Some(pending) = busy.next(Duration::from_millis(200)) else {
            continue;
        };
        arrivals.push(Instant::now());
        if arrivals.len() == 1 {
            let wait = WAIT.as_secs().to_string();
            pending.answer_with(429, &[("Retry-After", &wait)], "slow down");
        } else {
            pending.answer(200, "");
        }
    }
    let (stdout, stderr) = child.join().unwrap();
    child_done.store(true, std::sync::atomic::Ordering::Relaxed);
    println!("child:\n{stdout}\n{stderr}");
    assert!(arrivals.len() >= 2, "{} pushes", arrivals.len());
    let gap = arrivals[1] - arrivals[0];
    assert!(
        gap >= WAIT,
        "a push {gap:?} after the server asked for none for {WAIT:?}"
    );
    // Pushes every period again once it has been.
    assert!(arrivals.len() >= 4, "{} pushes", arrivals.len());
    // Refused over and over, and still followed nowhere.
    assert!(redirects.join().unwrap() >= 4);
    let warnings = push_warnings(&stderr);
    assert_eq!(warnings.len(), 2, "one warning a pusher: {stderr}");
    let of = |server: &str| *warnings.iter().find(|w| w.contains(server)).unwrap();
    let busy_warning = of(&busy_at);
    assert!(
        busy_warning.contains("429")
            && busy_warning.contains("slow down")
            && busy_warning.contains("no push for 4 s (Retry-After)"),
        "{busy_warning}"
    );
    let moved_warning = of(&moved_at);
    assert!(
        moved_warning.contains("308")
            && moved_warning.contains("elsewhere.example/ingest")
            && moved_warning.contains("follows no redirect"),
        "{moved_warning}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // A token in the query is not shown either.
    assert!(moved_warning.contains("ingest?…"), "{moved_warning}");
    assert!(!stderr.contains("sesame"), "{stderr}");
}

/// An endpoint where nothing listens: the pushes fail, one warning is
/// printed, and the program's own allocations are what they would be
/// without a pusher.
#[test]
fn unreachable_endpoint_leaves_the_program_alone() {
    if is_child() {
        heapprof::set_sample_rate(1);
        // A port just freed: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pusher = Pusher::new(format!("http://127.0.0.1:{port}"), "unreachable")
            .every(Duration::from_secs(1))
            .start()
            .unwrap();
        let before = heapprof::stats();
        std::thread::sleep(Duration::from_millis(3500));
        let after = heapprof::stats();
        pusher.stop();
        println!(
            "program_allocations={}",
            after.allocations - before.allocations
        );
        return;
    }
    let (stdout, stderr) = run_child("unreachable_endpoint_leaves_the_program_alone", &[]);
    println!("{stdout}\n{stderr}");
    let program = heapprof_testkit::child::printed_number(&stdout, "program_allocations=");
    // Three pushes built three profiles and failed to connect on
    // heapprof's thread; the program (asleep) allocated next to nothing.
    assert!(program < 20, "the program's allocations: {stdout}");
    let warnings = push_warnings(&stderr);
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("127.0.0.1"), "{}", warnings[0]);
    // The push at `stop` failed too, within the minute: said all the
    // same, since no later push covers its period.
    let last: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("could not push the last profile to Pyroscope"))
        .collect();
    assert_eq!(last.len(), 1, "{stderr}");
    assert!(
        last[0].contains("are not pushed") && !last[0].contains("next push"),
        "{}",
        last[0]
    );
}

/// A server that takes the request and never answers: the program goes
/// on at full speed meanwhile (no lock is held across the network), the
/// push gives up after its timeout, and the next one goes through.
#[test]
fn slow_endpoint_never_blocks_the_program() {
    if !is_child() {
        let (stdout, stderr) = run_child("slow_endpoint_never_blocks_the_program", &[]);
        println!("{stdout}\n{stderr}");
        let warnings = push_warnings(&stderr);
        assert_eq!(warnings.len(), 1, "{stderr}");
        assert!(
            warnings[0].contains("imeout") || warnings[0].contains("timed out"),
            "{}",
            warnings[0]
        );
        return;
    }
    heapprof::set_sample_rate(1);
    // Symbols loaded before the measured work, which should take only
    // what the work itself takes.
    heapprof::write_profile(std::io::sink()).unwrap();
    let receiver = Receiver::start();
    let timeout = Duration::from_secs(6);
    let pusher = Pusher::new(receiver.url(), "slow")
        .every(Duration::from_secs(1))
        .timeout(timeout)
        .start()
        .unwrap();
    let stalled = next_push(&receiver);
    let held_at = Instant::now();
    // While the push waits for its answer, the program allocates, takes
    // a snapshot and writes a profile: none of it waits for the push.
    let started = Instant::now();
    let kept: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; MIB]).collect();
    let snapshot = heapprof::snapshot();
    let mut written = Vec::new();
    heapprof::write_profile(&mut written).unwrap();
    let took = started.elapsed();
    println!("program's work during a stalled push: {took:?}");
    assert!(
        took < timeout / 2,
        "the program's work took {took:?} while a push stalled"
    );
    assert!(snapshot.inuse_bytes_in("slow_endpoint_never_blocks_the_program") >= 8 * MIB as i64);
    // The push gives up after its timeout, not before, and the next one
    // comes and is answered.
    let next = next_push(&receiver);
    let waited = held_at.elapsed();
    assert!(
        waited >= timeout - Duration::from_millis(100),
        "the next push came after {waited:?}"
    );
    assert_eq!(
        next.push().from_until().0,
        stalled.push().from_until().0,
        "the next push covers the stalled one's period"
    );
    drop(stalled);
    next.answer(200, "");
    let stopping = std::thread::spawn(move || pusher.stop());
    next_push(&receiver).answer(200, "");
    stopping.join().unwrap();
    drop(kept);
}

/// Periods and timeouts at their largest (`Duration::MAX`) are taken as a
/// day: the pusher waits for `stop`, whose push goes through, and no
/// deadline overflows on its thread.
#[test]
fn the_longest_settings_are_taken_as_a_day() {
    if !is_child() {
        let (stdout, stderr) = run_child("the_longest_settings_are_taken_as_a_day", &[]);
        println!("{stdout}\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stdout.contains("pushed at stop"), "{stdout}");
        return;
    }
    let receiver = Receiver::start();
    let pusher = Pusher::new(receiver.url(), "longest")
        .every(Duration::MAX)
        .timeout(Duration::MAX)
        .start()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stopping = std::thread::spawn(move || pusher.stop());
    let last = receiver.next(PUSH_WITHIN).expect("the push at stop comes");
    check_request(last.push(), "longest{}");
    last.answer(200, "");
    stopping.join().unwrap();
    println!("pushed at stop");
}

/// A name and labels too long for a request line are refused by `start`
/// (and when they come from the environment, reported in one line at the
/// first sample), instead of failing on the pusher's thread at each push.
#[test]
fn names_too_long_for_a_request_line_are_refused() {
    let long_name = "n".repeat(70_000);
    let e = Pusher::new("http://127.0.0.1:9", long_name.as_str())
        .start()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().len() < 300, "one short line: {e}");
    let mut many = Pusher::new("http://127.0.0.1:9", "app");
    for i in 0..9000 {
        many = many.label(format!("k{i}"), "v");
    }
    let e = many.start().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    if !is_child() {
        let (_, stderr) = run_child(
            "names_too_long_for_a_request_line_are_refused",
            &[
                ("HEAPPROF_PYROSCOPE_URL", "http://127.0.0.1:9"),
                ("HEAPPROF_PYROSCOPE_NAME", long_name.as_str()),
                ("HEAPPROF_SAMPLE_RATE", "1"),
            ],
        );
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("heapprof") && l.contains("request target"))
            .collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].len() < 400, "one short line: {}", lines[0]);
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// The allocation whose sample starts the pusher in
/// `starts_from_the_environment`.
#[inline(never)]
fn started_the_pusher() -> Vec<u8> {
    vec![5u8; MIB]
}

/// The pusher with no code: `HEAPPROF_PYROSCOPE_*` in a child's
/// environment, a periodic push and the one at exit. Its pushes count
/// every allocation from the program's start, the one whose sample
/// started it included; a label given twice keeps its last value.
#[test]
fn starts_from_the_environment() {
    if is_child() {
        // Sampling is off until here (`HEAPPROF_SAMPLE_RATE=0`): the next
        // allocation is the first sample, and starts the pusher.
        heapprof::set_sample_rate(1);
        let first = started_the_pusher();
        let mut kept = Vec::with_capacity(3);
        kept_between(&mut kept, 3);
        // Long enough for a periodic push or two before the exit push.
        std::thread::sleep(Duration::from_millis(2500));
        std::hint::black_box((&kept, &first));
        std::mem::forget((kept, first));
        return;
    }
    let _watchdog = watchdog("starts_from_the_environment", Duration::from_secs(120));
    let receiver = Receiver::start();
    let url = receiver.url();
    let child = std::thread::spawn(move || {
        run_child(
            "starts_from_the_environment",
            &[
                ("HEAPPROF_PYROSCOPE_URL", &url),
                ("HEAPPROF_SAMPLE_RATE", "0"),
                ("HEAPPROF_PYROSCOPE_NAME", "env-app"),
                ("HEAPPROF_PYROSCOPE_LABELS", "env=dev, team=memory, env=ci"),
                ("HEAPPROF_PYROSCOPE_EVERY", "1s"),
                ("HEAPPROF_PYROSCOPE_TENANT", "t-42"),
                ("HEAPPROF_PYROSCOPE_TOKEN", "tok"),
            ],
        )
    });
    let pushes = answer_all_until(&receiver, &child);
    let (_, stderr) = child.join().unwrap();
    assert!(
        pushes.len() >= 2,
        "a periodic push and the exit push: {:?}",
        summary(&pushes)
    );
    for p in &pushes {
        check_request(p, "env-app{team=memory,env=ci}");
        assert_eq!(p.header("x-scope-orgid"), Some("t-42"));
        assert_eq!(p.header("authorization"), Some("Bearer tok"));
    }
    // The exit push: the child's 3 MiB still live, whenever allocated.
    let last = profile_of(pushes.last().unwrap());
    assert_eq!(bytes_at(&last, "kept_between", INUSE_SPACE), 3 * MIB as i64);
    // All the pushes together count each allocation once.
    for (function, bytes) in [("kept_between", 3 * MIB), ("started_the_pusher", MIB)] {
        let allocated: i64 = pushes
            .iter()
            .map(|p| bytes_at(&profile_of(p), function, ALLOC_SPACE))
            .sum();
        assert_eq!(
            allocated,
            bytes as i64,
            "{function}: {:?}",
            summary(&pushes)
        );
    }
    assert!(push_warnings(&stderr).is_empty(), "{stderr}");
}

/// Credentials in the URL are sent as the server expects them: decoded
/// from the URL's percent-encoding (a password with `@`, `/` or `:` can
/// only be written so there), and not in the request line.
#[test]
fn credentials_in_the_url_are_sent_decoded() {
    let _watchdog = watchdog("credentials_in_the_url", Duration::from_secs(120));
    let receiver = Receiver::start();
    let url = receiver
        .url()
        .replace("http://", "http://u%40x:p%40ss%2Fw0rd:1@");
    let pusher = Pusher::new(url, "credentials")
        .every(Duration::from_secs(3600))
        .start()
        .expect("start the pusher");
    std::thread::spawn(move || pusher.stop());
    let pending = next_push(&receiver);
    let push = pending.push();
    // base64("u@x:p@ss/w0rd:1")
    assert_eq!(
        push.header("authorization"),
        Some("Basic dUB4OnBAc3MvdzByZDox")
    );
    assert_eq!(push.path, "/ingest");
    pending.answer(200, "");
}

/// A child forked before the process's first sample starts no pusher and
/// no dump series from the environment when it samples, as one forked
/// after it starts none: those belong to the process heapprof started in
/// (here it never samples, so nothing is pushed or written at all).
#[test]
fn a_child_forked_before_the_first_sample_starts_nothing_from_the_environment() {
    let test = "a_child_forked_before_the_first_sample_starts_nothing_from_the_environment";
    if is_child() {
        // The rate from the environment samples nothing before the fork.
        // SAFETY: the forked child allocates and sleeps on its only
        // thread (glibc's allocator and heapprof's are fork-safe), then
        // calls `exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            heapprof::set_sample_rate(1);
            let kept = std::hint::black_box(vec![0u8; 1 << 20]);
            std::thread::sleep(Duration::from_millis(2500));
            drop(kept);
            // SAFETY: ends the forked child as a worker does, exit
            // handlers included.
            unsafe { libc::exit(0) };
        }
        let status = wait_with_timeout(pid, Duration::from_secs(60)).unwrap();
        assert_eq!(status, 0);
        return;
    }
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d.pb.gz");
    let (_, stderr) = run_child(
        test,
        &[
            ("HEAPPROF_SAMPLE_RATE", "1073741824"),
            ("HEAPPROF_PYROSCOPE_URL", &receiver.url()),
            ("HEAPPROF_PYROSCOPE_EVERY", "1s"),
            ("HEAPPROF_PYROSCOPE_TIMEOUT", "1s"),
            ("HEAPPROF_OUT", out.to_str().unwrap()),
            ("HEAPPROF_DUMP_EVERY", "1s"),
        ],
    );
    let mut pushes = 0;
    while receiver.next(Duration::from_millis(300)).is_some() {
        pushes += 1;
    }
    // The process's own exit profile, `d.pb.gz`, is there; a series'
    // files are numbered (`d.0001.pb.gz`).
    let series: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("d.0"))
        .collect();
    assert_eq!(
        (pushes, series),
        (0, Vec::<String>::new()),
        "what the forked child pushed and wrote"
    );
    // Said once each, since the parent never started them either.
    for what in ["HEAPPROF_PYROSCOPE_URL", "HEAPPROF_DUMP_*"] {
        let said = format!("{what} is set, but this process was forked (without exec)");
        assert_eq!(stderr.matches(&said).count(), 1, "{stderr}");
    }
}

/// A forked child that exits has no pusher thread: it exits at once,
/// without the wait for the exit push (the pusher's timeout, 10 s).
#[test]
fn a_forked_child_exits_without_waiting_for_a_push() {
    if is_child() {
        heapprof::set_sample_rate(1);
        // The pusher starts at this sample.
        std::hint::black_box(vec![0u8; 64]);
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        // SAFETY: the child only calls `exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: ends the forked child the way a worker does.
            unsafe { libc::exit(0) };
        }
        let status = wait_with_timeout(pid, Duration::from_secs(60)).unwrap();
        assert_eq!(status, 0);
        println!("forked_child_ms={}", start.elapsed().as_millis());
        return;
    }
    let (stdout, _) = run_child(
        "a_forked_child_exits_without_waiting_for_a_push",
        &[("HEAPPROF_PYROSCOPE_URL", "http://127.0.0.1:9")],
    );
    let ms = heapprof_testkit::child::printed_number(&stdout, "forked_child_ms=");
    assert!(ms < 5_000, "the forked child took {ms} ms to exit");
}

/// `HEAPPROF_PYROSCOPE_TIMEOUT` bounds how long the exit waits for its
/// push to a server that takes the connection and never answers: the
/// child, which lives 300 ms, exits well before the default 10 s, and says
/// that its last period was not pushed.
#[test]
fn the_exit_waits_for_a_silent_server_only_as_long_as_the_timeout() {
    if is_child() {
        return child_keeps_a_mebibyte();
    }
    // Accepted by the kernel (the backlog), never read nor answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let took = |timeout: &str| {
        let start = Instant::now();
        let (_, stderr) = run_child(
            "the_exit_waits_for_a_silent_server_only_as_long_as_the_timeout",
            &[
                ("HEAPPROF_PYROSCOPE_URL", &url),
                ("HEAPPROF_PYROSCOPE_TIMEOUT", timeout),
            ],
        );
        (start.elapsed(), stderr)
    };
    let not_pushed = "heapprof: pyroscope: the push at exit did not end within ";
    let (short, stderr) = took("300ms");
    assert!(short < Duration::from_secs(5), "{short:?}: {stderr}");
    assert_eq!(stderr.matches(not_pushed).count(), 1, "{stderr}");
    // The default, against which the bound above means something.
    let (default, stderr) = took("never");
    assert_eq!(stderr.matches(not_pushed).count(), 1, "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("HEAPPROF_PYROSCOPE_TIMEOUT") && !l.contains(not_pushed))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let fallback = format!(
        "using the default {:?}",
        heapprof::pyroscope::DEFAULT_TIMEOUT
    );
    assert!(lines[0].contains(&fallback), "{}", lines[0]);
    assert!(
        default >= heapprof::pyroscope::DEFAULT_TIMEOUT,
        "{default:?}: {stderr}"
    );
    // The README's row gives the default the library has.
    let row = format!(
        "| `HEAPPROF_PYROSCOPE_TIMEOUT` | how long each step of a push (connect, send, wait for \
         the answer, read it) may take, `{}s` by default;",
        heapprof::pyroscope::DEFAULT_TIMEOUT.as_secs()
    );
    assert!(include_str!("../README.md").contains(&row), "{row}");
    drop(silent);
}

/// A child for the environment's pusher: at rate 1, keeps a mebibyte
/// (from `kept_between`) and lives long enough for the push at exit.
fn child_keeps_a_mebibyte() {
    heapprof::set_sample_rate(1);
    let mut kept = Vec::with_capacity(1);
    kept_between(&mut kept, 1);
    std::thread::sleep(Duration::from_millis(300));
    std::mem::forget(kept);
}

/// Malformed settings: one line each on stderr, the default used.
#[test]
fn malformed_environment_is_reported_and_defaults_used() {
    if is_child() {
        return child_keeps_a_mebibyte();
    }
    let _watchdog = watchdog("malformed_environment", Duration::from_secs(120));
    let receiver = Receiver::start();
    let url = receiver.url();
    let long_value = "x".repeat(500);
    let child = std::thread::spawn(move || {
        run_child(
            "malformed_environment_is_reported_and_defaults_used",
            &[
                ("HEAPPROF_PYROSCOPE_URL", &url),
                ("HEAPPROF_PYROSCOPE_NAME", "bad name"),
                ("HEAPPROF_PYROSCOPE_LABELS", &long_value),
                ("HEAPPROF_PYROSCOPE_EVERY", "soon"),
            ],
        )
    });
    let pushes = answer_all_until(&receiver, &child);
    let (_, stderr) = child.join().unwrap();
    println!("{stderr}");
    // The default period (15 s) is longer than the child lives: only the
    // exit push, under the executable's name, with no labels.
    assert_eq!(pushes.len(), 1, "{:?}", summary(&pushes));
    let name = pushes[0].param("name");
    assert!(
        name.starts_with("pyroscope_push") && name.ends_with("{}"),
        "{name}"
    );
    for (var, fallback) in [
        ("HEAPPROF_PYROSCOPE_NAME", "using the executable's name"),
        ("HEAPPROF_PYROSCOPE_LABELS", "pushing no labels"),
        ("HEAPPROF_PYROSCOPE_EVERY", "using the default 15s"),
    ] {
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(var)).collect();
        assert_eq!(lines.len(), 1, "{var}: {stderr}");
        assert!(lines[0].contains(fallback), "{}", lines[0]);
        assert!(lines[0].len() < 300, "the value is cut: {}", lines[0]);
    }
}

/// Settings a request cannot carry: a token with control characters is
/// left out (unshown), and a name too long for a request line gives way to
/// the executable's (the labels kept), one line each. A tenant with
/// control characters, or credentials both in the URL and in a variable,
/// push nothing, and the line says why once.
#[test]
fn settings_a_request_cannot_carry_fall_back_or_say_why() {
    if is_child() {
        return child_keeps_a_mebibyte();
    }
    let _watchdog = watchdog("settings_a_request_cannot_carry", Duration::from_secs(120));
    let run = |env: &[(&str, &str)], with_password: bool| {
        let receiver = Receiver::start();
        let mut url = receiver.url();
        if with_password {
            url = url.replace("http://", "http://user:pw@");
        }
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        env.push(("HEAPPROF_PYROSCOPE_URL".into(), url));
        let child = std::thread::spawn(move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (&**k, &**v)).collect();
            run_child("settings_a_request_cannot_carry_fall_back_or_say_why", &env)
        });
        let pushes = answer_all_until(&receiver, &child);
        let (_, stderr) = child.join().unwrap();
        println!("{stderr}");
        (pushes, stderr)
    };

    let long_name = "n".repeat(heapprof::pyroscope::MAX_REQUEST_TARGET_BYTES);
    let (pushes, stderr) = run(
        &[
            ("HEAPPROF_PYROSCOPE_NAME", &long_name),
            ("HEAPPROF_PYROSCOPE_LABELS", "env=ci"),
            ("HEAPPROF_PYROSCOPE_TOKEN", "s3cret\u{7f}"),
        ],
        false,
    );
    assert_eq!(pushes.len(), 1, "{:?}", summary(&pushes));
    let name = pushes[0].param("name");
    assert!(
        name.starts_with("pyroscope_push") && name.ends_with("{env=ci}"),
        "{name}"
    );
    assert_eq!(pushes[0].header("authorization"), None);
    for (var, fallback) in [
        ("HEAPPROF_PYROSCOPE_NAME", "using the executable's name"),
        ("HEAPPROF_PYROSCOPE_TOKEN", "sending no bearer token"),
    ] {
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(var)).collect();
        assert_eq!(lines.len(), 1, "{var}: {stderr}");
        assert!(lines[0].contains(fallback), "{}", lines[0]);
    }
    assert!(!stderr.contains("s3cret"), "{stderr}");

    let (pushes, stderr) = run(&[("HEAPPROF_PYROSCOPE_TENANT", "t\nX-Other: 1")], false);
    assert!(pushes.is_empty(), "{:?}", summary(&pushes));
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("HEAPPROF_PYROSCOPE_TENANT"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("nothing is pushed"), "{}", lines[0]);

    let (pushes, stderr) = run(&[("HEAPPROF_PYROSCOPE_TOKEN", "tok")], true);
    assert!(pushes.is_empty(), "{:?}", summary(&pushes));
    let line = stderr
        .lines()
        .find(|l| l.contains("could not start"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains(
            "credentials in the URL and bearer_token (HEAPPROF_PYROSCOPE_TOKEN) both set"
        ),
        "{line}"
    );
    assert_eq!(line.matches("heapprof:").count(), 1, "{line}");
    assert!(!line.contains("pw"), "{line}");
}

/// Each push's name, from and until, for messages.
fn summary(pushes: &[Push]) -> Vec<(&str, (u64, u64))> {
    pushes
        .iter()
        .map(|p| (p.param("name"), p.from_until()))
        .collect()
}

/// Answers 200 to every push until `child` has exited and no more come.
fn answer_all_until<T>(receiver: &Receiver, child: &std::thread::JoinHandle<T>) -> Vec<Push> {
    let mut pushes = Vec::new();
    loop {
        match receiver.next(Duration::from_millis(500)) {
            Some(pending) => pushes.push(pending.answer(200, "")),
            None if child.is_finished() => return pushes,
            None => {}
        }
    }
}

/// Threads that cannot start (no address space left for their stacks):
/// `Pusher::start` and `AutoDump::start` fail with errors that say what
/// did not start, and whose.
#[test]
fn threads_that_cannot_start_say_so() {
    if is_child() {
        let pusher = Pusher::new("http://127.0.0.1:9", "no-room").every(Duration::from_secs(3600));
        let dump = heapprof::AutoDump::new(std::env::temp_dir().join("heapprof-no-room-%e.pb.gz"))
            .every(Duration::from_secs(3600));
        // Room for small allocations from the heap already mapped, none
        // for a thread's stack of 2 MiB.
        heapprof_testkit::process::limit_address_space_to_room(1 << 20);
        let dumped = dump.start().err();
        let pushed = pusher.start().err();
        heapprof_testkit::process::limit_address_space(libc::RLIM_INFINITY);
        for (name, error) in [("dump", dumped), ("push", pushed)] {
            println!("{name}_error={error:?}");
            let said = error.is_some_and(|e| e.to_string().starts_with("heapprof: cannot start"));
            println!("{name}_said={}", u8::from(said));
        }
        return;
    }
    let (stdout, stderr) = run_child("threads_that_cannot_start_say_so", &[]);
    println!("{stdout}");
    for name in ["dump_said=", "push_said="] {
        let said = heapprof_testkit::child::printed_number(&stdout, name);
        assert_eq!(said, 1, "{stdout}\n{stderr}");
    }
}

/// A server that keeps connections alive (HTTP/1.1, as Pyroscope and
/// Alloy do): the pusher closes its connection after each push. An idle
/// connection kept between pushes would be a descriptor of heapprof's
/// that a program closing every descriptor it did not open (a daemon)
/// closes, and whose number the program's next file gets: the next push
/// would then be written into that file.
#[test]
fn no_connection_is_kept_between_pushes() {
    let _watchdog = watchdog(
        "no_connection_is_kept_between_pushes",
        Duration::from_secs(60),
    );
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pusher = Pusher::new(
        format!("http://{}", server.local_addr().unwrap()),
        "keep-alive",
    )
    .every(Duration::from_secs(1))
    .start()
    .expect("start the pusher");
    let (mut conn, _) = server.accept().unwrap();
    // The request: a head, then a body of Content-Length bytes.
    let mut request = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let body_length = loop {
        let n = conn.read(&mut chunk).unwrap();
        assert_ne!(n, 0, "the pusher closed before a whole head");
        request.extend_from_slice(&chunk[..n]);
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            break end + 4 + length;
        }
    };
    while request.len() < body_length {
        let n = conn.read(&mut chunk).unwrap();
        assert_ne!(n, 0, "the pusher closed before the whole body");
        request.extend_from_slice(&chunk[..n]);
    }
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let closed = matches!(conn.read(&mut chunk), Ok(0));
    // Its push at stop finds nothing listening, and fails at once.
    drop((conn, server));
    pusher.stop();
    assert!(closed, "the pusher kept its connection open after the push");
}

/// The child of the `SSL_CERT_FILE` tests: pushes once, at `stop`, to
/// `PUSH_TO`.
#[test]
fn child_pushes_once_over_tls() {
    if !is_child() {
        return;
    }
    let url = std::env::var("PUSH_TO").unwrap();
    // SAFETY: no preconditions.
    println!("secure={}", unsafe { libc::getauxval(libc::AT_SECURE) });
    Pusher::new(url, "tls")
        .every(Duration::from_secs(3600))
        .start()
        .unwrap()
        .stop();
    println!("stopped");
}

/// Runs [`child_pushes_once_over_tls`] against `receiver` with
/// `SSL_CERT_FILE` set to `roots` (if given), answering the push if one
/// arrives: whether it arrived, and the child's stderr.
fn push_over_tls(receiver: &Receiver, roots: Option<&std::path::Path>) -> (bool, String) {
    // Set to nothing, the variable counts as unset (whatever the
    // environment the tests run in sets).
    let roots = roots.map_or("", |r| r.to_str().unwrap()).to_owned();
    let env = [
        ("PUSH_TO".to_owned(), receiver.url()),
        ("SSL_CERT_FILE".to_owned(), roots),
    ];
    push_over_tls_from(receiver, move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_child("child_pushes_once_over_tls", &env)
    })
}

/// [`push_over_tls`] with the child run by `run`, which returns its
/// stdout and stderr.
fn push_over_tls_from(
    receiver: &Receiver,
    run: impl FnOnce() -> (String, String) + Send + 'static,
) -> (bool, String) {
    let child = std::thread::spawn(run);
    let Some(pending) = receiver.next(Duration::from_secs(60)) else {
        let output = child.join();
        panic!("no connection from the pusher; the child: {output:?}");
    };
    let pushed = pending.push.is_ok();
    if pushed {
        let push = pending.answer(200, "");
        assert_eq!(push.path, "/ingest");
        assert!(!decode(&push.profile).sample_type.is_empty());
    }
    let (stdout, stderr) = child.join().unwrap();
    assert!(stdout.contains("stopped"), "{stdout}");
    (pushed, stderr)
}

/// An `https://` server whose certificate a private authority signed is
/// trusted when `SSL_CERT_FILE` names that authority's certificate, as
/// OpenSSL and curl read the variable, and refused without it: the
/// built-in roots do not know it.
#[test]
fn ssl_cert_file_names_the_roots_a_push_trusts() {
    if !is_child() {
        // In a child: the receiver's TLS allocates, and other tests here
        // sample at rate 1 and look for TLS in their profiles.
        run_child("ssl_cert_file_names_the_roots_a_push_trusts", &[]);
        return;
    }
    let _watchdog = watchdog("ssl_cert_file", Duration::from_secs(300));
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start_tls();
    let roots = dir.path().join("authority.pem");
    std::fs::write(&roots, receiver.authority_pem()).unwrap();

    let (pushed, stderr) = push_over_tls(&receiver, Some(&roots));
    assert!(pushed, "{stderr}");
    assert!(!stderr.contains("heapprof:"), "{stderr}");

    let (pushed, stderr) = push_over_tls(&receiver, None);
    assert!(!pushed, "{stderr}");
    let refused = stderr
        .lines()
        .find(|l| l.contains("could not push the last profile"))
        .unwrap_or_else(|| panic!("no failed push: {stderr}"));
    assert!(
        refused.contains("certificate")
            && refused.contains("(checked against the built-in roots; SSL_CERT_FILE names others)"),
        "{refused}"
    );
}

/// An `SSL_CERT_FILE` heapprof cannot use is said in one line, and the
/// built-in roots are used: a file with no certificate, one that is not
/// there, and a FIFO, which is not opened for reading (a reader that never
/// comes would hold the push, and the program's exit with it).
#[test]
fn an_unusable_ssl_cert_file_is_said_and_the_built_in_roots_used() {
    if !is_child() {
        // In a child: the receiver's TLS allocates, and other tests here
        // sample at rate 1 and look for TLS in their profiles.
        run_child(
            "an_unusable_ssl_cert_file_is_said_and_the_built_in_roots_used",
            &[],
        );
        return;
    }
    let _watchdog = watchdog("unusable_ssl_cert_file", Duration::from_secs(300));
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start_tls();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let fifo = dir.path().join("fifo.pem");
    let c_fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path it is given.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    for (roots, why) in [
        (empty, "no PEM CERTIFICATE block"),
        (dir.path().join("missing.pem"), "No such file"),
        (fifo, "not a regular file"),
    ] {
        let (pushed, stderr) = push_over_tls(&receiver, Some(&roots));
        assert!(!pushed, "{stderr}");
        let said: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("heapprof: ignoring SSL_CERT_FILE="))
            .collect();
        assert_eq!(said.len(), 1, "{stderr}");
        assert!(
            said[0].contains(why) && said[0].contains(roots.to_str().unwrap()),
            "{}",
            said[0]
        );
        assert!(
            stderr.contains("(checked against the built-in roots;"),
            "the push did not fail on the built-in roots: {stderr}"
        );
    }
}

/// A set-user-ID program does not take `SSL_CERT_FILE`: whoever runs it
/// would choose which servers it believes. Runs a set-user-ID-root copy of
/// this binary as `nobody`, which needs root (CI runs as root and sets
/// `HEAPPROF_REQUIRE_ROOT=1`).
#[test]
fn a_set_user_id_program_ignores_ssl_cert_file() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !heapprof_testkit::process::runs_as_root("making a set-user-ID-root binary") {
        return;
    }
    if !is_child() {
        // In a child: the receiver's TLS allocates, and other tests here
        // sample at rate 1 and look for TLS in their profiles.
        run_child("a_set_user_id_program_ignores_ssl_cert_file", &[]);
        return;
    }
    let _watchdog = watchdog("setuid_ssl_cert_file", Duration::from_secs(300));
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("setuid-copy");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let receiver = Receiver::start_tls();
    let roots = dir.path().join("authority.pem");
    std::fs::write(&roots, receiver.authority_pem()).unwrap();
    let url = receiver.url();
    let (pushed, stderr) = push_over_tls_from(&receiver, move || {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "child_pushes_once_over_tls",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_clear()
            .env(heapprof_testkit::child::CHILD_VAR, "1")
            .env("PUSH_TO", url)
            .env("SSL_CERT_FILE", &roots)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(
            stdout.contains("secure=1"),
            "the copy did not run set-user-ID (a nosuid mount?):\n{stdout}"
        );
        (stdout, stderr)
    });
    assert!(!pushed, "{stderr}");
    assert!(
        stderr.contains("heapprof: ignoring SSL_CERT_FILE: this program runs with privileges"),
        "{stderr}"
    );
}
