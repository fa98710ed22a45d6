//! Reference computations that share no code with the supervisor: closed forms, a sieve, a deterministic PRNG and
//! the generated text the file tests feed to both the supervisor and the real tools (`tools.rs`).

/// Σ i² for 0 <= i < n, by the closed form m(m+1)(2m+1)/6 with m = n-1.
pub fn sum_of_squares_below(n: u64) -> u128 {
    if n == 0 {
        return 0;
    }
    let m = u128::from(n - 1);
    m * (m + 1) * (2 * m + 1) / 6
}

/// Σ i² for lo <= i < hi.
pub fn sum_of_squares(lo: u64, hi: u64) -> u128 {
    sum_of_squares_below(hi) - sum_of_squares_below(lo)
}

/// `count[n]` = number of primes below `n`, for n in 0..=limit, from a plain sieve of Eratosthenes.
pub fn primes_below_table(limit: usize) -> Vec<u64> {
    let mut composite = vec![false; limit];
    let mut n = 2;
    while n * n < limit {
        if !composite[n] {
            let mut multiple = n * n;
            while multiple < limit {
                composite[multiple] = true;
                multiple += n;
            }
        }
        n += 1;
    }
    let mut below = Vec::with_capacity(limit + 1);
    let mut count = 0;
    below.push(0);
    for (n, &is_composite) in composite.iter().enumerate() {
        if n >= 2 && !is_composite {
            count += 1;
        }
        below.push(count);
    }
    below
}

/// SplitMix64: small, fast and deterministic.
#[derive(Debug)]
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Words of the generated text: plain words, numbers, and the awkward cases for `wc -w` and `grep` — tabs, CR,
/// vertical tab, form feed, control and non-ASCII bytes, runs of spaces.
const VOCABULARY: &[&[u8]] = &[
    b"alpha",
    b"beta",
    b"gamma",
    b"delta",
    b"error",
    b"ERROR",
    b"warn",
    b"Warning",
    b"info",
    b"x",
    b"42",
    b"1234",
    b"7",
    b"\x80\xff",
    b"caf\xc3\xa9",
    b"\x01",
    b"a\x0bb",
    b"tab\tsep",
    b"cr\r",
    b"ff\x0c",
    b"  ",
    b"",
];

/// About `size` bytes of text lines built from [`VOCABULARY`] by a PRNG seeded with `seed`: mostly short lines,
/// some empty ones, and one line longer than 100 KiB (longer than a 64 KiB chunk). Ends with a newline only if
/// `final_newline`.
pub fn generated_text(size: usize, seed: u64, final_newline: bool) -> Vec<u8> {
    let mut rng = Prng::new(seed);
    let mut out = Vec::with_capacity(size + 256);
    let long_line_at = size / 3;
    let mut long_done = false;
    while out.len() < size {
        let words = if !long_done && out.len() >= long_line_at {
            long_done = true;
            25_000
        } else {
            rng.below(14)
        };
        for k in 0..words {
            if k > 0 {
                out.push(b' ');
            }
            let word = VOCABULARY[rng.below(VOCABULARY.len() as u64) as usize];
            out.extend_from_slice(word);
        }
        out.push(b'\n');
    }
    if !final_newline {
        out.extend_from_slice(b"last line without newline 42 error 7");
    }
    out
}
