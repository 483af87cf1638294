//! # heapprof: Go-style heap profiles for Rust programs
//!
//! heapprof is a global allocator that wraps another one (the system
//! allocator by default) and *samples* the allocations that pass through
//! it, the way Go's runtime does: on average one sample per 512 KiB
//! allocated, each with its stack. At any moment it can write what it has
//! seen as a pprof heap profile, which `go tool pprof`, Pyroscope, Parca
//! and speedscope read.
//!
//! ## Quick start
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: heapprof::Profiler = heapprof::Profiler::new();
//!
//! fn main() -> std::io::Result<()> {
//!     let data: Vec<String> = (0..100_000).map(|i| format!("item {i}")).collect();
//!     heapprof::write_profile(std::fs::File::create("heap.pb.gz")?)?;
//!     drop(data);
//!     Ok(())
//! }
//! ```
//!
//! Then, with Go installed:
//!
//! ```text
//! go tool pprof -top ./target/release/myprog heap.pb.gz        # who holds memory now
//! go tool pprof -sample_index=alloc_space -top heap.pb.gz      # who allocated the most
//! go tool pprof -list 'myprog::main' ./target/release/myprog heap.pb.gz  # line by line
//! go tool pprof -base before.pb.gz -top after.pb.gz            # what grew in between
//! go tool pprof -http=:8080 heap.pb.gz                         # graph (needs Graphviz), flame graph
//! ```
//!
//! `-list` needs line tables in the binary: Cargo's release profile has
//! none by default; `[profile.release] debug = "limited"` keeps them.
//!
//! Stacks end where the program's own code starts, as Go's end at
//! `main.main`: at its `main`, a thread's own closure, or the test
//! function; the process, thread and test start-up frames below are left
//! out (`HEAPPROF_FULL_STACKS=1` keeps them). What the standard library
//! allocates as it starts a process or thread, with no frame of the
//! program's, keeps them: they say where it was made. Closure names have
//! one form, `{{closure}}`.
//!
//! To wrap another allocator: `heapprof::Profiler::wrap(mimalloc::MiMalloc)`.
//!
//! ## What the numbers mean
//!
//! Each profile has four sample types, in Go's order:
//!
//! * `alloc_objects`, `alloc_space`: allocations made at the site since the
//!   program started (freed or not);
//! * `inuse_objects`, `inuse_space` (the default view): allocations made at
//!   the site that are still live.
//!
//! They are *estimates*: a sampled allocation of `s` bytes stands for
//! `1/(1 - exp(-s/rate))` allocations, which makes every site's estimate
//! unbiased. A site that allocated `B` bytes is known to within about
//! `1/sqrt(B/rate)` (one standard error): ±10 % at 100 × the rate (50 MiB by
//! default), ±100 % at 1 × the rate. Small sites come and go between
//! profiles; large ones are stable.
//!
//! Samples carry no `bytes` label, so `-tags` shows no block sizes: Go
//! keys its sites by stack and block size, heapprof by stack and labels
//! (below), and a site of mixed sizes has no one size that is true of all
//! its samples.
//!
//! Stacks are trimmed at the leaf end of the allocation machinery
//! (`__rust_alloc`, `RawVec` growth, `vec!`, `format!`, `HashMap::insert`,
//! …), so the flat entries of `-top` are the functions that decided to
//! allocate, as in Go.
//!
//! ## Labels: memory by tenant, request or task
//!
//! A stack says where memory was allocated, not for whom. Labels say it:
//!
//! ```no_run
//! # fn handle(_: &str) {}
//! # let (tenant, route) = ("acme", "/api/x");
//! heapprof::with_labels(&[("tenant", tenant), ("route", route)], || handle(route));
//! ```
//!
//! ```no_run
//! # async fn handle() {}
//! # async fn run(tenant: &str) {
//! use heapprof::FutureExt as _;
//! tokio::spawn(handle().heap_labels(&[("tenant", tenant)]));
//! # }
//! # mod tokio { pub fn spawn<F>(_: F) {} }
//! ```
//!
//! Every allocation sampled inside [`with_labels`], or while a [`Labeled`]
//! future is polled (on whichever thread), or inside a span entered under
//! `tracing::LabelLayer` (cargo feature `tracing`), carries the labels,
//! and keeps them until it is freed, by whatever thread: in-use memory by
//! label is right even when another tenant's task frees the block. Each
//! sample also carries a `thread` label, the thread's name
//! ([`set_thread_label`], `HEAPPROF_THREAD_LABEL=0` turn it off). The
//! labels are pprof string labels on all four sample types, in every
//! profile (live, peak, `?seconds=` deltas, `delta_heap`, Pyroscope
//! pushes):
//!
//! ```text
//! go tool pprof -tagfocus tenant=acme -top heap.pb.gz     # only acme's memory
//! go tool pprof -tags heap.pb.gz                          # bytes per label value
//! go tool pprof -tagroot tenant -top heap.pb.gz           # labels as root frames
//! ```
//!
//! [`Snapshot::inuse_bytes_with_label`] and [`Site::labels`] read them in
//! tests. The text format cannot carry labels to pprof (see
//! [`write_text_profile`]). Scopes nest, an inner value winning; a
//! site is a stack under one label set, so the table holds at most 4 096
//! distinct sets (1 MiB) and past that samples carry
//! `heapprof_overflow=label sets`: keep unbounded values (request ids)
//! out of labels. [`current_labels`] shows what a sample would carry now.
//!
//! ## Exact counters beside the estimates
//!
//! [`stats()`] counts every allocation of the program exactly, like Go's
//! `MemStats` (heapprof's own are in its `profiler_*` fields):
//! `allocations`, `deallocations`, `allocated_bytes`, `freed_bytes` and
//! [`Stats::live_bytes`]. When the profile's `inuse_space` total and the
//! process's resident size disagree, this is the number in between: the
//! heap as the program asked for it, before allocator overhead and
//! fragmentation. A failed allocation of 1 MiB or more (a `try_reserve` of
//! an untrusted length) is never counted, nor is a failed `realloc` of any
//! size (the old block stays live). A smaller failed `alloc` fails only
//! when memory is exhausted (or a wrapped allocator's cap is reached); it
//! stays counted unless it happened to reach the slow path (the fast path
//! hands `alloc`'s result back unchecked).
//!
//! ## In tests: snapshots and exact assertions
//!
//! [`snapshot()`] returns the profile as Rust data. Take one before and one
//! after the code under test, subtract them, and ask what a function holds:
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: heapprof::Profiler = heapprof::Profiler::new();
//!
//! #[test]
//! fn parse_keeps_nothing_but_its_result() {
//!     // Every allocation recorded while this lives: exact numbers. Other
//!     // tests get their rate back when the last such guard is dropped.
//!     let exact = heapprof::exact_sampling();
//!     let before = heapprof::snapshot();
//!     let doc = my_crate::parse("…");
//!     let grown = heapprof::snapshot().delta(&before);
//!     drop(exact);
//!     grown.assert_inuse_at_most("my_crate::parse", 4096);
//!     println!("{grown}"); // a pprof -top-like table
//! #   drop(doc);
//! }
//! # mod my_crate { pub fn parse(_: &str) {} }
//! ```
//!
//! * At rate 1 the numbers are exact; at other rates they are estimates
//!   (see above): a block smaller than the rate is most often not sampled
//!   at all, and one that is counts for about the rate, so at the default
//!   rate an assertion on less than a few MiB decides by chance. Set rate
//!   1 (`HEAPPROF_SAMPLE_RATE=1`) for assertions. One whose snapshots
//!   speak for a time when the rate was above 1 (set so by another test
//!   in between, say) says so on stderr when it passes, and in its
//!   message when it fails. The rate is in force on
//!   every thread from its next allocation after [`set_sample_rate`]
//!   returns, threads already running included (the workers of a tokio
//!   runtime built before it, as `#[tokio::test(flavor =
//!   "multi_thread")]` builds them).
//! * Rate 1 records a stack per allocation, and `cargo test` builds heapprof
//!   unoptimized: a debug suite can take many times longer. Optimizing
//!   heapprof and its unwinder in the `test` profile alone (`opt-level =
//!   3` for `heapprof`, `framehop`, `gimli`, `addr2line` and `object` under
//!   `[profile.test.package.<name>]` in the workspace's `Cargo.toml`)
//!   takes most of that away; the README gives the lines and numbers.
//! * `inuse_bytes_in(name)`, `alloc_bytes_in(name)` and the `_objects_in`
//!   twins sum every site whose stack contains a function whose name
//!   contains `name` (pprof's cum); [`Snapshot::top`] gives the flat view.
//!   Since `name` is a substring, qualify it with its path
//!   (`"my_crate::parse"`): the test function is on the stack of all it
//!   allocates, so a bare `"leaky"` would also match a test named
//!   `leaky_fails_assertion` and count everything that test allocated.
//! * Names come from the stacks of the build under test. In an optimized
//!   build a function that ends in a tail call is off the stack of what
//!   its callee allocates (end it with `std::hint::black_box(result)`;
//!   an assertion on such a function that no stack names panics, saying
//!   so),
//!   and code that compiles to the same instructions in two functions is
//!   kept once and named after one of them, so each may be charged with
//!   what the other holds. Without debug info (Cargo's release default,
//!   `debug = 0`), a function inlined into its callers (a closure, an
//!   `async fn`'s body) is on no stack at all; an assertion that passes
//!   in such a build says so on stderr, once. Mark the functions you
//!   assert on `#[inline(never)]`, give them bodies of their own, build
//!   tests with `debug = "line-tables-only"`, or use
//!   [`measure`], which counts by call, not by name.
//! * If heapprof is not the `#[global_allocator]` of the test binary,
//!   [`snapshot()`] is empty and [`stats()`] all zeros;
//!   [`Snapshot::assert_inuse_at_most`] panics rather than pass. It
//!   panics too when sampling was off (`set_sample_rate(0)`, by any test
//!   of the binary, or `HEAPPROF_SAMPLE_RATE=0`) for part of the time the
//!   snapshot speaks for: between a delta's two snapshots, or at any time
//!   before a snapshot of the live heap. What was allocated then is in
//!   no profile. [`Snapshot::delta`] panics when given the later snapshot
//!   as its argument (`before.delta(&after)`).
//! * Under Miri (`cargo miri test`) heapprof's allocator passes every call
//!   straight to the one it wraps and records nothing: the program's own
//!   tests run as they would without heapprof, and heapprof's assertions
//!   panic, saying so, as profiles return that error. Mark the tests that
//!   use them `#[cfg_attr(miri, ignore)]`.
//! * What is isolated: in a delta of two [`snapshot()`]s,
//!   [`Snapshot::assert_inuse_at_most`] counts the blocks allocated in
//!   between and still live (and what blocks grew by `realloc`), through
//!   the function named, so what other threads free meanwhile never hides
//!   what this test added, even at the same stack (the tasks of two tests
//!   run by one tokio worker). What is not: blocks that other threads
//!   allocate through the same function in between and still hold count
//!   too (tests that call one function in parallel take a lock around it,
//!   or use [`measure`], which counts the calling thread only); the rate
//!   is process-wide (set it once per test binary, or under a lock); a
//!   delta's totals include every thread, and so do heapprof's own
//!   entries, which `assert_inuse_at_most` counts against every function
//!   (they get bytes only when the site table is full or a thread's stack
//!   is nearly so: see the README's "Reading a profile").
//! * [`Snapshot::write_flamegraph`] draws an SVG flame graph of live
//!   bytes ([`Snapshot::write_flamegraph_of`] of any [`SampleType`]), and
//!   [`Snapshot::write_pprof`] writes the same bytes as [`write_profile`],
//!   for `go tool pprof` when Go is at hand.
//!
//! ## In tests: exact per-call counts, peaks and leaks
//!
//! [`measure`] runs a closure and counts, exactly, what the calling thread
//! allocated and freed while it ran, and the most it held at once; tests
//! running at the same time on other threads do not change the numbers,
//! at any sample rate (`0` included):
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: heapprof::Profiler = heapprof::Profiler::new();
//!
//! #[test]
//! fn parse_stays_small() {
//!     let (doc, m) = heapprof::measure(|| my_crate::parse("…"));
//!     m.assert_allocations_at_most(8);
//!     m.assert_peak_at_most(64 * 1024);
//!     drop(doc);
//! }
//!
//! #[test]
//! fn handler_does_not_leak() {
//!     // Two warm-up calls build what is built once; then 100 calls must
//!     // leave no more live memory than they found.
//!     heapprof::assert_no_leak(2, 100, || my_crate::handle("GET /"));
//! }
//! # mod my_crate { pub fn parse(_: &str) {} pub fn handle(_: &str) {} }
//! ```
//!
//! * [`Measured`] has `allocations`, `allocated_bytes`, `deallocations`,
//!   `freed_bytes`, `peak_bytes` (the most the live bytes rose above
//!   their lowest point before, so that freeing older memory first does
//!   not hide a temporary) and [`net_bytes()`](Measured::net_bytes).
//! * A failed assertion's message gives the numbers and the sites of the
//!   thread's samples in the window (all of its allocations at
//!   [`set_sample_rate`]`(1)`).
//! * Only the calling thread is counted; for a call that spawns threads,
//!   take a [`stats()`] delta in a test that runs alone, after joining
//!   their handles (see [`measure`]).
//!   [`measure`]'s `net_bytes()` counts every free of the thread, of other
//!   threads' blocks too; [`assert_no_leak`] counts only frees of blocks
//!   the thread allocated since it began, so that dropping what a worker
//!   thread allocated does not hide a leak (its docs give the exception:
//!   an address a worker freed and reused).
//! * While a measure is active, each allocation of its thread costs a trip
//!   through the slow path (`BENCHMARKS.md`); other threads pay nothing.
//! * For async code, [`measure_future`] counts what a future's own polls
//!   do, on whichever threads poll it (`measure(|| rt.block_on(f))` counts
//!   every task the runtime runs on the thread meanwhile). What a runtime
//!   builds per worker, lazily inside a poll, counts in that poll; tokio's
//!   list of deferred wakeups also grows whenever more tasks yield at once
//!   than ever before, and a `current_thread` runtime makes it afresh in
//!   each `block_on` and frees it when `block_on` returns, after the
//!   future's last poll. For exact assertions on net bytes, measure the
//!   whole `measure(|| rt.block_on(f))` on a `current_thread` runtime with
//!   nothing else running, or use `assert_no_leak`.
//!
//! With the `criterion` feature, `heapprof::criterion` has criterion measurements
//! of bytes and allocations per iteration and a profiler that writes a
//! heap profile per benchmark: Go's `-benchmem` and `-memprofile` (see the
//! README's "In benchmarks").
//!
//! ## Automatic dumps
//!
//! * `HEAPPROF_OUT=heap.pb.gz`: write a profile when the process exits
//!   (returns from `main` or calls `std::process::exit`), and the peak
//!   profile beside it (`heap.peak.pb.gz`), with no code in the program.
//! * [`ProfileGuard`]: `let _p = heapprof::ProfileGuard::new("mem.pb.gz");`
//!   at the top of `main` writes when dropped, like Go's
//!   `defer profile.Start(profile.MemProfile).Stop()`.
//! * Both of these write once `main` is over (the guard is dropped after
//!   the locals declared below it; the exit dump runs after `main`
//!   returns), when most of the heap has been freed, so they open on
//!   `alloc_space` (everything allocated) rather than `inuse_space`
//!   (`-sample_index=inuse_space` shows what was still live). Read
//!   `HEAPPROF_OUT`'s peak profile for what was live at the top; a guard
//!   writes no peak profile (call [`write_peak_profile`]).
//! * A numbered series for `go tool pprof -base`: [`AutoDump`] (its
//!   handle's [`stop`](AutoDumpHandle::stop) ends it), or
//!   `HEAPPROF_DUMP_EVERY=30s`, `HEAPPROF_DUMP_EVERY_ALLOCATED=1GiB`,
//!   `HEAPPROF_DUMP_INUSE_GROWTH=256MiB` (files `heap.0001.pb.gz`, … named
//!   after `HEAPPROF_OUT`, or `heapprof.NNNN.pb.gz`).
//! * [`write_peak_profile`]: what was live when the heap was largest, which
//!   Go's profiler cannot show. The copy is refreshed whenever the sampled
//!   live heap passes its previous peak by `HEAPPROF_PEAK_GROWTH` (10 % by
//!   default).
//!
//! * [`AutoDump::at_limit`] or `HEAPPROF_DUMP_AT_LIMIT=80%,95%`: profiles
//!   written as memory nears its limit, before the OOM killer ends the
//!   process (below).
//!
//! A dump that fails is reported on stderr, once for each kind of dump
//! (the exit profile, its peak, a series, …); the program goes on.
//!
//! ### Before the OOM killer
//!
//! When the kernel kills a process for its memory, the profile that would
//! explain why goes with it. `HEAPPROF_DUMP_AT_LIMIT=80%,95%` (or
//! `AutoDump::new("heap.pb.gz").at_limit(&[0.8, 0.95])`) watches memory
//! against the limit from the dump thread and, as usage crosses each
//! threshold, writes the live profile and the peak profile beside the
//! dump path: `heap.limit80.pb.gz` and `heap.limit80.peak.pb.gz`, then
//! `heap.limit95.pb.gz` and `heap.limit95.peak.pb.gz` (named after
//! `HEAPPROF_OUT`, or `heapprof.pb.gz` in the working directory), with one
//! line on stderr naming them, which outlives the process in a container's
//! log.
//!
//! * The limit: the cgroup's (v2), the smaller of `memory.max` and
//!   `memory.high` of the process's cgroup or any cgroup above it, against
//!   its working set (`memory.current` less the page cache the kernel can
//!   drop, `inactive_file`: the number Kubernetes evicts on); else
//!   `HEAPPROF_MEMORY_LIMIT` against the process's resident size; else
//!   physical memory against the resident size. `HEAPPROF_MEMORY_LIMIT`
//!   also applies beside a cgroup limit, and whichever is nearer to being
//!   reached counts. The profiles' comments give the numbers, and the
//!   cgroup's `memory.events` counts (`high`, `max`, `oom`, `oom_kill`).
//! * Once per crossing: a threshold written is re-armed when usage falls
//!   below nine tenths of it (72 % for 80 %), and no sooner than 5 s after
//!   its last profiles; the next crossing replaces its two files. Usage
//!   that swings around a threshold writes no more than that, and never
//!   makes new files.
//! * Cost: the dump thread reads one small file every 50 ms (about 10 µs;
//!   the limits themselves once a second), nothing on the allocation path.
//!   Memory can grow by gigabytes in 50 ms: the thresholds are the margin.
//! * `HEAPPROF_CGROUP_DIR` reads another cgroup directory instead of the
//!   process's own under `/sys/fs/cgroup`: for tests, which write
//!   `memory.max` and `memory.current` there themselves, and for systems
//!   that mount cgroup2 elsewhere. cgroup v1 is not read.
//! * Names near the limit: naming frames for the first time can add tens
//!   of MiB to the resident size, so any profile looks names up only
//!   while the cgroup's limits and `HEAPPROF_MEMORY_LIMIT` (not physical
//!   memory) each leave 64 MiB; otherwise frames not named before stay
//!   unnamed in it, with their addresses, and it says why. Frames once
//!   named stay named: with a small limit, write one profile early, while
//!   memory is low, and the stacks it saw are named at the limit.
//!
//! When the inner allocator fails one of the program's allocations (it
//! returns null: the allocation that, unless the program handles it with
//! `try_reserve`, ends the process through `handle_alloc_error`), the
//! watch writes the peak profile, once, beside the series' path
//! (`heap.pb.gz` → `heap.alloc-failed.peak.pb.gz`), and says so on
//! stderr. Nothing can be built at that moment: the thread is inside the
//! allocator, may hold any lock, and an allocation of heapprof's that
//! failed in turn would abort a program about to recover. So the watch
//! encodes the peak profile in advance (on its first poll after each new
//! peak copy), and the failing thread only takes it with one atomic swap
//! and writes it with plain system calls: no allocation, no lock, no
//! wait. What this cannot do:
//!
//! * see a failure that does not reach heapprof's slow path: every
//!   allocation of 1 MiB or more does, a smaller one only when it ends a
//!   sampling countdown;
//! * help against the OOM killer itself: with Linux's default overcommit,
//!   allocations seldom fail, and the kernel's `SIGKILL` cannot be caught
//!   (allocations fail under `RLIMIT_AS`, `vm.overcommit_memory=2`, a capped
//!   allocator, or a 32-bit address space; the thresholds above are for
//!   the OOM killer);
//! * be newer than the last encoding (a poll and an encoding behind the
//!   newest peak copy);
//! * write for a request at least as large as a limit the kernel holds the
//!   process to (the cgroup's, `RLIMIT_AS`, physical memory; a
//!   `try_reserve` of an untrusted length is not memory running out), for heapprof's own
//!   allocations, in a forked child, or more than once;
//! * write through a symlink, device or FIFO at that path: only nothing or
//!   a regular file there is replaced.
//!
//! ## A running service: `/debug/pprof`
//!
//! [`http::serve`]`("127.0.0.1:6060")` serves Go's `net/http/pprof` paths
//! (`/debug/pprof/heap`, `allocs`, `peak`, `?debug=1`, an index page, and
//! `?seconds=N` deltas on `heap` and `allocs`: the peak has none, and
//! asking is a 400) from a background thread, for
//! `go tool pprof http://…`, `curl`,
//! Parca and Pyroscope; [`http::handle`] mounts the same in a server the
//! program already runs. [`write_text_profile`] writes the `?debug=1` text
//! anywhere. (Cargo feature `http`, on by default.)
//!
//! For continuous profilers, `/debug/pprof/delta_heap` is godeltaprof's
//! endpoint, which Grafana Alloy fetches for `godeltaprof_memory`: alloc
//! values since the endpoint's previous scrape, inuse values now. Go's
//! other profiles (`profile`, `goroutine`, `block`, `mutex`, …) are a 404
//! that says heapprof serves heap profiles only; the README has Alloy and
//! Parca scrape configs that fetch only what is served.
//!
//! ## Pushing to Grafana Pyroscope
//!
//! Where no scraper reaches (short jobs, hosts behind NAT),
//! `heapprof::pyroscope::Pusher` (cargo feature `pyroscope`) or
//! `HEAPPROF_PYROSCOPE_URL` pushes a profile every period from a thread of
//! its own, alloc values as deltas over the period and inuse values
//! absolute, as Pyroscope adds them up; see the `pyroscope` module.
//!
//! Every profile's `doc_url`, which pprof's web UI shows as Help, links
//! the section [above](#what-the-numbers-mean) on docs.rs for the version
//! that wrote it, once that version is published on crates.io.
//!
//! ## Configuration
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `HEAPPROF_SAMPLE_RATE` | `524288` | mean bytes between samples; `512KiB`, `2MiB`, `64k` also work; `0` = off (nothing sampled; the `HEAPPROF_DUMP_*` series and the pusher, which start at the first sample, never start), `1` = every allocation |
//! | `HEAPPROF_OUT` | unset | profile written at exit, and the peak profile beside it (`heap.pb.gz` → `heap.peak.pb.gz`) once the live heap has reached 1 MiB |
//! | `HEAPPROF_DUMP_EVERY` | unset | periodic series: a whole number and `ms`, `s`, `m` or `h` (`30s`, `5m`, `1h`); a bare number is seconds; at least 1 s (a shorter one is raised to it) |
//! | `HEAPPROF_DUMP_EVERY_ALLOCATED` | unset | a profile per so many bytes allocated; at least 1 MiB (a smaller step is raised to it) |
//! | `HEAPPROF_DUMP_INUSE_GROWTH` | unset | a profile whenever the live heap grew by so much; at least 1 MiB |
//! | `HEAPPROF_DUMP_AT_LIMIT` | unset | percentages of the memory limit (`80%,95%`, from 1 to 100) at which the live and peak profiles are written (`heap.limit80.pb.gz`, `heap.limit80.peak.pb.gz`); also arms the allocation-failure profile |
//! | `HEAPPROF_MEMORY_LIMIT` | unset | a limit on the resident size for `HEAPPROF_DUMP_AT_LIMIT` (`2GiB`; 1 MiB or more), watched beside the cgroup's, and kept clear of by name lookups |
//! | `HEAPPROF_CGROUP_DIR` | the process's cgroup | the cgroup v2 directory `HEAPPROF_DUMP_AT_LIMIT` and name lookups read, for tests and unusual mounts |
//! | `HEAPPROF_MAX_SITES` | `16384` | distinct stacks kept; past it, stacks with nothing live make room for new ones, and what they counted (with new stacks that find no room) goes to a `[heapprof overflow…]` site per label set |
//! | `HEAPPROF_SEED` | random | fixed seed for reproducible sampling: each thread's generator is seeded from it and the order in which threads start sampling, so runs repeat where threads start in the same order and allocate the same (a thread pool serving requests does not), and where the allocator returns the same addresses: heapprof's own allocations, which move with them, draw on the same countdown, so with address randomization on (the default) a seeded run takes as many samples but some of them a few allocations apart; `setarch -R` repeats it exactly |
//! | `HEAPPROF_PEAK_GROWTH` | `10%` | growth past the last peak copy before a new one is kept |
//! | `HEAPPROF_UNWIND` | `auto` | `auto`: frame pointers if the program was built with them (`-C force-frame-pointers=yes`), DWARF unwind tables otherwise and for stacks that leave its code (each return address's rule cached for the executable and the C library, libgcc's walk elsewhere and through a signal handler's frame; each frame-pointer stack is compared with DWARF when first seen, and code without frame pointers calling back into Rust switches to DWARF, with a line on stderr); `dwarf`; or `frame-pointers` (also `fp`; no comparison with DWARF) |
//! | `HEAPPROF_FULL_STACKS` | `0` | `1` keeps the process, thread and test start-up frames below the program's code |
//! | `HEAPPROF_PYROSCOPE_URL` | unset | push profiles to this Pyroscope server; `HEAPPROF_PYROSCOPE_NAME`, `_LABELS`, `_EVERY`, `_USER`, `_PASSWORD`, `_TOKEN`, `_TENANT`, `_TIMEOUT` as in the `pyroscope` module (feature `pyroscope`) |
//! | `HEAPPROF_THREAD_LABEL` | `1` | `0` leaves out the automatic `thread` label (see Labels; [`set_thread_label`] at run time) |
//! | `HEAPPROF_SYMBOLIZE` | `on` | `off`: profiles carry mappings (with GNU build IDs) and addresses only, no function names, and the process never looks a symbol up, so never parses its debug info (tens of MiB at its peak for a large binary); for servers that symbolize (Parca, Pyroscope with debug info uploaded), or `go tool pprof ./myprog heap.pb.gz`. Stacks then start where the program entered the allocator (in a debug build, at heapprof's `GlobalAlloc::alloc`) and keep the allocation and start-up frames (trimming those needs the names). `?symbolize=0` asks the same of one HTTP request. Snapshots, and the sites a failed `measure` assertion lists, have names wherever the process can find them (not in a stripped executable: see the README) |
//!
//! A value that does not parse is reported on stderr in one line and the
//! default is used; a variable set to nothing counts as unset. At run
//! time: [`set_sample_rate`], [`sample_rate`],
//! [`set_seed`]. A rate change is in force on every thread from its next
//! allocation, with the exceptions [`set_sample_rate`] gives.
//!
//! ## Cost
//!
//! An allocation that is not sampled costs a thread-local counter bump, a
//! subtract and a branch; a free, two counter bumps, an AND and a branch. A sampled allocation (one per
//! 512 KiB at the default rate) costs a stack walk and a short locked
//! update. See
//! `BENCHMARKS.md` in the repository for measurements.
//!
//! ## Design
//!
//! The source is in folders by stage, each listed with its role; a module
//! uses only the ones above it in this list, save one edge (below).
//! `tests/architecture.rs` holds the code to this table.
//!
//! | folder | role |
//! | --- | --- |
//! | `config/` | settings read once from the environment; one-line reports on stderr |
//! | `sample/` | sampling math: when a countdown ends in a sample, what a sample weighs, what a site's samples add up to |
//! | `thread/` | the one thread-local and its plain parts: counters and countdown, sampler state, filter mask, held locks, deferred frees, stack facts, registration, label-set ids, an active measure; the exit hooks |
//! | `support/` | runtime support with no profile data: locks with ranks, table growth, the reentrancy guard, heapprof's own threads, the registry of threads, memory mappings, signal state, the process across forks, memory limits and room for heapprof's work, small file reads |
//! | `labels/` | label sets: the table that interns them, scopes, the future wrapper, the tracing layer |
//! | `record/` | the slow path: stack capture, the site table, the sampled-block set, spare blocks, the peak copy, the blocks a leak check follows |
//! | `fast.rs` | the fast path: `Profiler`'s `GlobalAlloc` |
//! | `output/` | one path from a source (live, peak, delta) to a format (pprof, text, snapshot), with symbols |
//! | `dump/` | profiles written without a call: at exit, by a guard, as a series, near the memory limit, on a failed allocation |
//! | `measure/` | per-call measurement: exact counts of one thread's work, assertions, criterion integration |
//! | `http/` | the `/debug/pprof` endpoint and its server |
//! | `pyroscope/` | pushing profiles to Grafana Pyroscope from a thread of its own |
//! | `process/` | what runs once per process, and the fork handlers |
//!
//! The one upward edge: the allocation slow path (`record/`) calls
//! `process/` at the first allocation, after a sample and on a failed
//! allocation, since the dumps and fork handlers have no other way to
//! start before the program calls heapprof.
//!
//! An allocation: `fast.rs` counts it and charges it to the thread's
//! countdown (`thread/counters.rs`); when the countdown runs out,
//! `record::alloc` asks `record/countdown.rs` whether it is a sample, and
//! `record::alloc_sampled` obtains its block and records its stack
//! (`record/stack.rs`) and the thread's label set (`labels/`) at its site
//! (`record/sites.rs`) and the live block
//! in the set (`record/blocks.rs`); with too little stack left for that,
//! it records less, at a site of its own (`record::record`). A free: `fast.rs` tests the mask, and
//! `record/free.rs` finds the block in the set and credits its site.
//!
//! [`write_profile`]: `output::write` takes a copy of the site table
//! (`record::sites::snapshot`), and `output/pprof.rs` symbolizes it
//! (`output/symbolize.rs`), builds the `profile.proto` message and gzips
//! it.

