//! The runtime edge: the only module that knows which world it runs in.
//!
//! Everything async in the workspace takes spawn, time, sockets, the hyper
//! executor and timer, and randomness from here. On a real host these are
//! tokio's; built with `RUSTFLAGS="--cfg madsim"` they are madsim's virtual
//! ones (madsim-tokio is imported *as* `tokio`, so most of this module is the
//! same source in both worlds). Where the two APIs differ (UDP `send_to`,
//! the hyper `Timer`), the difference is absorbed here, once. So are the
//! real-host-only socket calls: [`UdpBatch`] (`recvmmsg`/`sendmmsg` on a
//! host, one datagram at a time in the simulation) and
//! [`UdpSocket::bind_reuse_port`] (`SO_REUSEPORT`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod raft;
mod udp_batch;

pub use udp_batch::{BatchWorker, UdpBatch, WORKER_POLL};

pub use tokio::net::{TcpListener, TcpStream};
pub use tokio::task::JoinHandle;

/// Spawn a task on the current runtime (the current simulated node in madsim).
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future)
}

/// Monotonic now. madsim overrides `clock_gettime`, so inside the simulation
/// this is virtual time; on a real host it is the OS monotonic clock.
pub fn now() -> Instant {
    Instant::now()
}

/// CPU time this process has used (user and system), on a real host; None
/// in the simulation, where the process's CPU time says nothing about the
/// simulated hosts.
pub fn process_cpu_time() -> Option<Duration> {
    #[cfg(madsim)]
    {
        None
    }
    #[cfg(not(madsim))]
    {
        // SAFETY: getrusage(2) fills the struct we pass and touches nothing else.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return None;
        }
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec.max(0) as u64)
                + Duration::from_micros(t.tv_usec.max(0) as u64)
        };
        Some(tv(usage.ru_utime) + tv(usage.ru_stime))
    }
}

/// Cores this process may run on (1 in the simulation).
pub fn cpu_cores() -> usize {
    #[cfg(madsim)]
    {
        1
    }
    #[cfg(not(madsim))]
    {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Wall-clock milliseconds since the Unix epoch (virtual in the simulation).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sleep for `duration` on the runtime's clock.
pub async fn sleep(duration: Duration) {
    tokio::time::sleep(duration).await
}

/// Run `future` with a deadline; `Err(Elapsed)` when it does not finish in time.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    tokio::time::timeout(duration, future)
        .await
        .map_err(|_| Elapsed(duration))
}

/// One timer reused for a sequence of waits, each with its own deadline
/// (a connection's reads): moving it to a later instant does not touch
/// tokio's timer wheel (the entry is moved only when it fires), where a new
/// [`timeout`] per wait registers and removes an entry every time.
pub struct Deadline(Pin<Box<tokio::time::Sleep>>);

impl Default for Deadline {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadline").finish_non_exhaustive()
    }
}

impl Deadline {
    /// A timer not due for a day.
    pub fn new() -> Self {
        Self(Box::pin(tokio::time::sleep(Duration::from_secs(86_400))))
    }

    /// Run `future` until `at`; `Err(Elapsed)` when it did not finish by then.
    pub async fn run<F: Future>(&mut self, at: Instant, future: F) -> Result<F::Output, Elapsed> {
        // tokio's own `Instant` on a real host; the std one in madsim.
        #[allow(clippy::useless_conversion)]
        self.0.as_mut().reset(at.into());
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = future.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            match self.0.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(Elapsed(Duration::ZERO))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// A deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(pub Duration);

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "timed out after {:?}", self.0)
    }
}
impl std::error::Error for Elapsed {}

/// A random `u64` from the world's generator: seeded by madsim in the
/// simulation (so a seed replays exactly), the OS-seeded thread RNG otherwise.
pub fn random_u64() -> u64 {
    use rand::RngCore;
    madsim::rand::thread_rng().next_u64()
}

