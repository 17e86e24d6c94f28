//! The crate's error type.

/// Everything that can go wrong while talking to a GDB stub.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum RspError {
    /// An I/O error on the transport.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The stub closed the connection.
    #[error("the stub closed the connection")]
    Closed,
    /// No (complete) reply arrived within the configured timeout.
    #[error("timed out waiting for the reply to {request}")]
    Timeout {
        /// The request (or phase) that timed out.
        request: String,
    },
    /// The stub answered `E NN`.
    #[error("the stub answered error E{code:02x} to {request}")]
    Stub {
        /// The error number sent by the stub.
        code: u8,
        /// The request that failed.
        request: String,
    },
    /// The stub answered `E.message`.
    #[error("the stub answered error {message:?} to {request}")]
    StubMessage {
        /// The textual error.
        message: String,
        /// The request that failed.
        request: String,
    },
    /// The stub answered with an empty packet: the request is not supported.
    #[error("the stub does not support {request}")]
    Unsupported {
        /// The unsupported request.
        request: String,
    },
    /// A reply could not be parsed.
    #[error("unexpected reply to {request}: {reply:?}")]
    UnexpectedReply {
        /// The request.
        request: String,
        /// The reply, lossily decoded as UTF-8 and truncated.
        reply: String,
    },
    /// The stub broke the protocol in a way the connection could not repair.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// A stub address could not be parsed.
    #[error("invalid stub address {0:?} (expected host:port, :port or unix:PATH)")]
    InvalidAddr(String),
    /// A register name is not in the register map (or there is no map).
    #[error("unknown register {0:?}")]
    UnknownRegister(String),
    /// The target description could not be parsed.
    #[error("bad target description: {0}")]
    TargetXml(String),
    /// A [`crate::Batch`] handle was redeemed with the replies of another batch.
    #[error("no read {0} in this batch")]
    NotInBatch(usize),
    /// The operation needs a stopped target, but no stop has been seen yet.
    #[error("the target has not stopped yet")]
    NotStopped,
}

/// How the stub broke the protocol: what [`RspError::Protocol`] carries.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A reply inside a pipelined batch of requests with side effects was
    /// damaged (bad checksum, garbage, a NAK, or no reply in time), so the
    /// batch was not sent again.
    #[error("a reply inside a pipelined batch was damaged")]
    DamagedBatch,
    /// The stub NAKed a packet while several were unacknowledged.
    #[error("the stub rejected a packet inside a pipelined batch")]
    RejectedInBatch,
    /// The stub NAKed the same packet too many times in a row.
    #[error("too many retransmissions")]
    TooManyRetransmissions,
    /// After a damaged batch the stub kept sending for longer than the timeout.
    #[error("the stub does not stop sending after a damaged batch")]
    EndlessAfterDamage,
    /// `qsThreadInfo` kept answering with more threads.
    #[error("thread list does not end")]
    EndlessThreadList,
}

impl RspError {
    pub(crate) fn unexpected(request: &str, reply: &[u8]) -> Self {
        let mut s = String::from_utf8_lossy(reply).into_owned();
        if s.len() > 200 {
            let mut cut = 200;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push_str("...");
        }
        RspError::UnexpectedReply { request: request.to_string(), reply: s }
    }
}
