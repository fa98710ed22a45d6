//! The checks of a job against the filesystem, made when it is loaded: the job file's rules are `shared::job`'s
//! (which touches no file), what is on disk now is this module's.
//!
//! - What is read must be there and be what it should: the `file`, `lines` and `urls` inputs are regular files, a
//!   `command`'s or `worker`'s program can be executed, a `worker_bin` is an executable regular file, `cwd` is a
//!   folder.
//! - What is written must not replace something else. The results file is written beside its final name and
//!   renamed over it at the end; as root, that rename would turn a device node, a named pipe or a socket (or the
//!   target of a symlink to one) into a regular file. So every path the run writes — the results file (from
//!   `[output] results`, `--results` or a shard's name), its journal and staging file, a builtin's `path`
//!   arguments such as thumbnail's `out_dir` — must be absent, or be of the kind the run writes there (a regular
//!   file, or a folder for a folder argument). A symlink to a regular file is fine.
//!
//! Errors are located at the key in the job file when the path comes from it, and name the flag otherwise; all
//! exit with code 2 before anything runs. Whether a glob matches anything is left to the input listing
//! (`plan`), and whether users and groups exist to `isolation`.

use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use shared::job::{InputSpec, JobSpec, file_type_name};
use shared::usertask::UserTask;

use crate::error::Error;
use crate::journal::{journal_path, staging_path};

/// Checks the inputs, programs and output paths of a freshly loaded `spec`.
pub fn check(spec: &JobSpec) -> Result<(), Error> {
    check_inputs(spec)?;
    check_programs(spec)?;
    if let Some(results) = &spec.output.results {
        check_results(spec, results, spec.output.results_span.as_ref())?;
    }
    Ok(())
}

/// The `file`, `lines` or `urls` input is a regular file.
fn check_inputs(spec: &JobSpec) -> Result<(), Error> {
    let (what, path) = match &spec.input {
        InputSpec::File { path, .. } | InputSpec::Lines { path } => ("input file", path),
        InputSpec::Urls { path, .. } => ("urls file", path),
        InputSpec::Range { .. } | InputSpec::Glob { .. } => return Ok(()),
    };
    let message = match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => return Ok(()),
        Ok(meta) => format!(
            "{what} {} is {}: expected a regular file",
            path.display(),
            file_type_name(&meta.file_type())
        ),
        Err(error) => format!("cannot read {what} {}: {error}", path.display()),
    };
    Err(spec.error_at(spec.input_span.clone(), &message).into())
}

/// A user task's program and folder exist, so that a typo fails now, at its place, not on every item.
fn check_programs(spec: &JobSpec) -> Result<(), Error> {
    let at = |span: Range<usize>, message: String| -> Error { spec.error_at(span, &message).into() };
    let (kind, process) = match &spec.task.user {
        None => return Ok(()),
        Some(UserTask::WorkerBin { path }) => {
            return check_executable(path).map_err(|why| {
                at(
                    spec.task.builtin_span.clone(),
                    format!("`worker_bin` {}: {why}", path.display()),
                )
            });
        }
        Some(UserTask::Command(command)) => ("command", &command.process),
        Some(UserTask::Worker(process)) => ("worker", process),
    };
    if let Some(program) = process.argv.first() {
        find_program(program).map_err(|why| {
            at(
                spec.task.builtin_span.clone(),
                format!("`{kind}`: program `{program}` {why}"),
            )
        })?;
    }
    if let Some(span) = &spec.task.cwd_span
        && !process.cwd.is_dir()
    {
        return Err(at(
            span.clone(),
            format!("`cwd` {} is not a folder", process.cwd.display()),
        ));
    }
    Ok(())
}

/// Checks that `program` can be executed: a path as given, a bare name through `PATH`.
fn find_program(program: &str) -> Result<(), String> {
    if program.contains('/') {
        return check_executable(Path::new(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| check_executable(&dir.join(program)).is_ok()) {
        Ok(())
    } else {
        Err("is not found in PATH".into())
    }
}

/// Whether `path` is a regular file someone may execute.
fn check_executable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err("is not a regular file".into()),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => Err("is not executable (chmod +x?)".into()),
        Ok(_) => Ok(()),
        Err(error) => Err(format!(
            "cannot be read: {error} (build it first, e.g. `cargo build --release`)"
        )),
    }
}

/// What a path the run writes is now, when that is something the run must not replace.
fn unwritable(path: &Path, folder: bool) -> Option<String> {
    // `metadata` follows symlinks: a link to a regular file is judged by that file. A path that does not exist,
    // or cannot be looked at (the run reports that when it writes), is not refused here.
    let meta = std::fs::metadata(path).ok()?;
    let fits = if folder { meta.is_dir() } else { meta.is_file() };
    if fits {
        return None;
    }
    let what = file_type_name(&meta.file_type());
    let link = std::fs::symlink_metadata(path).is_ok_and(|link| link.file_type().is_symlink());
    Some(if link {
        format!("a symlink to {what}")
    } else {
        what.to_string()
    })
}