/// A small RNG seeded from the world's generator, for code that wants to own one.
pub fn seeded_rng() -> rand::rngs::SmallRng {
    use rand::SeedableRng;
    rand::rngs::SmallRng::seed_from_u64(random_u64())
}

/// Connect a TCP stream with `TCP_NODELAY` set (latency-sensitive links:
/// simulated TCP ignores it, real TCP needs it).
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

pin_project_lite::pin_project! {
    /// A stream whose `flush` does nothing when nothing was written since
    /// the last one. madsim's simulated TCP sends one message per flush,
    /// empty or not, and a long-lived connection that hyper flushes while
    /// idle piled them up: each request on a reused connection waited
    /// longer than the one before (docs/runtime.md). On real sockets an
    /// empty flush is free, so this changes nothing there.
    #[derive(Debug)]
    pub struct FlushOnWrite<S> {
        #[pin]
        inner: S,
        dirty: bool,
    }
}

impl<S> FlushOnWrite<S> {
    /// Wrap `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            dirty: false,
        }
    }
}

impl<S: tokio::io::AsyncRead> tokio::io::AsyncRead for FlushOnWrite<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite> tokio::io::AsyncWrite for FlushOnWrite<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let n = std::task::ready!(this.inner.poll_write(cx, buf))?;
        *this.dirty |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if !*this.dirty {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(this.inner.poll_flush(cx))?;
        *this.dirty = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// A UDP socket with one API in both worlds.
#[derive(Debug)]
pub struct UdpSocket(tokio::net::UdpSocket);

impl UdpSocket {
    /// Bind to `addr`.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self(tokio::net::UdpSocket::bind(addr).await?))
    }

    /// Bind to `addr` also while it is not an address of this host (see
    /// [`listen_nonlocal`]).
    pub async fn bind_nonlocal(addr: SocketAddr) -> io::Result<Self> {
        #[cfg(madsim)]
        {
            Self::bind(addr).await
        }
        #[cfg(not(madsim))]
        {
            udp_batch::udp_socket(addr, &[freebind(addr)]).map(Self)
        }
    }

    /// Never fragment what this socket sends: on IPv4 the DF bit is set
    /// and the path MTU ignored (`IP_PMTUDISC_PROBE`), on IPv6
    /// `IPV6_DONTFRAG`; a datagram too big for a link is lost instead. For
    /// DNS, where RFC 9715 asks for it (BIND does so since DNS Flag Day
    /// 2020) and a client that gets no answer retries over TCP; our answers
    /// stay within 1232 bytes. The kernel also skips picking an IP ID for a
    /// DF datagram (`__ip_select_ident`, 3% of a DNS server's CPU under
    /// load). Nothing in the simulation.
    pub fn set_dont_fragment(&self) -> io::Result<()> {
        #[cfg(madsim)]
        {
            Ok(())
        }
        #[cfg(not(madsim))]
        {
            use std::os::fd::AsRawFd;
            let fd = self.0.as_raw_fd();
            let set = |level, name, value| udp_batch::set_int_option(fd, level, name, value);
            match self.0.local_addr()? {
                SocketAddr::V4(_) => set(
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    libc::IP_PMTUDISC_PROBE,
                ),
                SocketAddr::V6(_) => {
                    set(libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)?;
                    set(
                        libc::IPPROTO_IPV6,
                        libc::IPV6_MTU_DISCOVER,
                        libc::IPV6_PMTUDISC_PROBE,
                    )?;
                    // IPv4 clients of a dual-stack socket; refused where
                    // the socket is IPv6 only, which is fine.
                    let _ = set(
                        libc::IPPROTO_IP,
                        libc::IP_MTU_DISCOVER,
                        libc::IP_PMTUDISC_PROBE,
                    );
                    Ok(())
                }
            }
        }
    }

    /// `count` sockets bound to the same `addr`, for as many tasks to read
    /// in parallel. On a real host, `count > 1` sets `SO_REUSEPORT` on each,
    /// so the kernel spreads datagrams over them by a hash of the sender's
    /// address and port; for port 0 the group binds a port no other socket
    /// has. `count <= 1` is a plain [`bind`](Self::bind). The
    /// simulation has no `SO_REUSEPORT`: it always returns one socket.
    pub async fn bind_reuse_port(addr: SocketAddr, count: usize) -> io::Result<Vec<Self>> {
        #[cfg(madsim)]
        {
            let _ = count;
            Ok(vec![Self::bind(addr).await?])
        }
        #[cfg(not(madsim))]
        {
            if count <= 1 {
                return Ok(vec![Self::bind(addr).await?]);
            }
            if addr.port() != 0 {
                return reuse_port_group(addr, count);
            }
            // The kernel may give a SO_REUSEPORT socket asking for port 0 a
            // port where another group of the same user listens (it could
            // share it): take a port no socket has from a plain bind, then
            // bind the group there, again if someone took it meanwhile.
            let mut last_error = None;
            for _ in 0..16 {
                let port = std::net::UdpSocket::bind(addr)?.local_addr()?.port();
                match reuse_port_group(SocketAddr::new(addr.ip(), port), count) {
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
                    result => return result,
                }
            }
            Err(last_error.unwrap_or_else(|| io::ErrorKind::AddrInUse.into()))
        }
    }

    /// Send one datagram; returns the number of bytes sent.
    pub async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        #[cfg(madsim)]
        {
            if !netem::datagram_lost() {
                self.0.send_to(target, buf).await?;
            }
            Ok(buf.len())
        }
        #[cfg(not(madsim))]
        {
            self.0.send_to(buf, target).await
        }
    }

    /// Receive one datagram.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.0.recv_from(buf).await
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// A TCP listener on `addr`, also while `addr` is not (yet) an address of
/// this host: a standby SE binds its VIPs before it holds them, and takes
/// connections on them the moment the address arrives. On a real host the
/// socket gets `IP_FREEBIND` (`IPV6_FREEBIND`), as HAProxy's `freebind` bind
/// option does, so the SE host needs no `ip_nonlocal_bind` sysctl; like
/// [`TcpListener::bind`] it has `SO_REUSEADDR` and a backlog of 1024. The
/// simulation binds any address anyway.
pub async fn listen_nonlocal(addr: SocketAddr) -> io::Result<TcpListener> {
    #[cfg(madsim)]
    {
        TcpListener::bind(addr).await
    }
    #[cfg(not(madsim))]
    {
        use std::os::fd::AsRawFd;
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        let (level, name, value) = freebind(addr);
        udp_batch::set_int_option(socket.as_raw_fd(), level, name, value)?;
        socket.bind(addr)?;
        socket.listen(1024)
    }
}

