//! A model request started at once rather than on its stream's first read
//! (overlapped dispatch: the model works while input moderation runs). A
//! task drives the request into a bounded buffer; dropping the returned
//! stream aborts the task, and with it the request and its connection.

use futures_util::StreamExt;
use tokio_util::task::AbortOnDropHandle;

use super::ModelStream;

/// Answer items buffered ahead of the reader; beyond this the request waits for it.
const AHEAD: usize = 256;

/// Starts `request` now; the returned stream yields what it yields.
pub fn start_now(mut request: ModelStream) -> ModelStream {
    let (sender, receiver) = tokio::sync::mpsc::channel(AHEAD);
    let task = AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(item) = request.next().await {
            if sender.send(item).await.is_err() {
                return;
            }
        }
    }));
    Box::pin(futures_util::stream::unfold((receiver, task), |(mut receiver, task)| async move {
        let item = receiver.recv().await?;
        Some((item, (receiver, task)))
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::slm::ModelEvent;

    /// Sets its flag when dropped: the request it stands for was ended.
    struct Ended(Arc<AtomicBool>);

    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A request that records its first read and its end, yields `first`,
    /// then waits for ever (a model still generating).
    fn request(read: Arc<AtomicBool>, ended: Arc<AtomicBool>) -> ModelStream {
        let ended = Ended(ended);
        Box::pin(async_stream::stream! {
            let _ended = ended;
            read.store(true, Ordering::SeqCst);
            yield Ok(ModelEvent::Delta("first".into()));
            futures_util::future::pending::<()>().await;
        })
    }

    #[tokio::test]
    async fn the_request_starts_before_anyone_reads_its_answer() {
        let (read, ended) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let mut answer = start_now(request(read.clone(), ended.clone()));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(read.load(Ordering::SeqCst), "the request ran with nobody reading");
        assert_eq!(answer.next().await.unwrap().unwrap(), ModelEvent::Delta("first".into()), "what it produced meanwhile is kept");
        assert!(!ended.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn dropping_the_answer_aborts_the_request() {
        let (read, ended) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let answer = start_now(request(read.clone(), ended.clone()));
        tokio::task::yield_now().await;
        drop(answer);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(ended.load(Ordering::SeqCst), "the request still runs after its answer was dropped");
    }
}
