//! `/updates` as Server-Sent Events, for clients that cannot hold a WebSocket (a browser's
//! `EventSource`, `curl -N`): each event of the log as `id: <cursor>` and `data: {"type",
//! "data", "timestamp"}`. A client that reconnects sends the last id it saw as `Last-Event-ID`
//! and resumes right after it. Comments keep the connection alive through proxies. Each client
//! has a bounded queue filled by a task of its own: one whose queue stays full for the idle
//! time is cut off, with a comment saying why (an `EventSource` then reconnects and resumes),
//! and nobody else waits for it.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::{Updates, refusal};
use crate::event_log::ResumeError;

/// The longest wait between two writes to a client: comments fill the silences.
const KEEPALIVE_MAX: Duration = Duration::from_secs(15);

/// Whether `Accept` asks for `text/event-stream`.
pub(super) fn asked_for(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|media| media.split(';').next())
        .any(|media| media.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// The stream of events after `Last-Event-ID` (live ones from now without it); a bad one is
/// answered 400 with its reason.
pub(super) async fn serve(
    updates: &Updates,
    permit: OwnedSemaphorePermit,
    headers: &HeaderMap,
) -> Response {
    let inner = &updates.inner;
    let after = match last_event_id(headers) {
        Ok(None) => None,
        Ok(Some(text)) => match inner.log.cursor(text).await {
            Ok(cursor) => Some(cursor),
            Err(ResumeError::Cursor(reason)) => {
                let reason = format!("Last-Event-ID: {reason}");
                return refusal(StatusCode::BAD_REQUEST, &reason);
            }
            Err(error @ ResumeError::Store(_)) => {
                tracing::error!(%error, "an /updates event stream could not resume");
                let reason = "the event log is unavailable; try again";
                return refusal(StatusCode::SERVICE_UNAVAILABLE, reason);
            }
        },
        Err(reason) => return refusal(StatusCode::BAD_REQUEST, reason),
    };
    let events = inner.log.subscribe(None, after);
    let capacity = inner.settings.send_queue;
    let (queue, received) = mpsc::channel(capacity);
    let (farewell, last_word) = oneshot::channel();
    let (stall, shutdown) = (inner.settings.idle, inner.shutdown.clone());
    tokio::spawn(async move {
        let _permit = permit;
        tokio::pin!(events);
        let reason = loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => break "server shutting down".to_owned(),
                // The client went away.
                () = queue.closed() => return,
                next = events.next() => next,
            };
            let message = match next {
                Some(Ok((cursor, event))) => SseEvent::default()
                    .id(cursor.to_string())
                    .data(serde_json::to_string(&event).expect("an event always serializes")),
                Some(Err(error)) => {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "an /updates event stream failed"
                    );
                    break "internal error: the replay failed; reconnect to resume".to_owned();
                }
                None => break "server shutting down".to_owned(),
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break "server shutting down".to_owned(),
                sent = queue.send_timeout(message, stall) => match sent {
                    Ok(()) => {}
                    Err(SendTimeoutError::Timeout(_)) => break format!(
                        "too slow: {capacity} events unread for {} s; reconnect to resume",
                        stall.as_secs()
                    ),
                    Err(SendTimeoutError::Closed(_)) => return,
                },
            }
        };
        farewell.send(reason).ok();
    });
    let queued = futures::stream::unfold(received, |mut received| async move {
        let message = received.recv().await?;
        Some((message, received))
    });
    let goodbye = futures::stream::once(last_word)
        .filter_map(|reason| async move { reason.ok().map(|r| SseEvent::default().comment(r)) });
    let body = queued.chain(goodbye).map(Ok::<_, Infallible>);
    let keepalive = (stall / 3).clamp(Duration::from_millis(10), KEEPALIVE_MAX);
    let mut response = Sse::new(body)
        .keep_alive(KeepAlive::new().interval(keepalive).text("keep-alive"))
        .into_response();
    // Proxies that buffer responses (nginx) would hold the events back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The `Last-Event-ID` a reconnecting client sent, if any (an empty one is none).
fn last_event_id(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| "Last-Event-ID is not ASCII text: give the id of an event this stream sent")?
        .trim();
    Ok((!text.is_empty()).then_some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_stream_is_asked_for_by_accept() {
        let with = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, accept.parse().expect("a header"));
            asked_for(&headers)
        };
        assert!(with("text/event-stream"));
        assert!(with("text/html, Text/Event-Stream;q=0.9"));
        assert!(!with("text/html"));
        assert!(!with("*/*"));
        assert!(!asked_for(&HeaderMap::new()));
    }
}
