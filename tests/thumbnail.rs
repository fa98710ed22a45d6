//! End-to-end tests of the `thumbnail` builtin: the real binary on images of every supported format, plus a
//! truncated JPEG, a text file and two decompression-bomb headers, each of which must fail only its own item.
//!
//! The inputs are encoded here with the `image` crate (a dev-dependency, used only to make inputs). The outputs are
//! checked independently of it: the thumbnail's size is read from the PNG's IHDR chunk by hand, and the expected
//! size comes from the documented closed form (longer side = `size`, shorter side rounded half up, at least 1; no
//! enlarging), computed here in floating point.

#[path = "common/mod.rs"]
#[expect(
    dead_code,
    reason = "the helpers are shared with e2e.rs; this suite uses only some of them"
)]
mod common;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use common::{InputExt, Record, read_records, run, write_file};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("supervisor-thumbnail-")
        .tempdir()
        .expect("create temp dir")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// A deterministic colourful RGB test picture.
fn rgb_picture(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
        Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x + y) % 256) as u8])
    }))
}

fn rgba_picture(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgba8(RgbaImage::from_fn(width, height, |x, y| {
        Rgba([(x * 3 % 256) as u8, (y * 11 % 256) as u8, 128, ((x * y) % 256) as u8])
    }))
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).expect("encode test image");
    bytes.into_inner()
}

/// The size a thumbnail must have: fits in `size`×`size`, aspect ratio kept, shorter side rounded half up and at
/// least 1; images that already fit are not enlarged.
fn expected_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    if width <= size && height <= size {
        return (width, height);
    }
    let long = f64::from(width.max(height));
    let short = f64::from(width.min(height));
    let scaled = ((short * f64::from(size) / long).round() as u32).max(1);
    if width >= height {
        (size, scaled)
    } else {
        (scaled, size)
    }
}

/// Width and height from a PNG file's IHDR chunk, read by hand (signature, then length, `IHDR`, width, height).
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
    assert!(bytes.len() > 24, "{}: too short for a PNG", path.display());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}: not a PNG", path.display());
    assert_eq!(&bytes[12..16], b"IHDR", "{}: first chunk is not IHDR", path.display());
    let word = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    (word(16), word(20))
}

/// A PNG that declares `width`×`height` pixels in a few bytes (an IHDR and an empty IDAT): a decompression bomb's
/// header. Written by hand, with the CRCs computed here.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffff_u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA, deflate, no filter, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut png, b"IEND", &[]);
    png
}

/// What one input should give: `Ok(source width, height)` or `Err(words the error message must contain)`.
type Expect = Result<(u32, u32), &'static str>;

