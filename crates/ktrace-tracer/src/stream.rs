//! [`HitStream`]: a trace in a background task, its hits as a stream.

use std::time::Duration;

use std::ops::ControlFlow;

use tokio_util::sync::CancellationToken;

use crate::hit::{EndReason, Hit, Summary};
use crate::{TraceError, TraceFailure, Tracer};

/// The hits of a trace running in a background task, as a stream.
/// See [`Tracer::stream`].
pub struct HitStream {
    hits: tokio::sync::mpsc::UnboundedReceiver<Hit>,
    task: tokio::task::JoinHandle<Result<Summary, TraceFailure>>,
}

impl Tracer {
    /// Runs the trace in a background tokio task and returns its hits as a
    /// stream; `cancel` ends it (breakpoints removed, guest running). The
    /// channel is unbounded: a consumer that stops reading should cancel.
    pub fn stream(self, cancel: CancellationToken) -> HitStream {
        HitStream::spawn(self, cancel)
    }
}

impl HitStream {
    /// Runs `tracer` in a background tokio task, its hits sent over an
    /// unbounded channel (a consumer that stops reading should cancel).
    fn spawn(tracer: Tracer, cancel: CancellationToken) -> HitStream {
        let (tx, hits) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut sink = move |hit: Hit| match tx.send(hit) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            };
            tracer.run(&mut sink, cancel).await
        });
        HitStream { hits, task }
    }

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
                error: TraceError::TaskFailed(join.to_string()),
                summary: Summary {
                    seen: 0,
                    matched: 0,
                    elapsed: Duration::ZERO,
                    end: EndReason::Error,
                    guest_released: false,
                    in_guest: None,
                },
            }),
        }
    }
}
