//! `thumbnail`: decodes a JPEG, PNG, GIF or WebP image and writes a PNG thumbnail that fits in `size`×`size`.
//!
//! Every decode runs under [`image::Limits`] (a maximum side and a maximum decoder allocation), so a hostile
//! image — a decompression bomb that declares 100 000 × 100 000 pixels in a few bytes — fails its own item with
//! an error instead of taking the worker down with it. Corrupt and truncated images fail their item the same way.
//!
//! Thumbnails are written atomically: encoded into a temporary file in `out_dir`, then renamed over the final
//! name, so a worker killed mid-write never leaves a half thumbnail under a real name.
//!
//! What it leaves to others: `out_dir` arrives absolute (the supervisor resolves `path` arguments against the
//! job file's folder); the item's bytes are already mapped.

use std::io::{BufWriter, Cursor, Write};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use shared::item::Value;
use shared::units::parse_size;

use child::task::{Item, ItemInput, Task};

use crate::registry::{ArgInfo, parse_args};

const TASK: &str = "thumbnail";
/// Default `size`: the longest side of a thumbnail, in pixels.
const DEFAULT_SIZE: u32 = 128;
/// Default `max_side`: the largest width or height accepted for decoding.
const DEFAULT_MAX_SIDE: u32 = 16_384;
/// Default `max_alloc`: what the decoder may allocate (the decoded pixels count). 256 MiB holds an 8192×8192
/// RGBA image.
const DEFAULT_MAX_ALLOC: &str = "256MiB";
/// The longest file stem kept in an output name, in bytes, so that the whole name stays far below the usual
/// 255-byte limit of a file name.
const MAX_STEM_BYTES: usize = 100;
/// Hex digits of the source's SHA-256 in an output name: 64 bits, so a million sources collide with a
/// probability of about 3·10⁻⁸.
const NAME_HASH_DIGITS: usize = 16;

