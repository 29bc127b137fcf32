//! [`BatchWorker`]: a [`Scheduler`] on a thread of its own that owns the model, fed by a
//! channel of requests, like llama.cpp's server slots. Native only: the browser has one
//! sequence and no threads to spare.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use selfroute_core::backend::BatchBackend;

use crate::batch::{BatchOptions, CancelToken, Scheduler, SequenceRequest, Submission, TokenSink};
use crate::error::EngineError;

/// The model's thread and the way in. Dropping it lets the sequences in flight finish, then
/// joins the thread.
pub struct BatchWorker {
    submissions: Option<mpsc::Sender<Submission>>,
    /// Requests submitted and not yet admitted to a step (a server's queue length).
    queued: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

/// A submitted request. Dropping it cancels the sequence (a client that went away), so a
/// caller keeps it for as long as it wants tokens.
#[derive(Debug)]
pub struct SequenceHandle {
    cancel: CancelToken,
}

impl SequenceHandle {
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
}

impl Drop for SequenceHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl BatchWorker {
    /// Starts the thread, which owns `backend` from now on.
    pub fn spawn<B>(backend: B, options: BatchOptions) -> Result<Self, EngineError>
    where
        B: BatchBackend + Send + 'static,
    {
        let (submissions, receiver) = mpsc::channel::<Submission>();
        let queued = Arc::new(AtomicUsize::new(0));
        let worker_queued = queued.clone();
        let thread = std::thread::Builder::new()
            .name("selfroute-batch".into())
            .spawn(move || run(Scheduler::new(backend, options), &receiver, &worker_queued))
            .map_err(|e| EngineError::Failed(format!("starting the batch thread: {e}")))?;
        Ok(Self {
            submissions: Some(submissions),
            queued,
            thread: Some(thread),
        })
    }

    /// Queues a request; its events go to `sink` on the worker's thread. Fails only when the
    /// worker has stopped (a panic in the model).
    pub fn submit(
        &self,
        request: SequenceRequest,
        sink: impl TokenSink + 'static,
    ) -> Result<SequenceHandle, EngineError> {
        let cancel = CancelToken::default();
        let submission = Submission {
            request,
            sink: Box::new(sink),
            cancel: cancel.clone(),
        };
        // Counted before the send, so the worker's count of admitted requests never runs ahead.
        self.queued.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .submissions
            .as_ref()
            .is_some_and(|s| s.send(submission).is_ok());
        if !sent {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::Failed("the batch worker has stopped".into()));
        }
        Ok(SequenceHandle { cancel })
    }

    /// Requests waiting for a place in the batch.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

impl Drop for BatchWorker {
    fn drop(&mut self) {
        // Closing the channel ends the loop once the sequences in flight are done.
        self.submissions.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run<B: BatchBackend>(
    mut scheduler: Scheduler<B>,
    receiver: &mpsc::Receiver<Submission>,
    queued: &AtomicUsize,
) {
    loop {
        if !scheduler.has_work() {
            // Idle: sleep until a request comes, or stop when no one can send one.
            match receiver.recv() {
                Ok(s) => scheduler.submit(s),
                Err(_) => return,
            }
        }
        // Everything that arrived during the last step joins this one.
        while let Ok(s) = receiver.try_recv() {
            scheduler.submit(s);
        }
        // Admitted before the step runs (its prefill can take a while), so `queued()` does not
        // count a request that already has its place: a server refusing on a full queue would
        // otherwise refuse while nothing waits.
        let before = scheduler.waiting();
        scheduler.admit();
        let admitted = before.saturating_sub(scheduler.waiting());
        queued.fetch_sub(admitted, Ordering::Relaxed);
        scheduler.step();
    }
}