#![warn(missing_docs)]
// Under Miri the allocator only forwards (`fast.rs`), so the recorder it
// would call is left unused.
#![cfg_attr(miri, allow(dead_code, unused_imports))]

// The loader's object list, thread stacks, `/proc`, futexes and fork
// handlers that heapprof reads are Linux's.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "heapprof runs on Linux only. In a project built for other systems too, depend on it under \
     [target.'cfg(target_os = \"linux\")'.dependencies] and put #[cfg(target_os = \"linux\")] \
     on the #[global_allocator] static and on each call into heapprof (README: Platforms)."
);

mod config;
mod dump;
mod fast;
#[cfg(feature = "http")]
pub mod http;
mod labels;
mod measure;
mod output;
mod process;
#[cfg(feature = "pyroscope")]
pub mod pyroscope;
mod record;
mod sample;
mod support;
mod thread;

use std::io;

pub use dump::{AutoDump, AutoDumpHandle, ProfileGuard};
pub use fast::Profiler;
#[cfg(feature = "tracing")]
pub use labels::tracing;
pub use labels::{FutureExt, Labeled, current_labels, set_thread_label, with_labels};
#[cfg(feature = "criterion")]
pub use measure::criterion;
pub use measure::{Measured, MeasuredFuture, assert_no_leak, measure, measure_future};
pub use output::snapshot::{
    Frame, FunctionBytes, SampleType, Site, Snapshot, Stats, snapshot, stats,
};
pub use record::countdown::ExactSampling;

