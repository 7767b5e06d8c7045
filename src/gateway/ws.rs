//! The WebSocket wire format (RFC 6455) as far as a byte tunnel needs it: the opening
//! handshake's accept key, frame headers, masking, and close codes.
//!
//! Frames are not collected into messages: a data frame's payload is forwarded as it arrives,
//! unmasked in place, so a tunnel never buffers more than what one read returned. Control
//! frames (ping, pong, close) are at most 125 bytes and are collected whole.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// The GUID every server appends to the client's key (RFC 6455 section 1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The largest frame header: 2 bytes, 8 bytes of extended length, 4 bytes of mask.
pub const MAX_HEADER: usize = 14;
/// The header room a server (unmasked) frame needs in front of its payload.
pub const SERVER_HEADER_ROOM: usize = 10;
/// Control frames carry at most this much.
pub const MAX_CONTROL: usize = 125;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        &[client_key.trim().as_bytes(), ACCEPT_GUID].concat(),
    );
    B64.encode(digest.as_ref())
}

/// A client key is the base64 of 16 bytes.
pub fn valid_client_key(key: &str) -> bool {
    B64.decode(key.trim()).is_ok_and(|k| k.len() == 16)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
    /// Bytes the header itself took.
    pub header_len: usize,
}

/// Why a frame is refused; each maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved bits set (no extension was agreed)")]
    Reserved,
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("a control frame is fragmented or longer than 125 bytes")]
    Control,
    #[error("the length's most significant bit is set")]
    Length,
    #[error("a client frame is not masked")]
    Unmasked,
    #[error("a server frame is masked")]
    Masked,
}

impl FrameError {
    /// The close code to answer with: 1002 (protocol error) for all of them.
    pub fn close_code(&self) -> u16 {
        1002
    }
}

/// Which side's frames are parsed: servers receive masked frames, clients unmasked ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// Parses a frame header at the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_header(buf: &[u8], role: Role) -> Result<Option<FrameHeader>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let opcode = Opcode::from_bits(b0 & 0x0f).ok_or(FrameError::Opcode(b0 & 0x0f))?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(FrameError::Unmasked),
        (Role::Client, true) => return Err(FrameError::Masked),
        _ => {}
    }
    let (len, mut at) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(n);
            if len >> 63 != 0 {
                return Err(FrameError::Length);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > MAX_CONTROL as u64) {
        return Err(FrameError::Control);
    }
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        len,
        header_len: at,
    }))
}

