//! Pipelined raw requests: several packets in one write, replies in order.

use super::Session;
use crate::RspError;

impl Session {
    /// Sends every request in one write and returns the raw replies in order.
    ///
    /// This is the tracer's hot path: e.g. `p` of RIP and `m` of the current
    /// task pointer cost one round trip together. Stub errors (`E NN`) come
    /// back as reply payloads; parse them with the packet modules.
    pub async fn request_many(&mut self, payloads: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, RspError> {
        let inner = self.inner.as_mut().ok_or(RspError::Closed)?;
        inner.conn.pipeline(payloads, payloads.len().max(1)).await
    }
}
