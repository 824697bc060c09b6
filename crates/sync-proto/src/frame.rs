//! Framing: how a [`Message`] travels on a byte stream.
//!
//! ```text
//! frame   = length kind payload
//! length  = u32, big-endian: the number of bytes of kind + payload (2 ..= max frame size)
//! kind    = u16, big-endian: the MessageKind code
//! payload = bincode 2 (standard configuration) of the kind's payload struct
//! ```
//!
//! The length is checked against the maximum frame size **before** anything is allocated for
//! the frame; the payload is then read into a buffer of exactly that length and decoded with
//! the limits of [`limits`](crate::limits). Every failure is a typed [`FrameError`]:
//! oversize, truncated, too short, unknown kind, malformed payload.
//!
//! ```
//! use sync_proto::{frame, FrameConfig, Message, Ping};
//! let config = FrameConfig::default();
//! let msg = Message::Ping(Ping { nonce: 7, payload: bytes::Bytes::from_static(b"hi") });
//! let bytes = frame::encode_frame(&msg, &config).unwrap();
//! let (back, used) = frame::decode_frame(&bytes, &config).unwrap();
//! assert_eq!((back, used), (msg, bytes.len()));
//! ```

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::FrameError;
use crate::limits::MAX_FRAME_SIZE_CEILING;
use crate::message::{Message, MessageKind};

/// Bytes of the length prefix.
pub const LENGTH_LEN: usize = 4;
/// Bytes of the kind code.
pub const KIND_LEN: usize = 2;
/// Bytes before the payload.
pub const HEADER_LEN: usize = LENGTH_LEN + KIND_LEN;
/// The default maximum frame size: 16 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16 * 1024 * 1024;
/// The smallest maximum frame size that may be configured: 1 KiB.
pub const MIN_FRAME_SIZE: u32 = 1024;

/// Frames up to this size are written with one write call (header and payload copied into
/// one buffer); larger ones are written in two, without copying the payload.
const COALESCE_LIMIT: usize = 64 * 1024;
/// A reader keeps a buffer at most this large between frames.
const RETAIN_LIMIT: usize = 1024 * 1024;

/// Framing settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameConfig {
    max_frame_size: u32,
}

impl FrameConfig {
    /// A configuration with this maximum frame size (length of kind + payload), which must be
    /// between [`MIN_FRAME_SIZE`] and [`MAX_FRAME_SIZE_CEILING`].
    ///
    /// ```
    /// use sync_proto::FrameConfig;
    /// assert_eq!(FrameConfig::new(1 << 20).unwrap().max_frame_size(), 1 << 20);
    /// assert!(FrameConfig::new(u32::MAX).is_err());
    /// ```
    pub fn new(max_frame_size: u32) -> Result<Self, FrameError> {
        if (MIN_FRAME_SIZE..=MAX_FRAME_SIZE_CEILING).contains(&max_frame_size) {
            Ok(Self { max_frame_size })
        } else {
            Err(FrameError::InvalidMaxFrameSize(max_frame_size))
        }
    }

    /// The maximum length of kind + payload.
    pub fn max_frame_size(&self) -> u32 {
        self.max_frame_size
    }
}

impl Default for FrameConfig {
    fn default() -> Self {
        Self { max_frame_size: DEFAULT_MAX_FRAME_SIZE }
    }
}

/// Checks a length prefix against `max`: returns the frame length (kind + payload).
pub fn check_length(prefix: [u8; LENGTH_LEN], max: u32) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix);
    if len > max {
        return Err(FrameError::Oversize { len: u64::from(len), max });
    }
    let len = len as usize;
    if len < KIND_LEN {
        return Err(FrameError::TooShort { len });
    }
    Ok(len)
}

/// Decodes the body of a frame (kind + payload, without the length prefix).
pub fn decode_body(body: &[u8]) -> Result<Message, FrameError> {
    let Some((kind, payload)) = body.split_first_chunk::<KIND_LEN>() else {
        return Err(FrameError::TooShort { len: body.len() });
    };
    let code = u16::from_be_bytes(*kind);
    let kind = MessageKind::from_code(code).ok_or(FrameError::UnknownKind { code })?;
    Message::decode_payload(kind, payload).map_err(|source| FrameError::Malformed { kind, source })
}

/// Decodes the frame at the start of `buf`; returns the message and the bytes it used.
///
/// A buffer that ends inside the frame gives [`FrameError::Truncated`].
pub fn decode_frame(buf: &[u8], config: &FrameConfig) -> Result<(Message, usize), FrameError> {
    decode_frame_limited(buf, config.max_frame_size)
}

/// [`decode_frame`] with an explicit maximum frame size.
pub(crate) fn decode_frame_limited(buf: &[u8], max: u32) -> Result<(Message, usize), FrameError> {
    let Some((prefix, rest)) = buf.split_first_chunk::<LENGTH_LEN>() else {
        return Err(FrameError::Truncated { expected: LENGTH_LEN, got: buf.len() });
    };
    let len = check_length(*prefix, max)?;
    let body = rest.get(..len).ok_or(FrameError::Truncated { expected: len, got: rest.len() })?;
    Ok((decode_body(body)?, LENGTH_LEN + len))
}

