//! Moves bytes between a WebSocket (the client side, TLS or plain) and a TCP stream (the
//! desktop), in one task, without collecting messages.
//!
//! - Data frames are unmasked in place and written on as they arrive; what the desktop sends
//!   becomes one binary frame per read, header and payload in one 64 KiB buffer (over TLS: four
//!   full records, written in one system call).
//! - Buffers come from a small per-thread pool and go back whenever a side has nothing
//!   pending, so an idle tunnel holds none.
//! - Each direction waits for the other's writes (bounded: one buffer per direction), so a
//!   slow reader slows its writer instead of growing memory.
//! - Keepalive pings, a pong timeout, an idle-data cap, and the broker's "session ended"
//!   signal all end a tunnel with a close frame.
//! - The close frame's code says why (RFC 6455 section 7.4.1; [`End::close_code`]):
//!   - 1000 (normal closure): the desktop ended its stream, or the client's own close is
//!     answered; the tunnel did what it was opened for.
//!   - 1001 (going away): the gateway stops, a ping went unanswered within the pong timeout,
//!     or no data moved for the idle cap: this end gives the connection up.
//!   - 1008 (policy violation): the broker ended the session; its tunnels may no longer be
//!     used.
//!   - 1002 (protocol error): a frame broke RFC 6455 (unmasked from a client, reserved bits,
//!     an unknown opcode, …); the close frame goes out before the connection is dropped.
//! - Half-close: a close frame from one side shuts down the other side's write direction;
//!   the tunnel ends when both directions are closed.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::ws::{
    self, ControlFrame, FrameError, MAX_CONTROL, MAX_HEADER, Opcode, Role, apply_mask,
};

/// Bytes per buffer: one read, one frame. Measured on loopback (`tests/bench/tunnels.sh`):
/// 64 KiB frames carry more than 32 KiB ones for both the gateway and its clients, and more
/// than 128 KiB ones for websocat's client.
pub const BUF_SIZE: usize = 64 * 1024;
/// Payload bytes per outgoing data frame, so that header and payload together are exactly
/// `BUF_SIZE`: four full TLS records, with no short record for the last few bytes. The header
/// of a payload this size is 4 bytes, and 4 more with a client's mask.
const fn frame_payload(masked: bool) -> usize {
    BUF_SIZE - 4 - if masked { 4 } else { 0 }
}
/// Room in front of an outgoing payload for its frame header.
const ROOM: usize = MAX_HEADER;
/// How long a side may stay silent after the gateway sent its close frame.
const CLOSING_GRACE: Duration = Duration::from_secs(30);

/// A per-thread pool of buffers, so that idle tunnels hold none.
pub(crate) mod pool {
    use super::{BUF_SIZE, ROOM, RefCell};

    const KEEP: usize = 64;

    thread_local! {
        static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> Box<[u8]> {
        POOL.with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; ROOM + BUF_SIZE].into_boxed_slice())
    }

    pub fn give(buf: Box<[u8]>) {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < KEEP {
                p.push(buf);
            }
        });
    }
}

/// What one tunnel shares with the gateway's registry: counters and the close signal.
#[derive(Debug)]
pub struct TunnelShared {
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// 0 while open, else the [`Closing`] reason.
    closed: AtomicU8,
    waker: AtomicWaker,
}

/// Why the gateway closes a tunnel from outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// The broker ended the tunnel's session.
    SessionEnded = 1,
    /// The gateway is stopping.
    Shutdown = 2,
}

impl Default for TunnelShared {
    fn default() -> Self {
        Self {
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            closed: AtomicU8::new(0),
            waker: AtomicWaker::new(),
        }
    }
}

impl TunnelShared {
    /// Ends the tunnel, for `why`; the first reason given stays.
    pub fn close(&self, why: Closing) {
        let _ = self
            .closed
            .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    /// Why the tunnel was closed from outside, if it was.
    pub fn closing(&self) -> Option<Closing> {
        match self.closed.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Closing::SessionEnded),
            _ => Some(Closing::Shutdown),
        }
    }

    /// Wakes this task when the tunnel is closed (one task per tunnel).
    pub fn register_waker(&self, cx: &Context<'_>) {
        self.waker.register(cx.waker());
    }

    pub fn is_closed(&self) -> bool {
        self.closing().is_some()
    }
}

/// The timers of a tunnel.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    /// Send a ping this often; `None`: never.
    pub keepalive: Option<Duration>,
    /// Close when a ping is not answered within this.
    pub pong_timeout: Duration,
    /// Close when no data moved either way for this long; `None`: never.
    pub idle: Option<Duration>,
}

