//! The answers of a streaming call (Watch, StreamCheck), made by a task of their own and ended
//! with a status the client can act on when the client stops taking them.
//!
//! A client that neither reads nor closes would otherwise keep the task, its buffered answers
//! and its slots for as long as the connection lives. With an idle limit, an answer the client
//! does not take within the limit ends the stream: the answers still buffered are dropped, the
//! task stops, and the client, when it reads again, gets UNAVAILABLE (retryable) saying how to
//! resume.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// The stream a handler returns: the task's answers, or the status it was abandoned with.
pub struct Answers<T> {
    receiver: mpsc::Receiver<Result<T, Status>>,
    /// Set when the task gave up on an idle client; `None` once answered (or the task ended
    /// without giving up).
    abandoned: Option<oneshot::Receiver<Status>>,
    ended: bool,
}

/// The task's end of [`Answers`].
pub struct AnswerSender<T> {
    sender: mpsc::Sender<Result<T, Status>>,
    abandon: Option<oneshot::Sender<Status>>,
    idle: Option<Duration>,
    /// What the client should do after an idle ending (how to resume).
    resume: &'static str,
    /// Whether the idle ending was counted.
    counted: bool,
}

/// A channel for a stream's answers: `buffer` may wait for the client; an answer not taken
/// within `idle` ends the stream, with a message ending in `resume`.
pub fn answers<T>(
    buffer: usize,
    idle: Option<Duration>,
    resume: &'static str,
) -> (AnswerSender<T>, Answers<T>) {
    let (sender, receiver) = mpsc::channel(buffer);
    let (abandon, abandoned) = oneshot::channel();
    (
        AnswerSender {
            sender,
            abandon: Some(abandon),
            idle,
            resume,
            counted: false,
        },
        Answers {
            receiver,
            abandoned: Some(abandoned),
            ended: false,
        },
    )
}

impl<T> AnswerSender<T> {
    /// Sends one answer; `false` when the client has gone, or took no answer within the idle
    /// limit (the stream then ends with UNAVAILABLE).
    pub async fn send(&mut self, answer: Result<T, Status>) -> bool {
        let Some(idle) = self.idle else {
            return self.sender.send(answer).await.is_ok();
        };
        match tokio::time::timeout(idle, self.sender.send(answer)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                self.count_idle();
                let status = self.idle_status("the client took no message");
                if let Some(abandon) = self.abandon.take() {
                    let _ = abandon.send(status);
                }
                false
            }
        }
    }

    /// Ends the stream with UNAVAILABLE because `what` happened for the idle limit (the
    /// answers already sent are delivered first).
    pub async fn end_idle(&mut self, what: &str) {
        self.count_idle();
        let status = self.idle_status(what);
        self.send(Err(status)).await;
    }

    /// Completes when the client has gone.
    pub async fn closed(&self) {
        self.sender.closed().await;
    }

    /// The idle limit, if any.
    pub fn idle(&self) -> Option<Duration> {
        self.idle
    }

    /// Counts the stream's idle ending, once, in `assent_limited_requests_total{limit="stream_idle"}`.
    fn count_idle(&mut self) {
        if !self.counted {
            self.counted = true;
            crate::metrics::record_limited("stream_idle");
        }
    }

    fn idle_status(&self, what: &str) -> Status {
        let limit = self.idle.unwrap_or_default();
        // Safe to retry at once: the stream ended, nothing of it was lost (`resume` says how to
        // go on from where it stopped).
        crate::status::unavailable(
            "STREAM_IDLE",
            format!(
                "idle: {what} for {} ms (stream_idle_timeout_ms) and the stream was ended; {}",
                limit.as_millis(),
                self.resume
            ),
            Duration::ZERO,
        )
    }
}

impl<T> tokio_stream::Stream for Answers<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(abandoned) = &mut self.abandoned {
            match Pin::new(abandoned).poll(context) {
                Poll::Ready(Ok(status)) => {
                    // The answers the client did not take are dropped with the stream.
                    self.ended = true;
                    self.abandoned = None;
                    self.receiver.close();
                    while self.receiver.try_recv().is_ok() {}
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Err(_)) => self.abandoned = None,
                Poll::Pending => {}
            }
        }
        self.receiver.poll_recv(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn an_answer_not_taken_within_the_limit_ends_the_stream_with_unavailable() {
        let (mut sender, mut stream) =
            answers::<u32>(2, Some(Duration::from_millis(50)), "resume from 7");
        assert!(sender.send(Ok(1)).await);
        assert!(sender.send(Ok(2)).await);
        // The buffer is full and nobody reads.
        assert!(!sender.send(Ok(3)).await);
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().starts_with("idle: "), "{status:?}");
        assert!(status.message().ends_with("resume from 7"), "{status:?}");
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn answers_taken_in_time_all_arrive() {
        let (mut sender, mut stream) = answers::<u32>(1, Some(Duration::from_millis(200)), "");
        let task = tokio::spawn(async move {
            for answer in 0..10 {
                assert!(sender.send(Ok(answer)).await);
            }
            sender.end_idle("no request came").await;
        });
        for answer in 0..10 {
            assert_eq!(stream.next().await.unwrap().unwrap(), answer);
        }
        let status = stream.next().await.unwrap().unwrap_err();
        assert!(status.message().contains("no request came"), "{status:?}");
        task.await.unwrap();
        assert!(stream.next().await.is_none());
    }
}
