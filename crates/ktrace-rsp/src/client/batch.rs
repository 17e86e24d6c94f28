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

impl Session {
    /// Closes the connection WITHOUT detaching, like GDB's `disconnect`.
    ///
    /// QEMU then leaves the VM paused, with any inserted breakpoints in
    /// place, until the next client connects. This is how another debugger
    /// can look at exactly the same stop; it is never the right way to end a
    /// trace (use [`Session::detach`]).
    pub fn disconnect(mut self) {
        drop(self.inner.take());
    }
}
