//! WebSocket frame decoding (RFC 6455), sans-IO: bytes read from a socket
//! go into [`Decoder::buffer`], messages come out of [`Decoder::decode`].
//!
//! Text messages are slices of the read buffer (unmasked in place, UTF-8
//! checked once), so the hot path neither zeroes buffers nor copies
//! payloads. A frame's declared length is checked against the limit before
//! any of it is buffered: a peer cannot make the node reserve more than the
//! limit. Fragmented messages are assembled, control frames may interleave.

use bytes::{Buf, Bytes, BytesMut};

use super::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, Text};

/// Largest payload of a control frame.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// One decoded WebSocket message.
#[derive(Debug, PartialEq, Eq)]
pub enum WsMessage {
    /// A complete text message.
    Text(Text),
    /// A complete binary message (shardq refuses them; only its length is kept).
    Binary(usize),
    /// A ping with its payload (to be echoed in a pong).
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame with its status code, if it carried one.
    Close(Option<u16>),
}

/// Why the byte stream is not acceptable WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// A message (or its fragments so far) exceeds the limit.
    #[error("message of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Bytes declared so far.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// The frames break RFC 6455.
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
}

/// A partly received fragmented message.
struct Fragments {
    text: bool,
    bytes: BytesMut,
}

/// Decodes the frames of one direction of a connection.
pub struct Decoder {
    buffer: BytesMut,
    /// Frames must be masked (a server reading a client) or must not be.
    masked: bool,
    limit: usize,
    fragments: Option<Fragments>,
}

/// A parsed and checked frame header (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The frame ends its message.
    pub fin: bool,
    /// The opcode.
    pub opcode: u8,
    /// The masking key, for frames from a client.
    pub mask: Option<[u8; 4]>,
    /// Bytes of the header, key included.
    pub header_len: usize,
    /// Bytes of payload.
    pub payload_len: u64,
}

impl FrameHeader {
    /// Parses the header at the start of `bytes`; `Ok(None)` until it is
    /// complete. Frames must be `masked` (from a client) or not (from a
    /// server). A data frame is refused as soon as its length is known if
    /// it would take a message to more than `limit` bytes, counting the
    /// `so_far` bytes of the message's earlier fragments.
    pub fn parse(
        bytes: &[u8],
        masked: bool,
        so_far: u64,
        limit: usize,
    ) -> Result<Option<FrameHeader>, WsError> {
        let [first, second, ..] = *bytes else {
            return Ok(None);
        };
        if first & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set without an extension"));
        }
        let fin = first & 0x80 != 0;
        let opcode = first & 0x0f;
        let is_masked = second & 0x80 != 0;
        if is_masked != masked {
            return Err(WsError::Protocol(if masked {
                "client frames must be masked"
            } else {
                "server frames must not be masked"
            }));
        }
        let (length_len, payload_len) = match second & 0x7f {
            126 => {
                let Some(b) = bytes.get(2..4) else {
                    return Ok(None);
                };
                (2, u64::from(u16::from_be_bytes([b[0], b[1]])))
            }
            127 => {
                let Some(b) = bytes.get(2..10) else {
                    return Ok(None);
                };
                let mut len = [0u8; 8];
                len.copy_from_slice(b);
                let len = u64::from_be_bytes(len);
                if len >> 63 != 0 {
                    return Err(WsError::Protocol("frame length has its top bit set"));
                }
                (8, len)
            }
            len => (0, u64::from(len)),
        };
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(WsError::Protocol("control frames must not be fragmented"));
                }
                if payload_len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(WsError::Protocol("control frame payload over 125 bytes"));
                }
            }
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {
                let len = so_far.saturating_add(payload_len);
                if len > limit as u64 {
                    return Err(WsError::TooLarge { len, limit });
                }
            }
            _ => return Err(WsError::Protocol("reserved opcode")),
        }
        let mask_at = 2 + length_len;
        let (mask, header_len) = if is_masked {
            let Some(key) = bytes.get(mask_at..mask_at + 4) else {
                return Ok(None);
            };
            (Some([key[0], key[1], key[2], key[3]]), mask_at + 4)
        } else {
            (None, mask_at)
        };
        Ok(Some(FrameHeader {
            fin,
            opcode,
            mask,
            header_len,
            payload_len,
        }))
    }
}

