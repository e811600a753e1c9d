//! The server's edge: which TCP connections are taken, how long a new connection may stay
//! silent, and the HTTP/2 settings that bound what one connection may ask for. Every limit here
//! holds before authentication, since anyone can open a connection.
//!
//! - [`Incoming`] accepts connections while a slot is free (`connections_max`) and closes the
//!   others at once; accept errors (e.g. out of file descriptors) pause it instead of spinning.
//! - [`LimitedStream`] holds its slot until the connection ends, and fails its reads once
//!   `handshake_timeout_ms` has passed without a request (TLS included), closing the connection.
//! - [`EdgeLayer`] marks a connection as having spoken, and caps open `Health/Watch` streams.
//! - [`Edge::configure`] sets the HTTP/2 limits: streams per connection and reset floods.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower::{Layer, Service};

use crate::config::Config;
use crate::telemetry::metrics::{CONNECTIONS_OPEN, CONNECTIONS_REFUSED, CONNECTIONS_TIMED_OUT};

/// The health service's streaming method: open to anyone, so its streams are capped.
const HEALTH_WATCH_PATH: &str = "/grpc.health.v1.Health/Watch";

/// File descriptors kept free for everything that is not a client connection (the database
/// pool, the LISTEN connection, the metrics listener, files), beyond `pool_size`.
const RESERVED_FILES: u64 = 64;

/// Connections accepted in one poll of [`Incoming`] before it yields to other tasks, so that a
/// flood of connections beyond the limit cannot monopolise the accepting task.
const ACCEPT_BUDGET: usize = 64;

/// How long accepting pauses after an error that is not about one connection (EMFILE...).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The connection limits, from the configuration.
#[derive(Debug, Clone)]
pub struct EdgeLimits {
    /// Most open client connections (already clamped below the open-file limit).
    pub connections_max: usize,
    /// Time a new connection has to complete TLS and send its first request.
    pub handshake_timeout: Duration,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
    pub streams_per_connection_max: u32,
    /// Streams reset by the client before the server accepted them, before a GOAWAY.
    pub pending_resets_max: usize,
    /// Streams the server had to reset for protocol errors, before a GOAWAY.
    pub error_resets_max: usize,
    /// Most open `grpc.health.v1.Health/Watch` streams in the process.
    pub health_watches_max: usize,
    /// HTTP/2 SETTINGS_MAX_FRAME_SIZE: the largest frame a client may send.
    pub max_frame_size: u32,
}

impl EdgeLimits {
    /// Reads the limits; `connections_max` is lowered below the process's open-file limit
    /// (minus the pool and a margin), so that the limit refuses before `accept` fails.
    pub fn from_config(config: &Config) -> EdgeLimits {
        let reserve = u64::from(config.pool_size) + RESERVED_FILES;
        let connections_max =
            clamp_to_file_limit(config.connections_max, open_files_limit(), reserve);
        if connections_max < config.connections_max {
            tracing::warn!(
                configured = config.connections_max,
                effective = connections_max,
                "connections_max lowered to fit the open-file limit (raise `ulimit -n`)"
            );
        }
        EdgeLimits {
            connections_max,
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
            streams_per_connection_max: config.streams_per_connection_max,
            pending_resets_max: config.http2_pending_resets_max,
            error_resets_max: config.http2_error_resets_max,
            health_watches_max: config.health_watches_max,
            max_frame_size: config.http2_max_frame_size,
        }
    }
}

