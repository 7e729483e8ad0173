//! Encoding WebSocket frames: unmasked server → client frames (so one
//! encoding serves every recipient), and masked ones for the connections a
//! node opens as a client, each with its own unpredictable key.

use bytes::{BufMut, Bytes, BytesMut};
use shardq_protocol::CloseCode;

use rand::RngExt;

use super::decode::apply_mask;
use super::{OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

const FIN: u8 = 0x80;
const MASKED: u8 = 0x80;

/// Which side of the WebSocket this node is: clients must mask every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Frames go out unmasked (and one encoding serves every recipient).
    Server,
    /// Frames go out masked with a fresh random key each.
    Client,
}

fn header(out: &mut impl BufMut, opcode: u8, len: usize) {
    out.put_u8(FIN | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// Length of the header of an unmasked frame carrying `len` payload bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..126 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

/// The payload of an unmasked frame built here (its header skipped).
pub fn payload_of(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.get(header..).unwrap_or_default()
}

/// One complete unmasked text frame carrying `payload`.
pub fn text_frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    header(&mut out, OP_TEXT, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// Builds a text frame whose payload `fill` appends to the vector it is
/// given. The payload is written to a per-thread scratch buffer first, so
/// the frame is one allocation of exactly its size: cheap to keep (history
/// holds every message frame) and to free.
pub fn text_frame_with(fill: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    /// A scratch buffer larger than this is not kept between frames.
    const SCRATCH_KEPT: usize = 64 << 10;
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        fill(scratch);
        let mut frame = Vec::with_capacity(header_len(scratch.len()) + scratch.len());
        header(&mut frame, OP_TEXT, scratch.len());
        frame.extend_from_slice(scratch);
        if scratch.capacity() > SCRATCH_KEPT {
            *scratch = Vec::new();
        }
        Bytes::from(frame)
    })
}

/// A close frame with a shardq close code and its reason.
pub fn close_frame(code: CloseCode, role: Role) -> Bytes {
    let reason = code.reason().as_bytes();
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.code().to_be_bytes());
    payload.extend_from_slice(reason);
    frame(OP_CLOSE, &payload, role)
}

/// A ping frame with an empty payload.
pub fn ping_frame(role: Role) -> Bytes {
    frame(OP_PING, &[], role)
}

/// The pong answering a ping that carried `payload`.
pub fn pong_frame(payload: &[u8], role: Role) -> Bytes {
    frame(OP_PONG, payload, role)
}

/// The close frame answering a peer's close: its status code echoed
/// (RFC 6455 §5.5.1), or an empty payload when it gave none.
pub fn close_reply(code: Option<u16>, role: Role) -> Bytes {
    let payload = code.map(u16::to_be_bytes);
    frame(
        OP_CLOSE,
        payload.as_ref().map_or(&[][..], |code| &code[..]),
        role,
    )
}

/// Appends one complete text frame carrying `payload` to `out`, masked when
/// `role` is [`Role::Client`]: a batch of frames in one buffer costs one
/// allocation, not one per frame.
pub fn append_text_frame(out: &mut Vec<u8>, payload: &[u8], role: Role) {
    let start = out.len();
    header(out, OP_TEXT, payload.len());
    match role {
        Role::Server => out.extend_from_slice(payload),
        Role::Client => {
            out[start + 1] |= MASKED;
            let key = mask_key();
            out.extend_from_slice(&key);
            let at = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[at..], key);
        }
    }
}

/// Text frames appended one after another into one buffer: a batch of
/// answers or publishes costs one allocation, not one per frame.
pub struct FrameBuf {
    role: Role,
    frames: Vec<u8>,
    /// Where each payload is encoded before it is framed.
    scratch: Vec<u8>,
    count: usize,
}

impl FrameBuf {
    /// An empty buffer for frames sent as `role`, with room for `bytes`.
    pub fn new(role: Role, bytes: usize) -> FrameBuf {
        FrameBuf {
            role,
            frames: Vec::with_capacity(bytes),
            scratch: Vec::new(),
            count: 0,
        }
    }

    /// Appends a frame carrying `payload`.
    pub fn push(&mut self, payload: &[u8]) {
        append_text_frame(&mut self.frames, payload, self.role);
        self.count += 1;
    }

    /// Appends a frame whose payload `fill` writes.
    pub fn push_with(&mut self, fill: impl FnOnce(&mut Vec<u8>)) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        fill(&mut scratch);
        self.push(&scratch);
        self.scratch = scratch;
    }

    /// How many frames it holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether it holds no frame.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The frames, back to back.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from(self.frames)
    }
}

