//! CPU-bound tasks over integer sub-ranges: `sum-squares` and `count-primes`.

use shared::item::Value;

use super::no_args;
use child::task::{Item, Task, range_of};

struct SumSquares;

impl Task for SumSquares {
    fn run(&mut self, item: Item<'_>) -> Result<Value, String> {
        let (lo, hi) = range_of("sum-squares", &item)?;
        sum_squares(lo, hi)
            .map(Value::UInt)
            .ok_or_else(|| format!("Σ i² over [{lo}, {hi}) overflows 128 bits: use a smaller chunk"))
    }
}

/// Σ i² for i in `[lo, hi)`, computed by the loop (this is the CPU work), `None` on overflow.
pub(crate) fn sum_squares(lo: u64, hi: u64) -> Option<u128> {
    let mut sum: u128 = 0;
    for i in lo..hi {
        let i = u128::from(i);
        sum = sum.checked_add(i * i)?;
    }
    Some(sum)
}

pub(super) fn build_sum_squares(args: &serde_json::Value) -> Result<Box<dyn Task>, String> {
    no_args("sum-squares", args)?;
    Ok(Box::new(SumSquares))
}

/// Counts primes with a segmented sieve; base primes are cached across items and grown on demand.
#[derive(Default)]
struct CountPrimes {
    /// All primes up to `sieved_to` (inclusive).
    base: Vec<u64>,
    sieved_to: u64,
}

/// Sieve block size in numbers (bytes of the block buffer).
const BLOCK: u64 = 1 << 16;

impl CountPrimes {
    fn ensure_base(&mut self, limit: u64) -> Result<(), String> {
        if limit <= self.sieved_to {
            return Ok(());
        }
        let limit = limit.max(self.sieved_to.saturating_mul(2)).max(1 << 12);
        let size = usize::try_from(limit + 1).map_err(|_| "range too large to sieve".to_string())?;
        let mut composite = vec![false; size];
        let mut base = Vec::new();
        for n in 2..size {
            if !composite[n] {
                base.push(n as u64);
                let mut multiple = n * n;
                while multiple < size {
                    composite[multiple] = true;
                    multiple += n;
                }
            }
        }
        self.base = base;
        self.sieved_to = limit;
        Ok(())
    }

    fn count(&mut self, lo: u64, hi: u64) -> Result<u64, String> {
        let lo = lo.max(2);
        if lo >= hi {
            return Ok(0);
        }
        let root = (hi - 1).isqrt();
        if root > 1 << 32 {
            return Err(format!("range [{lo}, {hi}) needs base primes up to {root}: too large"));
        }
        self.ensure_base(root)?;
        let mut total = 0;
        let mut is_composite = vec![false; BLOCK as usize];
        let mut block_lo = lo;
        while block_lo < hi {
            let block_hi = block_lo.saturating_add(BLOCK).min(hi);
            let width = (block_hi - block_lo) as usize;
            is_composite[..width].fill(false);
            for &p in self.base.iter().take_while(|&&p| p.saturating_mul(p) < block_hi) {
                let first = (p * p).max(block_lo.div_ceil(p) * p);
                let mut multiple = first;
                while multiple < block_hi {
                    is_composite[(multiple - block_lo) as usize] = true;
                    multiple += p;
                }
            }
            total += is_composite[..width].iter().filter(|&&c| !c).count() as u64;
            block_lo = block_hi;
        }
        Ok(total)
    }
}

impl Task for CountPrimes {
    fn run(&mut self, item: Item<'_>) -> Result<Value, String> {
        let (lo, hi) = range_of("count-primes", &item)?;
        self.count(lo, hi).map(|n| Value::UInt(u128::from(n)))
    }
}

pub(super) fn build_count_primes(args: &serde_json::Value) -> Result<Box<dyn Task>, String> {
    no_args("count-primes", args)?;
    Ok(Box::new(CountPrimes::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_prime_by_trial_division(n: u64) -> bool {
        n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
    }

    #[test]
    fn sum_squares_matches_the_closed_form() {
        let closed = |n: u128| n * (n + 1) * (2 * n + 1) / 6; // Σ_{i<=n} i²
        assert_eq!(sum_squares(0, 1001), Some(closed(1000)));
        assert_eq!(sum_squares(10, 21), Some(closed(20) - closed(9)));
        assert_eq!(sum_squares(5, 5), Some(0));
        let top = u128::from(u64::MAX - 1);
        assert_eq!(sum_squares(u64::MAX - 1, u64::MAX), Some(top * top));
        // Two squares near 2⁶⁴ exceed u128: the item must fail rather than wrap.
        assert_eq!(sum_squares(u64::MAX - 2, u64::MAX), None);
    }

    #[test]
    fn count_primes_matches_trial_division_on_odd_windows() {
        let mut task = CountPrimes::default();
        for (lo, hi) in [
            (0, 2),
            (0, 3),
            (0, 100),
            (97, 98),
            (1_000, 1_001),
            (0, 200_000),
            (123_456, 400_001),
        ] {
            let expected = (lo..hi).filter(|&n| is_prime_by_trial_division(n)).count() as u64;
            assert_eq!(task.count(lo, hi), Ok(expected), "[{lo}, {hi})");
        }
        // π(10⁷) = 664579, a known value.
        assert_eq!(task.count(0, 10_000_000), Ok(664_579));
    }
}