/// `configured`, lowered so that connections plus `reserve` fit in the file limit (at least 1).
fn clamp_to_file_limit(configured: usize, file_limit: Option<u64>, reserve: u64) -> usize {
    match file_limit {
        Some(limit) => {
            let room = usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
            configured.min(room).max(1)
        }
        None => configured,
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits` (Linux); `None` when
/// unlimited or unknown.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&limits)
}

fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The edge of one server: its limits and the slots they hand out.
#[derive(Debug, Clone)]
pub struct Edge {
    limits: EdgeLimits,
    connections: Arc<Semaphore>,
    health_watches: Arc<Semaphore>,
}

impl Edge {
    /// The edge for a configuration.
    pub fn from_config(config: &Config) -> Edge {
        Edge::new(EdgeLimits::from_config(config))
    }

    /// The edge for explicit limits.
    pub fn new(limits: EdgeLimits) -> Edge {
        Edge {
            connections: Arc::new(Semaphore::new(limits.connections_max)),
            health_watches: Arc::new(Semaphore::new(limits.health_watches_max)),
            limits,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &EdgeLimits {
        &self.limits
    }

    /// Sets the HTTP/2 limits on a server builder. tonic leaves streams per connection
    /// unlimited and turns hyper's local-error reset limit off; both are set here.
    pub fn configure(&self, builder: Server) -> Server {
        builder
            .max_concurrent_streams(self.limits.streams_per_connection_max)
            .http2_max_pending_accept_reset_streams(Some(self.limits.pending_resets_max))
            .http2_max_local_error_reset_streams(Some(self.limits.error_resets_max))
            .max_frame_size(Some(self.limits.max_frame_size))
    }

    /// The accepted connections of `listener`, within the limits.
    pub fn incoming(&self, listener: TcpListener) -> Incoming {
        Incoming {
            listener,
            slots: self.connections.clone(),
            handshake_timeout: self.limits.handshake_timeout,
            pause: None,
        }
    }

    /// The tower layer that marks connections as having spoken and caps health watches.
    pub fn layer(&self) -> EdgeLayer {
        EdgeLayer {
            health_watches: self.health_watches.clone(),
        }
    }
}

/// A stream of accepted connections, each holding one of `connections_max` slots; connections
/// beyond the limit are closed as soon as they are accepted (counted in
/// `syncline_connections_refused_total`). It never ends and never yields an error: tonic
/// would retry a failing accept in a busy loop.
#[derive(Debug)]
pub struct Incoming {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    handshake_timeout: Duration,
    pause: Option<Pin<Box<Sleep>>>,
}

impl Stream for Incoming {
    type Item = io::Result<LimitedStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        for _ in 0..ACCEPT_BUDGET {
            if let Some(pause) = &mut this.pause {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((tcp, _)) => match this.slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        return Poll::Ready(Some(Ok(LimitedStream::new(
                            tcp,
                            permit,
                            this.handshake_timeout,
                        ))));
                    }
                    Err(_) => {
                        metrics::counter!(CONNECTIONS_REFUSED).increment(1);
                        drop(tcp);
                    }
                },
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of file descriptors or memory: retrying at once would spin a core.
                    tracing::warn!(error = %e, "accepting connections failed; pausing");
                    this.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_PAUSE)));
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Errors about one connection (it went away before it was accepted), not about the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// What the server knows about one connection; in every request's extensions (tonic puts
/// it there), next to a copy of its [`TcpConnectInfo`].
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The TCP addresses.
    pub tcp: TcpConnectInfo,
    spoke: Arc<AtomicBool>,
}

impl ConnectionInfo {
    /// Records that a request arrived, which ends the handshake timeout.
    fn mark_spoken(&self) {
        self.spoke.store(true, Ordering::Release);
    }
}

/// One of the `connections_max` slots; counted in `syncline_connections_open` while held.
#[derive(Debug)]
struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
}

impl ConnectionSlot {
    fn new(permit: OwnedSemaphorePermit) -> ConnectionSlot {
        metrics::gauge!(CONNECTIONS_OPEN).increment(1.0);
        ConnectionSlot { _permit: permit }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// An accepted TCP connection that holds its slot until dropped, and whose reads fail once
/// the handshake timeout has passed without a request: hyper then closes it.
#[derive(Debug)]
pub struct LimitedStream {
    tcp: TcpStream,
    info: ConnectionInfo,
    /// Until the first request; `None` after it.
    deadline: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
    /// A small write was put off once since the last flush (see [`AsyncWrite::poll_write`]).
    write_deferred: bool,
    _slot: ConnectionSlot,
}

impl LimitedStream {
    fn new(tcp: TcpStream, permit: OwnedSemaphorePermit, timeout: Duration) -> LimitedStream {
        // Small HTTP/2 frames would otherwise wait on delayed ACKs (~40 ms per call).
        let _ = tcp.set_nodelay(true);
        let info = ConnectionInfo {
            tcp: tcp.connect_info(),
            spoke: Arc::new(AtomicBool::new(false)),
        };
        LimitedStream {
            tcp,
            info,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            timed_out: false,
            write_deferred: false,
            _slot: ConnectionSlot::new(permit),
        }
    }

    fn timed_out_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "no request within handshake_timeout_ms",
        )
    }
}

impl Connected for LimitedStream {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(Err(LimitedStream::timed_out_error()));
        }
        // hyper always has a read pending, so this timer's wake-up reaches us.
        if let Some(deadline) = &mut this.deadline {
            if this.info.spoke.load(Ordering::Acquire) {
                this.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                this.deadline = None;
                this.timed_out = true;
                metrics::counter!(CONNECTIONS_TIMED_OUT).increment(1);
                return Poll::Ready(Err(LimitedStream::timed_out_error()));
            }
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

/// Writes shorter than this are put off once per flush (see [`AsyncWrite::poll_write`]).
const DEFER_WRITES_BELOW: usize = 16 * 1024;

impl AsyncWrite for LimitedStream {
    /// The first small write after a flush is put off once: the connection task wakes itself
    /// and returns `Pending`, which sends it to the back of the run queue. A change reaching
    /// many streams wakes their tasks together, but tokio runs the task a running task woke
    /// next, so the connection task used to run right after the first stream handed it a frame
    /// and wrote that frame alone; put off, it finds the frames of the other streams woken by
    /// the same change queued too and writes them at once. Large writes (Pull pages) go at once.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.write_deferred && buf.len() < DEFER_WRITES_BELOW {
            self.write_deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    /// False on purpose: h2 then copies DATA frames under 1 KiB into its 16 KiB write buffer
    /// and sends the frames of many streams in one write, where with vectored writes it sends
    /// each frame of 256 bytes or more with a `writev` of its own. With 1,000 live streams
    /// that was 43% of the server's CPU; this saves about a sixth of the CPU per delivery
    /// (docs/performance.md, "Fan-out encoded once"), and large frames (Pull pages) showed no
    /// difference in the initial sync.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.write_deferred = false;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Marks each request's connection as having spoken, and refuses `Health/Watch` beyond
/// `health_watches_max` with RESOURCE_EXHAUSTED (a watch holds its slot until its response
/// ends or is dropped).
#[derive(Debug, Clone)]
pub struct EdgeLayer {
    health_watches: Arc<Semaphore>,
}

impl<S> Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        EdgeService {
            inner,
            health_watches: self.health_watches.clone(),
        }
    }
}

/// The service [`EdgeLayer`] wraps around the router.
#[derive(Debug, Clone)]
pub struct EdgeService<S> {
    inner: S,
    health_watches: Arc<Semaphore>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for EdgeService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        if let Some(info) = request.extensions().get::<ConnectionInfo>().cloned() {
            info.mark_spoken();
            // So that `tonic::Request::remote_addr` keeps working.
            request.extensions_mut().insert(info.tcp);
        }
        let permit = if request.uri().path() == HEALTH_WATCH_PATH {
            match self.health_watches.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let refused = crate::api::status::status(
                        tonic::Code::ResourceExhausted,
                        crate::protocol::Reason::LimitExceeded,
                        None,
                        "too many open health watches on this server (health_watches_max); \
                         use Check, or retry later",
                    )
                    .into_http::<tonic::body::Body>();
                    return Box::pin(std::future::ready(Ok(refused)));
                }
            }
        } else {
            None
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(match permit {
                None => response.map(tonic::body::Body::new),
                Some(permit) => response.map(|inner| {
                    tonic::body::Body::new(PermitBody {
                        inner,
                        _permit: permit,
                    })
                }),
            })
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds a limit's slot for as long as it lives.
    struct PermitBody<B> {
        #[pin]
        inner: B,
        _permit: OwnedSemaphorePermit,
    }
}

impl<B: Body> Body for PermitBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_limit_is_parsed() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63704                63704                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unlimited), None);
        assert_eq!(parse_open_files_limit(""), None);
    }

    /// Counts its wake-ups.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_small_write_waits_one_turn_per_flush_and_large_ones_go_at_once() {
        use tokio::io::AsyncReadExt;

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (tcp, _) = listener.accept().await.expect("accept");
        let permit = Arc::new(Semaphore::new(1))
            .acquire_owned()
            .await
            .expect("a permit");
        let mut stream = LimitedStream::new(tcp, permit, Duration::from_secs(60));
        let wakes = Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let woken = || wakes.0.load(Ordering::SeqCst);
        let mut pinned = Pin::new(&mut stream);

        // The first small write of a flush: put off once, the task woken to come back.
        assert!(pinned.as_mut().poll_write(&mut cx, b"one").is_pending());
        assert_eq!(woken(), 1);
        // Back: it goes, and so does every write until the flush.
        for part in [&b"one"[..], b"two"] {
            match pinned.as_mut().poll_write(&mut cx, part) {
                Poll::Ready(Ok(n)) => assert_eq!(n, part.len()),
                other => panic!("a write after the turn did not go: {other:?}"),
            }
        }
        assert!(pinned.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(woken(), 1);
        // The next flush's first small write waits one turn again.
        assert!(pinned.as_mut().poll_write(&mut cx, b"three").is_pending());
        assert_eq!(woken(), 2);
        assert!(matches!(
            pinned.as_mut().poll_write(&mut cx, b"three"),
            Poll::Ready(Ok(5))
        ));
        assert!(pinned.as_mut().poll_flush(&mut cx).is_ready());
        // A large write (a Pull page's frame) goes at once.
        let large = vec![b'x'; DEFER_WRITES_BELOW];
        match pinned.as_mut().poll_write(&mut cx, &large) {
            Poll::Ready(Ok(n)) => assert!(n > 0),
            other => panic!("a large write was put off: {other:?}"),
        }
        assert_eq!(woken(), 2);
        drop(stream);
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.expect("read");
        assert!(
            received.starts_with(b"onetwothreexxx"),
            "bytes in order, none lost"
        );
    }

    #[test]
    fn connections_fit_the_file_limit() {
        assert_eq!(clamp_to_file_limit(10_000, Some(1024), 80), 944);
        assert_eq!(clamp_to_file_limit(100, Some(1024), 80), 100);
        assert_eq!(clamp_to_file_limit(10_000, None, 80), 10_000);
        assert_eq!(clamp_to_file_limit(10_000, Some(10), 80), 1);
    }
}
