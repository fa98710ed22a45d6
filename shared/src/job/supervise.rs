//! `[supervise]`: when worker deaths and failures stop the job (restart intensity, `halt`), and how long a stop
//! and a start may take (`grace`, `start_timeout`).
//!
//! Checked here: every value's type and range, and the `halt` policy's syntax. Applying them is the
//! dispatcher's job.

use std::time::Duration;

use super::raw::RawSupervise;
use super::value::{self, Checked, Problem, Zero};

/// Default `[supervise] max_restarts`.
pub const DEFAULT_MAX_RESTARTS: u32 = 20;
/// Largest `[supervise] max_restarts`.
pub const MAX_RESTARTS: u32 = 1_000_000;
/// Default `[supervise] within`.
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(10);
/// Default `[supervise] start_timeout`.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `[supervise] grace`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// `[supervise]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SuperviseSpec {
    /// `max_restarts` within `within`: more worker deaths than this in the window stop the job.
    pub max_restarts: u32,
    pub within: Duration,
    pub halt: Halt,
    /// `grace`: time workers get to finish after a stop request, before SIGKILL.
    pub grace: Duration,
    /// `start_timeout`: the longest a worker may take from its launch to `Ready`; one that takes longer is killed
    /// and counts as a start failure.
    pub start_timeout: Duration,
}

/// `[supervise] halt`: when failures stop the job (GNU parallel's `--halt`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Halt {
    pub threshold: HaltThreshold,
    /// `now,` prefix: kill work in progress instead of letting it finish.
    pub now: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HaltThreshold {
    Never,
    /// Stop once this many items failed (`first-failure` is 1).
    Count(u64),
    /// Stop once this percentage of all items failed.
    Percent(f64),
}

impl Halt {
    pub const NEVER: Halt = Halt {
        threshold: HaltThreshold::Never,
        now: false,
    };

    /// Parses `never`, `first-failure`, `fail=N`, `fail=P%`, each optionally prefixed by `now,` or `soon,`.
    pub fn parse(text: &str) -> Result<Halt, String> {
        let expected =
            "expected \"never\", \"first-failure\", \"fail=N\" or \"fail=P%\" (optionally prefixed by \"now,\")";
        let (now, rest) = match text.split_once(',') {
            Some(("now", rest)) => (true, rest),
            Some(("soon", rest)) => (false, rest),
            Some(_) => return Err(format!("`halt` is \"{text}\": {expected}")),
            None => (false, text),
        };
        let threshold = match rest {
            "never" => HaltThreshold::Never,
            "first-failure" => HaltThreshold::Count(1),
            _ => match rest.strip_prefix("fail=") {
                Some(percent) if percent.ends_with('%') => match percent[..percent.len() - 1].parse::<f64>() {
                    Ok(p) if p > 0.0 && p <= 100.0 => HaltThreshold::Percent(p),
                    _ => {
                        return Err(format!(
                            "`halt` is \"{text}\": expected a percentage above 0 and at most 100"
                        ));
                    }
                },
                Some(count) => match count.parse::<u64>() {
                    Ok(n) if n >= 1 => HaltThreshold::Count(n),
                    _ => return Err(format!("`halt` is \"{text}\": {expected}")),
                },
                None => return Err(format!("`halt` is \"{text}\": {expected}")),
            },
        };
        Ok(Halt { threshold, now })
    }

    /// Whether `failed` failures out of `total` items reach the threshold.
    pub fn reached(&self, failed: u64, total: u64) -> bool {
        match self.threshold {
            HaltThreshold::Never => false,
            HaltThreshold::Count(n) => failed >= n,
            HaltThreshold::Percent(p) => failed > 0 && failed as f64 * 100.0 >= p * total as f64,
        }
    }
}

/// `[supervise]` resolved, defaults applied.
pub(crate) fn supervise(raw: &RawSupervise) -> Checked<SuperviseSpec> {
    let duration = |value: &Option<toml::Spanned<super::raw::Scalar>>, key: &str, default: Duration, zero: Zero| {
        value
            .as_ref()
            .map_or(Ok(default), |value| value::duration(key, value, zero))
    };
    Ok(SuperviseSpec {
        max_restarts: match &raw.max_restarts {
            None => DEFAULT_MAX_RESTARTS,
            Some(n) => value::whole_u32("max_restarts", n, 0, MAX_RESTARTS)?,
        },
        within: duration(&raw.within, "within", DEFAULT_RESTART_WINDOW, Zero::Refused)?,
        halt: match &raw.halt {
            None => Halt::NEVER,
            Some(halt) => {
                let text = match halt.get_ref() {
                    super::raw::Scalar::String(text) => text.clone(),
                    _ => {
                        return Err(value::expected(
                            "halt",
                            halt,
                            "a policy: \"never\", \"first-failure\", \"fail=N\" or \"fail=P%\"",
                        ));
                    }
                };
                Halt::parse(&text).map_err(|message| Problem::at(halt.span(), message))?
            }
        },
        grace: duration(&raw.grace, "grace", DEFAULT_GRACE, Zero::Allowed)?,
        start_timeout: duration(
            &raw.start_timeout,
            "start_timeout",
            DEFAULT_START_TIMEOUT,
            Zero::Refused,
        )?,
    })
}
