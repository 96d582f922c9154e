//! The one way this process writes to stdout and stderr: [`write`]. A reader that has gone (a
//! pipe into `head`) and a device that fails (`/dev/full`, a full disk) are answers it returns,
//! never a panic; `println!` and `eprintln!` panic on both, so nothing else writes.
//!
//! Commands print through [`Sink`] (kept by `output::Out`): the first failed write stops the
//! output, and [`Sink::settle`] turns it into the exit code: a closed pipe exits quietly with
//! the command's own code, any other write error with [`super::exit::OUTPUT`] and one line on
//! stderr. Log lines go through [`LogWriter`], which never fails or blocks the caller: a thread
//! writes them, and a line it cannot write (or that finds its queue full because nobody reads
//! stderr) is counted in `orchestrator_log_lines_dropped_total` while the work carries on.
//!
//! It must not decide what is printed or how it looks (`output.rs` renders).

use std::io::Write as _;
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// Where a write goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What became of a write.
#[derive(Debug)]
pub enum Written {
    Done,
    /// The reader has gone (`EPIPE`): nobody wants the rest.
    Closed,
    /// The device refused it (`ENOSPC`, `EIO`, ...).
    Failed(std::io::Error),
}

/// Writes all of `bytes` to `stream` (and flushes stdout). Never panics.
pub fn write(stream: Stream, bytes: &[u8]) -> Written {
    let result = match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|()| out.flush())
        }
        Stream::Stderr => std::io::stderr().lock().write_all(bytes),
    };
    match result {
        Ok(()) => Written::Done,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Written::Closed,
        Err(e) => Written::Failed(e),
    }
}

/// Whether `stream` is a terminal (for colour).
pub fn is_terminal(stream: Stream) -> bool {
    use std::io::IsTerminal as _;
    match stream {
        Stream::Stdout => std::io::stdout().is_terminal(),
        Stream::Stderr => std::io::stderr().is_terminal(),
    }
}

/// Whether nobody can read stdout any more, asked without writing: a pipe whose reader closed
/// (`POLLERR`), a hung-up terminal or socket (`POLLHUP`), or no stdout at all (`POLLNVAL`).
/// A file or a live reader answers `false`.
#[cfg(unix)]
pub fn stdout_gone() -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd as _;
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)),
        Err(_) => false,
    }
}

#[cfg(not(unix))]
pub fn stdout_gone() -> bool {
    false
}

/// How a command's output has gone so far.
#[derive(Debug, Default)]
enum State {
    #[default]
    Open,
    Closed,
    Failed(std::io::Error),
}

/// A command's stdout: every line goes through [`write`]; after the first failure nothing more
/// is written.
#[derive(Debug, Default)]
pub struct Sink {
    state: Mutex<State>,
}

impl Sink {
    /// Writes `text` unless an earlier write failed; `false` once the output is closed or failed.
    pub fn put(&self, text: &str) -> bool {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !matches!(*state, State::Open) {
            return false;
        }
        match write(Stream::Stdout, text.as_bytes()) {
            Written::Done => return true,
            Written::Closed => *state = State::Closed,
            Written::Failed(e) => *state = State::Failed(e),
        }
        false
    }

    /// Whether more output is wanted: nothing failed yet and the reader is still there (asked
    /// without writing, for a command that waits between lines).
    pub fn wanted(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(*state, State::Open) && stdout_gone() {
            *state = State::Closed;
        }
        matches!(*state, State::Open)
    }

    /// The command's result once its output is known: a closed pipe changes nothing (the reader
    /// took what it wanted); any other write error turns success into
    /// [`super::exit::OUTPUT`], and a failed command keeps its own code and message.
    pub fn settle(&self, result: anyhow::Result<u8>) -> anyhow::Result<u8> {
        let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match (&*state, result) {
            (State::Failed(e), Ok(_)) => {
                Err(super::fail(super::exit::OUTPUT, format!("cannot write the output to stdout: {e}")))
            }
            (_, result) => result,
        }
    }
}

/// Log lines waiting for stderr at most; past this a line is dropped (and counted) rather than
/// making its caller wait for a reader that does not read.
const LOG_QUEUE: usize = 4096;

/// What the log thread is handed.
enum Queued {
    Line(Vec<u8>),
    /// Answer once every line queued before it is written (or dropped).
    Flush(mpsc::Sender<()>),
}

/// The log thread's queue, started by the first line; `None` when no thread could be started
/// (lines are then written in place).
static LOG_THREAD: OnceLock<Option<mpsc::SyncSender<Queued>>> = OnceLock::new();

fn log_thread() -> Option<&'static mpsc::SyncSender<Queued>> {
    LOG_THREAD
        .get_or_init(|| {
            let (tx, rx) = mpsc::sync_channel::<Queued>(LOG_QUEUE);
            let spawned = std::thread::Builder::new().name("log-writer".into()).spawn(move || {
                for item in rx {
                    match item {
                        Queued::Line(line) => {
                            if !matches!(write(Stream::Stderr, &line), Written::Done) {
                                crate::metrics::log_lines_dropped().inc();
                            }
                        }
                        Queued::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
            spawned.ok().map(|_| tx)
        })
        .as_ref()
}

/// Hands `item` to the log thread, waiting up to `wait` for room; gives it back if there was
/// none (or no thread).
fn send(item: Queued, wait: Duration) -> Result<(), Queued> {
    let Some(tx) = log_thread() else { return Err(item) };
    let deadline = Instant::now() + wait;
    let mut item = item;
    loop {
        match tx.try_send(item) {
            Ok(()) => return Ok(()),
            Err(mpsc::TrySendError::Full(back)) if Instant::now() < deadline => {
                item = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(mpsc::TrySendError::Full(back) | mpsc::TrySendError::Disconnected(back)) => return Err(back),
        }
    }
}

/// Queues one log line, waiting up to `wait` for room; a line with no room is dropped and
/// counted.
fn log(line: &[u8], wait: Duration) {
    match send(Queued::Line(line.to_vec()), wait) {
        Ok(()) => {}
        Err(Queued::Line(line)) if LOG_THREAD.get().is_some_and(Option::is_none) => {
            // No log thread: written in place.
            if !matches!(write(Stream::Stderr, &line), Written::Done) {
                crate::metrics::log_lines_dropped().inc();
            }
        }
        Err(_) => crate::metrics::log_lines_dropped().inc(),
    }
}

/// Waits, up to `limit`, until every log line queued so far is written or dropped (at exit, so
/// that the last lines are not lost; a stderr nobody reads costs `limit`, not a hang).
pub fn flush_logs(limit: Duration) {
    if LOG_THREAD.get().is_none() {
        return;
    }
    let deadline = Instant::now() + limit;
    let (done, written) = mpsc::channel();
    if send(Queued::Flush(done), limit).is_ok() {
        let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// Writes one line to stderr after the log lines before it (the error line `main` prints): it
/// waits up to a second for room in the queue and two for the queue to drain; a line that
/// cannot be written is counted as a dropped log line.
pub fn stderr_line(line: &str) {
    log(format!("{line}\n").as_bytes(), Duration::from_secs(1));
    flush_logs(Duration::from_secs(2));
}

/// The log writer (a tracing `MakeWriter`): each formatted line is queued for a thread that
/// writes it to stderr through [`write`]. A line stderr does not take (closed, full), or that
/// finds the queue full (a reader that does not read), is counted and reported as written, so
/// no caller ever waits, retries or panics over a log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter hands over one whole line per call.
        log(buf, Duration::ZERO);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}
