//! The baselines at the edge of the tool: `supervisor bench` (what the pool costs on this machine) and
//! `supervisor compare` (one job under every executor, with its chart and its verdict).
//!
//! They measure the core from outside and the core never calls them: only the command line (`main` in the crate
//! root, which also dispatches the hidden `__bench-echo` mode before parsing arguments) reaches this module, and
//! no module of the run path (`dispatch`, `pool`, `plan`, `journal`, `results`, `run`…) imports it. `compare`
//! runs the real binary as `supervisor run` subprocesses, so it sees exactly what a user's run pays; `bench`
//! drives the real pool's launchers (`ProcessLauncher`, `ThreadLauncher`) and the transports directly. The
//! `thread` and `serial` executors they compare against belong to the core, in a launcher of their own
//! (`pool::threads`): users pick them with `--executor` too.
//!
//! A module, not a crate: `bench` drives the pool's launchers and events, which are the supervisor library's own
//! types, and `main` (in that library) dispatches to `bench` and `compare`; a crate would need the library to
//! depend on it and it on the library.

pub mod bench;
pub mod compare;
pub mod error;
pub mod scratch;
pub mod stats;

pub use self::error::Error;

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn rust_files(folder: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(folder).expect("read src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }

    /// The baselines stay at the edge: outside `baseline/`, only the command line (`lib.rs`, `cli.rs`) names them.
    #[test]
    fn no_core_module_imports_the_baselines() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        assert!(files.len() > 10, "found only {files:?}");
        let entry = [src.join("lib.rs"), src.join("cli.rs")];
        let offenders: Vec<_> = files
            .iter()
            .filter(|path| !path.starts_with(src.join("baseline")) && !entry.contains(path))
            .filter(|path| std::fs::read_to_string(path).expect("read").contains("baseline::"))
            .collect();
        assert!(
            offenders.is_empty(),
            "core modules that import the baselines: {offenders:?}"
        );
    }
}