/// Writes the current heap profile to `w`: a gzip-compressed pprof
/// `profile.proto` message with sample types `alloc_objects`,
/// `alloc_space`, `inuse_objects` and `inuse_space` (the default view).
///
/// Safe to call from any thread, at any time, as often as wanted; symbol
/// lookups are cached, so later calls are cheaper than the first. What
/// heapprof allocates to build the profile is its own: neither profiled
/// nor in [`stats()`]'s program counts. `w` is the program's: what it
/// allocates (a `Vec` growing) is the program's, counted and sampled.
///
/// # Errors
///
/// Whatever `w` returns, and an error of kind `Other` if heapprof is not the
/// program's global allocator (nothing could have been recorded);
/// `OutOfMemory`, with nothing written, if the process's memory limits
/// (`RLIMIT_AS`, strict overcommit) leave too little to build a profile,
/// where a failed allocation would abort the program; `WouldBlock`, with
/// nothing written, when called from the methods of the allocator a
/// `Profiler` wraps while heapprof holds its own locks (see
/// [`Profiler::wrap`]).
pub fn write_profile<W: io::Write>(w: W) -> io::Result<()> {
    output::write_to_program(output::Source::Live, output::Format::Pprof, w)
}

/// Writes the current heap profile in the legacy text format, as Go's
/// `pprof.Lookup("heap").WriteTo(w, 1)` and `/debug/pprof/heap?debug=1` do:
/// a `heap profile: …` header, one record per site with its addresses and
/// symbolized `#` lines, the exact counters of [`stats()`] in a
/// `# heapprof stats` trailer, and the memory map. People can read it
/// without tools; `go tool pprof <binary> <file>` reads it too. A
/// labelled site's record is followed by a `# labels: {"tenant":"acme"}`
/// line, which pprof skips: the format has no place for labels.
///
/// # Errors
///
/// Whatever `w` returns; `Other` if heapprof is not the global allocator;
/// `OutOfMemory` and `WouldBlock` as from [`write_profile`].
pub fn write_text_profile<W: io::Write>(w: W) -> io::Result<()> {
    output::write_to_program(output::Source::Live, output::Format::Text, w)
}

