//! Datagrams in batches: one `recvmmsg` for up to a batch of datagrams and
//! one `sendmmsg` for the answers on a real host; one `recv_from` and one
//! `send_to` at a time in the simulation. A server loop written against
//! [`UdpBatch`] is the same source in both worlds:
//!
//! ```ignore
//! loop {
//!     batch.recv().await?;                      // at least one datagram
//!     batch.respond(|query, peer, out| answer(query, peer, out));
//!     batch.send(|peer, error| log(peer, error)).await;
//! }
//! ```
//!
//! Every buffer is allocated once, in [`UdpBatch::new`]: a slot per datagram
//! in and out, each of the size the caller asks for, and (real hosts) the
//! `mmsghdr`/`iovec`/`sockaddr_storage` arrays the two calls read.
//!
//! [`UdpBatch::serve`] runs that loop for a server: on a real host on an OS
//! thread of its own that blocks in `recvmmsg` (`MSG_WAITFORONE`), as gdnsd's
//! UDP threads do, so the socket is never registered with epoll (no
//! `epoll_wait` per batch, and no epoll wakeup from the kernel for every
//! datagram sent and freed); in the simulation as a task around the async
//! calls above.

use std::io;
use std::net::SocketAddr;

use super::UdpSocket;
#[cfg(not(madsim))]
pub(super) use mmsg::{set_int_option, udp_socket};

/// A UDP socket with buffers for a batch of datagrams in and their answers
/// out. Real hosts: `recvmmsg` with `MSG_DONTWAIT` once the socket is
/// readable, `sendmmsg` for the answers. Simulation: a batch of one, through
/// the simulated socket's `recv_from`/`send_to`.
pub struct UdpBatch {
    socket: UdpSocket,
    slots: Slots,
}

/// A batch's buffers, apart from its socket.
struct Slots {
    /// Bytes per datagram slot, in and out.
    slot: usize,
    /// `capacity` slots of `slot` bytes, back to back.
    inbox: Vec<u8>,
    lens: Vec<usize>,
    /// `None` for a sender address the socket API could not express
    /// (an address family other than IPv4/IPv6): skipped.
    peers: Vec<Option<SocketAddr>>,
    received: usize,
    outbox: Vec<Vec<u8>>,
    targets: Vec<SocketAddr>,
    queued: usize,
    #[cfg(not(madsim))]
    sys: mmsg::Headers,
}

impl std::fmt::Debug for UdpBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpBatch")
            .field("socket", &self.socket)
            .field("capacity", &self.slots.lens.len())
            .field("slot", &self.slots.slot)
            .field("received", &self.slots.received)
            .field("queued", &self.slots.queued)
            .finish_non_exhaustive()
    }
}

