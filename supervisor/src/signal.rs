//! OS signals as a small domain enum, and the stop escalation: the first SIGINT/SIGTERM stops gracefully, the
//! second kills at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// A request to stop, from the OS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl StopSignal {
    /// Exit code of a run stopped by this signal (128 + signal number, as shells report it).
    pub fn exit_code(self) -> i32 {
        match self {
            StopSignal::Interrupt => 130,
            StopSignal::Terminate => 143,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }
}

/// What the dispatcher should do about a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAction {
    /// Stop dispatching; let workers finish what they hold within the grace period.
    Graceful(StopSignal),
    /// Kill every worker now.
    Kill,
}

/// Counts stop signals and turns them into actions.
#[derive(Debug, Default)]
pub struct Escalation {
    received: u32,
}

impl Escalation {
    pub fn on_signal(&mut self, signal: StopSignal) -> StopAction {
        self.received += 1;
        if self.received == 1 {
            StopAction::Graceful(signal)
        } else {
            StopAction::Kill
        }
    }
}

/// Starts listening for SIGINT and SIGTERM (replacing their default action, which would kill the supervisor
/// before it can stop its workers and write its results).
pub fn listen() -> std::io::Result<mpsc::UnboundedReceiver<StopSignal>> {
    let (sender, receiver) = mpsc::unbounded_channel();
    for (kind, stop) in [
        (SignalKind::interrupt(), StopSignal::Interrupt),
        (SignalKind::terminate(), StopSignal::Terminate),
    ] {
        let mut stream = signal(kind)?;
        let sender = sender.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if sender.send(stop).is_err() {
                    return;
                }
            }
        });
    }
    Ok(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_signal_is_graceful_second_kills() {
        let mut escalation = Escalation::default();
        assert_eq!(
            escalation.on_signal(StopSignal::Terminate),
            StopAction::Graceful(StopSignal::Terminate)
        );
        assert_eq!(escalation.on_signal(StopSignal::Interrupt), StopAction::Kill);
        assert_eq!(escalation.on_signal(StopSignal::Interrupt), StopAction::Kill);
        assert_eq!(StopSignal::Interrupt.exit_code(), 130);
        assert_eq!(StopSignal::Terminate.exit_code(), 143);
    }
}
