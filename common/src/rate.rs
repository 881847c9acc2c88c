//! The SYN rate limit's arithmetic: a token bucket in thousandths of a token, in integers
//! only (the kernel has no floating point), and the prefix masks for per-network limits.
//!
//! Several CPUs may update one bucket at once without a lock; a lost update lets a few more
//! SYNs through, or a few fewer, which a connection-rate limit can afford.

use crate::{TokenBucket, FAMILY_V4};

/// Thousandths of a token per token.
pub const MILLI: u64 = 1000;
const NS_PER_SEC: u64 = 1_000_000_000;
/// Nanoseconds per thousandth of a token at one token per second.
const NS_PER_MILLI_AT_ONE_PER_SEC: u64 = NS_PER_SEC / MILLI;

impl TokenBucket {
    /// A bucket holding its full burst, as a source's first SYN finds it.
    pub const fn full(now_ns: u64, burst: u32) -> Self {
        Self {
            tokens_milli: capacity_milli(burst),
            last_ns: now_ns,
        }
    }
}

/// A bucket's capacity: `burst` tokens, at least one so that a limit of 0 still admits a
/// trickle instead of closing the port.
const fn capacity_milli(burst: u32) -> u64 {
    let burst = if burst == 0 { 1 } else { burst as u64 };
    burst * MILLI
}

/// Refills `bucket` for the time since it was last brought up to date, then takes one token
/// if there is one. With `rate_per_sec` 0 the bucket never refills.
///
/// Never overflows: the time credited is capped at what fills the bucket, and
/// `burst × 1000 × 10⁶` fits in a u64 for any u32 burst.
#[inline(always)]
pub fn take_token(bucket: &mut TokenBucket, now_ns: u64, rate_per_sec: u32, burst: u32) -> bool {
    refill(bucket, now_ns, rate_per_sec, burst);
    if bucket.tokens_milli >= MILLI {
        bucket.tokens_milli -= MILLI;
        true
    } else {
        false
    }
}

#[inline(always)]
fn refill(bucket: &mut TokenBucket, now_ns: u64, rate_per_sec: u32, burst: u32) {
    let capacity = capacity_milli(burst);
    if bucket.tokens_milli >= capacity {
        // Time spent full earns nothing (and a lowered burst takes effect at once).
        bucket.tokens_milli = capacity;
        bucket.last_ns = now_ns;
        return;
    }
    if rate_per_sec == 0 {
        return;
    }
    let rate = rate_per_sec as u64;
    // A clock that went backwards credits nothing.
    let elapsed = now_ns.saturating_sub(bucket.last_ns);
    let missing = capacity - bucket.tokens_milli;
    // missing ≤ 2³² × 1000, so missing × 10⁶ < 2⁶³.
    let fill_ns = missing * NS_PER_MILLI_AT_ONE_PER_SEC / rate;
    if elapsed >= fill_ns {
        bucket.tokens_milli = capacity;
        bucket.last_ns = now_ns;
        return;
    }
    // elapsed < fill_ns ≤ missing × 10⁶ / rate, so elapsed × rate < missing × 10⁶: no overflow.
    let added = elapsed * rate / NS_PER_MILLI_AT_ONE_PER_SEC;
    bucket.tokens_milli += added;
    // Advance the clock only by the time those whole thousandths took (rounded up, so never
    // past `now_ns` and never credited twice), so that the remainder counts next time:
    // packets closer together than a thousandth of a token would otherwise never refill.
    bucket.last_ns += (added * NS_PER_MILLI_AT_ONE_PER_SEC).div_ceil(rate);
}

