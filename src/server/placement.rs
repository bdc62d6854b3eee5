//! How many workers take new connections: no more than the CPUs the workers may run on and
//! other processes leave free.
//!
//! Thread-per-core pays only while each worker has a CPU of its own. When the workers' CPU
//! affinity allows fewer CPUs than there are workers (`taskset -a -p` on a running server, a
//! container's cpuset or systemd's `CPUAffinity=` changed while serving), the workers sharing
//! a CPU take turns, and every turn is a context switch: on one CPU, one worker serves
//! 3–15 % more per core-second than two (`bench/results/ab-workers`), and this placement gave
//! +7 % (handshakes) to +18 % (HTTP/1.1) per core on one CPU (`bench/results/ab-placement`).
//!
//! So the listening sockets of the workers beyond that number move to the first ones, and move
//! back home when the affinity widens again. A socket moves without being closed, so the
//! connections queued on it are kept; connections already open stay with their worker. The
//! affinity is re-read at most every [`CHECK_EVERY_MS`] on the accept path: an idle server does
//! no periodic work for it. (Go's runtime likewise follows the CPUs it may use while running.)
//!
//! The same holds when the CPUs are allowed but busy with other processes: a load generator on
//! the same machine, a backend application behind the proxy. A worker then gets its CPU in
//! turns with them, and every extra worker is one more thread to preempt and wake: with the
//! benchmark's load generator sharing both CPUs, one accepting worker instead of two served
//! 14–29 % more handshakes per core-second, at a higher rate and a lower p99
//! (`bench/results/ab-w1`). So the CPU time other processes use on the allowed CPUs is
//! measured too ([`LoadGauge`], from `/proc/stat` and `/proc/self/stat`, over windows of at
//! least [`LOAD_WINDOW_MIN_MS`], on the same accept path), and the CPUs left for the workers
//! decide, with a margin each way against flapping ([`for_load`]). A window longer than
//! [`LOAD_WINDOW_MAX_MS`] (no connection came for a while) says nothing about now: placement
//! starts again from the allowed CPUs, so a burst of new keep-alive connections after a quiet
//! spell is spread over all workers.
//!
//! This is mechanism only: the number of workers is the operator's (`workers`), this decides
//! how many of them accept at a time.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use rustix::thread::{CpuSet, Pid};
use tokio::sync::mpsc;

/// The affinity is re-read at most this often (milliseconds), and only when connections come.
pub const CHECK_EVERY_MS: u64 = 100;

/// Other processes' CPU use is judged over windows at least this long (milliseconds): the
/// kernel counts CPU time in ticks (4 ms at 250 Hz), so shorter windows are mostly noise.
pub const LOAD_WINDOW_MIN_MS: u64 = 200;

/// A window longer than this (milliseconds) is stale: placement starts again from the CPUs the
/// workers may run on.
pub const LOAD_WINDOW_MAX_MS: u64 = 2000;

/// A listening socket on its way to the worker that is to accept from it.
pub struct Handoff {
    pub listener: super::Listening,
    /// The listener (its id in the server's listener table).
    pub id: u64,
    /// The worker the socket was bound for, where it returns when that worker accepts again.
    pub home: usize,
}

/// Shared by the workers: which of them accept, and the way to hand sockets over.
pub struct Placement {
    /// Each worker's thread id (0 until the worker has started).
    tids: Vec<AtomicI32>,
    /// Workers `0..accepting` take new connections.
    accepting: AtomicUsize,
    /// Milliseconds since `epoch` of the last affinity check.
    last_check: AtomicU64,
    epoch: Instant,
    handoff: Vec<mpsc::UnboundedSender<Handoff>>,
    /// How many workers the affinity allowed at the last check (for the log).
    by_affinity: AtomicUsize,
    /// Whether other processes' CPU use counts (see the module docs); on by default.
    follow_load: AtomicBool,
    /// Only used by the worker that won `last_check`; the lock is never contended.
    gauge: Mutex<LoadGauge>,
}