/// The results file and the files written beside it (journal, staging) are absent or regular files. `span` is
/// where the job file names `results`, when the path is the job file's; the error names the path alone
/// otherwise (`--results`, a shard's file).
pub fn check_results(spec: &JobSpec, results: &Path, span: Option<&Range<usize>>) -> Result<(), Error> {
    for path in [results.to_path_buf(), journal_path(results), staging_path(results)] {
        let Some(what) = unwritable(&path, false) else { continue };
        return Err(match span {
            Some(span) if path == results && what == "a folder" => {
                let dir = spec.path.parent().unwrap_or(Path::new("/"));
                let written = results.strip_prefix(dir).unwrap_or(results);
                let message = format!(
                    "`results` {} is a folder: expected a file path such as `{}/out.jsonl`",
                    results.display(),
                    written.display()
                );
                spec.error_at(span.clone(), &message).into()
            }
            None if path == results && what == "a folder" => Error::ResultsIsFolder { path },
            Some(span) => {
                let message = format!(
                    "`results`: {} is {what}: expected a regular file or a path that does not exist yet (the run \
                     would replace it with its results)",
                    path.display()
                );
                spec.error_at(span.clone(), &message).into()
            }
            None => Error::OutputNotWritable { path, what },
        });
    }
    Ok(())
}

/// `--results PATH` of `run` or `merge`, made absolute, after [`check_results`].
pub fn results_flag(spec: &JobSpec, flag: &Path) -> Result<PathBuf, Error> {
    let results = std::path::absolute(flag).map_err(|source| Error::Results {
        path: flag.to_path_buf(),
        source,
    })?;
    check_results(spec, &results, None)?;
    Ok(results)
}

/// A builtin's `path` arguments (`names`, already absolute): one that exists must be a folder or a regular file,
/// never a device, a named pipe or a socket, which the task would write into or replace.
pub fn check_path_args(spec: &JobSpec, names: &[&str]) -> Result<(), Error> {
    let serde_json::Value::Object(args) = &spec.task.args else {
        return Ok(());
    };
    for name in names {
        let Some(serde_json::Value::String(value)) = args.get(*name) else {
            continue;
        };
        let path = PathBuf::from(value);
        if let Ok(meta) = std::fs::metadata(&path)
            && !meta.is_dir()
            && !meta.is_file()
        {
            let message = format!(
                "`{name}` {} is {}: expected a folder, a regular file or a path that does not exist yet",
                path.display(),
                file_type_name(&meta.file_type())
            );
            return Err(spec.error_at(spec.task.args_span.clone(), &message).into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(dir: &Path, text: &str) -> JobSpec {
        let path = dir.join("job.toml");
        std::fs::write(&path, text).expect("write the job");
        JobSpec::load(&path).expect("a valid job file")
    }

    fn message(error: Error) -> String {
        error.to_string()
    }

    #[test]
    fn missing_input_files_are_named_at_their_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = job(
            dir.path(),
            "[input]\nfile = \"no-such.log\"\n[task]\nbuiltin = \"line-count\"\n",
        );
        let text = message(check(&spec).expect_err("refused"));
        assert!(text.contains("job.toml:2:8: cannot read input file"), "{text}");
        assert!(text.contains("no-such.log"), "{text}");
        let spec = job(
            dir.path(),
            "[input]\nurls = \"no-such-urls.txt\"\n[task]\nbuiltin = \"sha256\"\n",
        );
        let text = message(check(&spec).expect_err("refused"));
        assert!(text.contains(":2:8: cannot read urls file"), "{text}");
    }

    #[test]
    fn programs_and_folders_of_user_tasks_are_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = job(
            dir.path(),
            "[input]\nrange = { start = 0, end = 1 }\n[task]\nworker_bin = \"/\"\n",
        );
        let text = message(check(&spec).expect_err("refused"));
        assert!(text.contains(":4:14: `worker_bin` /: is not a regular file"), "{text}");
        let spec = job(
            dir.path(),
            "[input]\nrange = { start = 0, end = 1 }\n[task]\ncommand = [\"no-such-program-here\"]\n",
        );
        let text = message(check(&spec).expect_err("refused"));
        assert!(text.contains("is not found in PATH"), "{text}");
        let spec = job(
            dir.path(),
            "[input]\nrange = { start = 0, end = 1 }\n[task]\ncommand = [\"true\"]\ncwd = \"nowhere\"\n",
        );
        let text = message(check(&spec).expect_err("refused"));
        assert!(
            text.contains(":5:7: `cwd`") && text.contains("is not a folder"),
            "{text}"
        );
        let spec = job(
            dir.path(),
            "[input]\nrange = { start = 0, end = 1 }\n[task]\ncommand = [\"true\"]\ncwd = \".\"\n",
        );
        assert!(check(&spec).is_ok());
    }
}
