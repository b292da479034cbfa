//! One cancellation token per process, cancelled by SIGINT or SIGTERM; servers, consumers and
//! pollers watch it, stop taking work, and finish or hand back what they hold. A second signal
//! ends the process at once, for when finishing takes longer than the operator will wait.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The exit code after a second signal: what a shell reports for a process SIGINT ended.
const FORCED_EXIT_CODE: i32 = 130;

/// Returns a token that is cancelled on the first SIGINT or SIGTERM; the second one exits.
/// Call it inside the runtime, before connecting to anything: the handlers are installed at
/// once, so a signal that arrives during startup is not lost to the default action.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let mut signals = Signals::listen();
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!("shutting down; a second signal exits at once");
        cancel.cancel();
        signals.next().await;
        tracing::warn!("second signal: exiting without finishing");
        std::process::exit(FORCED_EXIT_CODE);
    });
    token
}

/// Runs `work` to its end, unless `token` is cancelled and `work` then takes longer than
/// `grace`: the bound on how long a process takes to stop. `None` when `work` was given up;
/// what it held unsettled is then handed back as after a crash, which every process survives.
pub async fn finish_within<F: Future>(
    token: &CancellationToken,
    grace: Duration,
    work: F,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        output = work => Some(output),
        () = async {
            token.cancelled().await;
            tokio::time::sleep(grace).await;
        } => None,
    }
}

#[cfg(unix)]
struct Signals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
impl Signals {
    fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::error!(%error, "cannot listen for {name}");
                None
            }
        };
        Self {
            interrupt: listen(SignalKind::interrupt(), "SIGINT"),
            terminate: listen(SignalKind::terminate(), "SIGTERM"),
        }
    }

    async fn next(&mut self) {
        async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
            let received = match signal {
                Some(signal) => signal.recv().await.is_some(),
                None => false,
            };
            if !received {
                // Not listening, or the stream ended: this signal never comes.
                std::future::pending::<()>().await;
            }
        }
        let Self {
            interrupt,
            terminate,
        } = self;
        tokio::select! {
            () = recv(interrupt) => {}
            () = recv(terminate) => {}
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn listen() -> Self {
        Self
    }

    async fn next(&mut self) {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_to_its_end_without_shutdown() {
        let token = CancellationToken::new();
        let work = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            7
        };
        let done = finish_within(&token, Duration::ZERO, work).await;
        assert_eq!(done, Some(7));
    }

    #[tokio::test]
    async fn work_that_outlasts_the_grace_after_shutdown_is_given_up() {
        let token = CancellationToken::new();
        token.cancel();
        let slow = finish_within(
            &token,
            Duration::from_millis(50),
            std::future::pending::<()>(),
        );
        let done = tokio::time::timeout(Duration::from_secs(5), slow)
            .await
            .expect("given up after its grace");
        assert_eq!(done, None);
        let quick = finish_within(&token, Duration::from_secs(5), async { 1 });
        assert_eq!(
            quick.await,
            Some(1),
            "work that ends within its grace finishes"
        );
    }
}
