//! `[output]`: where the results go (`results`), in what order, the reduction shown in the summary, and whether
//! a journal is kept.
//!
//! Checked here: every value's type, and that `results` names a file (not empty, not ending in `/`). Left to the
//! supervisor: what is at that path now (a folder, a device, a pipe: `supervisor::spec_fs`), and writing it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::raw::RawOutput;
use super::value::{self, Checked, Problem};

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// Absolute path of the JSON-lines results file, or `None` for no file.
    pub results: Option<PathBuf>,
    /// Where `results` is written in the job file (`None` when it is not, or when `--results` replaced it).
    pub results_span: Option<Range<usize>>,
    pub order: Order,
    pub reduce: Reduce,
    /// `journal`: record results durably as they finish (see `--resume`); default true.
    pub journal: bool,
}

/// `[output] order`: the order of records in the results file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// By item index (records are held back until all earlier items are done).
    Input,
    /// As items finish.
    Completion,
}

/// `[output] reduce`: how the values of ok items are combined for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reduce {
    Sum,
    Min,
    Max,
    /// Number of ok items.
    Count,
    None,
}

impl fmt::Display for Reduce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Reduce::Sum => "sum",
            Reduce::Min => "min",
            Reduce::Max => "max",
            Reduce::Count => "count",
            Reduce::None => "none",
        };
        f.write_str(name)
    }
}

/// `[output]` resolved against the job's folder, defaults applied.
pub(crate) fn output(raw: &RawOutput, dir: &Path) -> Checked<OutputSpec> {
    let results = match &raw.results {
        None => None,
        Some(results) => {
            let text = value::text("results", results)?;
            if text.is_empty() || text.ends_with('/') {
                return Err(Problem::at(
                    results.span(),
                    format!("`results = \"{text}\"` is not a file name: expected a path such as `results/out.jsonl`"),
                ));
            }
            Some(dir.join(text))
        }
    };
    Ok(OutputSpec {
        results,
        results_span: raw.results.as_ref().map(Spanned::span),
        order: match &raw.order {
            None => Order::Input,
            Some(order) => value::choice(
                "order",
                order,
                &[("input", Order::Input), ("completion", Order::Completion)],
            )?,
        },
        reduce: match &raw.reduce {
            None => Reduce::None,
            Some(reduce) => value::choice(
                "reduce",
                reduce,
                &[
                    ("sum", Reduce::Sum),
                    ("min", Reduce::Min),
                    ("max", Reduce::Max),
                    ("count", Reduce::Count),
                    ("none", Reduce::None),
                ],
            )?,
        },
        journal: raw
            .journal
            .as_ref()
            .map_or(Ok(true), |journal| value::boolean("journal", journal))?,
    })
}