impl Timers {
    /// From seconds as configured: 0 turns keepalive pings and the idle cap off.
    pub fn from_secs(keepalive: u32, pong_timeout: u32, idle: u32) -> Timers {
        let secs = |n: u32| Duration::from_secs(u64::from(n));
        Timers {
            keepalive: (keepalive > 0).then(|| secs(keepalive)),
            pong_timeout: secs(pong_timeout),
            idle: (idle > 0).then(|| secs(idle)),
        }
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed.
    Closed,
    /// The client went away without a close frame.
    ClientGone,
    /// The broker ended the session.
    SessionEnded,
    /// The gateway is stopping.
    Shutdown,
    /// A ping went unanswered.
    PongTimeout,
    /// No data moved for the idle cap.
    Idle,
}

impl End {
    /// The close code (RFC 6455 section 7.4.1) the gateway sends when a tunnel ends this way
    /// from its side: see the module documentation.
    pub fn close_code(self) -> u16 {
        match self {
            End::Closed => 1000,
            End::SessionEnded => 1008,
            End::Shutdown | End::PongTimeout | End::Idle | End::ClientGone => 1001,
        }
    }
}

impl From<Closing> for End {
    fn from(why: Closing) -> End {
        match why {
            Closing::SessionEnded => End::SessionEnded,
            Closing::Shutdown => End::Shutdown,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("client connection: {0}")]
    Client(io::Error),
    #[error("desktop connection: {0}")]
    Target(io::Error),
    #[error("client broke the WebSocket protocol: {0}")]
    Protocol(FrameError),
}

#[derive(Debug, Clone, Copy)]
struct InFrame {
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    remaining: u64,
    offset: u64,
}

/// Carries one tunnel until it ends. `leftover` holds bytes already read from the client
/// after the handshake (the start of its first frames). `role` is this end's role: a gateway
/// is the server, `gatehouse tunnel` the client.
pub async fn run<C>(
    ws: &mut C,
    tcp: &mut TcpStream,
    leftover: &[u8],
    role: Role,
    timers: Timers,
    shared: &TunnelShared,
) -> Result<End, PumpError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let now = Instant::now();
    let mut pump = Pump {
        ws,
        tcp,
        role,
        shared,
        timers,
        in_buf: None,
        in_pos: 0,
        in_end: 0,
        hdr: [0; MAX_HEADER],
        hdr_len: 0,
        frame: None,
        ctrl_in: [0; MAX_CONTROL],
        ctrl_len: 0,
        to_tcp: None,
        up_closed: false,
        up_eof: false,
        tcp_write_shut: false,
        out_buf: None,
        out_range: None,
        ctrl_out: None,
        close_due: None,
        pong_due: None,
        ping_due: false,
        close_queued: false,
        close_sent: false,
        down_eof: false,
        need_flush: false,
        sleep: Box::pin(tokio::time::sleep_until(now + Duration::from_secs(3600))),
        sleep_at: now + Duration::from_secs(3600),
        ping_at: timers.keepalive.map(|k| now + k),
        pong_deadline: None,
        idle_check: timers.idle.map(|i| now + i),
        last_data: now,
        abort_deadline: None,
        end: None,
        broken: None,
    };
    if !leftover.is_empty() {
        let mut buf = pool::take();
        let n = leftover.len().min(buf.len());
        buf[..n].copy_from_slice(&leftover[..n]);
        pump.in_buf = Some(buf);
        pump.in_end = n;
    }
    let result = std::future::poll_fn(|cx| pump.poll(cx)).await;
    pump.release_buffers();
    result
}

struct Pump<'a, C> {
    ws: &'a mut C,
    tcp: &'a mut TcpStream,
    role: Role,
    shared: &'a TunnelShared,
    timers: Timers,

    // Client → desktop.
    in_buf: Option<Box<[u8]>>,
    in_pos: usize,
    in_end: usize,
    /// A frame header split across reads.
    hdr: [u8; MAX_HEADER],
    hdr_len: usize,
    frame: Option<InFrame>,
    ctrl_in: [u8; MAX_CONTROL],
    ctrl_len: usize,
    /// The part of `in_buf` being written to the desktop.
    to_tcp: Option<(usize, usize)>,
    /// The client sent its close frame.
    up_closed: bool,
    /// The client's stream ended after its close frame: nothing more to read, while the
    /// desktop's answer may still be on its way to it.
    up_eof: bool,
    tcp_write_shut: bool,

    // Desktop → client.
    out_buf: Option<Box<[u8]>>,
    out_range: Option<(usize, usize)>,
    /// The control frame being written, and how far.
    ctrl_out: Option<(ControlFrame, usize)>,
    close_due: Option<ControlFrame>,
    pong_due: Option<ControlFrame>,
    ping_due: bool,
    close_queued: bool,
    close_sent: bool,
    down_eof: bool,
    need_flush: bool,