#[test]
fn thumbnails_of_every_format_have_the_right_size_and_bad_images_fail_alone() {
    let dir = temp_dir();
    let images = dir.path().join("images");
    for sub in ["a", "b"] {
        std::fs::create_dir_all(images.join(sub)).expect("create image folders");
    }
    let photo = encode(&rgb_picture(300, 200), ImageFormat::Jpeg);
    let truncated = photo[..photo.len() / 2].to_vec();
    let inputs: Vec<(&str, Vec<u8>, Expect)> = vec![
        // The same stem in two folders: both thumbnails must survive.
        ("a/photo.jpg", photo, Ok((300, 200))),
        (
            "b/photo.jpg",
            encode(&rgb_picture(200, 300), ImageFormat::Jpeg),
            Ok((200, 300)),
        ),
        (
            "b/photo.png",
            encode(&rgba_picture(256, 256), ImageFormat::Png),
            Ok((256, 256)),
        ),
        (
            "small.png",
            encode(&rgba_picture(100, 50), ImageFormat::Png),
            Ok((100, 50)),
        ),
        (
            "tall.gif",
            encode(&rgba_picture(3, 500), ImageFormat::Gif),
            Ok((3, 500)),
        ),
        (
            "wide.webp",
            encode(&rgba_picture(257, 129), ImageFormat::WebP),
            Ok((257, 129)),
        ),
        (
            "truncated.jpg",
            truncated,
            Err("truncated JPEG: no end-of-image marker"),
        ),
        (
            "notes.jpg",
            b"this is not an image\n".to_vec(),
            Err("format could not be determined"),
        ),
        // Wider than `max_side` (16384), and within it but needing more than `max_alloc` (9000² RGBA = 309 MiB).
        ("bomb.png", png_bomb(60_000, 60_000), Err("exceeds limit")),
        ("bomb2.png", png_bomb(9_000, 9_000), Err("Memory limit exceeded")),
    ];
    let mut expected: BTreeMap<PathBuf, Expect> = BTreeMap::new();
    for (name, bytes, expect) in inputs {
        expected.insert(write_file(&images, name, bytes), expect);
    }
    let job = write_file(
        dir.path(),
        "thumbs.toml",
        "[input]\nglob = \"images/**/*.*\"\n[task]\nbuiltin = \"thumbnail\"\n\
         args = { out_dir = \"out/thumbs\", size = 128 }\n[output]\nresults = \"results.jsonl\"\n",
    );
    // From `/`: the relative `out_dir` must resolve against the job file's folder, not the current one.
    let ran = run(Path::new("/"), ["run", path_str(&job), "--workers", "2", "--quiet"], 1);

    let out_dir = dir.path().join("out/thumbs");
    let records: Vec<Record<serde_json::Value>> = read_records(&dir.path().join("results.jsonl"));
    assert_eq!(records.len(), expected.len(), "one record per image\n{}", ran.context());
    let mut written = Vec::new();
    for record in &records {
        let source = record.input.path().expect("glob items have a path").to_path_buf();
        let expect = expected
            .get(&source)
            .unwrap_or_else(|| panic!("unexpected item {source:?}"));
        match expect {
            Ok((width, height)) => {
                assert_eq!(record.status, "ok", "{source:?}: {:?}", record.error);
                let value = record.value.as_ref().expect("ok records have a value");
                let want = expected_size(*width, *height, 128);
                let got = (value["width"].as_u64(), value["height"].as_u64());
                assert_eq!(
                    got,
                    (Some(u64::from(want.0)), Some(u64::from(want.1))),
                    "{source:?}: {value}"
                );
                let path = PathBuf::from(value["path"].as_str().expect("path is a string"));
                assert_eq!(
                    path.parent(),
                    Some(out_dir.as_path()),
                    "{source:?}: thumbnail outside out_dir"
                );
                let stem = source.file_stem().and_then(|s| s.to_str()).expect("UTF-8 stem");
                let name = path.file_name().and_then(|s| s.to_str()).expect("UTF-8 name");
                assert!(
                    name.starts_with(&format!("{stem}-")) && name.ends_with(".png"),
                    "{name}"
                );
                assert_eq!(png_size(&path), want, "{}: size in the PNG header", path.display());
                written.push(path);
            }
            Err(words) => {
                assert_eq!(record.status, "failed", "{source:?} should fail");
                let error = record.error.as_ref().expect("failed records have an error");
                assert_eq!(error.kind, "error", "{source:?}: {error:?}");
                assert!(
                    error.message.contains(words),
                    "{source:?}: {error:?} should say {words:?}"
                );
                assert!(
                    error.message.contains(path_str(&source)),
                    "{source:?}: {error:?} names the file"
                );
            }
        }
    }
    // Every thumbnail has its own file, and nothing else (no temporary files) is left in out_dir.
    written.sort();
    written.dedup();
    assert_eq!(written.len(), 6, "each ok image has its own thumbnail");
    let mut present: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .expect("read out_dir")
        .map(|entry| entry.expect("out_dir entry").path())
        .collect();
    present.sort();
    assert_eq!(present, written, "out_dir holds exactly the thumbnails");
}

#[test]
fn a_whole_file_input_gives_one_thumbnail() {
    let dir = temp_dir();
    write_file(
        dir.path(),
        "photo.jpeg",
        encode(&rgb_picture(1000, 333), ImageFormat::Jpeg),
    );
    let job = write_file(
        dir.path(),
        "one.toml",
        "[input]\nfile = \"photo.jpeg\"\nsplit = \"none\"\n[task]\nbuiltin = \"thumbnail\"\n\
         args = { out_dir = \"small\", size = 50 }\n[output]\nresults = \"one.jsonl\"\n",
    );
    run(Path::new("/"), ["run", path_str(&job), "--quiet"], 0);
    let records: Vec<Record<serde_json::Value>> = read_records(&dir.path().join("one.jsonl"));
    assert_eq!(records.len(), 1);
    let value = records[0].value.as_ref().expect("ok record");
    let path = PathBuf::from(value["path"].as_str().expect("path is a string"));
    assert_eq!(path.parent(), Some(dir.path().join("small").as_path()));
    assert_eq!(png_size(&path), expected_size(1000, 333, 50));
    assert_eq!(expected_size(1000, 333, 50), (50, 17), "16.65 rounds to 17");
}

#[test]
fn bad_thumbnail_args_are_rejected_before_running() {
    let dir = temp_dir();
    write_file(dir.path(), "x.png", encode(&rgba_picture(4, 4), ImageFormat::Png));
    for (args, words) in [
        ("{ size = 64 }", "missing argument `out_dir`"),
        ("{ out_dir = \"t\", size = 0 }", "`size` must be at least 1"),
        ("{ out_dir = \"t\", max_alloc = \"lots\" }", "max_alloc"),
        ("{ out_dir = \"t\", sise = 3 }", "unknown argument `sise`"),
    ] {
        let job = write_file(
            dir.path(),
            "job.toml",
            format!("[input]\nglob = \"*.png\"\n[task]\nbuiltin = \"thumbnail\"\nargs = {args}\n"),
        );
        let ran = run(dir.path(), ["run", path_str(&job), "--quiet"], 2);
        assert!(ran.stderr().contains(words), "{args}: stderr should say {words:?}");
        assert!(ran.stderr().contains("job.toml:5:"), "{args}: error located at args");
        assert!(!dir.path().join("t").exists(), "{args}: nothing was created");
    }
}