impl Placement {
    /// A placement for `workers` workers, all accepting, and each worker's handoff inbox.
    pub fn new(workers: usize) -> (Placement, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let workers = workers.max(1);
        let (handoff, inboxes) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let placement = Placement {
            tids: (0..workers).map(|_| AtomicI32::new(0)).collect(),
            accepting: AtomicUsize::new(workers),
            last_check: AtomicU64::new(0),
            epoch: Instant::now(),
            handoff,
            by_affinity: AtomicUsize::new(workers),
            follow_load: AtomicBool::new(true),
            gauge: Mutex::new(LoadGauge::default()),
        };
        (placement, inboxes)
    }

    /// Called on worker `n`'s own thread when it starts, so that its affinity can be read.
    pub fn register(&self, n: usize) {
        if let Some(tid) = self.tids.get(n) {
            tid.store(
                rustix::thread::gettid().as_raw_nonzero().get(),
                Ordering::Relaxed,
            );
        }
    }

    /// How many workers take new connections now.
    pub fn accepting(&self) -> usize {
        self.accepting.load(Ordering::Relaxed)
    }

    /// The worker that should accept from the sockets bound for worker `home`: itself while
    /// it accepts, else round robin over the accepting ones.
    pub fn host_of(&self, home: usize) -> usize {
        home % self.accepting().max(1)
    }

    /// Whether the CPU time of other processes counts in how many workers accept (on by
    /// default). Off, only the workers' affinity does; for tests of that mechanism on a
    /// machine that is busy with other things.
    pub fn follow_load(&self, on: bool) {
        self.follow_load.store(on, Ordering::Relaxed);
    }

    /// After an accept: re-reads the workers' affinity when the last check is older than
    /// [`CHECK_EVERY_MS`], and other processes' CPU use when the last reading is older than
    /// [`LOAD_WINDOW_MIN_MS`] (one worker does it; the others go on).
    pub fn after_accept(&self) {
        if self.tids.len() < 2 {
            return;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_check.load(Ordering::Relaxed);
        if now.saturating_sub(last) < CHECK_EVERY_MS
            || self
                .last_check
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Some(set) = self.allowed_set() else {
            return;
        };
        let workers = self.tids.len();
        let cpus = set.count() as usize;
        let by_affinity = cpus.clamp(1, workers);
        let was = self.accepting.load(Ordering::Relaxed);
        let mut want = by_affinity;
        let mut others = None;
        if by_affinity > 1 && self.follow_load.load(Ordering::Relaxed) {
            let mut gauge = self.gauge.lock().unwrap_or_else(|e| e.into_inner());
            match gauge.read(now, &set) {
                Reading::Others(o) => {
                    others = Some(o);
                    want = for_load(by_affinity, o, was.min(by_affinity));
                }
                Reading::TooSoon => want = was.clamp(1, by_affinity),
                Reading::Stale | Reading::Unavailable => {}
            }
        }
        let affinity_changed = self.by_affinity.swap(by_affinity, Ordering::Relaxed) != by_affinity;
        if was == want {
            return;
        }
        self.accepting.store(want, Ordering::Relaxed);
        if affinity_changed {
            tracing::info!(
                "the workers may run on {cpus} CPU(s): {want} of {workers} workers take new connections"
            );
        } else if let Some(o) = others {
            tracing::debug!(
                "other processes use {o:.2} of the {cpus} CPU(s) the workers may run on: {want} of {workers} workers take new connections"
            );
        } else {
            tracing::debug!(
                "no recent reading of other processes' CPU use: {want} of {workers} workers take new connections"
            );
        }
    }

    /// The CPUs that any worker may run on; `None` when some worker's affinity cannot be read
    /// (it keeps the current placement).
    fn allowed_set(&self) -> Option<CpuSet> {
        let mut union = CpuSet::new();
        for tid in &self.tids {
            let Some(pid) = Pid::from_raw(tid.load(Ordering::Relaxed)) else {
                return None; // not started yet
            };
            let set = rustix::thread::sched_getaffinity(Some(pid)).ok()?;
            for cpu in 0..CpuSet::MAX_CPU {
                if set.is_set(cpu) {
                    union.set(cpu);
                }
            }
        }
        Some(union)
    }

    /// The number of CPUs that any worker may run on, capped at the number of workers.
    #[cfg(test)]
    fn allowed_cpus(&self) -> Option<usize> {
        self.allowed_set()
            .map(|set| (set.count() as usize).min(self.tids.len()))
    }

    /// Sends a socket to the worker that is to accept from it now. When that worker has
    /// stopped (shutdown), the socket is closed.
    pub fn hand_over(&self, handoff: Handoff) {
        let to = self.host_of(handoff.home);
        if let Some(tx) = self.handoff.get(to) {
            let _ = tx.send(handoff);
        }
    }
}

/// How many of `allowed` workers should accept when other processes keep `others` CPUs' worth
/// of the allowed CPUs busy, `current` accepting now: one per CPU left, rounded up once more
/// than 0.35 of a CPU is free beyond the whole ones (so that an idle machine's stray load keeps
/// every worker), and down only when less than 0.15 is; in between, `current` stays.
pub fn for_load(allowed: usize, others: f64, current: usize) -> usize {
    let free = allowed as f64 - others.max(0.0);
    let fit = |margin: f64| ((free - margin).ceil().max(1.0) as usize).min(allowed);
    let (up, down) = (fit(0.35), fit(0.15));
    if current < up {
        up
    } else if current > down {
        down
    } else {
        current
    }
}

/// What a [`LoadGauge`] reading says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reading {
    /// Other processes used this many CPUs' worth of the allowed CPUs since the last reading.
    Others(f64),
    /// The last reading is too recent to say anything ([`LOAD_WINDOW_MIN_MS`]).
    TooSoon,
    /// The last reading is too old ([`LOAD_WINDOW_MAX_MS`]) or there was none; this one starts
    /// a new window.
    Stale,
    /// `/proc` could not be read (not Linux, or not mounted): other processes do not count.
    Unavailable,
}

