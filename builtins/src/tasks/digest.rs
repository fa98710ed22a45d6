//! `sha256`: the digest of a whole file.

use sha2::{Digest, Sha256};
use shared::item::Value;

use super::no_args;
use child::task::{Item, Task, bytes_of};

struct Sha256Task;

impl Task for Sha256Task {
    fn run(&mut self, item: Item<'_>) -> Result<Value, String> {
        let data = bytes_of("sha256", &item)?;
        Ok(Value::Text(hex(&Sha256::digest(data))))
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        text.push(DIGITS[usize::from(b >> 4)] as char);
        text.push(DIGITS[usize::from(b & 15)] as char);
    }
    text
}

pub(super) fn build_sha256(args: &serde_json::Value) -> Result<Box<dyn Task>, String> {
    no_args("sha256", args)?;
    Ok(Box::new(Sha256Task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        // FIPS 180-2 test vectors.
        assert_eq!(
            hex(&Sha256::digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