/// Writes the peak-heap profile: the live sites when the sampled estimate
/// of the live heap was at its highest (kept whenever it passes the
/// previous peak by `HEAPPROF_PEAK_GROWTH`, 10 % by default, from 1 MiB
/// up). It reads like any heap profile;
/// its comments say it is the peak, how large, and when.
///
/// # Errors
///
/// Whatever `w` returns; `NotFound` if the heap has not yet reached 1 MiB,
/// so no peak was recorded; `Other` if heapprof is not the global allocator;
/// `OutOfMemory` and `WouldBlock` as from [`write_profile`].
pub fn write_peak_profile<W: io::Write>(w: W) -> io::Result<()> {
    output::write_to_program(output::Source::Peak, output::Format::Pprof, w)
}

/// Sets the mean number of bytes between samples. `0` stops sampling; `1`
/// records every allocation. In force on every thread from its next
/// allocation after this returns, threads already running included: each
/// starts a fresh countdown at the new rate (at a rate above 0, its next
/// allocation is recorded, and counts once). Returns once each running
/// thread's change is confirmed, or, for threads it cannot confirm, after
/// a short bound.
///
/// A running thread takes it only when its countdown at the old rate
/// ends (within 1 MiB of allocation; 512 KiB if sampling was off) when
/// this call cannot reach it: a thread preempted in the middle of
/// updating its counters, or between the two steps of its allocation's
/// update of the countdown; one allocating so fast that it overwrites
/// every try (each try is confirmed, many times over); a thread whose
/// registration found no memory; and every thread when this is called
/// from a signal handler that interrupted heapprof while it held the lock
/// of its thread registry.
pub fn set_sample_rate(bytes: usize) {
    record::countdown::set_rate(bytes)
}