impl Decoder {
    /// A decoder for frames that must be `masked` (the server side) or not
    /// (the client side), refusing messages over `limit` bytes; `buffer`
    /// holds bytes already read (it keeps its capacity for later reads).
    pub fn new(masked: bool, limit: usize, buffer: BytesMut) -> Decoder {
        Decoder {
            buffer,
            masked,
            limit,
            fragments: None,
        }
    }

    /// The read buffer: append what the socket delivers.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    /// Bytes received but not decoded yet.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Changes the message size limit (e.g. once the peer authenticated).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// How many more bytes the frame at the head of the buffer needs
    /// (at least 1 when nothing is buffered), so a reader can reserve room.
    pub fn wanted(&self) -> usize {
        match self.header() {
            Ok(Some(header)) => (header.header_len as u64 + header.payload_len)
                .saturating_sub(self.buffer.len() as u64)
                .try_into()
                .unwrap_or(usize::MAX)
                .max(1),
            _ => 1,
        }
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    /// After an error the connection must be closed: the stream is not
    /// resynchronised.
    pub fn decode(&mut self) -> Result<Option<WsMessage>, WsError> {
        loop {
            let Some(header) = self.header()? else {
                return Ok(None);
            };
            let total = header.header_len as u64 + header.payload_len;
            if (self.buffer.len() as u64) < total {
                return Ok(None);
            }
            self.buffer.advance(header.header_len);
            // `total` fits in the buffer, so the length fits a usize.
            let mut payload = self.buffer.split_to(header.payload_len as usize);
            if let Some(key) = header.mask {
                apply_mask(&mut payload, key);
            }
            if let Some(message) = self.complete(header.fin, header.opcode, payload)? {
                return Ok(Some(message));
            }
        }
    }

    /// Parses (and checks) the header at the head of the buffer.
    fn header(&self) -> Result<Option<FrameHeader>, WsError> {
        let so_far = self.fragments.as_ref().map_or(0, |f| f.bytes.len() as u64);
        FrameHeader::parse(&self.buffer, self.masked, so_far, self.limit)
    }

    /// Handles one unmasked frame; a message when one is complete.
    fn complete(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: BytesMut,
    ) -> Result<Option<WsMessage>, WsError> {
        let (text, payload) = match opcode {
            OP_PING => return Ok(Some(WsMessage::Ping(payload.freeze()))),
            OP_PONG => return Ok(Some(WsMessage::Pong)),
            OP_CLOSE => return close_code(&payload).map(|code| Some(WsMessage::Close(code))),
            OP_TEXT | OP_BINARY if self.fragments.is_some() => {
                return Err(WsError::Protocol(
                    "a new message started inside a fragmented one",
                ));
            }
            OP_TEXT | OP_BINARY if !fin => {
                self.fragments = Some(Fragments {
                    text: opcode == OP_TEXT,
                    bytes: payload,
                });
                return Ok(None);
            }
            OP_TEXT | OP_BINARY => (opcode == OP_TEXT, payload),
            _ => {
                // A continuation (other opcodes were refused by `header`).
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(WsError::Protocol("continuation frame without a message"));
                };
                fragments.bytes.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                let Some(Fragments { text, bytes }) = self.fragments.take() else {
                    return Ok(None);
                };
                (text, bytes)
            }
        };
        if !text {
            return Ok(Some(WsMessage::Binary(payload.len())));
        }
        match Text::try_from(payload.freeze()) {
            Ok(text) => Ok(Some(WsMessage::Text(text))),
            Err(_) => Err(WsError::Protocol("text message is not valid UTF-8")),
        }
    }
}

/// The status code of a close frame's payload.
fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close frame with a one-byte payload")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            // RFC 6455 7.4: codes a close frame may carry (1004-1006 and
            // 1015 are reserved, 1016-2999 unassigned).
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(WsError::Protocol("close frame with an invalid status code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(WsError::Protocol("close reason is not valid UTF-8"));
            }
            Ok(Some(code))
        }
    }
}

