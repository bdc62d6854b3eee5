//! Log files: where access-log and TLS-event lines go, without workers ever waiting on a disk.
//!
//! Every destination (a file path, or standard output) is one [`LogFile`], shared by whoever
//! writes to it: sites that name the same file share one handle, and a process-wide registry
//! keyed by the destination hands the same handle to the next configuration generation while
//! the current one still holds it, so a reload keeps the files whose path did not change.
//!
//! A writer hands a complete line to the file's own thread through a bounded queue and goes on:
//! when the queue is full (the disk does not keep up) the line is dropped and counted, never
//! waited for. One thread writes each destination, whole lines only, so lines never tear or
//! interleave. [`reopen_all`] (SIGUSR1, for logrotate) makes every file thread close its file
//! and open the path again, after the lines queued before it.
//!
//! Hand-rolled rather than `tracing-appender`: its non-blocking writer has one destination per
//! writer and no reopen, and logrotate's `copytruncate` would lose lines.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Where a log's lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogTarget {
    /// The process's standard output.
    Stdout,
    /// A file, appended to (created with mode 0640 when missing).
    File(PathBuf),
}

impl std::fmt::Display for LogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogTarget::Stdout => f.write_str("stdout"),
            LogTarget::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Lines waiting for a file's thread, at most. A line is a few hundred bytes: a full queue
/// holds a few MiB, seconds of a busy server's lines.
pub const QUEUE_LINES: usize = 16 * 1024;

/// How long the writer lets lines gather while the server is busy.
const BATCH: Duration = Duration::from_millis(10);

/// How often a file's thread wakes up when nothing comes (to report dropped lines).
const TICK: Duration = Duration::from_secs(1);

enum Msg {
    Line(Vec<u8>),
    Reopen,
    /// Everything queued before is written and flushed: answer.
    Flush(SyncSender<()>),
}

/// One log destination, shared (see the module documentation).
pub struct LogFile {
    target: LogTarget,
    tx: SyncSender<Msg>,
    /// Lines dropped because the queue was full.
    dropped: AtomicU64,
}

impl std::fmt::Debug for LogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFile")
            .field("target", &self.target)
            .finish()
    }
}

impl LogFile {
    /// Queues one complete line (`line` ends with `\n`). Never blocks: a line that finds the
    /// queue full is dropped and counted.
    pub fn write(&self, line: Vec<u8>) {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped so far because the disk did not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Where the lines go.
    pub fn target(&self) -> &LogTarget {
        &self.target
    }

    /// Waits (up to `timeout`) until every line queued so far is written and flushed.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }
}

/// Open destinations, by target. Weak: a destination no configuration uses any more is closed
/// (its thread ends once the last handle is gone).
static REGISTRY: Mutex<Option<HashMap<LogTarget, Weak<LogFile>>>> = Mutex::new(None);

/// The shared handle for `target`: the one already open, or a new one (the file is opened
/// now, so that an unwritable path is an error at start, not a silent loss).
pub fn open(target: &LogTarget) -> io::Result<Arc<LogFile>> {
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let map = registry.get_or_insert_with(HashMap::new);
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(file) = map.get(target).and_then(Weak::upgrade) {
        return Ok(file);
    }
    let out = Output::open(target)?;
    let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
    let file = Arc::new(LogFile {
        target: target.clone(),
        tx,
        dropped: AtomicU64::new(0),
    });
    let weak = Arc::downgrade(&file);
    let name = match target {
        LogTarget::Stdout => "portcullis-log-stdout".to_owned(),
        LogTarget::File(_) => "portcullis-log".to_owned(),
    };
    std::thread::Builder::new()
        .name(name)
        .spawn(move || run(out, rx, weak))?;
    map.insert(target.clone(), Arc::downgrade(&file));
    Ok(file)
}

/// Every open destination.
fn all() -> Vec<Arc<LogFile>> {
    let registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    registry
        .iter()
        .flat_map(|m| m.values())
        .filter_map(Weak::upgrade)
        .collect()
}

/// Closes and reopens every log file at its path (SIGUSR1): after logrotate renamed a file,
/// the following lines go to a new file of the old name. Lines queued before go to the old one.
pub fn reopen_all() {
    for file in all() {
        // A blocking send: the signal handler may wait for room, workers never do.
        let _ = file.tx.send(Msg::Reopen);
    }
}

/// Writes out everything queued on every destination (at shutdown), waiting up to `timeout`
/// for each.
pub fn flush_all(timeout: Duration) {
    for file in all() {
        file.flush(timeout);
    }
}

/// A destination as its thread holds it.
enum Output {
    Stdout,
    File(PathBuf, BufWriter<File>),
}

impl Output {
    fn open(target: &LogTarget) -> io::Result<Output> {
        match target {
            LogTarget::Stdout => Ok(Output::Stdout),
            LogTarget::File(path) => Ok(Output::File(
                path.clone(),
                BufWriter::with_capacity(64 * 1024, open_append(path)?),
            )),
        }
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Output::Stdout => io::stdout().lock().write_all(line),
            Output::File(_, w) => w.write_all(line),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stdout => io::stdout().lock().flush(),
            Output::File(_, w) => w.flush(),
        }
    }