/// The socket option that lets a socket bind an address the host does not
/// have: `IP_FREEBIND`, or `IPV6_FREEBIND` (Linux 4.15) for IPv6.
#[cfg(not(madsim))]
fn freebind(addr: SocketAddr) -> (libc::c_int, libc::c_int, libc::c_int) {
    match addr {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_FREEBIND, 1),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, 1),
    }
}

/// `count` sockets sharing `addr` (port not 0) with `SO_REUSEPORT`.
#[cfg(not(madsim))]
fn reuse_port_group(addr: SocketAddr, count: usize) -> io::Result<Vec<UdpSocket>> {
    (0..count)
        .map(|_| {
            udp_batch::udp_socket(addr, &[(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)]).map(UdpSocket)
        })
        .collect()
}

/// Accept connections until the listener fails, handing each to `handler` on
/// its own task. At most `max_connections` run at once: further connections
/// wait in the kernel's (or the simulator's) backlog, never in our memory.
pub async fn accept_loop<H, F>(
    listener: TcpListener,
    max_connections: usize,
    handler: H,
) -> io::Result<()>
where
    H: Fn(TcpStream, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    assert!(
        max_connections > 0,
        "accept_loop needs room for one connection"
    );
    accept_loop_gated(listener, Arc::new(ConnGate::new(max_connections)), handler).await
}