pub(super) const ARGS: &[ArgInfo] = &[
    ArgInfo {
        name: "out_dir",
        kind: "path",
        default: "(required)",
        help: "folder for the thumbnails (created if missing); relative to the job file's folder",
    },
    ArgInfo {
        name: "size",
        kind: "int",
        default: "128",
        help: "the thumbnail fits in size×size, aspect ratio kept; smaller images are not enlarged",
    },
    ArgInfo {
        name: "max_side",
        kind: "int",
        default: "16384",
        help: "images wider or taller than this fail their item instead of being decoded",
    },
    ArgInfo {
        name: "max_alloc",
        kind: "size",
        default: "\"256MiB\"",
        help: "the most memory the decoder may allocate for one image; a bigger image fails its item",
    },
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThumbnailArgs {
    out_dir: PathBuf,
    #[serde(default = "default_size")]
    size: u32,
    #[serde(default = "default_max_side")]
    max_side: u32,
    #[serde(default = "default_max_alloc")]
    max_alloc: String,
}

fn default_size() -> u32 {
    DEFAULT_SIZE
}

fn default_max_side() -> u32 {
    DEFAULT_MAX_SIDE
}

fn default_max_alloc() -> String {
    DEFAULT_MAX_ALLOC.to_string()
}

struct Thumbnail {
    out_dir: PathBuf,
    size: u32,
    limits: Limits,
    /// Whether `out_dir` has been created by this worker (once, on the first item, not when the job is checked).
    dir_ready: bool,
}

pub(super) fn build(args: &serde_json::Value) -> Result<Box<dyn Task>, String> {
    let args: ThumbnailArgs = parse_args(TASK, args)?;
    if args.size == 0 {
        return Err(format!("bad args for task `{TASK}`: `size` must be at least 1"));
    }
    if args.max_side == 0 {
        return Err(format!("bad args for task `{TASK}`: `max_side` must be at least 1"));
    }
    if args.out_dir.as_os_str().is_empty() {
        return Err(format!("bad args for task `{TASK}`: `out_dir` must not be empty"));
    }
    let max_alloc =
        parse_size(&args.max_alloc).map_err(|error| format!("bad args for task `{TASK}`: `max_alloc`: {error}"))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(args.max_side);
    limits.max_image_height = Some(args.max_side);
    limits.max_alloc = Some(max_alloc);
    Ok(Box::new(Thumbnail {
        out_dir: args.out_dir,
        size: args.size,
        limits,
        dir_ready: false,
    }))
}

impl Task for Thumbnail {
    fn run(&mut self, item: Item<'_>) -> Result<Value, String> {
        let (data, source) = match item.input {
            ItemInput::Bytes { data, path, .. } => (data, path.display().to_string()),
            ItemInput::Fetched { data, url } => (data, url.to_string()),
            ItemInput::Range { .. } => {
                return Err(format!("task `{TASK}` needs whole-file input, got a range item"));
            }
        };
        let image = decode(data, self.limits.clone()).map_err(|error| format!("cannot decode {source}: {error}"))?;
        let (width, height) = fit(image.width(), image.height(), self.size);
        let thumb = if (width, height) == (image.width(), image.height()) {
            image
        } else {
            image.thumbnail_exact(width, height)
        };
        if !self.dir_ready {
            std::fs::create_dir_all(&self.out_dir)
                .map_err(|error| format!("cannot create out_dir {}: {error}", self.out_dir.display()))?;
            self.dir_ready = true;
        }
        let out = self.out_dir.join(format!("{}.png", output_name(&item)));
        write_png(&thumb, &self.out_dir, &out)?;
        Ok(Value::Map(vec![
            ("width".to_string(), Value::UInt(u128::from(width))),
            ("height".to_string(), Value::UInt(u128::from(height))),
            ("path".to_string(), Value::Text(out.display().to_string())),
        ]))
    }
}

/// Decodes an image whose format is recognised from its first bytes, under `limits`, and turns it upright as its
/// EXIF orientation says (so a portrait photo gives a portrait thumbnail).
fn decode(data: &[u8], limits: Limits) -> Result<DynamicImage, String> {
    let reader = ImageReader::new(Cursor::new(data))
        .with_guessed_format()
        .map_err(|error| error.to_string())?;
    if reader.format() == Some(ImageFormat::Jpeg) {
        check_jpeg_complete(data)?;
    }
    decode_with(reader, limits).map_err(|error| error.to_string())
}

fn decode_with(mut reader: ImageReader<Cursor<&[u8]>>, limits: Limits) -> image::ImageResult<DynamicImage> {
    reader.limits(limits.clone());
    // `into_decoder` checks the dimensions; the allocation of the decoded pixels is checked here, as
    // `ImageReader::decode` does, before anything is allocated.
    let mut decoder = reader.into_decoder()?;
    let mut budget = limits;
    budget.reserve(decoder.total_bytes())?;
    let orientation = decoder.orientation()?;
    let mut image = DynamicImage::from_decoder(decoder)?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// Fails a JPEG that ends before its end-of-image marker: a truncated file.
///
/// The JPEG decoder is lenient and paints the missing part grey, which would make a thumbnail of half a photo; a
/// thumbnail job should say the file is broken instead. The check walks the marker segments (skipping each by its
/// length, so an EXIF thumbnail's own markers inside APP1 are not mistaken for the image's) and, after each
/// start-of-scan, the entropy-coded data, where a 0xFF byte is always followed by 0x00 (stuffing) or a restart
/// marker, so the next other marker is found exactly.
fn check_jpeg_complete(data: &[u8]) -> Result<(), String> {
    let truncated = |at: usize| {
        Err(format!(
            "truncated JPEG: no end-of-image marker ({} bytes, cut at byte {at})",
            data.len()
        ))
    };
    let mut at = 2; // after SOI
    loop {
        // A marker: 0xFF (fill bytes may repeat it), then its code.
        while data.get(at) == Some(&0xFF) && data.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let (Some(&0xFF), Some(&code)) = (data.get(at), data.get(at + 1)) else {
            return truncated(at);
        };
        at += 2;
        match code {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let (Some(&high), Some(&low)) = (data.get(at), data.get(at + 1)) else {
            return truncated(at);
        };
        at += usize::from(u16::from_be_bytes([high, low]));
        if code == 0xDA {
            // Entropy-coded data up to the next marker that is neither stuffing nor a restart.
            loop {
                let Some(found) = data.get(at..).and_then(|rest| memchr::memchr(0xFF, rest)) else {
                    return truncated(data.len());
                };
                at += found;
                match data.get(at + 1) {
                    None => return truncated(data.len()),
                    Some(0x00 | 0xD0..=0xD7 | 0xFF) => at += 1,
                    Some(_) => break,
                }
            }
        }
    }
}

/// The thumbnail's size: the image scaled so that its longer side is `size`, the shorter side rounded to the
/// nearest pixel (halves up) and at least 1. An image that already fits in `size`×`size` keeps its size.
pub(crate) fn fit(width: u32, height: u32, size: u32) -> (u32, u32) {
    if width <= size && height <= size {
        return (width, height);
    }
    let scale = |short: u32, long: u32| -> u32 {
        let scaled = (u64::from(short) * u64::from(size) * 2 + u64::from(long)) / (2 * u64::from(long));
        // `scaled` ≤ size because short ≤ long.
        u32::try_from(scaled).unwrap_or(size).max(1)
    };
    if width >= height {
        (size, scale(height, width))
    } else {
        (scale(width, height), size)
    }
}

/// The output file's name without its `.png` extension: `<stem>-<hash>`.
///
/// `stem` is the source file's stem (characters other than letters, digits, `-`, `_` and `.` replaced by `_`, cut
/// to 100 bytes, `image` when nothing is left), so that a person recognises the thumbnail. `hash` is the first 16
/// hex digits of the SHA-256 of the source's absolute path, so that `a/cat.jpg`, `b/cat.jpg` and `a/cat.png` get
/// different names, and the same source gets the same name on every run whatever else the job lists (the
/// freedesktop thumbnail spec names thumbnails by a hash of the source URI for the same reasons). A body fetched
/// from a URL (a `urls` input) takes the stem of the URL's last path segment and hashes the URL as written.
pub(crate) fn output_name(item: &Item<'_>) -> String {
    let (stem, source) = match item.input {
        ItemInput::Bytes { path, .. } => (path_stem(path), path.as_os_str().as_encoded_bytes().to_vec()),
        ItemInput::Fetched { url, .. } => {
            let path = url.split(['?', '#']).next().unwrap_or_default();
            let last = path.rsplit('/').next().unwrap_or_default();
            (path_stem(Path::new(last)), url.as_bytes().to_vec())
        }
        ItemInput::Range { lo, hi } => (String::new(), format!("range:{lo}-{hi}").into_bytes()),
    };
    let digest = Sha256::digest(&source);
    let mut hash = String::with_capacity(NAME_HASH_DIGITS);
    for byte in digest.iter().take(NAME_HASH_DIGITS / 2) {
        hash.push_str(&format!("{byte:02x}"));
    }
    let stem = if stem.is_empty() { "image".to_string() } else { stem };
    format!("{stem}-{hash}")
}

/// A file stem made safe for a file name (see [`output_name`]).
fn path_stem(path: &Path) -> String {
    let raw = path.file_stem().map(|stem| stem.to_string_lossy()).unwrap_or_default();
    let mut stem = String::new();
    for c in raw.chars() {
        let c = if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
            c
        } else {
            '_'
        };
        if stem.len() + c.len_utf8() > MAX_STEM_BYTES {
            break;
        }
        stem.push(c);
    }
    // A leading dot would hide the thumbnail (and could collide with the temporary files).
    if stem.starts_with('.') {
        stem.replace_range(0..1, "_");
    }
    stem
}

/// Encodes `image` as PNG into a temporary file in `dir`, then renames it to `out`: either the whole thumbnail
/// is there or none. A worker killed mid-write can leave a `.tmp*` file in `dir`, never a truncated `out`.
fn write_png(image: &DynamicImage, dir: &Path, out: &Path) -> Result<(), String> {
    let fail = |what: &str, error: &dyn std::fmt::Display| format!("cannot {what} {}: {error}", out.display());
    let temp = tempfile::Builder::new()
        .prefix(".tmp-thumbnail-")
        .tempfile_in(dir)
        .map_err(|error| fail("create a temporary file for", &error))?;
    let mut writer = BufWriter::new(temp);
    encodable(image)
        .write_to(&mut writer, image::ImageFormat::Png)
        .map_err(|error| fail("encode", &error))?;
    writer.flush().map_err(|error| fail("write", &error))?;
    let temp = writer.into_inner().map_err(|error| fail("write", &error.error()))?;
    temp.persist(out)
        .map_err(|error| fail("rename the temporary file to", &error.error))?;
    Ok(())
}

/// The image in a pixel type the PNG encoder takes: 8- and 16-bit types as they are, float types as 8-bit RGBA.
fn encodable(image: &DynamicImage) -> std::borrow::Cow<'_, DynamicImage> {
    use std::borrow::Cow;
    match image {
        DynamicImage::ImageRgb32F(_) | DynamicImage::ImageRgba32F(_) => {
            Cow::Owned(DynamicImage::ImageRgba8(image.to_rgba8()))
        }
        _ => Cow::Borrowed(image),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_aspect_ratio_and_never_enlarges() {
        assert_eq!(fit(300, 200, 128), (128, 85)); // 85.33
        assert_eq!(fit(200, 300, 128), (85, 128));
        assert_eq!(fit(256, 256, 128), (128, 128));
        assert_eq!(fit(257, 129, 128), (128, 64)); // 64.25
        assert_eq!(fit(3, 2, 1), (1, 1)); // 0.67 → 1
        assert_eq!(fit(4, 1, 2), (2, 1)); // 0.5 rounds up
        assert_eq!(fit(1, 500, 128), (1, 128)); // 0.256 → at least 1
        assert_eq!(fit(100, 50, 128), (100, 50));
        assert_eq!(fit(128, 10, 128), (128, 10));
        assert_eq!(fit(u32::MAX, u32::MAX - 1, 128), (128, 128));
    }

    #[test]
    fn jpeg_completeness_follows_segments_and_scans() {
        // SOI, APP1 that holds an embedded EOI (an EXIF thumbnail's), SOS, data with stuffing and a restart, EOI.
        let whole: &[u8] = &[
            0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0xFF, 0xD9, 0xFF, 0xDA, 0x00, 0x03, 0x01, 0x12, 0xFF, 0x00,
            0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xFF, 0xD9,
        ];
        assert_eq!(check_jpeg_complete(whole), Ok(()));
        for cut in 2..whole.len() {
            assert!(check_jpeg_complete(&whole[..cut]).is_err(), "cut at {cut} is truncated");
        }
        // Bytes after the end-of-image marker are ignored, as decoders do.
        let mut trailing = whole.to_vec();
        trailing.extend_from_slice(b"trailer");
        assert_eq!(check_jpeg_complete(&trailing), Ok(()));
    }

    fn file_item(path: &Path) -> Item<'_> {
        Item {
            index: 0,
            input: ItemInput::Bytes {
                data: b"",
                path,
                offset: 0,
            },
        }
    }

    #[test]
    fn output_names_differ_by_folder_and_extension() {
        let a = output_name(&file_item(Path::new("/x/a/cat.jpg")));
        let b = output_name(&file_item(Path::new("/x/b/cat.jpg")));
        let c = output_name(&file_item(Path::new("/x/a/cat.png")));
        assert!(a.starts_with("cat-") && b.starts_with("cat-") && c.starts_with("cat-"));
        assert_eq!(a.len(), "cat-".len() + NAME_HASH_DIGITS);
        assert!(a != b && a != c && b != c);
        assert_eq!(a, output_name(&file_item(Path::new("/x/a/cat.jpg"))));
    }

    #[test]
    fn output_names_are_safe_file_names() {
        let odd = output_name(&file_item(Path::new("/x/.my photo?*.jpg")));
        assert!(odd.starts_with("_my_photo__-"), "{odd}");
        let long = "é".repeat(200);
        let name = output_name(&file_item(Path::new(&format!("/x/{long}.jpg"))));
        assert!(name.len() <= MAX_STEM_BYTES + 1 + NAME_HASH_DIGITS);
        assert!(output_name(&file_item(Path::new("/"))).starts_with("image-"));
    }

    #[test]
    fn url_items_are_named_after_their_last_segment_and_hashed_by_url() {
        let url_item = |url| Item {
            index: 0,
            input: ItemInput::Fetched { data: b"", url },
        };
        let a = output_name(&url_item("http://127.0.0.1:8000/img/cat.jpg?size=big#top"));
        let b = output_name(&url_item("http://127.0.0.1:8000/other/cat.jpg"));
        assert!(a.starts_with("cat-") && b.starts_with("cat-"), "{a} {b}");
        assert_ne!(a, b);
        assert!(output_name(&url_item("https://example.org/")).starts_with("image-"));
    }
}
