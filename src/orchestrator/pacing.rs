//! Backpressure between a running turn and its client: the turn runs in a
//! task of its own and hands its events over a bounded channel, so a client
//! that stops reading slows the model read instead of growing memory; once
//! an event has waited longer than the write-stall deadline for room, the
//! turn is stopped as `client_too_slow` (recorded `turn.failed`, its model
//! request aborted), and its last events wait for the client to read again.
//!
//! How a turn is stopped early — the client's `cancel`, or a stalled
//! reader — travels to it as a [`TurnStop`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::turn::TurnStream;

/// Why a turn was stopped before the model finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The client asked (a WebSocket `cancel`): the turn ends as cancelled.
    CancelRequested,
    /// The client stopped reading for longer than the write-stall deadline:
    /// the turn fails with `client_too_slow`.
    ClientTooSlow,
    /// Steward is shutting down and the turn outlived the grace period: it
    /// ends as cancelled.
    Shutdown,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CancelRequested => "cancel_requested",
            Self::ClientTooSlow => "client_too_slow",
            Self::Shutdown => "shutdown",
        }
    }
}

/// Stops one turn early, for the first reason given; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TurnStop {
    token: CancellationToken,
    reason: Arc<OnceLock<StopReason>>,
}

impl TurnStop {
    /// Stops the turn; a later call changes nothing.
    pub fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Resolves once the turn is stopped, with the first reason given.
    pub async fn stopped(&self) -> StopReason {
        self.token.cancelled().await;
        self.reason.get().copied().unwrap_or(StopReason::CancelRequested)
    }
}

/// The bounds between a turn and its client.
#[derive(Debug, Clone)]
pub struct Pacing {
    /// Events a turn may run ahead of its client.
    pub buffer: usize,
    /// The longest an event may wait for the client to take it.
    pub write_stall: Duration,
    /// Cancelled when the shutdown's grace period is over: every turn still
    /// running then stops ([`StopReason::Shutdown`]).
    pub shutdown: CancellationToken,
}

/// Runs `turn` in a task of its own, handing its events to the returned
/// stream through a channel of `pacing.buffer` events. The turn is dropped
/// (recorded cancelled, its model request aborted) as soon as the returned
/// stream is, also while it waits for the model.
pub fn paced(mut turn: TurnStream, stop: TurnStop, pacing: Pacing) -> TurnStream {
    let (sender, receiver) = mpsc::channel(pacing.buffer.max(1));
    tokio::spawn(async move {
        let shutdown = pacing.shutdown.cancelled();
        tokio::pin!(shutdown);
        let mut draining = false;
        loop {
            let next = tokio::select! {
                biased;
                () = sender.closed() => return,
                () = &mut shutdown, if !draining => {
                    draining = true;
                    stop.stop(StopReason::Shutdown);
                    continue;
                }
                next = turn.next() => next,
            };
            let Some(event) = next else { return };
            match tokio::time::timeout(pacing.write_stall, sender.reserve()).await {
                Ok(Ok(permit)) => permit.send(event),
                Ok(Err(_)) => return,
                Err(_) => {
                    stop.stop(StopReason::ClientTooSlow);
                    // The turn ends at once (its `error` and `done` follow); the client gets
                    // what it was sent if it reads again, and the task ends when it leaves.
                    let tail: Vec<_> = std::iter::once(event).chain(turn.by_ref().collect::<Vec<_>>().await).collect();
                    drop(turn);
                    for event in tail {
                        if sender.send(event).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
            }
        }
    });
    Box::pin(futures_util::stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|event| (event, receiver)) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use crate::orchestrator::{FinishReason, TurnEvent};

    /// A turn that streams deltas until stopped, then ends as the orchestrator does.
    fn endless(stop: TurnStop) -> TurnStream {
        Box::pin(async_stream::stream! {
            let mut n = 0u32;
            loop {
                tokio::select! {
                    biased;
                    reason = stop.stopped() => {
                        if reason == StopReason::ClientTooSlow {
                            yield TurnEvent::Error { code: Code::ClientTooSlow, message: "slow".into() };
                            yield TurnEvent::Done { finish_reason: FinishReason::Error, usage: None };
                        } else {
                            yield TurnEvent::Done { finish_reason: FinishReason::Cancelled, usage: None };
                        }
                        return;
                    }
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
                n += 1;
                yield TurnEvent::Delta(n.to_string());
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_holds_at_most_the_buffer_and_then_gets_client_too_slow() {
        let stop = TurnStop::default();
        let mut paced =
            paced(endless(stop.clone()), stop.clone(), Pacing { buffer: 4, write_stall: Duration::from_secs(2), shutdown: CancellationToken::new() });
        assert_eq!(paced.next().await, Some(TurnEvent::Delta("1".into())));

        tokio::time::sleep(Duration::from_secs(60)).await;

        let rest: Vec<_> = paced.collect().await;
        // Four buffered, the one that waited for room, then the turn's end.
        let deltas: Vec<_> = (2..=6).map(|n| TurnEvent::Delta(n.to_string())).collect();
        assert_eq!(rest[..5], deltas[..]);
        assert!(matches!(rest[5], TurnEvent::Error { code: Code::ClientTooSlow, .. }), "{rest:?}");
        assert!(matches!(rest[6], TurnEvent::Done { finish_reason: FinishReason::Error, .. }), "{rest:?}");
        assert_eq!(rest.len(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_keeps_up_gets_every_event_and_the_turn_is_not_stopped() {
        let stop = TurnStop::default();
        let mut paced =
            paced(endless(stop.clone()), stop.clone(), Pacing { buffer: 1, write_stall: Duration::from_millis(50), shutdown: CancellationToken::new() });
        for n in 1..=200 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert_eq!(paced.next().await, Some(TurnEvent::Delta(n.to_string())));
        }
        assert!(!stop.token.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_stops_a_running_turn_which_still_ends_with_its_done() {
        let (stop, shutdown) = (TurnStop::default(), CancellationToken::new());
        let pacing = Pacing { buffer: 4, write_stall: Duration::from_secs(60), shutdown: shutdown.clone() };
        let mut paced = paced(endless(stop.clone()), stop.clone(), pacing);
        assert_eq!(paced.next().await, Some(TurnEvent::Delta("1".into())));

        shutdown.cancel();

        let rest: Vec<_> = paced.collect().await;
        assert_eq!(rest.last(), Some(&TurnEvent::Done { finish_reason: FinishReason::Cancelled, usage: None }), "{rest:?}");
        assert!(rest.len() <= 3, "the turn went on after the shutdown: {rest:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_reader_drops_the_turn_while_it_waits() {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Flag(dropped.clone());
        let silent: TurnStream = Box::pin(async_stream::stream! {
            let _flag = flag;
            std::future::pending::<()>().await;
            yield TurnEvent::Delta(String::new());
        });
        let paced = paced(silent, TurnStop::default(), Pacing { buffer: 4, write_stall: Duration::from_secs(2), shutdown: CancellationToken::new() });
        tokio::task::yield_now().await;

        drop(paced);
        tokio::time::sleep(Duration::from_millis(1)).await;

        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst), "the turn outlived its reader");
    }
}