/// Measures the CPU time other processes use on a set of CPUs: the busy time of those CPUs
/// (`/proc/stat`) minus this process's own (`/proc/self/stat`), as a share of the time that
/// passed on them (all their `/proc/stat` fields). All three come from the kernel's tick
/// accounting in the same unit, so they agree (softirq work counts for the process it
/// interrupted, in both). Steal time counts as used by others: the hypervisor did not give it
/// to us.
#[derive(Debug, Default)]
pub struct LoadGauge {
    /// (milliseconds, ticks of the CPUs, own ticks) at the start of the window.
    last: Option<(u64, CpuTicks, u64)>,
}

/// Tick counters of a set of CPUs, from `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    /// user, nice, system, irq, softirq and steal time (guest time is inside user).
    pub busy: u64,
    /// Every field, idle and iowait included: the time that passed, times `cpus`.
    pub total: u64,
    /// How many of the set's CPUs have a line.
    pub cpus: usize,
}

impl LoadGauge {
    /// Reads `/proc` at `now_ms` for the CPUs in `set`.
    pub fn read(&mut self, now_ms: u64, set: &CpuSet) -> Reading {
        if let Some((at, _, _)) = self.last {
            if now_ms.saturating_sub(at) < LOAD_WINDOW_MIN_MS {
                return Reading::TooSoon;
            }
        }
        let stat = std::fs::read_to_string("/proc/stat").ok();
        let own = std::fs::read_to_string("/proc/self/stat").ok();
        let (Some(cpu), Some(own)) = (
            stat.as_deref().and_then(|s| cpu_ticks(s, set)),
            own.as_deref().and_then(own_ticks),
        ) else {
            self.last = None;
            return Reading::Unavailable;
        };
        self.update(now_ms, cpu, own)
    }

