//! The real tools the tests compare with (`wc`, `grep`, `sha256sum`, …), run in the C locale; a failing tool fails
//! the test with its command line and output.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::job::write_file;
use crate::common::run::{command_line, describe_output};

/// Runs a reference tool with `LC_ALL=C`, its stdin from `stdin` if given; returns its stdout. Exit codes other
/// than those in `ok_codes` fail the test.
pub fn tool(program: &str, args: &[&OsStr], stdin: Option<&Path>, ok_codes: &[i32]) -> String {
    let os_args: Vec<_> = args.iter().map(|a| a.to_os_string()).collect();
    let mut command_text = command_line(program, &os_args, Path::new("."));
    let mut command = Command::new(program);
    command.args(args).env("LC_ALL", "C");
    match stdin {
        Some(path) => {
            command.stdin(File::open(path).expect("open stdin file"));
            let _ = write!(command_text, " < {}", path.display());
        }
        None => {
            command.stdin(Stdio::null());
        }
    }
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command_text}: {error}"));
    let code = output.status.code().unwrap_or(-1);
    assert!(
        ok_codes.contains(&code),
        "reference tool failed\n{}",
        describe_output(&command_text, &output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The single number printed by `wc FLAG < path` (in the C locale).
pub fn wc(flag: &str, path: &Path) -> u128 {
    let out = tool("wc", &[OsStr::new(flag)], Some(path), &[0]);
    out.trim()
        .parse()
        .unwrap_or_else(|error| panic!("wc {flag} printed {out:?}: {error}"))
}

/// `wc FLAG` of some bytes (written to a scratch file in `dir`).
pub fn wc_of_bytes(flag: &str, dir: &Path, bytes: &[u8]) -> u128 {
    let scratch = write_file(dir, "wc-scratch.bin", bytes);
    let count = wc(flag, &scratch);
    std::fs::remove_file(&scratch).expect("remove scratch file");
    count
}

/// The digest `sha256sum` prints for the file at `path`.
pub fn sha256sum(path: &Path) -> String {
    let out = tool("sha256sum", &[path.as_os_str()], None, &[0]);
    out.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("sha256sum {} printed nothing", path.display()))
        .to_string()
}