/// The network a per-prefix limit counts under: the /24 of an IPv4 address (held in the
/// first 4 bytes), the /64 of an IPv6 one.
#[inline(always)]
pub const fn mask_prefix(family: u8, addr: [u8; 16]) -> [u8; 16] {
    // Spelled out rather than a loop over a variable length, which LLVM would turn into a
    // memset call that libbpf-based loaders refuse.
    let a = addr;
    if family == FAMILY_V4 {
        [a[0], a[1], a[2], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    } else {
        [
            a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], 0, 0, 0, 0, 0, 0, 0, 0,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FAMILY_V6;

    const SEC: u64 = NS_PER_SEC;

    fn drain(bucket: &mut TokenBucket, now: u64, rate: u32, burst: u32) -> u32 {
        let mut taken = 0;
        while take_token(bucket, now, rate, burst) {
            taken += 1;
            assert!(taken <= burst.max(1), "took more than the burst");
        }
        taken
    }

    #[test]
    fn a_full_bucket_admits_its_burst_then_refuses() {
        let mut bucket = TokenBucket::full(5 * SEC, 3);
        assert_eq!(drain(&mut bucket, 5 * SEC, 10, 3), 3);
        assert!(!take_token(&mut bucket, 5 * SEC, 10, 3));
    }

    #[test]
    fn refills_at_the_rate() {
        let mut bucket = TokenBucket::full(0, 5);
        assert_eq!(drain(&mut bucket, 0, 2, 5), 5);
        // Two per second: one token every 500 ms.
        assert!(!take_token(&mut bucket, 499_999_999, 2, 5));
        assert!(take_token(&mut bucket, SEC / 2, 2, 5));
        assert!(!take_token(&mut bucket, SEC / 2, 2, 5));
        // 1.5 s later: three more.
        assert_eq!(drain(&mut bucket, 2 * SEC, 2, 5), 3);
    }

    #[test]
    fn refill_stops_at_the_burst() {
        let mut bucket = TokenBucket::full(0, 4);
        assert_eq!(drain(&mut bucket, 0, 100, 4), 4);
        assert_eq!(drain(&mut bucket, 3600 * SEC, 100, 4), 4);
    }

    #[test]
    fn packets_closer_than_a_thousandth_of_a_token_still_refill() {
        // One token a second is one thousandth per millisecond; a packet every 100 µs must
        // not keep resetting the clock.
        let mut bucket = TokenBucket::full(0, 1);
        assert!(take_token(&mut bucket, 0, 1, 1));
        let mut now = 0;
        let mut admitted = 0;
        while now < 10 * SEC {
            now += 100_000;
            if take_token(&mut bucket, now, 1, 1) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10);
    }

    #[test]
    fn slow_rates_accumulate_fractions() {
        let mut bucket = TokenBucket::full(0, 1);
        assert!(take_token(&mut bucket, 0, 1, 1));
        // At one per second, 999 ms is not enough and 1 s is.
        assert!(!take_token(&mut bucket, 999 * SEC / 1000, 1, 1));
        assert!(take_token(&mut bucket, SEC, 1, 1));
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        for (rate, burst) in [(u32::MAX, u32::MAX), (1, u32::MAX), (u32::MAX, 1), (1, 1)] {
            let mut bucket = TokenBucket {
                tokens_milli: 0,
                last_ns: 0,
            };
            for now in [1, SEC, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
                take_token(&mut bucket, now, rate, burst);
                assert!(bucket.tokens_milli <= capacity_milli(burst));
                assert!(bucket.last_ns <= now);
            }
        }
        // A full day of nanoseconds at the highest rate and burst, from empty.
        let mut bucket = TokenBucket {
            tokens_milli: 0,
            last_ns: 0,
        };
        assert!(take_token(&mut bucket, 86_400 * SEC, u32::MAX, u32::MAX));
        assert_eq!(bucket.tokens_milli, capacity_milli(u32::MAX) - MILLI);
    }

    #[test]
    fn clock_going_backwards_credits_nothing() {
        let mut bucket = TokenBucket::full(10 * SEC, 1);
        assert!(take_token(&mut bucket, 10 * SEC, 1000, 1));
        assert!(!take_token(&mut bucket, SEC, 1000, 1));
    }

    #[test]
    fn zero_rate_never_refills_and_zero_burst_is_one() {
        let mut bucket = TokenBucket::full(0, 0);
        assert!(take_token(&mut bucket, 0, 0, 0));
        assert!(!take_token(&mut bucket, 3600 * SEC, 0, 0));
        let mut bucket = TokenBucket::full(0, 0);
        assert_eq!(drain(&mut bucket, 0, 10, 0), 1);
        assert!(take_token(&mut bucket, SEC, 10, 0));
    }

    #[test]
    fn a_lowered_burst_applies_at_once() {
        let mut bucket = TokenBucket::full(0, 100);
        assert_eq!(drain(&mut bucket, 0, 1, 2), 2);
    }

    #[test]
    fn masks() {
        let v4 = [192, 0, 2, 77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(mask_prefix(FAMILY_V4, v4)[..4], [192, 0, 2, 0]);
        assert_eq!(mask_prefix(FAMILY_V4, v4)[4..], [0; 12]);
        let v6 = [
            0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        let masked = mask_prefix(FAMILY_V6, v6);
        assert_eq!(masked[..8], v6[..8]);
        assert_eq!(masked[8..], [0; 8]);
    }
}
