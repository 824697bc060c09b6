//! The errors of this crate: [`FrameError`] for one frame, [`ProtoError`] for a session.

use std::{io, time::Duration};

use sync_log::LibraryId;

use crate::message::{ErrorCode, MessageKind};
use crate::version::VersionRange;

/// Why one frame could not be read, decoded or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than the maximum frame size. Nothing was allocated for
    /// it, and the rest of the stream is not read.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    Oversize {
        /// Announced (or, when sending, actual) frame length.
        len: u64,
        /// The maximum in force.
        max: u32,
    },
    /// The stream or buffer ended inside a frame.
    #[error("truncated frame: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the frame (or its length prefix) needs.
        expected: usize,
        /// Bytes that were there.
        got: usize,
    },
    /// The length prefix is too small to hold a message kind.
    #[error("frame of {len} bytes is too short to hold a message kind")]
    TooShort {
        /// Announced frame length.
        len: usize,
    },
    /// The kind code is not one this build knows.
    #[error("unknown message kind {code}")]
    UnknownKind {
        /// The code found.
        code: u16,
    },
    /// The payload is not a valid encoding of its kind (or breaks a decode limit).
    #[error("malformed {kind} payload: {source}")]
    Malformed {
        /// The kind announced by the frame.
        kind: MessageKind,
        /// What the decoder said.
        #[source]
        source: sync_log::Error,
    },
    /// A message could not be encoded.
    #[error("cannot encode {kind}: {source}")]
    Encode {
        /// The kind being encoded.
        kind: MessageKind,
        /// What the encoder said.
        #[source]
        source: sync_log::Error,
    },
    /// A maximum frame size outside the allowed range was configured.
    #[error("invalid maximum frame size {0}: must be between {min} and {max}", min = crate::frame::MIN_FRAME_SIZE, max = crate::MAX_FRAME_SIZE_CEILING)]
    InvalidMaxFrameSize(u32),
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// The code to close a connection with when the *peer's* input caused this error.
    pub fn close_code(&self) -> ErrorCode {
        match self {
            Self::Oversize { .. } => ErrorCode::FRAME_TOO_LARGE,
            Self::Io(_) | Self::Encode { .. } | Self::InvalidMaxFrameSize(_) => ErrorCode::INTERNAL,
            _ => ErrorCode::PROTOCOL_ERROR,
        }
    }
}

/// Why a connection, handshake or session failed.
///
/// [`ProtoError::is_retryable`] separates the transient (connection lost, timeout, peer
/// shutting down) from the fatal (not a member, foreign library, no common version, garbage
/// from the peer).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// A frame could not be read, decoded or written.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer is not a member of the library (`None`: of any library hosted here), or the
    /// device id it claims is not the one bound to its endpoint id.
    #[error("not a member of {}", library.map_or_else(|| "any library hosted here".to_string(), |l| format!("library {l}")))]
    NotAMember {
        /// The library asked for, when known.
        library: Option<LibraryId>,
    },
    /// The library is not hosted by the acceptor.
    #[error("library {library} is not hosted by the acceptor")]
    ForeignLibrary {
        /// The library asked for.
        library: LibraryId,
    },
    /// The two sides share no protocol version.
    #[error("no common protocol version: ours {ours}, theirs {theirs}")]
    VersionMismatch {
        /// The range this side speaks.
        ours: VersionRange,
        /// The range the peer speaks.
        theirs: VersionRange,
    },
    /// The peer sent a message that is not allowed at this point.
    #[error("expected {expected}, got {got}")]
    UnexpectedMessage {
        /// What was expected.
        expected: &'static str,
        /// What came.
        got: MessageKind,
    },
    /// The handshake answer names another library or device than the one dialled.
    #[error("handshake answer does not match the peer dialled: {0}")]
    WrongPeer(String),
    /// The handshake did not complete in time.
    #[error("handshake did not complete within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer answered with an error message.
    #[error("peer reported {code}: {message}")]
    Remote {
        /// The peer's code.
        code: ErrorCode,
        /// The peer's message.
        message: String,
    },
    /// The peer closed the connection with an application error code.
    #[error("closed by peer with {code}: {reason}")]
    Closed {
        /// The code.
        code: ErrorCode,
        /// The reason text sent with it.
        reason: String,
    },
    /// The connection broke (timeout, reset, link cut).
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// This side closed the session; nothing more can be sent or received.
    #[error("session closed locally")]
    LocallyClosed,
    /// The peer could not be reached.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The endpoint could not be set up.
    #[error("endpoint setup failed: {0}")]
    Endpoint(String),
    /// This node's protocol layer ended the session with a code: a newer session of the same
    /// device replaced it ([`ErrorCode::REPLACED`]), the peer's membership was revoked
    /// ([`ErrorCode::NOT_A_MEMBER`]), the node is shutting down
    /// ([`ErrorCode::SHUTTING_DOWN`]), the peer stalled ([`ErrorCode::TIMEOUT`]) or broke the
    /// protocol. The peer was told the same code.
    #[error("session ended here with {code}: {reason}")]
    Terminated {
        /// The code the connection was closed with.
        code: ErrorCode,
        /// Why.
        reason: String,
    },
    /// The peer stalled: a frame did not complete within the frame deadline, or nothing
    /// arrived within the idle time and a probe went unanswered.
    #[error("peer stalled: {what} within {after:?}")]
    Timeout {
        /// What did not happen in time.
        what: &'static str,
        /// The deadline that passed.
        after: Duration,
    },
    /// This message may not be sent (or received) at this point of the protocol; nothing was
    /// sent.
    #[error("{kind} is not allowed here: {why}")]
    NotAllowed {
        /// The kind refused.
        kind: MessageKind,
        /// The rule it breaks.
        why: &'static str,
    },
    /// Too many connections from this endpoint are awaiting their handshake: refused at once.
    #[error("too many pending handshakes from this endpoint (at most {max})")]
    Busy {
        /// The cap per endpoint.
        max: usize,
    },
}