/// [`accept_loop`] with a cap that can change while it runs (a virtual
/// service's `max_connections`): lowering it lets open connections finish
/// and admits no new one until they are under it.
pub async fn accept_loop_gated<H, F>(
    listener: TcpListener,
    gate: Arc<ConnGate>,
    handler: H,
) -> io::Result<()>
where
    H: Fn(TcpStream, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        let pass = gate.admit().await;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // A peer that resets before we accept is its problem, not the listener's.
            Err(e) if is_transient_accept_error(&e) => continue,
            Err(e) => return Err(e),
        };
        let _ = stream.set_nodelay(true);
        // Boxed at once: a connection's future is large (an SE's is about
        // 29 KB), and every move of it on the way into its task was a copy
        // (13% of the simulation's time was memmove).
        let fut = Box::pin(handler(stream, peer));
        spawn(async move {
            fut.await;
            drop(pass);
        });
    }
}

/// A cap on connections open at once that can change while they run.
#[derive(Debug)]
pub struct ConnGate {
    open: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
    freed: tokio::sync::Notify,
}

impl ConnGate {
    /// A gate admitting `max` connections at once (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            open: Default::default(),
            max: std::sync::atomic::AtomicUsize::new(max.max(1)),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// Change the cap (at least one); connections over it finish.
    pub fn set_max(&self, max: usize) {
        self.max
            .store(max.max(1), std::sync::atomic::Ordering::Relaxed);
        self.freed.notify_waiters();
    }

    /// The cap now.
    pub fn max(&self) -> usize {
        self.max.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Connections admitted and not yet finished.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Wait until a connection may be admitted, and count it. Only one
    /// accept loop admits through a gate, so check and count cannot race.
    async fn admit(self: &Arc<Self>) -> GatePass {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.open.load(Relaxed) < self.max.load(Relaxed) {
                self.open.fetch_add(1, Relaxed);
                return GatePass(self.clone());
            }
            freed.await;
        }
    }
}

/// One admitted connection; dropping it frees its place.
struct GatePass(Arc<ConnGate>);

impl Drop for GatePass {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.0.freed.notify_one();
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// hyper's executor: spawns connection tasks on this world's runtime.
/// (hyper-util's `TokioExecutor` links the real tokio and panics in madsim.)
#[derive(Debug, Clone, Copy, Default)]
pub struct Exec;

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        spawn(future);
    }
}

/// hyper's timer on this world's clock (header-read and keep-alive timeouts).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timer;

impl hyper::rt::Timer for Timer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(RtSleep(Box::pin(tokio::time::sleep(duration))))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(now()))
    }

    fn now(&self) -> Instant {
        now()
    }
}

struct RtSleep(Pin<Box<tokio::time::Sleep>>);

impl Future for RtSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

// SAFETY: `RtSleep` exposes its inner future only through `Pin<&mut Self>`
// (no `&self` method reaches it), so sharing `&RtSleep` across threads can
// never touch the inner value; this is the `SyncWrapper` argument.
unsafe impl Sync for RtSleep {}

impl hyper::rt::Sleep for RtSleep {}

/// Clock-rate skew of simulated nodes. The simulation has one clock; a node
/// set to rate `r` sees `r` seconds pass on its clock per true second, in
/// the timers that decide elections and heartbeats (openraft's runtime,
/// `rt::raft`). On real hosts the rate is always 1 and this is
/// `Instant::now()`.
pub mod skew {
    use std::time::{Duration, Instant};

    #[cfg(madsim)]
    mod table {
        use std::cell::RefCell;
        use std::time::Instant;

        /// A node's clock from `since_true` on: `since_node + elapsed * rate`.
        #[derive(Debug, Clone, Copy)]
        pub struct Rate {
            pub since_true: Instant,
            pub since_node: Instant,
            pub rate: f64,
        }

        impl Rate {
            pub fn node_time(&self, now: Instant) -> Instant {
                self.since_node + (now - self.since_true).mul_f64(self.rate)
            }
        }

