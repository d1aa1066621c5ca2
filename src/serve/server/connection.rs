//! One webhook connection's limits: a write that makes no progress, a
//! connection without reviews, and the accept loop's pause on errors.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A stream whose writes fail after `timeout` without progress: a client
/// that never reads its response would otherwise hold the response, the
/// connection and its buffers forever.
pub struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        WriteTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Turns a pending write into an error once it has been pending for
    /// `timeout`; any progress starts the clock again.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client did not read its response in time",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

/// The reviews on one connection: how many are running, and when the last
/// one started or ended. Bytes do not count: HTTP/2 pings or a trickle of
/// nothing must not keep a connection open.
pub struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `started` to the last change; `u64::MAX` until
    /// the first request.
    last_change_ms: AtomicU64,
}

/// Held while one request is served.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_change_ms: AtomicU64::new(u64::MAX),
        })
    }

    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        InFlight(self.clone())
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_change_ms.store(ms, Ordering::Release);
    }

    /// When the connection becomes idle if nothing happens until then:
    /// `first` after opening when no request came, `idle` after the last
    /// request ended. `None` while a request runs.
    pub fn idle_at(&self, first: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.last_change_ms.load(Ordering::Acquire) {
            u64::MAX => Some(self.started + first),
            ms => Some(self.started + Duration::from_millis(ms) + idle),
        }
    }
}

/// The accept loop's pause after an error (out of file descriptors, say):
/// doubling from 10 ms to 1 s while errors go on, and one log line per
/// pause instead of one per error.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

impl AcceptBackoff {
    /// How long to pause after one more error, and whether to log it: the
    /// first error of a run, then one in 60 (about once a minute at the
    /// longest pause).
    pub fn failed(&mut self) -> (Duration, bool) {
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(7);
        let pause = (FIRST_PAUSE * 2u32.pow(doublings)).min(LONGEST_PAUSE);
        let log = self.failures == 1 || self.failures.is_multiple_of(60);
        (pause, log)
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_nobody_reads_fails_after_the_timeout() {
        // A socket pair whose other end never reads.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut stream = WriteTimeout::new(server, Duration::from_millis(200));
        let chunk = vec![0u8; 64 * 1024];
        let started = std::time::Instant::now();
        let error = loop {
            if let Err(error) = stream.write_all(&chunk).await {
                break error;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the write never timed out"
            );
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test]
    async fn a_connection_is_idle_only_without_requests() {
        let activity = Activity::new();
        let (first, idle) = (Duration::from_secs(10), Duration::from_secs(120));
        let opened = Instant::now();
        let idle_at = activity.idle_at(first, idle).unwrap();
        assert!(
            idle_at <= opened + first,
            "no request yet: the short timeout"
        );
        let request = activity.begin();
        assert_eq!(
            activity.idle_at(first, idle),
            None,
            "never idle mid-request"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(request);
        let idle_at = activity.idle_at(first, idle).unwrap();
        assert!(
            idle_at >= opened + idle + Duration::from_millis(50),
            "{:?}",
            idle_at - opened
        );
    }

    #[test]
    fn accept_errors_back_off_and_log_sparingly() {
        let mut backoff = AcceptBackoff::default();
        let mut logged = 0;
        let mut waited = Duration::ZERO;
        for _ in 0..1163 {
            let (pause, log) = backoff.failed();
            waited += pause;
            logged += usize::from(log);
        }
        assert!(logged <= 20, "{logged} log lines for 1,163 errors");
        assert!(waited > Duration::from_secs(1000), "{waited:?}");
        assert_eq!(backoff.failed().0, LONGEST_PAUSE);
        backoff.succeeded();
        assert_eq!(backoff.failed(), (FIRST_PAUSE, true));
    }
}