impl ProtoError {
    /// Whether trying again later (or another peer) can succeed.
    ///
    /// ```
    /// use sync_proto::{ErrorCode, ProtoError};
    /// assert!(ProtoError::ConnectionLost("reset".into()).is_retryable());
    /// assert!(!ProtoError::NotAMember { library: None }.is_retryable());
    /// assert!(!ProtoError::Closed { code: ErrorCode::FOREIGN_LIBRARY, reason: String::new() }.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::ConnectionLost(_)
            | Self::Connect(_)
            | Self::HandshakeTimeout(_)
            | Self::Timeout { .. }
            | Self::Busy { .. } => true,
            Self::Closed { code, .. }
            | Self::Remote { code, .. }
            | Self::Terminated { code, .. } => code.is_retryable(),
            Self::Frame(FrameError::Io(_)) => true,
            Self::Frame(_)
            | Self::NotAMember { .. }
            | Self::ForeignLibrary { .. }
            | Self::VersionMismatch { .. }
            | Self::UnexpectedMessage { .. }
            | Self::NotAllowed { .. }
            | Self::WrongPeer(_)
            | Self::LocallyClosed
            | Self::Endpoint(_) => false,
        }
    }

    /// The code that describes this error when closing a connection because of it.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Frame(e) => e.close_code(),
            Self::NotAMember { .. } => ErrorCode::NOT_A_MEMBER,
            Self::ForeignLibrary { .. } => ErrorCode::FOREIGN_LIBRARY,
            Self::VersionMismatch { .. } => ErrorCode::VERSION_MISMATCH,
            Self::UnexpectedMessage { .. } | Self::WrongPeer(_) | Self::NotAllowed { .. } => {
                ErrorCode::PROTOCOL_ERROR
            }
            Self::HandshakeTimeout(_) => ErrorCode::HANDSHAKE_TIMEOUT,
            Self::Timeout { .. } => ErrorCode::TIMEOUT,
            Self::Busy { .. } => ErrorCode::BUSY,
            Self::Remote { code, .. }
            | Self::Closed { code, .. }
            | Self::Terminated { code, .. } => *code,
            Self::ConnectionLost(_)
            | Self::LocallyClosed
            | Self::Connect(_)
            | Self::Endpoint(_) => ErrorCode::INTERNAL,
        }
    }
}

/// The longest reason text sent with a close, or kept from a peer's close or error message.
pub const MAX_REASON_LEN: usize = 200;

/// Makes a peer-supplied text safe for logs: control characters (newlines, terminal escapes,
/// …) and Unicode bidirectional overrides are written as `\u{..}` escapes, and the result is cut
/// to at most [`MAX_REASON_LEN`] bytes on a character boundary (a cut text ends with `…`).
///
/// ```
/// use sync_proto::sanitize_reason;
/// assert_eq!(sanitize_reason("bad\n\x1b[31mred"), "bad\\u{a}\\u{1b}[31mred");
/// assert!(sanitize_reason(&"x".repeat(300)).len() <= 200);
/// ```
pub fn sanitize_reason(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_REASON_LEN));
    for c in text.chars() {
        let unsafe_char = c.is_control()
            || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}');
        let piece = if unsafe_char { format!("\\u{{{:x}}}", u32::from(c)) } else { c.to_string() };
        if out.len() + piece.len() > MAX_REASON_LEN {
            // Room for the ellipsis (3 bytes).
            while out.len() + '…'.len_utf8() > MAX_REASON_LEN {
                out.pop();
            }
            out.push('…');
            return out;
        }
        out.push_str(&piece);
    }
    out
}

/// [`sanitize_reason`] for raw bytes (a QUIC close reason), decoded as lossy UTF-8.
pub(crate) fn sanitize_bytes(bytes: &[u8]) -> String {
    // Decode no more than could survive the cap (escapes only make it longer).
    let head = &bytes[..bytes.len().min(MAX_REASON_LEN * 4)];
    sanitize_reason(&String::from_utf8_lossy(head))
}
