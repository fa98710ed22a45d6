//! Memory of input sources that are never materialised: pulling every item of a range of 10^8 items, and every
//! line of a file of 10^6 lines, allocates no more than a batch's worth, counted by an allocator that records
//! the peak of live bytes.

use shared::item::BatchItems;
use supervisor::input::{Pulled, Source, lines::Lines, range::Range};
use sys::alloc::peak_growth;

/// The system allocator, counting the live bytes of each thread and their peak (the sources are pulled on the
/// test's own thread).
#[global_allocator]
static ALLOCATOR: sys::alloc::Counting = sys::alloc::Counting;

/// Pulls every item of `source` in batches of its cap, as the dispatcher does, building each batch's descriptors
/// and describing its first and last item; returns how many items it saw.
fn pull_all(source: &mut dyn Source) -> u64 {
    let cap = source.batch_cap();
    let mut first = 0;
    loop {
        let n = match source.pull(first, cap).expect("pull") {
            Pulled::Ready(n) => n,
            Pulled::Ended => return first,
            Pulled::NotYet => panic!("a listed source always has its items ready"),
        };
        let items = std::hint::black_box(source.items(first, n, &|_| None));
        if let BatchItems::Chunks(chunks) = &items {
            assert_eq!(chunks.len() as u64, n);
        }
        std::hint::black_box(source.describe(first));
        std::hint::black_box(source.describe(first + n - 1));
        for item in first..first + n {
            source.release(item);
        }
        first += n;
    }
}

// One test in this binary, so that no other test's allocations run at the same time and count.
#[test]
fn pulling_sources_keeps_memory_bounded() {
    let mut range = Range::new(0, 100_000_000, 1);
    let mut seen = 0;
    let growth = peak_growth(|| seen = pull_all(&mut range));
    assert_eq!(seen, 100_000_000);
    eprintln!("10^8 range items pulled: peak growth {growth} bytes");
    // A Vec of the items would be 1.6 GB; one batch's descriptors of a range are a count.
    assert!(
        growth < 64 << 10,
        "pulling 10^8 range items allocated up to {growth} bytes at once"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("lines.txt");
    let lines = 1_000_000u64;
    let text: Vec<u8> = (0..lines)
        .flat_map(|n| format!("{}\n", n % 1000).into_bytes())
        .collect();
    std::fs::write(&path, &text).expect("write");
    let mut source = None;
    let opening = peak_growth(|| source = Some(Lines::open(&path).expect("open")));
    let mut source = source.expect("opened");
    // The counting pass: one read window (1 MiB) and one mark per 1024 lines, not 16 bytes per line (16 MB).
    assert!(
        opening < (1 << 20) + (64 << 10),
        "counting 10^6 lines allocated up to {opening} bytes"
    );
    assert!(
        source.index_bytes() <= 8 * 2048,
        "{} bytes of index",
        source.index_bytes()
    );
    let mut seen = 0;
    let growth = peak_growth(|| seen = pull_all(&mut source));
    assert_eq!(seen, lines);
    eprintln!(
        "10^6 lines: counting peak {opening} bytes, index {} bytes, pulling peak {growth} bytes",
        source.index_bytes()
    );
    // A batch of 4096 descriptors (64 KiB), a few decoded blocks of 1024 (16 KiB each), a 64 KiB read window.
    assert!(
        growth < 512 << 10,
        "pulling 10^6 lines allocated up to {growth} bytes at once"
    );
}