/// Records every allocation (sample rate 1) until the guard it returns is
/// dropped, for exact snapshot assertions in tests. Guards nest and may be
/// taken by tests running at once: the rate stays 1 while any is alive,
/// and the last one dropped puts back the rate in force when the first
/// was taken (a [`set_sample_rate`] call meanwhile is undone then). A test
/// that saves the rate, sets 1 and restores it instead can put the rate
/// back while a test beside it still counts on 1, which makes that test's
/// assertion an estimate that may miss a leak.
///
/// ```no_run
/// let _exact = heapprof::exact_sampling();
/// let before = heapprof::snapshot();
/// // … the code under test …
/// let grown = heapprof::snapshot().delta(&before);
/// grown.assert_inuse_at_most("my_crate::parse", 4096);
/// ```
pub fn exact_sampling() -> ExactSampling {
    record::countdown::exact_sampling()
}

/// The mean number of bytes between samples (default 524288, or
/// `HEAPPROF_SAMPLE_RATE`).
pub fn sample_rate() -> usize {
    record::countdown::rate()
}

/// Internals for `dev/benches/micro.rs`, compiled only with the
/// `bench-internals` feature; not part of the API.
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod __bench {
    /// Captures the calling thread's stack as a sample would (with the
    /// unwinder chosen for this process); returns the frame count.
    pub fn capture_stack() -> usize {
        crate::record::stack::capture_for_bench()
    }

    /// Names `addrs` (return addresses) as a profile would, with the
    /// budget of the lookup in heapprof's own object given (heap bytes of
    /// parsed debug info, resident bytes of its file), through the unit
    /// index or the whole file's context; returns the frame count.
    pub fn symbolize_with_budget(
        addrs: &[usize],
        parsed_bytes: i64,
        file_bytes: u64,
        with_index: bool,
    ) -> usize {
        crate::output::symbolize::resolve_all_with_budget(
            addrs.iter().copied(),
            parsed_bytes,
            file_bytes,
            with_index,
        )
        .values()
        .map(|frames| frames.len())
        .sum()
    }
}

/// Seeds the sampler's random generators, for reproducible runs: the
/// calling thread restarts from this seed, and each thread that starts
/// sampling later is seeded from it and its start order. A run repeats
/// exactly where the allocator also returns the same addresses (see
/// `HEAPPROF_SEED` in the crate docs).
pub fn set_seed(seed: u64) {
    record::countdown::set_seed(seed)
}