/// Encodes a message's header and payload separately (so a large payload is not copied).
pub(crate) fn encode_parts(
    msg: &Message,
    config: &FrameConfig,
) -> Result<([u8; HEADER_LEN], Vec<u8>), FrameError> {
    let kind = msg.kind();
    let payload = msg.encode_payload().map_err(|source| FrameError::Encode { kind, source })?;
    let len = payload.len() + KIND_LEN;
    if len > config.max_frame_size as usize {
        return Err(FrameError::Oversize { len: len as u64, max: config.max_frame_size });
    }
    let mut header = [0u8; HEADER_LEN];
    // `len` fits in u32: it is at most `max_frame_size`.
    header[..LENGTH_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    header[LENGTH_LEN..].copy_from_slice(&kind.code().to_be_bytes());
    Ok((header, payload))
}

/// Encodes a message as one whole frame. A message whose frame would exceed the maximum is
/// refused with [`FrameError::Oversize`] (it is never sent).
pub fn encode_frame(msg: &Message, config: &FrameConfig) -> Result<Vec<u8>, FrameError> {
    let (header, payload) = encode_parts(msg, config)?;
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Reads frames from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    config: FrameConfig,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R, config: FrameConfig) -> Self {
        Self { inner, buf: Vec::new(), config }
    }

    /// Reads the next message; `Ok(None)` when the stream ends cleanly between two frames.
    pub async fn read(&mut self) -> Result<Option<Message>, FrameError> {
        self.read_limited(self.config.max_frame_size).await
    }

    /// Like [`FrameReader::read`], with a maximum frame size of `max` for this frame only
    /// (used for the handshake, whose frames are small).
    pub async fn read_limited(&mut self, max: u32) -> Result<Option<Message>, FrameError> {
        let mut prefix = [0u8; LENGTH_LEN];
        match read_full(&mut self.inner, &mut prefix).await? {
            0 => return Ok(None),
            LENGTH_LEN => {}
            got => return Err(FrameError::Truncated { expected: LENGTH_LEN, got }),
        }
        let len = check_length(prefix, max.min(self.config.max_frame_size))?;
        // Only now, with the length checked, is the buffer sized — and only as bytes arrive,
        // so a length prefix with no body behind it costs nothing.
        prepare_buffer(&mut self.buf, len);
        while self.buf.len() < len {
            grow_for(&mut self.buf, len);
            let want = (len - self.buf.len()).min(self.buf.capacity() - self.buf.len());
            // Reads into the reserved capacity: no zero-filling, never past the frame.
            if self.inner.read_buf(&mut (&mut self.buf).limit(want)).await? == 0 {
                return Err(FrameError::Truncated { expected: len, got: self.buf.len() });
            }
        }
        decode_body(&self.buf).map(Some)
    }

    /// Capacity of the frame buffer (shows that an oversize frame allocated nothing).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The framing settings.
    pub fn config(&self) -> &FrameConfig {
        &self.config
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes frames to a byte stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
    config: FrameConfig,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a stream.
    pub fn new(inner: W, config: FrameConfig) -> Self {
        Self { inner, buf: Vec::new(), config }
    }

    /// Writes one message as a frame. A frame above the maximum is refused before anything is
    /// written.
    pub async fn write(&mut self, msg: &Message) -> Result<(), FrameError> {
        let (header, payload) = encode_parts(msg, &self.config)?;
        if payload.len() <= COALESCE_LIMIT {
            self.buf.clear();
            self.buf.extend_from_slice(&header);
            self.buf.extend_from_slice(&payload);
            self.inner.write_all(&self.buf).await?;
        } else {
            self.inner.write_all(&header).await?;
            self.inner.write_all(&payload).await?;
        }
        self.inner.flush().await?;
        Ok(())
    }

    /// The framing settings.
    pub fn config(&self) -> &FrameConfig {
        &self.config
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// The first allocation for a frame body, and the step below which it grows by doubling.
const FIRST_CHUNK: usize = 64 * 1024;

/// Empties a frame buffer before a frame of `len` bytes, giving back a large buffer when the
/// coming frame is small.
pub(crate) fn prepare_buffer(buf: &mut Vec<u8>, len: usize) {
    if buf.capacity() > RETAIN_LIMIT && len <= RETAIN_LIMIT {
        *buf = Vec::new();
    }
    buf.clear();
}

/// Makes room for more of a frame of `len` bytes: at least some spare capacity, never more
/// than the frame, growing by doubling from [`FIRST_CHUNK`] — memory follows the bytes that
/// actually arrived, not the length a peer announced.
pub(crate) fn grow_for(buf: &mut Vec<u8>, len: usize) {
    if buf.capacity() > buf.len() {
        return;
    }
    let target = buf.capacity().saturating_mul(2).max(FIRST_CHUNK).min(len);
    buf.reserve_exact(target - buf.len());
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}