        thread_local! {
            // madsim runs each seed on a thread of its own: a fresh table per run.
            pub static RATES: RefCell<Vec<(madsim::task::NodeId, Rate)>> =
                const { RefCell::new(Vec::new()) };
        }

        pub fn of(node: madsim::task::NodeId) -> Option<Rate> {
            RATES.with(|r| r.borrow().iter().find(|(n, _)| *n == node).map(|(_, r)| *r))
        }

        pub fn current() -> Option<Rate> {
            of(madsim::plugin::node())
        }
    }

    /// Make simulated node `node`'s clock run at `rate` (0.1 to 10) from now
    /// on, continuing from the time it shows now.
    #[cfg(madsim)]
    pub fn set_rate(node: madsim::task::NodeId, rate: f64) {
        let now = Instant::now();
        let since_node = table::of(node).map_or(now, |r| r.node_time(now));
        let entry = table::Rate {
            since_true: now,
            since_node,
            rate: rate.clamp(0.1, 10.0),
        };
        table::RATES.with(|r| {
            let mut r = r.borrow_mut();
            r.retain(|(n, _)| *n != node);
            r.push((node, entry));
        });
    }

    /// This node's clock now.
    pub fn now() -> Instant {
        #[cfg(madsim)]
        if let Some(r) = table::current() {
            return r.node_time(Instant::now());
        }
        Instant::now()
    }

    /// How long `d` on this node's clock takes on the true clock.
    pub fn true_duration(d: Duration) -> Duration {
        #[cfg(madsim)]
        if let Some(r) = table::current() {
            return d.div_f64(r.rate);
        }
        d
    }
}

/// Network impairments of the simulation beyond what madsim models.
///
/// madsim's own loss rate (`net::Config::packet_loss_rate`) refuses TCP
/// connects at that rate and never loses TCP bytes, which is not what loss
/// does to TCP on a real network (it retransmits: the bytes come late, the
/// connection stands). Here loss drops UDP datagrams only, each with the
/// set probability, drawn from the seed's generator; TCP under loss is
/// madsim's latency (`send_latency`), set by the scenario. On real hosts
/// nothing is ever dropped here.
pub mod netem {
    #[cfg(madsim)]
    thread_local! {
        // madsim runs each seed on a thread of its own: a fresh rate per run.
        static UDP_LOSS: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
    }

    /// Drop each UDP datagram sent from now on with probability `rate`
    /// (0 to 1; 0 heals), on every node of this simulation.
    #[cfg(madsim)]
    pub fn set_udp_loss(rate: f64) {
        UDP_LOSS.with(|l| l.set(rate.clamp(0.0, 1.0)));
    }

    /// Whether the datagram being sent is lost. Draws from the generator
    /// only while a loss rate is set, so a seed without loss replays as it
    /// did before the hook existed.
    #[cfg(madsim)]
    pub(super) fn datagram_lost() -> bool {
        let rate = UDP_LOSS.with(|l| l.get());
        rate > 0.0 && (super::random_u64() as f64 / u64::MAX as f64) < rate
    }
}

/// Deterministic randomness for ring (TLS keys and handshakes) in the
/// simulation. ring draws from getrandom 0.2, which calls
/// `syscall(SYS_getrandom, ..)` directly and so bypasses madsim's `getrandom`
/// override: the same seed then produced other TLS bytes on every run. This
/// override serves `SYS_getrandom` through `getrandom` (madsim's, which uses
/// the world's seeded generator inside a runtime and the OS outside one) and
/// forwards every other call to the C library's `syscall`.
#[cfg(madsim)]
mod sim_syscall {
    use std::sync::atomic::{AtomicPtr, Ordering};

    type SyscallFn = unsafe extern "C" fn(
        libc::c_long,
        libc::c_long,
        libc::c_long,
        libc::c_long,
        libc::c_long,
        libc::c_long,
        libc::c_long,
    ) -> libc::c_long;

    static REAL: AtomicPtr<libc::c_void> = AtomicPtr::new(std::ptr::null_mut());