    /// One reading: `cpu` and `own` are tick counters as the kernel keeps them.
    pub fn update(&mut self, now_ms: u64, cpu: CpuTicks, own: u64) -> Reading {
        let last = self.last.replace((now_ms, cpu, own));
        let Some((at, cpu0, own0)) = last else {
            return Reading::Stale;
        };
        let ms = now_ms.saturating_sub(at);
        if ms < LOAD_WINDOW_MIN_MS {
            self.last = last; // keep the window open
            return Reading::TooSoon;
        }
        if ms > LOAD_WINDOW_MAX_MS || cpu.cpus != cpu0.cpus {
            return Reading::Stale;
        }
        let passed = cpu.total.saturating_sub(cpu0.total);
        if passed == 0 {
            return Reading::Stale;
        }
        let others = (cpu.busy.saturating_sub(cpu0.busy)).saturating_sub(own.saturating_sub(own0));
        Reading::Others(others as f64 * cpu.cpus as f64 / passed as f64)
    }
}

/// The tick counters of the CPUs of `set`, from the text of `/proc/stat`; `None` when no line
/// of those CPUs is there.
pub fn cpu_ticks(stat: &str, set: &CpuSet) -> Option<CpuTicks> {
    let mut ticks = CpuTicks::default();
    for line in stat.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            break; // the per-CPU lines come first
        };
        let mut fields = rest.split_ascii_whitespace();
        let Some(Ok(cpu)) = fields.next().map(str::parse::<usize>) else {
            continue; // the "cpu" line: all CPUs together
        };
        if cpu >= CpuSet::MAX_CPU || !set.is_set(cpu) {
            continue;
        }
        let v: Vec<u64> = fields.map(|f| f.parse().unwrap_or(0)).collect();
        let field = |i: usize| v.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
        // already inside user (and guest_nice inside nice), so the total leaves them out.
        ticks.busy += field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
        ticks.total += (0..8).map(field).sum::<u64>();
        ticks.cpus += 1;
    }
    (ticks.cpus > 0).then_some(ticks)
}