impl UdpBatch {
    /// Serve `socket` in batches of up to `capacity` datagrams (at least 1;
    /// always 1 in the simulation) of up to `slot_bytes` each, in and out. A
    /// longer datagram is cut to `slot_bytes`, as `recv_from` into a buffer
    /// of that size would; 65535 loses nothing.
    pub fn new(socket: UdpSocket, capacity: usize, slot_bytes: usize) -> Self {
        #[cfg(madsim)]
        let capacity = {
            let _ = capacity;
            1
        };
        let capacity = capacity.max(1);
        let slot = slot_bytes.max(1);
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            socket,
            slots: Slots {
                slot,
                // Zeroed memory from the allocator: pages are backed only where
                // the kernel writes datagrams.
                inbox: vec![0; capacity * slot],
                lens: vec![0; capacity],
                peers: vec![None; capacity],
                received: 0,
                outbox: (0..capacity).map(|_| Vec::with_capacity(slot)).collect(),
                targets: vec![unspecified; capacity],
                queued: 0,
                #[cfg(not(madsim))]
                sys: mmsg::Headers::new(capacity),
            },
        }
    }

    /// The socket's bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Most datagrams one [`recv`](Self::recv) returns.
    pub fn capacity(&self) -> usize {
        self.slots.lens.len()
    }

    /// Wait for datagrams and take as many as are queued, up to the
    /// capacity; returns how many (at least one). Answers queued by the last
    /// [`respond`](Self::respond) and not sent are dropped.
    ///
    /// An error is the socket's: `EINTR` is retried here and `WouldBlock`
    /// waits for readiness; errors that concern one peer (an ICMP-reported
    /// `ConnectionRefused`) come back to the caller, who decides to go on.
    pub async fn recv(&mut self) -> io::Result<usize> {
        self.slots.received = 0;
        self.slots.queued = 0;
        #[cfg(madsim)]
        {
            let (len, peer) = self
                .socket
                .recv_from(&mut self.slots.inbox[..self.slots.slot])
                .await?;
            self.slots.lens[0] = len;
            self.slots.peers[0] = Some(peer);
            self.slots.received = 1;
        }
        #[cfg(not(madsim))]
        {
            let b = &mut self.slots;
            b.received = b
                .sys
                .recv(
                    &self.socket.0,
                    &mut b.inbox,
                    b.slot,
                    &mut b.lens,
                    &mut b.peers,
                )
                .await?;
        }
        Ok(self.slots.received)
    }

    /// Call `answer(datagram, peer, out)` for each datagram of the last
    /// [`recv`](Self::recv), in order, with a cleared buffer (capacity kept);
    /// where it returns `true`, `out` is queued as the answer to `peer`.
    pub fn respond<F>(&mut self, mut answer: F)
    where
        F: FnMut(&[u8], SocketAddr, &mut Vec<u8>) -> bool,
    {
        self.slots
            .respond_indexed(|_, datagram, peer, out| answer(datagram, peer, out));
    }

    /// Serve datagrams until the returned [`BatchWorker`] is dropped or the
    /// socket fails: each batch is received, `answer(index, datagram, peer,
    /// out)` is called for each datagram in order (index 0 starts a batch:
    /// the moment to pick up new state), and the answers it queues are sent
    /// together.
    ///
    /// Real hosts: a thread named `name` that blocks in `recvmmsg` and
    /// `sendmmsg`; a dropped worker stops within [`WORKER_POLL`]. Simulation:
    /// a task on the current node, aborted when the worker is dropped.
    /// Errors that concern one peer (an ICMP-reported refusal, a failed send)
    /// are logged at debug level and skipped; any other receive error ends
    /// the worker with an error log naming `name`.
    pub fn serve<F>(self, name: String, answer: F) -> io::Result<BatchWorker>
    where
        F: FnMut(usize, &[u8], SocketAddr, &mut Vec<u8>) -> bool + Send + 'static,
    {
        #[cfg(madsim)]
        {
            let task = super::spawn(self.serve_async(name, answer));
            Ok(BatchWorker { task })
        }
        #[cfg(not(madsim))]
        {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            // Out of tokio's reactor: `into_std` deregisters it from epoll.
            let socket = self.socket.0.into_std()?;
            socket.set_nonblocking(false)?;
            socket.set_read_timeout(Some(WORKER_POLL))?;
            let mut worker = BlockingBatch {
                socket,
                slots: self.slots,
                stop: stop.clone(),
            };
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || worker.run(&name, answer))?;
            Ok(BatchWorker { stop })
        }
    }

    #[cfg(madsim)]
    async fn serve_async<F>(mut self, name: String, mut answer: F)
    where
        F: FnMut(usize, &[u8], SocketAddr, &mut Vec<u8>) -> bool,
    {
        loop {
            match self.recv().await {
                Ok(_) => {}
                Err(e) if is_peer_error(&e) => {
                    tracing::debug!(worker = %name, error = %e, "UDP: receive error from a peer, ignored");
                    continue;
                }
                Err(e) => {
                    tracing::error!(worker = %name, error = %e, "UDP: receive failed, worker stopped");
                    return;
                }
            }
            self.slots.respond_indexed(&mut answer);
            self.send(
                |peer, e| tracing::debug!(worker = %name, %peer, error = %e, "UDP: send failed"),
            )
            .await;
        }
    }

    /// Send the answers [`respond`](Self::respond) queued, in order (real
    /// hosts: one `sendmmsg` for all of them, unless the send buffer fills or
    /// one fails). A datagram that cannot be sent is reported to
    /// `failed(peer, error)` and skipped; a full send buffer is waited out,
    /// as `send_to` does.
    pub async fn send<F>(&mut self, mut failed: F)
    where
        F: FnMut(SocketAddr, io::Error),
    {
        let queued = std::mem::take(&mut self.slots.queued);
        #[cfg(madsim)]
        for i in 0..queued {
            if let Err(e) = self
                .socket
                .send_to(&self.slots.outbox[i], self.slots.targets[i])
                .await
            {
                failed(self.slots.targets[i], e);
            }
        }
        #[cfg(not(madsim))]
        self.slots
            .sys
            .send(
                &self.socket.0,
                &self.slots.outbox[..queued],
                &self.slots.targets[..queued],
                &mut failed,
            )
            .await;
    }
}