    fn reopen(&mut self) {
        if let Output::File(path, w) = self {
            let _ = w.flush();
            match open_append(path) {
                Ok(f) => *w = BufWriter::with_capacity(64 * 1024, f),
                Err(e) => tracing::error!(
                    "cannot reopen log file {}: {e}; still writing to the file open before",
                    path.display()
                ),
            }
        }
    }
}

/// Opens `path` for appending, creating it (mode 0640) when missing.
pub fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// A destination's thread: writes what comes, flushes whenever the queue is empty (so a line
/// is on disk as soon as the server is idle for a moment), reports dropped lines.
///
/// Under load it does not wait on the queue for each line: after a batch it sleeps for
/// [`BATCH`] and takes what came meanwhile. A worker's `send` wakes this thread only when it
/// waits in `recv` (idle), so a busy server pays no cross-thread wake-up (a futex call on
/// both sides) per request, and the file gets one write per batch.
fn run(mut out: Output, rx: Receiver<Msg>, file: Weak<LogFile>) {
    let mut reported = 0u64;
    let mut failed = false;
    let mut busy = false;
    loop {
        let first = if busy {
            std::thread::sleep(BATCH);
            match rx.try_recv() {
                Ok(m) => Some(m),
                Err(std::sync::mpsc::TryRecvError::Empty) => None,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            }
        } else {
            match rx.recv_timeout(TICK) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        busy = first.is_some();
        let mut next = first;
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    if let Err(e) = out.write(&line) {
                        if !failed {
                            failed = true;
                            tracing::error!("cannot write log {}: {e}", describe(&out));
                        }
                    } else {
                        failed = false;
                    }
                }
                Msg::Reopen => out.reopen(),
                Msg::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
        let Some(file) = file.upgrade() else { break };
        let dropped = file.dropped();
        if dropped > reported {
            tracing::warn!(
                "log {}: {} line(s) dropped, the disk is not keeping up",
                file.target,
                dropped - reported
            );
            reported = dropped;
        }
    }
    // The last handle is gone: what is still queued goes out.
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Line(line) = msg {
            let _ = out.write(&line);
        }
    }
    let _ = out.flush();
}

fn describe(out: &Output) -> String {
    match out {
        Output::Stdout => "stdout".into(),
        Output::File(p, _) => p.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_by_target_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let t = LogTarget::File(path.clone());
        let a = open(&t).unwrap();
        let b = open(&t).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        a.write(b"one\n".to_vec());
        assert!(a.flush(Duration::from_secs(5)));
        std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
        reopen_all();
        b.write(b"two\n".to_vec());
        assert!(b.flush(Duration::from_secs(5)));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.log.1")).unwrap(),
            "one\n"
        );
    }
}
