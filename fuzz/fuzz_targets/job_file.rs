//! The job-file parser on arbitrary input: `JobSpec::parse` must return a job or a located error, never panic.
//! Inputs that are not UTF-8 are read lossily, as a job file's bytes would never reach the parser otherwise
//! (`JobSpec::load` refuses them first).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use shared::job::{JobError, JobSpec};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let lines = text.split('\n').count();
    match JobSpec::parse(Path::new("/nonexistent-fuzz/job.toml"), text) {
        Ok(_) => {}
        Err(error @ JobError::Invalid { .. }) => {
            let JobError::Invalid { line, column, .. } = &error else { unreachable!() };
            assert!(*line >= 1 && *line <= lines && *column >= 1, "bad location: {error}");
            let _ = error.to_string();
        }
        Err(error) => panic!("parse returned a read error: {error}"),
    }
});
