//! The WebSocket codec (RFC 6455), sans-IO: [`decode`] turns bytes read
//! from a socket into messages, [`encode`] builds the frames a node sends —
//! unmasked as a server (one encoding serves every recipient), masked with
//! a key from a CSPRNG as a client (the links a node opens).

pub mod decode;
pub mod encode;

pub use decode::{Decoder, FrameHeader, WsError, WsMessage};
pub use encode::{FrameBuf, Role};

/// A received text message: shared bytes that are valid UTF-8, sliced out
/// of the read buffer without a copy.
pub type Text = bytestring::ByteString;

// Opcodes (RFC 6455 §5.2).
/// Continues a fragmented message.
pub const OP_CONTINUATION: u8 = 0x0;
/// A text message (or its first fragment).
pub const OP_TEXT: u8 = 0x1;
/// A binary message (or its first fragment).
pub const OP_BINARY: u8 = 0x2;
/// Close.
pub const OP_CLOSE: u8 = 0x8;
/// Ping.
pub const OP_PING: u8 = 0x9;
/// Pong.
pub const OP_PONG: u8 = 0xa;
