//! The outbound queue of one connection: complete WebSocket frames waiting
//! for the connection's writer task, bounded in bytes.
//!
//! Pushing never waits. A push that would take the queued bytes over the
//! bound fails, and the outbox is then closed as a slow consumer: what was
//! queued is dropped, the writer finishes the frame in progress and sends
//! the 4008 close, the connection's reader learns it through
//! [`Outbox::closed`], and everyone else pushing to it carries on unaffected.
//!
//! Locking: the mutex guards only the queue and counters, and is never held
//! across an `.await` (the writer swaps the whole queue out under it).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use shardq_protocol::CloseCode;
use tokio::sync::Notify;

use crate::codec::encode::{self, Role};

/// Frames encoded once and shared by every connection they go to: one
/// refcount per connection per burst, not one per frame.
#[derive(Debug)]
pub struct FrameBatch {
    frames: Vec<Bytes>,
    bytes: usize,
}

impl FrameBatch {
    /// A batch of complete WebSocket frames.
    pub fn new(frames: Vec<Bytes>) -> Arc<FrameBatch> {
        let bytes = frames.iter().map(Bytes::len).sum();
        Arc::new(FrameBatch { frames, bytes })
    }

    /// The frames, in order.
    pub fn frames(&self) -> &[Bytes] {
        &self.frames
    }

    /// Their total length.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the batch holds no frame.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// One entry of the queue.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// A single frame.
    One(Bytes),
    /// A shared batch.
    Batch(Arc<FrameBatch>),
}

impl Chunk {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Chunk::One(frame) => frame.len(),
            Chunk::Batch(batch) => batch.bytes,
        }
    }

    /// Whether it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its frames, in order.
    pub fn frames(&self) -> &[Bytes] {
        match self {
            Chunk::One(frame) => std::slice::from_ref(frame),
            Chunk::Batch(batch) => &batch.frames,
        }
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The outbox is closed (the connection is ending).
    Closed,
    /// The push would exceed the byte bound: the outbox is now closed as a slow consumer.
    Overflow,
}

/// What the writer takes out of the outbox.
pub enum Drained {
    /// Frames to write, in order; `bytes` is their total length.
    Frames {
        /// The chunks, in order.
        frames: VecDeque<Chunk>,
        /// Their total length.
        bytes: usize,
    },
    /// Write this close frame (after the frames already taken), then stop.
    Close(Bytes),
    /// Shut the socket down without a close frame (the upgrade failed).
    Finish,
}

/// How the outbox ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// With a close frame carrying this code.
    Close(CloseCode),
    /// Without a close frame (no WebSocket was established).
    Silent,
}

struct State {
    frames: VecDeque<Chunk>,
    /// Bytes queued plus bytes taken by the writer and not yet written.
    pending_bytes: usize,
    /// Set once: how the writer ends after the queue drains.
    closing: Option<Ending>,
    /// Cut as a slow consumer: what was queued was dropped; the writer
    /// finishes the frame in progress and sends the close.
    abort_queue: bool,
    /// Frames and bytes written so far (`GET /v1/clients`).
    sent_frames: u64,
    sent_bytes: u64,
}

/// A bounded, non-blocking queue of encoded frames for one connection.
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer (one waiter; a stored permit covers a missed wakeup).
    ready: Notify,
    /// Wakes everyone waiting for the outbox to close.
    closed_notify: Notify,
    /// Wakes readers paused until the queue drains (backpressure).
    drained: Notify,
    closed: AtomicBool,
    limit: usize,
    role: Role,
}

impl Outbox {
    /// An empty outbox of a server-side connection that holds at most
    /// `limit` bytes.
    pub fn new(limit: usize) -> Outbox {
        Outbox::with_role(limit, Role::Server)
    }