    // Timers.
    sleep: Pin<Box<Sleep>>,
    sleep_at: Instant,
    ping_at: Option<Instant>,
    pong_deadline: Option<Instant>,
    idle_check: Option<Instant>,
    last_data: Instant,
    /// After an abort: give up on a clean close after this.
    abort_deadline: Option<Instant>,
    end: Option<End>,
    /// The client broke the protocol: the tunnel ends with this error, after its close frame.
    broken: Option<FrameError>,
}

impl<C> Pump<'_, C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    fn mask(&self) -> Option<[u8; 4]> {
        (self.role == Role::Client).then(rand::random::<[u8; 4]>)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<End, PumpError>> {
        self.shared.waker.register(cx.waker());
        if let Some(why) = self.shared.closing()
            && self.end.is_none()
        {
            self.abort(End::from(why));
        }
        loop {
            let mut progress = self.poll_timers(cx);
            if self.end.is_some() && self.abort_deadline.is_some_and(|d| Instant::now() >= d) {
                return Poll::Ready(self.outcome());
            }
            progress |= self.poll_write_ws(cx)?;
            if self.finished() {
                return match Pin::new(&mut *self.ws).poll_shutdown(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(_) => Poll::Ready(self.outcome()),
                };
            }
            if self.end.is_none() {
                progress |= self.poll_ws_to_tcp(cx)?;
                if self.end == Some(End::ClientGone) {
                    return Poll::Ready(Ok(End::ClientGone));
                }
                progress |= self.poll_tcp_to_ws(cx)?;
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Both directions are closed and everything is written.
    fn finished(&self) -> bool {
        self.close_sent
            && (self.up_closed || self.end.is_some())
            && self.out_range.is_none()
            && self.ctrl_out.is_none()
            && !self.need_flush
    }

    /// How the tunnel ended, once it has.
    fn outcome(&mut self) -> Result<End, PumpError> {
        match self.broken.take() {
            Some(e) => Err(PumpError::Protocol(e)),
            None => Ok(self.end.unwrap_or(End::Closed)),
        }
    }

    /// Ends the tunnel from this side: a close frame with the end's code, nothing more.
    fn abort(&mut self, end: End) {
        self.abort_with(end, end.close_code());
    }

    fn abort_with(&mut self, end: End, code: u16) {
        self.end = Some(end);
        self.queue_close(code);
        self.abort_deadline = Some(Instant::now() + Duration::from_secs(5));
    }

    fn queue_close(&mut self, code: u16) {
        if !self.close_queued {
            self.close_queued = true;
            self.close_due = Some(ControlFrame::close(code, self.mask()));
        }
    }

    fn poll_timers(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        loop {
            let now = Instant::now();
            if let Some(at) = self.ping_at
                && now >= at
            {
                self.ping_at = self.timers.keepalive.map(|k| now + k);
                if !self.close_queued {
                    self.ping_due = true;
                    progress = true;
                    // After its close frame the peer owes no pong (RFC 6455 lets it send
                    // nothing more); pings still keep proxies on the way from timing out.
                    if self.pong_deadline.is_none() && !self.up_closed {
                        self.pong_deadline = Some(now + self.timers.pong_timeout);
                    }
                }
            }
            if self.pong_deadline.is_some_and(|d| now >= d) && self.end.is_none() {
                self.pong_deadline = None;
                self.abort(End::PongTimeout);
                progress = true;
            }
            let idle_limit = match (self.timers.idle, self.close_sent) {
                (Some(i), true) => Some(i.min(CLOSING_GRACE)),
                (Some(i), false) => Some(i),
                (None, true) => Some(CLOSING_GRACE),
                (None, false) => None,
            };
            if let Some(limit) = idle_limit {
                let check = *self.idle_check.get_or_insert(self.last_data + limit);
                if now >= check && self.end.is_none() {
                    if now.duration_since(self.last_data) >= limit {
                        self.abort(if self.close_sent {
                            End::ClientGone
                        } else {
                            End::Idle
                        });
                        progress = true;
                    } else {
                        self.idle_check = Some(self.last_data + limit);
                    }
                }
            }
            if self.abort_deadline.is_some_and(|d| d <= now) {
                return true;
            }
            let next = [
                self.ping_at,
                self.pong_deadline,
                self.idle_check.filter(|_| self.end.is_none()),
                self.abort_deadline,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_secs(3600));
            if next != self.sleep_at {
                self.sleep_at = next;
                self.sleep.as_mut().reset(next);
            }
            // Ready means a deadline passed since `now`: handle it in the next round.
            if self.sleep.as_mut().poll(cx).is_pending() {
                return progress;
            }
        }
    }

    /// Writes what is pending towards the client: a data frame, then control frames.
    fn poll_write_ws(&mut self, cx: &mut Context<'_>) -> Result<bool, PumpError> {
        let mut progress = false;
        loop {
            if let Some((start, end)) = self.out_range {
                let buf = self.out_buf.as_deref().unwrap_or(&[]);
                match Pin::new(&mut *self.ws).poll_write(cx, &buf[start..end]) {
                    Poll::Pending => return Ok(progress),
                    Poll::Ready(Err(e)) => return Err(PumpError::Client(e)),
                    Poll::Ready(Ok(0)) => {
                        return Err(PumpError::Client(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        progress = true;
                        self.need_flush = true;
                        self.out_range = (start + n < end).then_some((start + n, end));
                    }
                }
                continue;
            }
            if self.ctrl_out.is_none() {
                let next = if let Some(close) = self.close_due.take() {
                    Some(close)
                } else if self.close_sent {
                    None
                } else if let Some(pong) = self.pong_due.take() {
                    Some(pong)
                } else if self.ping_due {
                    self.ping_due = false;
                    Some(ControlFrame::new(Opcode::Ping, b"gatehouse", self.mask()))
                } else {
                    None
                };
                self.ctrl_out = next.map(|f| (f, 0));
            }
            if let Some((frame, at)) = self.ctrl_out {
                let bytes = frame.as_bytes();
                match Pin::new(&mut *self.ws).poll_write(cx, &bytes[at..]) {
                    Poll::Pending => return Ok(progress),
                    Poll::Ready(Err(e)) => return Err(PumpError::Client(e)),
                    Poll::Ready(Ok(0)) => {
                        return Err(PumpError::Client(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        progress = true;
                        self.need_flush = true;
                        if at + n < bytes.len() {
                            self.ctrl_out = Some((frame, at + n));
                        } else {
                            self.ctrl_out = None;
                            if bytes[0] & 0x0f == 0x8 {
                                self.close_sent = true;
                                self.idle_check = None;
                            }
                        }
                    }
                }
                continue;
            }
            if self.need_flush {
                match Pin::new(&mut *self.ws).poll_flush(cx) {
                    Poll::Pending => return Ok(progress),
                    Poll::Ready(Err(e)) => return Err(PumpError::Client(e)),
                    Poll::Ready(Ok(())) => self.need_flush = false,
                }
            }
            return Ok(progress);
        }
    }

    /// Reads from the desktop and frames it for the client.
    fn poll_tcp_to_ws(&mut self, cx: &mut Context<'_>) -> Result<bool, PumpError> {
        let mut progress = false;
        loop {
            if self.down_eof || self.close_queued || self.out_range.is_some() {
                return Ok(progress);
            }
            // A read that does not fill the buffer tells the event loop the socket is drained,
            // so the next turn waits instead of trying a read that would only fail.
            let mut buf = self.out_buf.take().unwrap_or_else(pool::take);
            let payload = frame_payload(self.role == Role::Client);
            let mut read = ReadBuf::new(&mut buf[ROOM..ROOM + payload]);
            let n = match Pin::new(&mut *self.tcp).poll_read(cx, &mut read) {
                Poll::Pending => {
                    pool::give(buf);
                    return Ok(progress);
                }
                Poll::Ready(Err(e)) => {
                    pool::give(buf);
                    return Err(PumpError::Target(e));
                }
                Poll::Ready(Ok(())) => read.filled().len(),
            };
            if n == 0 {
                pool::give(buf);
                self.down_eof = true;
                self.queue_close(1000);
                return Ok(true);
            }
            super::workers::note_activity();
            let mask = self.mask();
            if let Some(m) = mask {
                apply_mask(&mut buf[ROOM..ROOM + n], m, 0);
            }
            let start = ws::write_header(&mut buf[..ROOM], Opcode::Binary, n, mask);
            self.out_range = Some((start, ROOM + n));
            self.out_buf = Some(buf);
            self.shared
                .bytes_down
                .fetch_add(n as u64, Ordering::Relaxed);
            self.last_data = Instant::now();
            progress = true;
            let _ = self.poll_write_ws(cx)?;
        }
    }

    /// Reads frames from the client and writes their payload to the desktop.
    fn poll_ws_to_tcp(&mut self, cx: &mut Context<'_>) -> Result<bool, PumpError> {
        let mut progress = false;
        loop {
            if let Some((start, end)) = self.to_tcp {
                let buf = self.in_buf.as_deref().unwrap_or(&[]);
                match Pin::new(&mut *self.tcp).poll_write(cx, &buf[start..end]) {
                    Poll::Pending => return Ok(progress),
                    Poll::Ready(Err(e)) => return Err(PumpError::Target(e)),
                    Poll::Ready(Ok(0)) => {
                        return Err(PumpError::Target(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        progress = true;
                        self.shared.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
                        self.last_data = Instant::now();
                        if start + n < end {
                            self.to_tcp = Some((start + n, end));
                        } else {
                            self.to_tcp = None;
                            self.in_pos = end;
                        }
                    }
                }
                continue;
            }
            if self.up_closed && !self.tcp_write_shut {
                // The client closed its direction: pass the half-close on.
                let _ = Pin::new(&mut *self.tcp).poll_shutdown(cx);
                self.tcp_write_shut = true;
                progress = true;
            }
            if self.end.is_some() {
                // The client broke the protocol: nothing more is read from it.
                return Ok(true);
            }
            if self.in_pos < self.in_end {
                self.process_in();
                progress = true;
                continue;
            }
            if self.up_eof {
                return Ok(progress);
            }
            let mut buf = self.in_buf.take().unwrap_or_else(pool::take);
            let mut read = ReadBuf::new(&mut buf[..BUF_SIZE]);
            match Pin::new(&mut *self.ws).poll_read(cx, &mut read) {
                Poll::Pending => {
                    pool::give(buf);
                    return Ok(progress);
                }
                Poll::Ready(Err(e)) => {
                    pool::give(buf);
                    if self.up_closed || self.close_sent {
                        self.end = Some(End::ClientGone);
                        return Ok(true);
                    }
                    return Err(PumpError::Client(e));
                }
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        pool::give(buf);
                        if self.up_closed {
                            // A clean half-close: keep sending until the desktop is done.
                            self.up_eof = true;
                        } else {
                            self.end = Some(End::ClientGone);
                        }
                        return Ok(true);
                    }
                    super::workers::note_activity();
                    self.in_buf = Some(buf);
                    self.in_pos = 0;
                    self.in_end = n;
                    progress = true;
                }
            }
        }
    }

    /// Consumes buffered client bytes: a header, control payload, or a data chunk (which
    /// becomes `to_tcp`).
    fn process_in(&mut self) {
        let role = self.role;
        let Some(buf) = self.in_buf.as_deref_mut() else {
            self.in_pos = self.in_end;
            return;
        };
        let avail = self.in_end - self.in_pos;
        let Some(mut frame) = self.frame else {
            let take = avail.min(MAX_HEADER - self.hdr_len);
            self.hdr[self.hdr_len..self.hdr_len + take]
                .copy_from_slice(&buf[self.in_pos..self.in_pos + take]);
            match ws::parse_header(&self.hdr[..self.hdr_len + take], role) {
                Err(e) => {
                    // Answered with the error's close code (RFC 6455 section 7.1.7), then the
                    // tunnel ends with the error.
                    self.in_pos = self.in_end;
                    self.abort_with(End::Closed, e.close_code());
                    self.broken = Some(e);
                    return;
                }
                Ok(None) => {
                    self.hdr_len += take;
                    self.in_pos += take;
                }
                Ok(Some(h)) => {
                    self.in_pos += h.header_len - self.hdr_len;
                    self.hdr_len = 0;
                    self.ctrl_len = 0;
                    let f = InFrame {
                        opcode: h.opcode,
                        mask: h.mask,
                        remaining: h.len,
                        offset: 0,
                    };
                    if h.len == 0 {
                        self.frame_done(f);
                    } else {
                        self.frame = Some(f);
                    }
                }
            }
            return;
        };
        let chunk = (avail as u64).min(frame.remaining) as usize;
        let (start, end) = (self.in_pos, self.in_pos + chunk);
        if let Some(m) = frame.mask {
            apply_mask(&mut buf[start..end], m, frame.offset);
        }
        frame.remaining -= chunk as u64;
        frame.offset += chunk as u64;
        if frame.opcode.is_control() {
            self.ctrl_in[self.ctrl_len..self.ctrl_len + chunk].copy_from_slice(&buf[start..end]);
            self.ctrl_len += chunk;
            self.in_pos = end;
        } else if self.up_closed {
            // Data after the client's close frame is dropped.
            self.in_pos = end;
        } else {
            self.to_tcp = Some((start, end));
        }
        if frame.remaining == 0 {
            self.frame = None;
            self.frame_done(frame);
        } else {
            self.frame = Some(frame);
        }
    }

    fn frame_done(&mut self, frame: InFrame) {
        match frame.opcode {
            Opcode::Ping if !self.close_queued => {
                let mask = self.mask();
                self.pong_due = Some(ControlFrame::new(
                    Opcode::Pong,
                    &self.ctrl_in[..self.ctrl_len],
                    mask,
                ));
            }
            Opcode::Pong => self.pong_deadline = None,
            Opcode::Close => {
                self.up_closed = true;
                self.pong_deadline = None;
                // Answer with our own close once the desktop's direction is done too
                // (immediately when it already is).
                if self.down_eof || self.end.is_some() {
                    self.queue_close(1000);
                }
            }
            _ => {}
        }
        self.last_data = Instant::now();
    }

    fn release_buffers(&mut self) {
        if let Some(b) = self.in_buf.take() {
            pool::give(b);
        }
        if let Some(b) = self.out_buf.take() {
            pool::give(b);
        }
    }
}

/// Carries a forwarded port's connection: raw TCP both ways, with the same pooled buffers,
/// half-close, idle cap and "session ended" signal as a WebSocket tunnel.
pub async fn run_raw(
    client: &mut TcpStream,
    desktop: &mut TcpStream,
    idle: Option<Duration>,
    shared: &TunnelShared,
) -> Result<End, PumpError> {
    let counters = (&shared.bytes_up, &shared.bytes_down);
    raw_both_ways(client, desktop, counters, Some(shared), |_| idle).await
}

/// After one direction of a relayed connection ended, how long the other may go without moving
/// a byte before the connection is dropped: a client that read its answer and stays silent
/// after the backend closed must not hold one of the gateway's connections for ever.
pub const AFTER_ONE_SIDE_ENDS: Duration = Duration::from_secs(5);

/// Relays a console or broker connection (`a` the client, `b` the backend) both ways, with the
/// same pooled buffers as a forwarded port, passing each side's end on as a half-close. It ends
/// when both directions have ended, or when one has and the other then moves nothing for
/// `grace` (a `TimedOut` error).
pub async fn relay<A, B>(a: &mut A, b: &mut B, grace: Duration) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let moved = AtomicU64::new(0);
    let quiet_limit = |one_side_ended: bool| one_side_ended.then_some(grace);
    match raw_both_ways(a, b, (&moved, &moved), None, quiet_limit).await {
        Ok(End::Idle) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "one side ended and the other stayed silent",
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(e.into_io()),
    }
}

/// Moves bytes both ways between `a` and `b` until both directions ended (`Closed`), `shared`
/// (when given) is closed, or nothing moved for `quiet_limit(one side ended)` (`Idle`; `None`:
/// no limit). The one loop behind forwarded ports and relayed connections.
async fn raw_both_ways<A, B>(
    a: &mut A,
    b: &mut B,
    (counter_up, counter_down): (&AtomicU64, &AtomicU64),
    shared: Option<&TunnelShared>,
    quiet_limit: impl Fn(bool) -> Option<Duration>,
) -> Result<End, PumpError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = RawHalf::default();
    let mut down = RawHalf::default();
    let mut last_moved = Instant::now();
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    let result = std::future::poll_fn(|cx| {
        if let Some(shared) = shared {
            shared.waker.register(cx.waker());
            if let Some(why) = shared.closing() {
                return Poll::Ready(Ok(End::from(why)));
            }
        }
        loop {
            let mut progress = false;
            match up.poll(cx, &mut *a, &mut *b, counter_up) {
                Poll::Ready(Ok(moved)) => progress |= moved,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            match down.poll(cx, &mut *b, &mut *a, counter_down) {
                Poll::Ready(Ok(moved)) => progress |= moved,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.swap())),
                Poll::Pending => {}
            }
            if up.done && down.done {
                return Poll::Ready(Ok(End::Closed));
            }
            if progress {
                last_moved = Instant::now();
                continue;
            }
            if let Some(limit) = quiet_limit(up.done || down.done) {
                let deadline = last_moved + limit;
                if Instant::now() >= deadline {
                    return Poll::Ready(Ok(End::Idle));
                }
                let timer =
                    timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            return Poll::Pending;
        }
    })
    .await;
    up.release();
    down.release();
    result
}

impl PumpError {
    fn into_io(self) -> io::Error {
        match self {
            PumpError::Client(e) | PumpError::Target(e) => e,
            PumpError::Protocol(e) => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }

    /// For the desktop → client half, the roles of the two errors are the other way round.
    fn swap(self) -> PumpError {
        match self {
            PumpError::Client(e) => PumpError::Target(e),
            PumpError::Target(e) => PumpError::Client(e),
            other => other,
        }
    }
}

/// One direction of a raw forward.
#[derive(Default)]
struct RawHalf {
    buf: Option<Box<[u8]>>,
    pending: Option<(usize, usize)>,
    eof: bool,
    done: bool,
}

impl RawHalf {
    /// Moves what is readable now from `from` to `to`; `Ready(Ok(true))` when bytes moved or
    /// the state changed. Errors on `from` are `Client`, on `to` are `Target`.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        counter: &AtomicU64,
    ) -> Poll<Result<bool, PumpError>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut progress = false;
        loop {
            if self.done {
                return Poll::Ready(Ok(progress));
            }
            if let Some((start, end)) = self.pending {
                let buf = self.buf.as_deref().unwrap_or(&[]);
                match Pin::new(&mut *to).poll_write(cx, &buf[start..end]) {
                    Poll::Pending => return ready_or_pending(progress),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Target(e))),
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(PumpError::Target(
                            io::ErrorKind::WriteZero.into(),
                        )));
                    }
                    Poll::Ready(Ok(n)) => {
                        progress = true;
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                        self.pending = (start + n < end).then_some((start + n, end));
                    }
                }
                continue;
            }
            if self.eof {
                let _ = Pin::new(&mut *to).poll_shutdown(cx);
                self.done = true;
                return Poll::Ready(Ok(true));
            }
            // As on the tunnel's desktop side: a short read marks the socket drained.
            let mut buf = self.buf.take().unwrap_or_else(pool::take);
            let mut read = ReadBuf::new(&mut buf[..BUF_SIZE]);
            match Pin::new(&mut *from).poll_read(cx, &mut read) {
                Poll::Pending => {
                    pool::give(buf);
                    return ready_or_pending(progress);
                }
                Poll::Ready(Err(e)) => {
                    pool::give(buf);
                    return Poll::Ready(Err(PumpError::Client(e)));
                }
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    progress = true;
                    if n == 0 {
                        pool::give(buf);
                        self.eof = true;
                    } else {
                        super::workers::note_activity();
                        self.buf = Some(buf);
                        self.pending = Some((0, n));
                    }
                }
            }
        }
    }

    fn release(&mut self) {
        if self.pending.is_none()
            && let Some(b) = self.buf.take()
        {
            pool::give(b);
        }
    }
}