/// XORs `data` with the repeating 4-byte `key`, eight bytes at a time
/// (masking and unmasking are the same operation).
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One frame as a peer would send it.
    fn frame(fin: bool, opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let mask_bit = if key.is_some() { 0x80 } else { 0 };
        match payload.len() {
            len @ 0..126 => out.push(mask_bit | len as u8),
            len @ 126..=0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let mut body = payload.to_vec();
        if let Some(key) = key {
            out.extend_from_slice(&key);
            apply_mask(&mut body, key);
        }
        out.extend_from_slice(&body);
        out
    }

    const KEY: Option<[u8; 4]> = Some([0x12, 0x34, 0x56, 0x78]);

    fn server(limit: usize) -> Decoder {
        Decoder::new(true, limit, BytesMut::new())
    }

    fn feed(decoder: &mut Decoder, bytes: &[u8]) {
        decoder.buffer().extend_from_slice(bytes);
    }

    fn text(s: &str) -> WsMessage {
        WsMessage::Text(Text::from(s))
    }

    #[test]
    fn masked_text_frames_of_every_length_class() {
        for len in [0, 1, 125, 126, 65_535, 65_536, 70_000] {
            let payload = "q".repeat(len);
            let mut decoder = server(1 << 20);
            feed(&mut decoder, &frame(true, OP_TEXT, payload.as_bytes(), KEY));
            assert_eq!(decoder.decode(), Ok(Some(text(&payload))), "len {len}");
            assert_eq!(decoder.decode(), Ok(None));
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn a_frame_split_anywhere_decodes_once_complete() {
        let bytes = frame(true, OP_TEXT, b"{\"type\":\"publish\"}", KEY);
        for cut in 0..bytes.len() {
            let mut decoder = server(1024);
            feed(&mut decoder, &bytes[..cut]);
            assert_eq!(decoder.decode(), Ok(None), "cut {cut}");
            assert!(decoder.wanted() >= 1);
            feed(&mut decoder, &bytes[cut..]);
            assert_eq!(decoder.decode(), Ok(Some(text("{\"type\":\"publish\"}"))));
        }
    }

    #[test]
    fn wanted_counts_the_rest_of_the_frame() {
        let bytes = frame(true, OP_TEXT, &[b'a'; 300], KEY);
        let mut decoder = server(1024);
        feed(&mut decoder, &bytes[..10]);
        assert_eq!(decoder.wanted(), bytes.len() - 10);
    }

    #[test]
    fn fragments_are_assembled_around_control_frames() {
        let mut decoder = server(1024);
        feed(&mut decoder, &frame(false, OP_TEXT, b"hel", KEY));
        feed(&mut decoder, &frame(true, OP_PING, b"p", KEY));
        feed(&mut decoder, &frame(false, OP_CONTINUATION, b"lo ", KEY));
        feed(
            &mut decoder,
            &frame(true, OP_CONTINUATION, "wörld".as_bytes(), KEY),
        );
        assert_eq!(
            decoder.decode(),
            Ok(Some(WsMessage::Ping(Bytes::from_static(b"p"))))
        );
        assert_eq!(decoder.decode(), Ok(Some(text("hello wörld"))));
        assert_eq!(decoder.decode(), Ok(None));
    }

    #[test]
    fn control_frames() {
        let mut decoder = server(1024);
        feed(&mut decoder, &frame(true, OP_PONG, b"", KEY));
        feed(
            &mut decoder,
            &frame(true, OP_CLOSE, &[0x03, 0xe8, b'b', b'y'], KEY),
        );
        feed(&mut decoder, &frame(true, OP_CLOSE, b"", KEY));
        assert_eq!(decoder.decode(), Ok(Some(WsMessage::Pong)));
        assert_eq!(decoder.decode(), Ok(Some(WsMessage::Close(Some(1000)))));
        assert_eq!(decoder.decode(), Ok(Some(WsMessage::Close(None))));
    }

    #[test]
    fn the_limit_is_checked_before_the_payload_arrives() {
        let mut decoder = server(100);
        // Only the header of a 2^40-byte frame: refused at once.
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        feed(&mut decoder, &header);
        assert!(matches!(
            decoder.decode(),
            Err(WsError::TooLarge { limit: 100, .. })
        ));
        // Fragments count together.
        let mut decoder = server(100);
        feed(&mut decoder, &frame(false, OP_TEXT, &[b'a'; 60], KEY));
        feed(
            &mut decoder,
            &frame(true, OP_CONTINUATION, &[b'a'; 60], KEY),
        );
        assert!(matches!(
            decoder.decode(),
            Err(WsError::TooLarge { len: 120, .. })
        ));
        // Raising the limit (after authentication) lets larger ones through.
        let mut decoder = server(10);
        decoder.set_limit(100);
        feed(&mut decoder, &frame(true, OP_TEXT, &[b'a'; 60], KEY));
        assert!(matches!(decoder.decode(), Ok(Some(WsMessage::Text(_)))));
    }

    #[test]
    fn protocol_violations() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                frame(true, OP_TEXT, b"x", None),
                "client frames must be masked",
            ),
            (vec![0xc1, 0x80, 0, 0, 0, 0], "reserved bits"),
            (frame(true, 0x3, b"", KEY), "reserved opcode"),
            (frame(false, OP_PING, b"", KEY), "fragmented"),
            (frame(true, OP_PING, &[0; 126], KEY), "125"),
            (frame(true, OP_CONTINUATION, b"x", KEY), "continuation"),
            (frame(true, OP_TEXT, &[0xff, 0xfe], KEY), "UTF-8"),
            (frame(true, OP_CLOSE, &[3], KEY), "one-byte"),
            (
                frame(true, OP_CLOSE, &[0x03, 0xed], KEY),
                "invalid status code",
            ),
            (frame(true, OP_CLOSE, &[0x03, 0xe8, 0xff], KEY), "UTF-8"),
            (
                [
                    frame(false, OP_TEXT, b"a", KEY),
                    frame(true, OP_TEXT, b"b", KEY),
                ]
                .concat(),
                "inside a fragmented",
            ),
        ];
        for (bytes, expected) in cases {
            let mut decoder = server(1024);
            feed(&mut decoder, &bytes);
            match decoder.decode() {
                Err(WsError::Protocol(why)) => assert!(why.contains(expected), "{why}"),
                other => panic!("{expected}: {other:?}"),
            }
        }
        let mut client = Decoder::new(false, 1024, BytesMut::new());
        feed(&mut client, &frame(true, OP_TEXT, b"x", KEY));
        assert_eq!(
            client.decode(),
            Err(WsError::Protocol("server frames must not be masked"))
        );
    }

    #[test]
    fn a_client_reads_unmasked_frames() {
        let mut client = Decoder::new(false, 1024, BytesMut::new());
        feed(
            &mut client,
            &frame(true, OP_TEXT, b"{\"type\":\"ack\"}", None),
        );
        feed(&mut client, &frame(true, OP_BINARY, b"abc", None));
        assert_eq!(client.decode(), Ok(Some(text("{\"type\":\"ack\"}"))));
        assert_eq!(client.decode(), Ok(Some(WsMessage::Binary(3))));
    }

    proptest! {
        /// Any byte stream: no panic, no message over the limit, and the
        /// decoder never asks a reader for room beyond one frame within
        /// the limit (a declared length over it is refused, not awaited).
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            const LIMIT: usize = 256;
            /// The largest header: 2 bytes, 8 of length, 4 of mask.
            const MAX_HEADER: usize = 14;
            let mut decoder = server(LIMIT);
            for chunk in chunks {
                feed(&mut decoder, &chunk);
                loop {
                    match decoder.decode() {
                        Ok(Some(WsMessage::Text(text))) => prop_assert!(text.len() <= LIMIT),
                        Ok(Some(WsMessage::Binary(len))) => prop_assert!(len <= LIMIT),
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            prop_assert!(decoder.wanted() <= MAX_HEADER + LIMIT);
                            break;
                        }
                        Err(_) => return Ok(()),
                    }
                }
            }
        }

        /// Messages split into arbitrary fragments and delivered in
        /// arbitrary chunks come out whole and in order.
        #[test]
        fn fragmented_messages_round_trip(
            messages in proptest::collection::vec("[a-zé]{0,300}", 1..8),
            pieces in 1usize..5,
            chunk in 1usize..97,
        ) {
            let mut wire = Vec::new();
            for message in &messages {
                let bytes = message.as_bytes();
                let size = bytes.len().div_ceil(pieces).max(1);
                let parts: Vec<&[u8]> = if bytes.is_empty() { vec![&[]] } else { bytes.chunks(size).collect() };
                for (i, part) in parts.iter().enumerate() {
                    let opcode = if i == 0 { OP_TEXT } else { OP_CONTINUATION };
                    wire.extend(frame(i + 1 == parts.len(), opcode, part, KEY));
                }
            }
            let mut decoder = server(4096);
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                feed(&mut decoder, piece);
                while let Some(message) = decoder.decode().expect("valid stream") {
                    out.push(message);
                }
            }
            let expected: Vec<WsMessage> = messages.iter().map(|m| text(m)).collect();
            prop_assert_eq!(out, expected);
        }
    }
}
