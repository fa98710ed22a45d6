//! The `glob` input: one item per matching regular file, in sorted path order.
//!
//! The pattern is expanded once, when the job is listed; matches that are not regular files (folders, devices)
//! are skipped and counted for the error when nothing is left. The listing is the job's item numbering, so it is
//! kept (one path per item). A batch carries the paths; each worker maps each file itself.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use shared::item::{BatchItems, InputPlan};
use shared::job::JobSpec;

use super::{BodyOf, Source};
use crate::error::Error;
use crate::results::InputDesc;

#[derive(Debug)]
pub struct Glob {
    pattern: String,
    files: Vec<PathBuf>,
}

impl Glob {
    /// Expands `pattern` (absolute) into its sorted regular files; no match is an error.
    pub fn list(pattern: &str) -> Result<Glob, Error> {
        let entries = glob::glob(pattern).map_err(|error| Error::GlobInvalid {
            pattern: pattern.to_string(),
            message: format!("{} at character {}", error.msg, error.pos),
        })?;
        let mut files = Vec::new();
        let mut skipped = 0;
        for entry in entries {
            let path = entry.map_err(|error| Error::InputUnreadable {
                path: error.path().to_path_buf(),
                source: std::io::Error::new(error.error().kind(), error.error().to_string()),
            })?;
            if path.is_file() {
                files.push(path);
            } else {
                skipped += 1;
            }
        }
        if files.is_empty() {
            return Err(Error::GlobNoMatch {
                pattern: pattern.to_string(),
                skipped,
            });
        }
        files.sort();
        Ok(Glob {
            pattern: pattern.to_string(),
            files,
        })
    }

    /// The matched files, in item order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn file(&self, index: u64) -> Option<&PathBuf> {
        self.files.get(usize::try_from(index).ok()?)
    }
}

impl Source for Glob {
    fn key(&self) -> &'static str {
        "glob"
    }

    fn known_len(&self) -> Option<u64> {
        Some(self.files.len() as u64)
    }

    fn items(&self, first: u64, len: u64, _body: BodyOf<'_>) -> BatchItems {
        BatchItems::Files(self.files[first as usize..(first + len) as usize].to_vec())
    }

    fn describe(&self, index: u64) -> InputDesc {
        InputDesc::File {
            path: self.file(index).cloned().unwrap_or_default(),
        }
    }

    fn plan(&self, _arena: Option<&Path>) -> InputPlan {
        InputPlan::Files
    }

    fn batch_cap(&self) -> u64 {
        1024
    }

    /// The pattern, the number of matches, and a digest of every match's path, size and time: a file added,
    /// removed, grown or touched since the journal was written changes it.
    fn fingerprint(&self) -> Result<String, Error> {
        let mut listing = Sha256::new();
        for path in &self.files {
            let (size, modified) = super::stat(path)?;
            listing.update(format!("{}\0{size}\0{modified}\n", path.display()).as_bytes());
        }
        Ok(format!(
            "glob {} matching {} files (sizes and times digest {})",
            self.pattern,
            self.files.len(),
            super::short_hex(&listing.finalize())
        ))
    }

    fn explain_sigbus(&self, index: u64) -> Option<String> {
        Some(crate::sigbus::explain_file(self.file(index)?, None, "it"))
    }
}

/// A glob syntax error in terms of the pattern as written in the job file: the pattern the supervisor expands is
/// absolute (the job's folder, escaped, then the pattern), so its byte positions mean nothing to the user.
pub fn syntax_message(spec: &JobSpec, pattern: &str, message: &str) -> String {
    let folder = spec
        .path
        .parent()
        .map(|dir| glob::Pattern::escape(&dir.to_string_lossy()));
    let prefix = folder.map(|folder| format!("{folder}/")).unwrap_or_default();
    // glob counts positions in characters from 0.
    let (written, offset) = match pattern.strip_prefix(&prefix) {
        Some(rest) if !prefix.is_empty() => (rest, prefix.chars().count()),
        _ => (pattern, 0),
    };
    let detail = match message
        .rsplit_once(" at character ")
        .map(|(what, at)| (what, at.parse::<usize>()))
    {
        Some((what, Ok(at))) => format!("{what} at character {}", at.saturating_sub(offset) + 1),
        _ => message.to_string(),
    };
    format!("`glob = \"{written}\"` is not a valid pattern: {detail}; expected a pattern such as `images/*.jpg`")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::test_files::tempdir;

    #[test]
    fn glob_items_are_regular_files_in_byte_order_of_their_paths() {
        let dir = tempdir("glob");
        // Created out of order, with upper case, digits and a nested folder that matches but is not a file.
        for name in ["b.txt", "a10.txt", "a9.txt", "B.txt", "_.txt"] {
            std::fs::write(dir.join(name), name).expect("write");
        }
        std::fs::create_dir_all(dir.join("dir.txt")).expect("mkdir");
        let pattern = format!("{}/*.txt", dir.display());
        let source = Glob::list(&pattern).expect("matches");
        let names: Vec<String> = source
            .files()
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        // Byte order (as `LC_ALL=C ls`): upper case before `_` before lower case, `a10` before `a9`.
        assert_eq!(names, ["B.txt", "_.txt", "a10.txt", "a9.txt", "b.txt"]);
        assert_eq!(source.known_len(), Some(5));
        assert_eq!(
            source.describe(2),
            InputDesc::File {
                path: dir.join("a10.txt")
            }
        );
        assert_eq!(
            source.items(3, 2, &|_| None),
            BatchItems::Files(vec![dir.join("a9.txt"), dir.join("b.txt")])
        );

        let before = source.fingerprint().expect("fingerprint");
        std::fs::write(dir.join("a9.txt"), "grown").expect("write");
        assert_ne!(
            Glob::list(&pattern)
                .expect("matches")
                .fingerprint()
                .expect("fingerprint"),
            before
        );

        match Glob::list(&format!("{}/*.none", dir.display())) {
            Err(Error::GlobNoMatch { skipped: 0, .. }) => {}
            other => panic!("expected no match, got {other:?}"),
        }
        match Glob::list(&format!("{}/dir.*", dir.display())) {
            Err(Error::GlobNoMatch { skipped: 1, .. }) => {}
            other => panic!("expected a skipped folder, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