fn ready_or_pending(progress: bool) -> Poll<Result<bool, PumpError>> {
    if progress {
        Poll::Ready(Ok(true))
    } else {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend answers and closes; the client reads the answer (and the end of it) but
    /// neither sends nor closes. The relay still ends, after the grace, instead of holding
    /// the connection for ever.
    #[tokio::test(start_paused = true)]
    async fn a_relay_ends_when_one_side_ended_and_the_other_stays_silent() {
        let (mut client, mut gateway_client) = tokio::io::duplex(4096);
        let (mut gateway_backend, mut backend) = tokio::io::duplex(4096);
        let relay = tokio::spawn(async move {
            relay(
                &mut gateway_client,
                &mut gateway_backend,
                AFTER_ONE_SIDE_ENDS,
            )
            .await
        });
        let request = b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n";
        client.write_all(request).await.expect("request");
        let mut seen = vec![0u8; request.len()];
        backend
            .read_exact(&mut seen)
            .await
            .expect("the backend reads it");
        assert_eq!(&seen, request);
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        backend.write_all(answer).await.expect("answer");
        drop(backend);
        let mut got = Vec::new();
        client
            .read_to_end(&mut got)
            .await
            .expect("the answer, then its end");
        assert_eq!(got, answer);
        // Paused time: an hour passes at once when nothing else can happen first.
        let ended = tokio::time::timeout(Duration::from_secs(3600), relay).await;
        assert!(ended.is_ok(), "the relay still holds the silent client");
        // The gateway's side is gone: the client can no longer send.
        assert!(client.write_all(b"more").await.is_err());
    }

    /// A connected pair of loopback TCP streams: the tunnel's side of a desktop, and the desktop.
    async fn desktop_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (ours.expect("connect"), theirs.expect("accept").0)
    }

    /// The frames a server sent (unmasked), as (opcode, payload).
    fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let h = ws::parse_header(bytes, Role::Client)
                .expect("a valid frame")
                .expect("a whole frame");
            let end = h.header_len + h.len as usize;
            frames.push((bytes[0] & 0x0f, bytes[h.header_len..end].to_vec()));
            bytes = &bytes[end..];
        }
        frames
    }

    /// A client's masked binary frame.
    fn client_frame(payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut frame = vec![0x82, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        let start = frame.len();
        frame.extend_from_slice(payload);
        apply_mask(&mut frame[start..], mask, 0);
        frame
    }

    fn close(code: u16) -> (u8, Vec<u8>) {
        (0x8, code.to_be_bytes().to_vec())
    }

    const QUIET: Timers = Timers {
        keepalive: None,
        pong_timeout: Duration::from_secs(10),
        idle: None,
    };

    /// A client frame that breaks the protocol (here: not masked, RFC 6455 section 5.1) is
    /// answered with a close frame carrying the error's code (1002) before the connection ends.
    #[tokio::test]
    async fn a_frame_that_breaks_the_protocol_is_answered_with_its_close_code() {
        let (mut client, mut ws) = tokio::io::duplex(64 * 1024);
        let (mut tcp, _desktop) = desktop_pair().await;
        let shared = TunnelShared::default();
        let shared = &shared;
        let pump = async move {
            let result = run(&mut ws, &mut tcp, &[], Role::Server, QUIET, shared).await;
            drop(ws);
            result
        };
        let talk = async {
            client
                .write_all(&[0x82, 0x03, b'a', b'b', b'c'])
                .await
                .expect("write");
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read");
            got
        };
        let (result, got) = tokio::join!(pump, talk);
        assert_eq!(server_frames(&got), [close(1002)]);
        assert!(
            matches!(result, Err(PumpError::Protocol(FrameError::Unmasked))),
            "{result:?}"
        );
    }

    /// A tunnel closed because the broker ended its session says 1008 (policy), one closed
    /// because the gateway stops says 1001 (going away).
    #[tokio::test]
    async fn a_tunnel_closed_from_outside_says_why_in_its_close_code() {
        for (why, code) in [(Closing::SessionEnded, 1008), (Closing::Shutdown, 1001)] {
            let (mut client, mut ws) = tokio::io::duplex(64 * 1024);
            let (mut tcp, mut desktop) = desktop_pair().await;
            let shared = TunnelShared::default();
            let shared = &shared;
            let pump = async move {
                let result = run(&mut ws, &mut tcp, &[], Role::Server, QUIET, shared).await;
                drop(ws);
                result
            };
            let talk = async {
                client.write_all(&client_frame(b"hi")).await.expect("write");
                let mut seen = [0u8; 2];
                desktop
                    .read_exact(&mut seen)
                    .await
                    .expect("the desktop reads");
                assert_eq!(&seen, b"hi");
                shared.close(why);
                let mut got = Vec::new();
                client.read_to_end(&mut got).await.expect("read");
                got
            };
            let (result, got) = tokio::join!(pump, talk);
            assert_eq!(server_frames(&got), [close(code)], "{why:?}");
            assert_eq!(result.expect("ended"), End::from(why));
        }
    }

    /// The idle cap and an unanswered ping close with 1001 (going away): the gateway gives the
    /// connection up; its purpose was not fulfilled (1000).
    #[tokio::test(start_paused = true)]
    async fn idle_and_unanswered_pings_close_with_going_away() {
        let idle = Timers {
            idle: Some(Duration::from_secs(60)),
            ..QUIET
        };
        let pinging = Timers {
            keepalive: Some(Duration::from_secs(30)),
            ..QUIET
        };
        for (timers, end) in [(idle, End::Idle), (pinging, End::PongTimeout)] {
            let (mut client, mut ws) = tokio::io::duplex(64 * 1024);
            let (mut tcp, _desktop) = desktop_pair().await;
            let shared = TunnelShared::default();
            let shared = &shared;
            let pump = async move {
                let result = run(&mut ws, &mut tcp, &[], Role::Server, timers, shared).await;
                drop(ws);
                result
            };
            let talk = async {
                let mut got = Vec::new();
                client.read_to_end(&mut got).await.expect("read");
                got
            };
            let (result, got) = tokio::join!(pump, talk);
            let frames = server_frames(&got);
            assert_eq!(frames.last(), Some(&close(1001)), "{end:?}: {frames:?}");
            assert_eq!(result.expect("ended"), end);
        }
    }

    #[test]
    fn a_full_outgoing_frame_is_exactly_one_buffer() {
        for mask in [None, Some([1, 2, 3, 4])] {
            let payload = frame_payload(mask.is_some());
            let mut room = [0u8; ROOM];
            let start = ws::write_header(&mut room, Opcode::Binary, payload, mask);
            assert_eq!(ROOM - start + payload, BUF_SIZE, "mask: {mask:?}");
            // Four full TLS records (16 KiB of plaintext each), nothing left over.
            assert_eq!(BUF_SIZE % (16 * 1024), 0);
        }
    }
}