    /// An empty outbox for the given side of the connection (it writes the
    /// final close frame, masked on the client side).
    pub fn with_role(limit: usize, role: Role) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                pending_bytes: 0,
                closing: None,
                abort_queue: false,
                sent_frames: 0,
                sent_bytes: 0,
            }),
            ready: Notify::new(),
            closed_notify: Notify::new(),
            drained: Notify::new(),
            closed: AtomicBool::new(false),
            limit,
            role,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-push; the
        // queue itself is still consistent (every update is a single step).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues one complete WebSocket frame. Never waits.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        self.push_inner(frame, true)
    }

    /// Queues a frame the node itself must send (control frames, handshake
    /// bytes, answers): counted, but never refused for size.
    pub fn push_unbounded(&self, frame: Bytes) -> Result<(), PushError> {
        self.push_inner(frame, false)
    }

    fn push_inner(&self, frame: Bytes, bounded: bool) -> Result<(), PushError> {
        self.push_chunk(Chunk::One(frame), bounded)
    }

    /// Queues a shared batch of frames under one lock and at most one
    /// wakeup: the fan-out of a burst of messages costs one push per
    /// subscriber, not one per message. All or nothing.
    pub fn push_batch(&self, batch: &Arc<FrameBatch>) -> Result<(), PushError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.push_chunk(Chunk::Batch(batch.clone()), true)
    }

    fn push_chunk(&self, chunk: Chunk, bounded: bool) -> Result<(), PushError> {
        let len = chunk.len();
        let mut state = self.lock();
        if state.closing.is_some() {
            return Err(PushError::Closed);
        }
        if bounded && state.pending_bytes + len > self.limit {
            state.closing = Some(Ending::Close(CloseCode::SlowConsumer));
            state.abort_queue = true;
            state.frames.clear();
            drop(state);
            self.mark_closed();
            return Err(PushError::Overflow);
        }
        let was_empty = state.frames.is_empty();
        state.pending_bytes += len;
        state.frames.push_back(chunk);
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Asks the writer to send what is queued, then a close frame with this
    /// code, then stop. Later pushes are refused. Idempotent.
    pub fn close(&self, code: CloseCode) {
        self.end(Ending::Close(code));
    }

    /// Asks the writer to send what is queued and shut the socket down
    /// without a close frame (for a failed upgrade, e.g. an HTTP 404).
    pub fn finish(&self) {
        self.end(Ending::Silent);
    }

    fn end(&self, ending: Ending) {
        let mut state = self.lock();
        if state.closing.is_none() {
            state.closing = Some(ending);
        }
        drop(state);
        self.mark_closed();
    }

    fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
        self.closed_notify.notify_waiters();
        self.drained.notify_waiters();
    }

    /// Which side of the connection this outbox writes for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether more than half the bound is queued: the connection's reader
    /// should stop reading (its peer is not reading our answers).
    pub fn is_backed_up(&self) -> bool {
        self.lock().pending_bytes > self.limit / 2
    }

    /// Completes once at most a quarter of the bound is queued, or the
    /// outbox closed.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() || self.lock().pending_bytes <= self.limit / 4 {
                return;
            }
            notified.await;
        }
    }

    /// Whether the outbox was closed (by [`close`](Self::close) or an overflow).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The close code, once closed.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self.lock().closing {
            Some(Ending::Close(code)) => Some(code),
            _ => None,
        }
    }

    /// Completes once the outbox is closed.
    pub async fn closed(&self) {
        loop {
            let notified = self.closed_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Bytes queued or being written.
    pub fn pending_bytes(&self) -> usize {
        self.lock().pending_bytes
    }

    /// Frames and bytes written so far, and bytes queued or being written.
    pub fn traffic(&self) -> (u64, u64, usize) {
        let state = self.lock();
        (state.sent_frames, state.sent_bytes, state.pending_bytes)
    }

    /// Waits for frames (or the close) and takes them all: the writer
    /// task's side of the outbox (and a test's, standing in for it).
    /// `spare` is an empty queue to swap in, so no allocation is needed.
    pub async fn drain(&self, spare: VecDeque<Chunk>) -> Drained {
        let mut spare = Some(spare);
        loop {
            {
                let mut state = self.lock();
                // A slow consumer's queue was dropped when it was cut: it
                // gets the close frame next (see `Outbox::push`).
                if !state.frames.is_empty() {
                    let frames =
                        std::mem::replace(&mut state.frames, spare.take().unwrap_or_default());
                    let bytes = frames.iter().map(Chunk::len).sum();
                    return Drained::Frames { frames, bytes };
                }
                match state.closing {
                    Some(Ending::Close(code)) => {
                        return Drained::Close(encode::close_frame(code, self.role));
                    }
                    Some(Ending::Silent) => return Drained::Finish,
                    None => {}
                }
            }
            self.ready.notified().await;
        }
    }

    /// The writer finished writing `frames` frames of `bytes` bytes taken
    /// by [`drain`](Self::drain).
    pub fn written(&self, frames: usize, bytes: usize) {
        let mut state = self.lock();
        state.pending_bytes = state.pending_bytes.saturating_sub(bytes);
        state.sent_frames += frames as u64;
        state.sent_bytes += bytes as u64;
        let low = state.pending_bytes <= self.limit / 4;
        drop(state);
        if low {
            self.drained.notify_waiters();
        }
    }

    /// Its bound: bytes queued at most.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the outbox was cut as a slow consumer (its queue dropped).
    pub(crate) fn aborted(&self) -> bool {
        self.lock().abort_queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Bytes {
        Bytes::from(vec![b'x'; len])
    }

    #[tokio::test]
    async fn drains_in_order_and_accounts_bytes() {
        let outbox = Outbox::new(100);
        outbox.push(frame(10)).unwrap();
        outbox.push(frame(20)).unwrap();
        assert_eq!(outbox.pending_bytes(), 30);
        let Drained::Frames { frames, bytes } = outbox.drain(VecDeque::new()).await else {
            panic!("no frames")
        };
        assert_eq!(bytes, 30);
        assert_eq!(frames.iter().map(Chunk::len).collect::<Vec<_>>(), [10, 20]);
        // Taken but not yet written still counts against the bound.
        assert_eq!(outbox.pending_bytes(), 30);
        outbox.written(1, 30);
        assert_eq!(outbox.pending_bytes(), 0);
    }

    #[tokio::test]
    async fn overflow_closes_as_slow_consumer() {
        let outbox = Outbox::new(25);
        outbox.push(frame(20)).unwrap();
        assert_eq!(outbox.push(frame(10)), Err(PushError::Overflow));
        assert!(outbox.is_closed());
        assert_eq!(outbox.close_code(), Some(CloseCode::SlowConsumer));
        assert_eq!(outbox.push(frame(1)), Err(PushError::Closed));
        // The queue is dropped and the 4008 close comes next.
        let Drained::Close(close) = outbox.drain(VecDeque::new()).await else {
            panic!("no close frame for a slow consumer")
        };
        assert_eq!(&close[2..4], &4008u16.to_be_bytes());
        assert!(outbox.aborted());
        outbox.closed().await;
    }

    #[tokio::test]
    async fn close_sends_queued_frames_first() {
        let outbox = Outbox::new(100);
        outbox.push(frame(5)).unwrap();
        outbox.close(CloseCode::GoingAway);
        outbox.close(CloseCode::Normal);
        assert!(matches!(
            outbox.drain(VecDeque::new()).await,
            Drained::Frames { bytes: 5, .. }
        ));
        let Drained::Close(close) = outbox.drain(VecDeque::new()).await else {
            panic!("no close")
        };
        assert_eq!(&close[..4], &[0x88, 12, 0x03, 0xe9]);
    }

    #[tokio::test]
    async fn unbounded_pushes_ignore_the_limit() {
        let outbox = Outbox::new(4);
        outbox.push_unbounded(frame(10)).unwrap();
        assert!(!outbox.is_closed());
    }
}