    /// # Safety
    /// The C `syscall` contract: arguments as the call `num` takes them.
    #[no_mangle]
    #[inline(never)]
    pub unsafe extern "C" fn syscall(
        num: libc::c_long,
        a1: libc::c_long,
        a2: libc::c_long,
        a3: libc::c_long,
        a4: libc::c_long,
        a5: libc::c_long,
        a6: libc::c_long,
    ) -> libc::c_long {
        if num == libc::SYS_getrandom {
            return libc::getrandom(a1 as *mut libc::c_void, a2 as usize, a3 as libc::c_uint)
                as libc::c_long;
        }
        let mut real = REAL.load(Ordering::Relaxed);
        if real.is_null() {
            real = libc::dlsym(libc::RTLD_NEXT, c"syscall".as_ptr());
            assert!(!real.is_null(), "no syscall symbol in the C library");
            REAL.store(real, Ordering::Relaxed);
        }
        let real: SyscallFn = std::mem::transmute(real);
        real(num, a1, a2, a3, a4, a5, a6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option the kernel holds after `set_dont_fragment`, both families.
    #[cfg(not(madsim))]
    #[tokio::test]
    async fn dont_fragment_is_set_on_both_families() {
        use std::os::fd::AsRawFd;
        let get = |s: &UdpSocket, level, name| {
            let mut value: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: an int option read into an int of the given size.
            let r = unsafe {
                libc::getsockopt(
                    s.0.as_raw_fd(),
                    level,
                    name,
                    (&mut value as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            value
        };
        let v4 = UdpSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert_ne!(
            get(&v4, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
            libc::IP_PMTUDISC_PROBE
        );
        v4.set_dont_fragment().unwrap();
        assert_eq!(
            get(&v4, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
            libc::IP_PMTUDISC_PROBE
        );
        // IPv6 may be missing on a host; then there is nothing to check.
        if let Ok(v6) = UdpSocket::bind("[::1]:0".parse().unwrap()).await {
            v6.set_dont_fragment().unwrap();
            assert_eq!(get(&v6, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG), 1);
        }
    }

    /// A VIP this host does not have binds (TCP and UDP), where a plain
    /// bind is refused (unless the host allows it for every socket).
    #[cfg(not(madsim))]
    #[tokio::test]
    async fn nonlocal_binds_take_an_address_the_host_does_not_have() {
        let sysctl = |family| {
            std::fs::read_to_string(format!("/proc/sys/net/{family}/ip_nonlocal_bind"))
                .is_ok_and(|v| v.trim() != "0")
        };
        for (vip, family) in [("192.0.2.123:0", "ipv4"), ("[2001:db8::123]:0", "ipv6")] {
            let addr: SocketAddr = vip.parse().unwrap();
            let listener = match listen_nonlocal(addr).await {
                Ok(l) => l,
                // No IPv6 on this host: nothing to check.
                Err(e) if addr.is_ipv6() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                    continue
                }
                Err(e) => panic!("{vip}: {e}"),
            };
            assert_eq!(listener.local_addr().unwrap().ip(), addr.ip());
            let udp = UdpSocket::bind_nonlocal(addr).await.unwrap();
            assert_eq!(udp.local_addr().unwrap().ip(), addr.ip());
            if !sysctl(family) {
                let plain = TcpListener::bind(addr).await.unwrap_err();
                assert_eq!(plain.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{vip}");
            }
        }
    }

    #[tokio::test]
    async fn udp_round_trip_and_timeout() {
        let a = UdpSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let b = UdpSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let n = a.send_to(b"ping", b.local_addr().unwrap()).await.unwrap();
        assert_eq!(n, 4);
        let mut buf = [0u8; 16];
        let (len, from) = b.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"ping");
        assert_eq!(from, a.local_addr().unwrap());
        let waited = timeout(Duration::from_millis(20), b.recv_from(&mut buf)).await;
        assert!(waited.is_err());
    }
}