impl Slots {
    /// [`UdpBatch::respond`], telling `answer` each datagram's index in
    /// the batch (0 for the first).
    fn respond_indexed<F>(&mut self, mut answer: F)
    where
        F: FnMut(usize, &[u8], SocketAddr, &mut Vec<u8>) -> bool,
    {
        self.queued = 0;
        for i in 0..self.received {
            let Some(peer) = self.peers[i] else { continue };
            let start = i * self.slot;
            let datagram = &self.inbox[start..start + self.lens[i]];
            let out = &mut self.outbox[self.queued];
            out.clear();
            if answer(i, datagram, peer, out) {
                self.targets[self.queued] = peer;
                self.queued += 1;
            }
        }
    }
}

/// How often a real-host worker of [`UdpBatch::serve`] that receives
/// nothing looks whether its [`BatchWorker`] was dropped.
pub const WORKER_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// The worker [`UdpBatch::serve`] started; dropping it stops the worker.
#[must_use = "dropping the worker stops it"]
pub struct BatchWorker {
    #[cfg(not(madsim))]
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    #[cfg(madsim)]
    task: super::JoinHandle<()>,
}

impl std::fmt::Debug for BatchWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWorker").finish_non_exhaustive()
    }
}

impl Drop for BatchWorker {
    fn drop(&mut self) {
        #[cfg(not(madsim))]
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        #[cfg(madsim)]
        self.task.abort();
    }
}

/// Errors from a receive or send that concern one peer, not the socket.
fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// A real-host worker of [`UdpBatch::serve`]: the batch's buffers over a
/// blocking socket with a receive timeout of [`WORKER_POLL`].
#[cfg(not(madsim))]
struct BlockingBatch {
    socket: std::net::UdpSocket,
    slots: Slots,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(not(madsim))]
impl BlockingBatch {
    fn run<F>(&mut self, name: &str, mut answer: F)
    where
        F: FnMut(usize, &[u8], SocketAddr, &mut Vec<u8>) -> bool,
    {
        use std::os::fd::AsRawFd;
        let fd = self.socket.as_raw_fd();
        while !self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            let b = &mut self.slots;
            b.queued = 0;
            b.received = 0;
            match b
                .sys
                .recv_blocking(fd, &mut b.inbox, b.slot, &mut b.lens, &mut b.peers)
            {
                Ok(n) => b.received = n,
                // The receive timeout (nothing came): look at `stop` again.
                Err(e) if is_peer_error(&e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) {
                        tracing::debug!(worker = %name, error = %e, "UDP: receive error from a peer, ignored");
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(worker = %name, error = %e, "UDP: receive failed, worker stopped");
                    return;
                }
            }
            b.respond_indexed(&mut answer);
            let queued = std::mem::take(&mut b.queued);
            b.sys.send_blocking(
                fd,
                &b.outbox[..queued],
                &b.targets[..queued],
                &mut |peer, e| tracing::debug!(worker = %name, %peer, error = %e, "UDP: send failed"),
            );
        }
    }
}

/// `recvmmsg`/`sendmmsg` on a tokio socket, and `SO_REUSEPORT` (Linux).
#[cfg(not(madsim))]
mod mmsg {
    use std::io;
    use std::mem::{size_of, zeroed};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use tokio::io::Interest;

