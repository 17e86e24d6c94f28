//! [`HitStream`]: a trace in a background task, its hits as a stream.

use std::time::Duration;

use crate::hit::{EndReason, Hit, Summary};
use crate::tracer::TraceFailure;
use crate::TraceError;

/// The hits of a trace running in a background task, as a stream.
/// See [`Tracer::stream`].
pub struct HitStream {
    pub(crate) hits: tokio::sync::mpsc::UnboundedReceiver<Hit>,
    pub(crate) task: tokio::task::JoinHandle<Result<Summary, TraceFailure>>,
}

impl HitStream {
    /// The next hit, or `None` once the trace has ended.
    pub async fn next(&mut self) -> Option<Hit> {
        self.hits.recv().await
    }

    /// Waits for the trace to end (cancel it first to end it now) and
    /// returns its summary. Hits not yet taken are dropped.
    pub async fn finish(self) -> Result<Summary, TraceFailure> {
        drop(self.hits);
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(TraceFailure {
                error: TraceError::GuestGone(format!("the trace task failed: {join}")),
                summary: Summary {
                    seen: 0,
                    matched: 0,
                    elapsed: Duration::ZERO,
                    end: EndReason::Error,
                    guest_released: false,
                },
            }),
        }
    }
}