/// One complete text frame masked as a client must send it.
pub fn masked_text_frame(payload: &[u8]) -> Bytes {
    frame(OP_TEXT, payload, Role::Client)
}

fn frame(opcode: u8, payload: &[u8], role: Role) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + 4 + payload.len());
    header(&mut out, opcode, payload.len());
    match role {
        Role::Server => out.put_slice(payload),
        Role::Client => {
            out[1] |= MASKED;
            let key = mask_key();
            out.put_slice(&key);
            let start = out.len();
            out.put_slice(payload);
            apply_mask(&mut out[start..], key);
        }
    }
    out.freeze()
}

/// A fresh masking key. RFC 6455 §5.3 requires keys a peer cannot
/// predict (masking keeps a client's payload from steering what an
/// intermediary sees), so each comes from the thread's CSPRNG (ChaCha,
/// seeded and reseeded from the OS).
fn mask_key() -> [u8; 4] {
    rand::rng().random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers() {
        assert_eq!(&text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let medium = text_frame(&[b'a'; 300]);
        assert_eq!(&medium[..4], &[0x81, 126, 1, 44]);
        assert_eq!(medium.len(), 304);
        let large = text_frame(&vec![b'a'; 70_000]);
        assert_eq!(&large[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(large[2..10].try_into().unwrap()), 70_000);
        assert_eq!(
            &close_frame(CloseCode::SlowConsumer, Role::Server)[..4],
            &[0x88, 15, 0x0f, 0xa8]
        );
        assert_eq!(&ping_frame(Role::Server)[..], &[0x89, 0]);
    }

    #[test]
    fn masked_frames_unmask_to_the_payload() {
        for len in [0, 3, 8, 13, 200, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let masked = masked_text_frame(&payload);
            let header = header_len(len);
            assert_eq!(masked[1] & MASKED, MASKED);
            let key = [
                masked[header],
                masked[header + 1],
                masked[header + 2],
                masked[header + 3],
            ];
            let mut body = masked[header + 4..].to_vec();
            apply_mask(&mut body, key);
            assert_eq!(body, payload, "len {len}");
        }
    }

    #[test]
    fn a_frame_buffer_holds_the_same_frames_back_to_back() {
        let lens = [0, 1, 125, 126, 65_535, 65_536, 9];
        let payloads: Vec<Vec<u8>> = lens.iter().map(|&len| vec![b'q'; len]).collect();
        let mut server = FrameBuf::new(Role::Server, 0);
        let mut client = FrameBuf::new(Role::Client, 0);
        for payload in &payloads {
            server.push(payload);
            client.push_with(|out| out.extend_from_slice(payload));
        }
        assert_eq!(server.len(), lens.len());
        let expected: Vec<u8> = payloads
            .iter()
            .flat_map(|p| text_frame(p).to_vec())
            .collect();
        assert_eq!(server.into_bytes(), expected);
        // Masked frames: walk them one by one and unmask each.
        let bytes = client.into_bytes();
        let mut at = 0;
        for payload in &payloads {
            let frame = &bytes[at..];
            assert_eq!(frame[0], FIN | OP_TEXT);
            assert_eq!(frame[1] & MASKED, MASKED);
            let header = header_len(payload.len());
            let key = [
                frame[header],
                frame[header + 1],
                frame[header + 2],
                frame[header + 3],
            ];
            let mut body = frame[header + 4..header + 4 + payload.len()].to_vec();
            apply_mask(&mut body, key);
            assert_eq!(&body, payload);
            at += header + 4 + payload.len();
        }
        assert_eq!(at, bytes.len());
    }

    #[test]
    fn every_masked_frame_gets_its_own_key() {
        let keys: std::collections::HashSet<[u8; 4]> = (0..64)
            .map(|_| {
                let frame = masked_text_frame(b"x");
                [frame[2], frame[3], frame[4], frame[5]]
            })
            .collect();
        // 64 draws from 2^32 keys: a repeat is a one-in-a-million event.
        assert!(keys.len() >= 63, "{} distinct keys of 64", keys.len());
    }

    #[test]
    fn in_place_frames_match() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = vec![b'z'; len];
            let built = text_frame_with(|out| out.extend_from_slice(&payload));
            assert_eq!(built, text_frame(&payload), "len {len}");
        }
    }
}
