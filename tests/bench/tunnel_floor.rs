//! The floor of the tunnel benchmark: the least any WebSocket-to-TCP server can add on this
//! machine behind the harness's client.
//!
//! `tests/bench/tunnels.sh floor-ws floor-wss` runs it in the gateway's place, in the same
//! harness, against the same targets. It does nothing but the data path, in the cheapest shape
//! there is for each measure, so what it gets is what the harness's client (and the machine)
//! leave to any server:
//!
//! - throughput (`--threads`): two blocking threads per connection, one per direction; each
//!   frame is one read and one write, and neither thread ever waits on an event loop;
//! - round trips (`--spin`): one thread per connection that never sleeps; it asks both
//!   sockets for bytes without blocking, over and over, so no wake-up is ever paid;
//! - `--tls` (with `--spin`): the same over TLS, with the gateway's own TLS configuration
//!   (rustls with ring, [`gatehouse::tls::server_config_with_alpn`]).
//!
//! It is not a gateway: no tickets, no limits, no keepalive, no handshake checks. It takes the
//! harness's environment (`LISTEN_HOST`, `LISTEN_PORT`, `TARGET_HOST`, `TARGET_PORT`,
//! `TLS_CERT`, `TLS_KEY`) and forwards every connection to that one target.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use gatehouse::gateway::ws::{accept_key, apply_mask};
use gatehouse::tls::{CertPem, ReloadingResolver, server_config_with_alpn};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// Bytes per read: one read, one frame, as the gateway does.
const BUF: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Threads,
    Spin,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shape = match args.first().map(String::as_str) {
        Some("--threads") => Shape::Threads,
        Some("--spin") => Shape::Spin,
        _ => bail!("usage: tunnel_floor --threads | --spin [--tls]"),
    };
    let tls = args.iter().any(|a| a == "--tls");
    if tls && shape == Shape::Threads {
        bail!("--tls goes with --spin (one thread holds a TLS connection's both directions)");
    }
    let env = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    let listen = format!("{}:{}", env("LISTEN_HOST")?, env("LISTEN_PORT")?);
    let target = format!("{}:{}", env("TARGET_HOST")?, env("TARGET_PORT")?);
    let config = if tls {
        let pem = CertPem::new(
            std::fs::read_to_string(env("TLS_CERT")?)?,
            std::fs::read_to_string(env("TLS_KEY")?)?,
        );
        let resolver = Arc::new(ReloadingResolver::from_pem(&pem)?);
        Some(Arc::new(server_config_with_alpn(resolver, &[b"http/1.1"])?))
    } else {
        None
    };
    let listener = TcpListener::bind(&listen).with_context(|| format!("listening on {listen}"))?;
    for client in listener.incoming() {
        let (client, target, config) = (client?, target.clone(), config.clone());
        std::thread::spawn(move || {
            if let Err(e) = serve(client, &target, shape, config) {
                eprintln!("connection: {e:#}");
            }
        });
    }
    Ok(())
}

fn serve(
    client: TcpStream,
    target: &str,
    shape: Shape,
    tls: Option<Arc<ServerConfig>>,
) -> Result<()> {
    client.set_nodelay(true)?;
    let desktop = TcpStream::connect(target)?;
    desktop.set_nodelay(true)?;
    match tls {
        Some(config) => {
            let mut stream = StreamOwned::new(ServerConnection::new(config)?, client);
            let leftover = handshake(&mut stream)?;
            stream.sock.set_nonblocking(true)?;
            spin(stream, desktop, leftover)
        }
        None => {
            let mut client = client;
            let leftover = handshake(&mut client)?;
            match shape {
                Shape::Spin => {
                    client.set_nonblocking(true)?;
                    spin(client, desktop, leftover)
                }
                Shape::Threads => threads(client, desktop, leftover),
            }
        }
    }
}