/// Unmasks (or masks: it is its own inverse) `data` in place; `offset` is how far into the
/// frame's payload `data` starts.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let shift = (offset % 4) as usize;
    let rotated = [
        mask[shift],
        mask[(shift + 1) % 4],
        mask[(shift + 2) % 4],
        mask[(shift + 3) % 4],
    ];
    let word = u64::from_ne_bytes([
        rotated[0], rotated[1], rotated[2], rotated[3], rotated[0], rotated[1], rotated[2],
        rotated[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut v = [0u8; 8];
        v.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(v) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= rotated[i % 4];
    }
}

/// Writes a header for a payload of `len` bytes into the end of `room`, returning where it
/// starts, so that header and payload form one contiguous buffer. `room` must be at least
/// [`SERVER_HEADER_ROOM`] (+4 with a mask) long.
pub fn write_header(room: &mut [u8], opcode: Opcode, len: usize, mask: Option<[u8; 4]>) -> usize {
    let mut header = [0u8; MAX_HEADER];
    header[0] = 0x80 | opcode.bits();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if len < 126 {
        header[1] = mask_bit | len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        header[1] = mask_bit | 126;
        header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        header[1] = mask_bit | 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(m) = mask {
        header[n..n + 4].copy_from_slice(&m);
        n += 4;
    }
    let start = room.len() - n;
    room[start..].copy_from_slice(&header[..n]);
    start
}

/// A whole control frame (header and payload) in a small fixed buffer.
#[derive(Clone, Copy)]
pub struct ControlFrame {
    bytes: [u8; MAX_CONTROL + MAX_HEADER],
    len: usize,
}

impl ControlFrame {
    /// A control frame; the payload is cut at 125 bytes. Clients pass a mask.
    pub fn new(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> ControlFrame {
        let payload = &payload[..payload.len().min(MAX_CONTROL)];
        let mut bytes = [0u8; MAX_CONTROL + MAX_HEADER];
        let mut room = [0u8; MAX_HEADER];
        let start = write_header(&mut room, opcode, payload.len(), mask);
        let header = &room[start..];
        bytes[..header.len()].copy_from_slice(header);
        let body = &mut bytes[header.len()..header.len() + payload.len()];
        body.copy_from_slice(payload);
        if let Some(m) = mask {
            apply_mask(body, m, 0);
        }
        ControlFrame {
            bytes,
            len: header.len() + payload.len(),
        }
    }

    /// A close frame with a status code (no reason text: the wire stays generic).
    pub fn close(code: u16, mask: Option<[u8; 4]>) -> ControlFrame {
        ControlFrame::new(Opcode::Close, &code.to_be_bytes(), mask)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl std::fmt::Debug for ControlFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ControlFrame({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(valid_client_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_client_key("c2hvcnQ="));
        assert!(!valid_client_key("not base64!"));
    }

    #[test]
    fn headers_round_trip_for_every_length_class() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 10_000_000] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut room = [0u8; MAX_HEADER];
                let start = write_header(&mut room, Opcode::Binary, len, mask);
                let role = if mask.is_some() {
                    Role::Server
                } else {
                    Role::Client
                };
                let h = parse_header(&room[start..], role)
                    .expect("valid")
                    .expect("complete");
                assert_eq!(h.len, len as u64);
                assert_eq!(h.mask, mask);
                assert!(h.fin);
                assert_eq!(h.opcode, Opcode::Binary);
                assert_eq!(h.header_len, MAX_HEADER - start);
                // Every shorter prefix asks for more bytes.
                for cut in 0..h.header_len {
                    assert_eq!(parse_header(&room[start..start + cut], role), Ok(None));
                }
            }
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        assert_eq!(
            parse_header(&[0x82, 0x05], Role::Server),
            Err(FrameError::Unmasked)
        );
        assert_eq!(
            parse_header(&[0x82, 0x85, 0, 0, 0, 0], Role::Client),
            Err(FrameError::Masked)
        );
        assert_eq!(
            parse_header(&[0xC2, 0x80], Role::Server),
            Err(FrameError::Reserved)
        );
        assert_eq!(
            parse_header(&[0x83, 0x80], Role::Server),
            Err(FrameError::Opcode(3))
        );
        // A fragmented ping, and a ping over 125 bytes.
        assert_eq!(
            parse_header(&[0x09, 0x80], Role::Server),
            Err(FrameError::Control)
        );
        assert_eq!(
            parse_header(&[0x89, 0xFE, 0, 200], Role::Server),
            Err(FrameError::Control)
        );
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_header(&huge, Role::Server), Err(FrameError::Length));
    }

    #[test]
    fn masking_in_pieces_equals_masking_at_once() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mask = [0xA1, 0x02, 0x7F, 0xFE];
        let mut whole = data.clone();
        apply_mask(&mut whole, mask, 0);
        let naive: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(whole, naive);
        let mut pieces = data.clone();
        let mut at = 0;
        for size in [1usize, 3, 7, 8, 13, 100, 868] {
            apply_mask(&mut pieces[at..at + size], mask, at as u64);
            at += size;
        }
        assert_eq!(pieces, naive);
    }

    #[test]
    fn control_frames_carry_code_and_mask() {
        let close = ControlFrame::close(1000, None);
        assert_eq!(close.as_bytes(), &[0x88, 0x02, 0x03, 0xE8]);
        let masked = ControlFrame::new(Opcode::Ping, b"hi", Some([1, 1, 1, 1]));
        let h = parse_header(masked.as_bytes(), Role::Server)
            .expect("valid")
            .expect("complete");
        let mut payload = masked.as_bytes()[h.header_len..].to_vec();
        apply_mask(&mut payload, [1, 1, 1, 1], 0);
        assert_eq!(payload, b"hi");
    }
}