/// The user + system ticks in the text of a `stat` file: `/proc/self/stat` for this process,
/// `/proc/self/task/TID/stat` for one of its threads.
pub fn own_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_of_parked_workers_go_round_robin_to_the_accepting_ones() {
        let (p, _inboxes) = Placement::new(5);
        assert_eq!(
            (0..5).map(|h| p.host_of(h)).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        p.accepting.store(2, Ordering::Relaxed);
        assert_eq!(
            (0..5).map(|h| p.host_of(h)).collect::<Vec<_>>(),
            [0, 1, 0, 1, 0]
        );
        p.accepting.store(1, Ordering::Relaxed);
        assert_eq!(
            (0..5).map(|h| p.host_of(h)).collect::<Vec<_>>(),
            [0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn affinity_is_read_from_every_registered_worker() {
        let (p, _inboxes) = Placement::new(2);
        assert_eq!(p.allowed_cpus(), None, "no worker registered yet");
        p.register(0);
        p.register(1); // the same thread twice: its own affinity
        let own = rustix::thread::sched_getaffinity(None).unwrap().count() as usize;
        assert_eq!(p.allowed_cpus(), Some(own.min(2)));
    }

    #[test]
    fn workers_accepting_follow_the_cpus_other_processes_leave() {
        // Two CPUs allowed: an idle machine keeps both workers, a load generator using one
        // CPU or more leaves one.
        assert_eq!(for_load(2, 0.0, 2), 2);
        assert_eq!(for_load(2, 0.5, 2), 2);
        assert_eq!(for_load(2, 1.05, 2), 1);
        assert_eq!(for_load(2, 2.0, 2), 1);
        // Between 0.65 and 0.85 CPUs used by others, the current number stays (no flapping).
        for others in [0.7, 0.8] {
            assert_eq!(for_load(2, others, 2), 2, "{others}");
            assert_eq!(for_load(2, others, 1), 1, "{others}");
        }
        assert_eq!(for_load(2, 0.6, 1), 2);
        // More CPUs: one worker per CPU left.
        assert_eq!(for_load(8, 0.0, 8), 8);
        assert_eq!(for_load(8, 3.0, 8), 5);
        assert_eq!(for_load(8, 3.0, 2), 5);
        assert_eq!(for_load(8, 7.9, 8), 1);
        assert_eq!(for_load(8, 9.0, 3), 1);
        // Nonsense readings stay within 1..=allowed.
        assert_eq!(for_load(4, -1.0, 4), 4);
        assert_eq!(for_load(4, f64::NAN, 4), 4);
    }

    #[test]
    fn the_gauge_measures_others_over_bounded_windows() {
        let mut g = LoadGauge::default();
        let t = |busy, total| CpuTicks {
            busy,
            total,
            cpus: 2,
        };
        // 2 CPUs and 100 ticks a second: 500 ms are 100 ticks of the two together.
        assert_eq!(
            g.update(1_000, t(10_000, 50_000), 500),
            Reading::Stale,
            "first"
        );
        assert_eq!(g.update(1_100, t(10_020, 50_020), 510), Reading::TooSoon);
        // The window still starts at 1 000 ms: 100 ticks passed, all busy, 45 of them ours.
        let Reading::Others(o) = g.update(1_500, t(10_100, 50_100), 545) else {
            panic!("a reading")
        };
        assert!((o - 1.1).abs() < 1e-9, "{o}");
        // Nobody else: our own ticks are all the busy ones.
        let Reading::Others(o) = g.update(2_000, t(10_150, 50_200), 595) else {
            panic!("a reading")
        };
        assert!(o.abs() < 1e-9, "{o}");
        // A long quiet spell: the reading only starts a new window.
        assert_eq!(g.update(9_000, t(10_300, 51_600), 600), Reading::Stale);
        assert!(matches!(
            g.update(9_250, t(10_350, 51_650), 600),
            Reading::Others(_)
        ));
        // Another set of CPUs (the affinity changed): a new window.
        let three = CpuTicks {
            busy: 10_400,
            total: 51_800,
            cpus: 3,
        };
        assert_eq!(g.update(9_500, three, 600), Reading::Stale);
        // Counters that go backwards (should not happen) read as no load, not as a panic;
        // no time passed at all is no reading.
        let back = CpuTicks {
            busy: 0,
            total: 60_000,
            cpus: 3,
        };
        assert_eq!(g.update(9_750, back, 0), Reading::Others(0.0));
        assert_eq!(g.update(10_000, back, 0), Reading::Stale);
    }

    #[test]
    fn proc_stat_is_read_for_the_allowed_cpus_only() {
        let stat = "cpu  736118 6 298492 988270 4453 0 134582 759 0 0\n\
                    cpu0 300 1 100 5000 9 2 20 3 7 0\n\
                    cpu1 400 0 200 6000 9 0 30 0 0 0\n\
                    intr 37901463 0 0 0\n\
                    cpu9 1 1 1 1 1 1 1 1 1 1\n";
        let mut one = CpuSet::new();
        one.set(1);
        let ticks = |busy, total, cpus| Some(CpuTicks { busy, total, cpus });
        assert_eq!(cpu_ticks(stat, &one), ticks(630, 6639, 1));
        one.set(0);
        assert_eq!(cpu_ticks(stat, &one), ticks(630 + 426, 6639 + 5435, 2));
        let mut absent = CpuSet::new();
        absent.set(5);
        assert_eq!(cpu_ticks(stat, &absent), None);
        assert_eq!(cpu_ticks("", &one), None);
        // This machine's own file parses, and so does this process's line.
        let real = std::fs::read_to_string("/proc/stat").unwrap();
        let own_set = rustix::thread::sched_getaffinity(None).unwrap();
        assert!(cpu_ticks(&real, &own_set).is_some());
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(own_ticks(&me).is_some());
    }

    #[test]
    fn own_ticks_skip_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 1 0 0 0 17 25 0 0 20 0 3 0 1 1 1";
        assert_eq!(own_ticks(stat), Some(42));
        assert_eq!(own_ticks("garbage"), None);
        assert_eq!(own_ticks("1 (x) S 1 2"), None);
    }
}