/// Reads the upgrade request and answers it; returns the bytes read after it.
fn handshake(client: &mut impl ReadWrite) -> Result<Vec<u8>> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = client.read(&mut buf)?;
        if n == 0 {
            bail!("closed during the handshake");
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if request.len() > 16 * 1024 {
            bail!("request head too long");
        }
    };
    let head = String::from_utf8_lossy(&request[..end]);
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    let key = header("Sec-WebSocket-Key").context("no Sec-WebSocket-Key")?;
    let protocol = match header("Sec-WebSocket-Protocol") {
        Some(p) if p.split(',').any(|p| p.trim() == "binary") => {
            "Sec-WebSocket-Protocol: binary\r\n"
        }
        _ => "",
    };
    write!(
        client,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{protocol}\r\n",
        accept_key(&key)
    )?;
    client.flush()?;
    Ok(request[end..].to_vec())
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The client's frames, unmasked in place as they arrive.
#[derive(Default)]
struct Unframer {
    head: Vec<u8>,
    remaining: u64,
    offset: u64,
    mask: [u8; 4],
    opcode: u8,
}

impl Unframer {
    /// Hands each data payload piece in `data` to `out`; returns whether a close frame ended.
    fn feed(
        &mut self,
        mut data: &mut [u8],
        out: &mut impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<bool> {
        while !data.is_empty() {
            if self.remaining == 0 && !self.head_done() {
                self.head.push(data[0]);
                data = &mut std::mem::take(&mut data)[1..];
                if self.head_done() {
                    self.start_frame();
                    if self.remaining == 0 && self.finish_frame() {
                        return Ok(true);
                    }
                }
                continue;
            }
            let n = data
                .len()
                .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            let (now, rest) = std::mem::take(&mut data).split_at_mut(n);
            apply_mask(now, self.mask, self.offset);
            if self.opcode <= 2 {
                out(now)?;
            }
            self.offset += n as u64;
            self.remaining -= n as u64;
            data = rest;
            if self.remaining == 0 && self.finish_frame() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether the frame header collected so far is whole.
    fn head_done(&self) -> bool {
        let h = &self.head;
        if h.len() < 2 {
            return false;
        }
        let ext = match h[1] & 127 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if h[1] & 128 != 0 { 4 } else { 0 };
        h.len() == 2 + ext + mask
    }

    fn start_frame(&mut self) {
        let h = &self.head;
        self.opcode = h[0] & 15;
        let (len, at) = match h[1] & 127 {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => (
                u64::from_be_bytes(h[2..10].try_into().unwrap_or_default()),
                10,
            ),
            n => (u64::from(n), 2),
        };
        self.mask = h
            .get(at..at + 4)
            .map_or([0; 4], |m| [m[0], m[1], m[2], m[3]]);
        self.remaining = len;
        self.offset = 0;
    }

    /// Ends the current frame; returns whether it was a close frame.
    fn finish_frame(&mut self) -> bool {
        self.head.clear();
        self.opcode == 8
    }
}

/// Writes `payload` as one binary frame, header in the 10 bytes in front of it.
fn frame(buf: &mut [u8], n: usize) -> &[u8] {
    let start = if n < 126 {
        buf[8] = 0x82;
        buf[9] = n as u8;
        8
    } else {
        buf[6] = 0x82;
        buf[7] = 126;
        buf[8..10].copy_from_slice(&(n as u16).to_be_bytes());
        6
    };
    &buf[start..10 + n]
}

/// Two blocking threads, one per direction.
fn threads(client: TcpStream, desktop: TcpStream, leftover: Vec<u8>) -> Result<()> {
    let (mut client_in, mut desktop_out) = (client.try_clone()?, desktop.try_clone()?);
    let up = std::thread::spawn(move || -> io::Result<()> {
        let mut unframer = Unframer::default();
        let mut send = |p: &[u8]| desktop_out.write_all(p);
        let mut leftover = leftover;
        let mut closed = unframer.feed(&mut leftover, &mut send)?;
        let mut buf = vec![0u8; BUF];
        while !closed {
            let n = client_in.read(&mut buf)?;
            if n == 0 {
                break;
            }
            closed = unframer.feed(&mut buf[..n], &mut send)?;
        }
        desktop_out.shutdown(Shutdown::Write)
    });
    let (mut client, mut desktop) = (client, desktop);
    let mut buf = vec![0u8; 10 + BUF - 4];
    loop {
        let n = desktop.read(&mut buf[10..])?;
        if n == 0 {
            break;
        }
        client.write_all(frame(&mut buf, n))?;
    }
    client.write_all(&[0x88, 0])?;
    up.join()
        .map_err(|_| anyhow::anyhow!("the upload thread panicked"))??;
    Ok(())
}

/// One thread that never sleeps: both sockets are non-blocking and asked in turn.
fn spin(mut client: impl ReadWrite, desktop: TcpStream, leftover: Vec<u8>) -> Result<()> {
    desktop.set_nonblocking(true)?;
    let mut desktop = desktop;
    let mut unframer = Unframer::default();
    let mut leftover = leftover;
    let mut client_open =
        !unframer.feed(&mut leftover, &mut |p| write_spinning(&mut desktop, p))?;
    let mut desktop_open = true;
    let mut up = vec![0u8; BUF];
    let mut down = vec![0u8; 10 + BUF - 4];
    while client_open || desktop_open {
        if client_open {
            match client.read(&mut up) {
                Ok(0) => client_open = false,
                Ok(n) => {
                    let mut send = |p: &[u8]| write_spinning(&mut desktop, p);
                    if unframer.feed(&mut up[..n], &mut send)? {
                        client_open = false;
                    }
                    if !client_open {
                        desktop.shutdown(Shutdown::Write)?;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        if desktop_open {
            match desktop.read(&mut down[10..]) {
                Ok(0) => {
                    desktop_open = false;
                    write_spinning(&mut client, &[0x88, 0])?;
                }
                Ok(n) => write_spinning(&mut client, frame(&mut down, n))?,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Over TLS a write may leave records behind when the socket is full.
        match client.flush() {
            Err(e) if e.kind() != ErrorKind::WouldBlock => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// `write_all` on a non-blocking socket: retries until everything is taken.
fn write_spinning(to: &mut impl Write, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match to.write(data) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: FIN, `opcode`, masked with `mask`.
    fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_a_close_ends() -> io::Result<()> {
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = client_frame(2, b"hello", [1, 2, 3, 4]);
        wire.extend(client_frame(9, b"ping", [9, 9, 9, 9]));
        wire.extend(client_frame(2, &big, [0xa5, 0x5a, 0x0f, 0xf0]));
        wire.extend(client_frame(2, &[], [7, 7, 7, 7]));
        wire.extend(client_frame(8, &[3, 232], [5, 6, 7, 8]));
        wire.extend(client_frame(2, b"after the close", [1, 1, 1, 1]));
        for chunk in [1, 3, 7, 1000, wire.len()] {
            let mut unframer = Unframer::default();
            let mut got = Vec::new();
            let mut closed = false;
            let mut wire = wire.clone();
            for piece in wire.chunks_mut(chunk) {
                closed = unframer.feed(piece, &mut |p| {
                    got.extend_from_slice(p);
                    Ok(())
                })?;
                if closed {
                    break;
                }
            }
            assert!(closed, "the close frame ends the stream (reads of {chunk})");
            assert_eq!(got.len(), 5 + big.len(), "reads of {chunk}");
            assert_eq!(&got[..5], b"hello");
            assert!(
                got[5..] == big[..],
                "reads of {chunk}: the payload arrives unmasked"
            );
        }
        Ok(())
    }

    #[test]
    fn server_frames_use_the_shortest_length() {
        let mut buf = vec![0u8; 10 + 200];
        buf[10..15].copy_from_slice(b"hello");
        assert_eq!(frame(&mut buf, 5), [0x82, 5, b'h', b'e', b'l', b'l', b'o']);
        let f = frame(&mut buf, 200);
        assert_eq!(&f[..4], [0x82, 126, 0, 200]);
        assert_eq!(f.len(), 204);
    }
}