    /// The arrays both calls read, one entry per datagram of a batch.
    pub(super) struct Headers {
        msgs: Vec<libc::mmsghdr>,
        iovs: Vec<libc::iovec>,
        names: Vec<libc::sockaddr_storage>,
    }

    // SAFETY: the raw pointers inside `msgs` and `iovs` point into `iovs`,
    // `names` and buffers owned by the same `UdpBatch`; they are written just
    // before a call, read only by that call, under `&mut self`, and never
    // dereferenced by us. Moving the struct to another thread moves no
    // pointee (all are heap buffers that live as long as the batch).
    unsafe impl Send for Headers {}

    const NAME_LEN: libc::socklen_t = size_of::<libc::sockaddr_storage>() as libc::socklen_t;

    impl Headers {
        pub(super) fn new(capacity: usize) -> Self {
            // SAFETY: all three are plain C structs for which all-zero is valid.
            unsafe {
                Self {
                    msgs: (0..capacity).map(|_| zeroed()).collect(),
                    iovs: (0..capacity).map(|_| zeroed()).collect(),
                    names: (0..capacity).map(|_| zeroed()).collect(),
                }
            }
        }

        /// Point header `i` at `name` and at `len` bytes at `base`.
        fn point(&mut self, i: usize, base: *mut u8, len: usize, name_len: libc::socklen_t) {
            self.iovs[i] = libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            };
            // SAFETY: all-zero is a valid msghdr (no control data, no flags).
            let mut hdr: libc::msghdr = unsafe { zeroed() };
            hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = name_len;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            self.msgs[i] = libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            };
        }

        /// One `recvmmsg` into the first `capacity` headers.
        fn recvmmsg(
            &mut self,
            fd: libc::c_int,
            capacity: usize,
            flags: libc::c_int,
        ) -> io::Result<usize> {
            // SAFETY: `point` aimed `msgs[..capacity]` at valid iovecs over
            // distinct slots of the inbox and at `sockaddr_storage`s of
            // `NAME_LEN` bytes; the caller holds all of them mutably.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.msgs.as_mut_ptr(),
                    capacity as libc::c_uint,
                    flags,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }

        /// One `sendmmsg` of headers `from..to`.
        fn sendmmsg(
            &mut self,
            fd: libc::c_int,
            from: usize,
            to: usize,
            flags: libc::c_int,
        ) -> io::Result<usize> {
            let msgs = &mut self.msgs[from..to];
            // SAFETY: `point` aimed every header at a datagram and an address
            // that the caller holds borrowed for the whole send.
            let n =
                unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as libc::c_uint, flags) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        }

        /// Aim the first `capacity` headers at the `slot`-byte slots of `inbox`.
        fn point_inbox(&mut self, inbox: &mut [u8], slot: usize, capacity: usize) {
            for (i, chunk) in inbox.chunks_exact_mut(slot).take(capacity).enumerate() {
                self.point(i, chunk.as_mut_ptr(), slot, NAME_LEN);
            }
        }

        /// The lengths and senders of the `n` datagrams the last `recvmmsg` got.
        fn received(
            &self,
            n: usize,
            slot: usize,
            lens: &mut [usize],
            peers: &mut [Option<SocketAddr>],
        ) -> usize {
            for i in 0..n {
                let msg = &self.msgs[i];
                lens[i] = (msg.msg_len as usize).min(slot);
                peers[i] = from_raw(&self.names[i], msg.msg_hdr.msg_namelen);
            }
            n
        }

        /// Receive up to `lens.len()` datagrams into `slot`-byte slots of
        /// `inbox`; their lengths and senders go to `lens` and `peers`.
        pub(super) async fn recv(
            &mut self,
            socket: &tokio::net::UdpSocket,
            inbox: &mut [u8],
            slot: usize,
            lens: &mut [usize],
            peers: &mut [Option<SocketAddr>],
        ) -> io::Result<usize> {
            let capacity = lens.len();
            let fd = socket.as_raw_fd();
            loop {
                self.point_inbox(inbox, slot, capacity);
                let headers = &mut *self;
                let received = socket
                    .async_io(Interest::READABLE, || {
                        headers.recvmmsg(fd, capacity, libc::MSG_DONTWAIT)
                    })
                    .await;
                match received {
                    Ok(n) => return Ok(self.received(n, slot, lens, peers)),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        }

        /// [`recv`](Self::recv) on a blocking socket: waits for the first
        /// datagram (or the socket's receive timeout: `WouldBlock`), then
        /// takes what is queued behind it without waiting (`MSG_WAITFORONE`).
        pub(super) fn recv_blocking(
            &mut self,
            fd: libc::c_int,
            inbox: &mut [u8],
            slot: usize,
            lens: &mut [usize],
            peers: &mut [Option<SocketAddr>],
        ) -> io::Result<usize> {
            let capacity = lens.len();
            self.point_inbox(inbox, slot, capacity);
            let n = self.recvmmsg(fd, capacity, libc::MSG_WAITFORONE)?;
            Ok(self.received(n, slot, lens, peers))
        }

        /// Aim headers `0..datagrams.len()` at the datagrams and their targets.
        fn point_outbox(&mut self, datagrams: &[Vec<u8>], targets: &[SocketAddr]) {
            for (i, (datagram, target)) in datagrams.iter().zip(targets).enumerate() {
                let name_len = to_raw(*target, &mut self.names[i]);
                // sendmmsg only reads the buffer; iovec's pointer is `*mut`.
                self.point(i, datagram.as_ptr().cast_mut(), datagram.len(), name_len);
            }
        }

        /// Send `datagrams[i]` to `targets[i]`, as few calls as the kernel
        /// allows; `failed` hears of each datagram that could not be sent.
        pub(super) async fn send(
            &mut self,
            socket: &tokio::net::UdpSocket,
            datagrams: &[Vec<u8>],
            targets: &[SocketAddr],
            failed: &mut impl FnMut(SocketAddr, io::Error),
        ) {
            let count = datagrams.len();
            self.point_outbox(datagrams, targets);
            let fd = socket.as_raw_fd();
            let mut done = 0;
            while done < count {
                let headers = &mut *self;
                let sent = socket
                    .async_io(Interest::WRITABLE, || {
                        headers.sendmmsg(fd, done, count, libc::MSG_DONTWAIT)
                    })
                    .await;
                done = sent_up_to(sent, done, targets, failed);
            }
        }

        /// [`send`](Self::send) on a blocking socket: a full send buffer
        /// blocks the call until there is room.
        pub(super) fn send_blocking(
            &mut self,
            fd: libc::c_int,
            datagrams: &[Vec<u8>],
            targets: &[SocketAddr],
            failed: &mut impl FnMut(SocketAddr, io::Error),
        ) {
            let count = datagrams.len();
            self.point_outbox(datagrams, targets);
            let mut done = 0;
            while done < count {
                let sent = self.sendmmsg(fd, done, count, 0);
                done = sent_up_to(sent, done, targets, failed);
            }
        }
    }

    /// Where a send loop stands after a `sendmmsg` that started at `done`.
    fn sent_up_to(
        sent: io::Result<usize>,
        done: usize,
        targets: &[SocketAddr],
        failed: &mut impl FnMut(SocketAddr, io::Error),
    ) -> usize {
        match sent {
            // At least one sent; the rest go in the next call, whose first
            // datagram gets any error the kernel did not return.
            Ok(n) if n > 0 => done + n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => done,
            // An error is about the first datagram not sent: report it and
            // go on with the next.
            Ok(_) => {
                failed(targets[done], io::Error::other("sendmmsg sent nothing"));
                done + 1
            }
            Err(e) => {
                failed(targets[done], e);
                done + 1
            }
        }
    }

    /// Set the int-valued socket option `level`/`name` of `fd` to `value`.
    pub(in crate::rt) fn set_int_option(
        fd: std::os::fd::RawFd,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: an int option, given with its size.
        let set = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// A non-blocking UDP socket bound to `addr`, the int socket options
    /// `(level, name, value)` set before the bind.
    pub(in crate::rt) fn udp_socket(
        addr: SocketAddr,
        options: &[(libc::c_int, libc::c_int, libc::c_int)],
    ) -> io::Result<tokio::net::UdpSocket> {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let flags = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: plain syscall; the descriptor is owned at once below.
        let fd = unsafe { libc::socket(family, flags, libc::IPPROTO_UDP) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns; it is
        // closed on every early return.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        for &(level, name, value) in options {
            set_int_option(fd, level, name, value)?;
        }
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut raw: libc::sockaddr_storage = unsafe { zeroed() };
        let len = to_raw(addr, &mut raw);
        // SAFETY: `raw` holds an address of `len` bytes of the socket's family.
        let bound = unsafe { libc::bind(fd, (&raw as *const libc::sockaddr_storage).cast(), len) };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(socket))
    }

    /// The address the kernel wrote, as std would convert it.
    fn from_raw(raw: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
        let len = len as usize;
        match raw.ss_family as libc::c_int {
            libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says the storage holds a sockaddr_in,
                // and sockaddr_storage is aligned for every address type.
                let a =
                    unsafe { &*(raw as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes()),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for sockaddr_in6.
                let a = unsafe {
                    &*(raw as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
                };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// Write `addr` into `raw` as the kernel reads it; returns its length.
    fn to_raw(addr: SocketAddr, raw: &mut libc::sockaddr_storage) -> libc::socklen_t {
        // SAFETY: all-zero is a valid sockaddr_storage; the casts write the
        // address type the family names, which fits in and is aligned by
        // sockaddr_storage.
        unsafe {
            *raw = zeroed();
            let at = raw as *mut libc::sockaddr_storage;
            match addr {
                SocketAddr::V4(a) => {
                    let out = &mut *at.cast::<libc::sockaddr_in>();
                    out.sin_family = libc::AF_INET as libc::sa_family_t;
                    out.sin_port = a.port().to_be();
                    out.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                    size_of::<libc::sockaddr_in>() as libc::socklen_t
                }
                SocketAddr::V6(a) => {
                    let out = &mut *at.cast::<libc::sockaddr_in6>();
                    out.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    out.sin6_port = a.port().to_be();
                    out.sin6_addr.s6_addr = a.ip().octets();
                    out.sin6_flowinfo = a.flowinfo();
                    out.sin6_scope_id = a.scope_id();
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn addresses_round_trip_through_the_raw_form() {
            for addr in [
                "127.0.0.1:53",
                "192.0.2.200:65535",
                "[::1]:5353",
                "[2001:db8::1%7]:1",
                "[::ffff:127.0.0.1]:40000",
            ] {
                let addr: SocketAddr = addr.parse().unwrap();
                // SAFETY: all-zero is a valid sockaddr_storage.
                let mut raw = unsafe { zeroed() };
                let len = to_raw(addr, &mut raw);
                assert_eq!(from_raw(&raw, len), Some(addr));
            }
            // SAFETY: as above.
            let unknown: libc::sockaddr_storage = unsafe { zeroed() };
            assert_eq!(from_raw(&unknown, NAME_LEN), None);
        }
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rt::timeout;

    async fn socket() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    /// Datagrams queued from several senders come in one `recv`, in order,
    /// with their senders; answers go back in one `send`, and one that
    /// cannot be sent (port 0) is reported and skipped without losing the
    /// ones after it.
    #[tokio::test]
    async fn a_batch_in_and_out_with_a_failing_peer() {
        let mut server = UdpBatch::new(socket().await, 8, 64);
        let at = server.local_addr().unwrap();
        let (a, b) = (socket().await, socket().await);
        for (client, text) in [
            (&a, "a1"),
            (&b, "b1"),
            (&a, "a2"),
            (&b, ""),
            (&a, &"x".repeat(100)),
        ] {
            client.send_to(text.as_bytes(), at).await.unwrap();
        }
        // Loopback delivers on send: all five are queued already.
        assert_eq!(server.recv().await.unwrap(), 5);
        let mut seen = Vec::new();
        let unreachable: SocketAddr = "127.0.0.1:0".parse().unwrap();
        server.respond(|datagram, peer, out| {
            seen.push((datagram.to_vec(), peer));
            if datagram.is_empty() {
                return false; // nothing for the empty one
            }
            out.extend_from_slice(b"re:");
            out.extend_from_slice(datagram);
            true
        });
        let (pa, pb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        assert_eq!(
            seen,
            [
                (b"a1".to_vec(), pa),
                (b"b1".to_vec(), pb),
                (b"a2".to_vec(), pa),
                (Vec::new(), pb),
                // Cut to the 64-byte slot, as recv_from into 64 bytes would.
                (vec![b'x'; 64], pa),
            ]
        );
        // Re-aim the second answer at a port no datagram can go to.
        server.slots.targets[1] = unreachable;
        let mut failures = Vec::new();
        server.send(|peer, e| failures.push((peer, e.kind()))).await;
        assert_eq!(failures, [(unreachable, io::ErrorKind::InvalidInput)]);

        let mut buf = [0u8; 128];
        for (client, want) in [
            (&a, &b"re:a1"[..]),
            (&a, b"re:a2"),
            (&a, &[b"re:".as_slice(), &[b'x'; 64]].concat()),
        ] {
            let (len, from) = timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!((&buf[..len], from), (want, at));
        }
        assert!(timeout(Duration::from_millis(50), b.recv_from(&mut buf))
            .await
            .is_err());

        // Capacity bounds a batch; the rest waits for the next one.
        for i in 0..11u8 {
            a.send_to(&[i], at).await.unwrap();
        }
        assert_eq!(server.recv().await.unwrap(), 8);
        assert_eq!(server.recv().await.unwrap(), 3);
        let mut firsts = Vec::new();
        server.respond(|datagram, _, _| {
            firsts.push(datagram[0]);
            false
        });
        assert_eq!(firsts, [8, 9, 10]);
    }

    /// A worker thread answers batches with their index (0 starts each
    /// one), skips a datagram it does not answer, and stops after it is
    /// dropped: its socket closes, so the port can be bound again.
    #[tokio::test]
    async fn a_served_batch_answers_until_its_worker_is_dropped() {
        let server = UdpBatch::new(socket().await, 4, 64);
        let at = server.local_addr().unwrap();
        let worker = server
            .serve("test-udp".into(), |index, datagram, _, out| {
                if datagram == b"drop" {
                    return false;
                }
                out.extend_from_slice(format!("{index}:").as_bytes());
                out.extend_from_slice(datagram);
                true
            })
            .unwrap();
        let client = socket().await;
        let mut buf = [0u8; 64];
        for text in ["drop", "one", "two"] {
            client.send_to(text.as_bytes(), at).await.unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..2 {
            let (len, from) = timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(from, at);
            got.push(String::from_utf8(buf[..len].to_vec()).unwrap());
        }
        // Loopback queues all three before the worker wakes, mostly: then
        // they come as one batch, "drop" at index 0; any split is valid.
        let valid = [
            ["1:one", "2:two"],
            ["0:one", "1:two"],
            ["1:one", "0:two"],
            ["0:one", "0:two"],
        ];
        assert!(valid.iter().any(|v| got == *v), "{got:?}");
        drop(worker);
        let deadline = std::time::Instant::now() + WORKER_POLL * 10;
        loop {
            match UdpSocket::bind(at).await {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
                    crate::rt::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!(
                    "the worker still holds {at} after {:?}: {e}",
                    WORKER_POLL * 10
                ),
            }
        }
    }

    /// Sockets of one `SO_REUSEPORT` group share a port; a plain socket
    /// cannot join them.
    #[tokio::test]
    async fn reuse_port_sockets_share_one_port() {
        let group = UdpSocket::bind_reuse_port("127.0.0.1:0".parse().unwrap(), 3)
            .await
            .unwrap();
        let addrs: Vec<SocketAddr> = group.iter().map(|s| s.local_addr().unwrap()).collect();
        assert_eq!(addrs.len(), 3);
        assert!(addrs.iter().all(|a| *a == addrs[0] && a.port() != 0));
        let plain = UdpSocket::bind(addrs[0]).await;
        assert_eq!(plain.unwrap_err().kind(), io::ErrorKind::AddrInUse);
        let one = UdpSocket::bind_reuse_port("127.0.0.1:0".parse().unwrap(), 1)
            .await
            .unwrap();
        assert_eq!(one.len(), 1);
    }
}
