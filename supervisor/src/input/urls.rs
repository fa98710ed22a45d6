//! The `urls` input: a file of URLs, one per line; item `i` is the body of the `i`-th URL.
//!
//! The file is read and checked when the job is listed (blank lines and `#` comments skipped, every URL absolute
//! `http://` or `https://` with a host, the first bad one reported with its line number). Bodies are fetched by
//! the supervisor ([`crate::fetch`]) into an arena shared with the workers; a batch names each body's slot in it.
//! Today the dispatcher starts the fetch stage itself from [`Source::urls`]; once it pulls items, the fetch stage
//! can become the consumer of this listing and a source of fetched items in its own right.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use shared::item::{BatchItems, FetchedBody, InputPlan};

use super::{BodyOf, Source};
use crate::error::Error;
use crate::results::InputDesc;

#[derive(Debug)]
pub struct Urls {
    path: PathBuf,
    urls: Arc<Vec<String>>,
}

impl Urls {
    /// Reads and checks the urls file at `path`.
    pub fn read(path: &Path) -> Result<Urls, Error> {
        Ok(Urls {
            path: path.to_path_buf(),
            urls: Arc::new(read_urls(path)?),
        })
    }

    fn url(&self, index: u64) -> Option<&String> {
        self.urls.get(usize::try_from(index).ok()?)
    }
}

impl Source for Urls {
    fn key(&self) -> &'static str {
        "urls"
    }

    fn known_len(&self) -> Option<u64> {
        Some(self.urls.len() as u64)
    }

    /// An item without a slot (not fetched) gets an empty body.
    fn items(&self, first: u64, len: u64, body: BodyOf<'_>) -> BatchItems {
        BatchItems::Fetched(
            (first..first + len)
                .map(|item| {
                    let (offset, len) = body(item).unwrap_or((0, 0));
                    FetchedBody {
                        offset,
                        len,
                        url: self.url(item).cloned().unwrap_or_default(),
                    }
                })
                .collect(),
        )
    }

    fn describe(&self, index: u64) -> InputDesc {
        InputDesc::Url {
            url: self.url(index).cloned().unwrap_or_default(),
        }
    }

    fn plan(&self, arena: Option<&Path>) -> InputPlan {
        InputPlan::Arena {
            path: arena.map(Path::to_path_buf).unwrap_or_default(),
        }
    }

    fn batch_cap(&self) -> u64 {
        1024
    }

    /// The URLs themselves, in order: what the item numbers mean. What a server answers can change between runs;
    /// that is the nature of a URL, and is not checked.
    fn fingerprint(&self) -> Result<String, Error> {
        let mut listing = Sha256::new();
        for url in self.urls.iter() {
            listing.update(url.as_bytes());
            listing.update(b"\n");
        }
        Ok(format!(
            "urls {} listing {} URLs (digest {})",
            self.path.display(),
            self.urls.len(),
            super::short_hex(&listing.finalize())
        ))
    }

    fn urls(&self) -> Option<&Arc<Vec<String>>> {
        Some(&self.urls)
    }
}

/// Reads a urls file: one URL per line; blank lines and lines starting with `#` (after leading blanks) are
/// skipped. Every URL must be absolute `http://` or `https://` with a host; the first that is not is reported
/// with its line number.
pub fn read_urls(path: &Path) -> Result<Vec<String>, Error> {
    let text = std::fs::read(path).map_err(|source| Error::InputUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |line: usize, message: String| Error::UrlInvalid {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut urls = Vec::new();
    for (number, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = number + 1;
        let raw = std::str::from_utf8(raw).map_err(|_| invalid(line, "not UTF-8 text".into()))?;
        let entry = raw.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let url = reqwest::Url::parse(entry).map_err(|error| {
            invalid(
                line,
                format!("`{entry}` is not a URL ({error}): expected e.g. https://example.org/data.bin"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(invalid(
                line,
                format!("`{entry}`: expected an http:// or https:// URL with a host"),
            ));
        }
        urls.push(entry.to_string());
    }
    if urls.is_empty() {
        return Err(Error::UrlsEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::test_files::tempdir;

    #[test]
    fn urls_skip_comments_and_blank_lines_and_keep_their_order() {
        let dir = tempdir("urls");
        let path = dir.join("urls.txt");
        std::fs::write(
            &path,
            "# mirrors\n\nhttp://127.0.0.1:8/b\n   # indented comment\n  https://example.org/a?x=1  \r\n\t\nhttp://h/c",
        )
        .expect("write");
        let source = Urls::read(&path).expect("valid");
        assert_eq!(source.known_len(), Some(3));
        assert_eq!(
            source.urls().map(|u| u.as_slice().to_vec()),
            Some(vec![
                "http://127.0.0.1:8/b".to_string(),
                "https://example.org/a?x=1".to_string(),
                "http://h/c".to_string()
            ])
        );
        assert_eq!(
            source.describe(1),
            InputDesc::Url {
                url: "https://example.org/a?x=1".into()
            }
        );
        let batch = source.items(1, 2, &|item| (item == 2).then_some((4096, 7)));
        assert_eq!(
            batch,
            BatchItems::Fetched(vec![
                FetchedBody {
                    offset: 0,
                    len: 0,
                    url: "https://example.org/a?x=1".into()
                },
                FetchedBody {
                    offset: 4096,
                    len: 7,
                    url: "http://h/c".into()
                },
            ])
        );

        std::fs::write(&path, "http://ok/\n\nftp://host/x\n").expect("write");
        match Urls::read(&path) {
            Err(Error::UrlInvalid { line: 3, .. }) => {}
            other => panic!("expected line 3 refused, got {other:?}"),
        }
        std::fs::write(&path, "# only a comment\n\n").expect("write");
        assert!(matches!(Urls::read(&path), Err(Error::UrlsEmpty { .. })));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
