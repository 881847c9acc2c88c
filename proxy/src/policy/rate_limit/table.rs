//! The rate limiter's counters in this process: a fixed-size table on atomics, shared by
//! every worker, that no request ever locks or grows.
//!
//! Why not a general concurrent map: a key only ever needs a handful of words (one per
//! window), the table must stay bounded however many keys an attacker rotates through, and
//! the hard part (a key's counters must never split or move while it has live windows, or
//! it gets more than its quota) is about when a slot may change hands, which a map's
//! `remove` does not know. So the table is set-associative: a key hashes to one bucket of
//! four ways and is counted in the way that holds its tag, or, when the four hold keys with
//! live windows, in the bucket's overflow way.
//!
//! Per bucket, in one run of words:
//!
//! ```text
//! directory    4 x 16 bits: a way's tag (12 bits, 0 = free) and generation (4 bits)
//! lease[4+1]   generation (4) | seed (1) | ms until which the way's windows may be live (59)
//! window[4+1][W] start ms (38 bits, wrapping) | requests counted (26 bits)
//! ```
//!
//! (The fifth lease and row of windows are the overflow way's.)
//!
//! - A request counts in every window of its way with one CAS each, and passes only if all
//!   have room: windows are checked first, then committed in order, and a commit that finds
//!   one full gives back what it took. So a window never counts more than its maximum
//!   (exact across threads), and a refusal takes nothing from the other windows; two
//!   requests racing for the last place may both be refused (conservative, momentary).
//! - A way changes hands only when its lease has run out, i.e. when every window of its key
//!   has ended; the key's next request then starts new windows anyway, wherever it is
//!   counted, so taking the way loses nothing. A request that starts a window first
//!   extends the lease with a CAS that checks the generation, and a claim of a held way
//!   first moves the lease's generation on with a CAS: those two CASes on one word decide
//!   which came first. A commit then checks that its way still names its key, and gives
//!   back what it took otherwise. The directory is one word, so a key never gets two ways;
//!   a free way is claimed with one CAS on it.
//! - Taking over a held way is two steps (lease, then directory). A request of the holder
//!   that finds it half done gives the way back to the holder under the new generation; a
//!   lookup with nowhere else to go waits a few reads for it, then does the same. Nobody
//!   waits on a thread that was descheduled. A claimer publishes only while the lease is
//!   still the one it revoked to. (Generations have 4 bits: to be fooled otherwise, a
//!   request would have to stall across sixteen changes of hands of its way, each one
//!   after the way fell idle.)
//! - A window's start is kept in 38 bits and read back against its way's lease: every start
//!   under a live lease lies within twice the longest window before the lease ends. A way
//!   whose lease ran out has its windows cleared by the next request, so nothing older
//!   survives.
//! - When all four ways of a bucket hold keys with live windows (the table is full there), a
//!   new key is counted in the overflow way, which all such keys of the bucket share
//!   (conservative for them: one quota between them) and which never charges a holder. A
//!   commit there checks afterwards that the key still has no way, and gives back
//!   otherwise.
//! - A key never gets fresh quota by moving between the overflow way and a way of its own.
//!   A claim of a held way sets the lease's seed bit, and the first commit after it starts
//!   the way's windows from the overflow way's live ones (read after the claim was
//!   published, so they hold every overflow request of the key that stays counted). The
//!   other way round, a way changes hands only once every live overflow window began after
//!   its lease ended: its key, coming back to the overflow way, never finds a window that
//!   overlaps its last one. So a key's windows never overlap, wherever they are counted; a
//!   key new to a bucket whose overflow way is in use may start with some of its count.
//! - How full: with random hashing, 16,384 buckets overflow somewhere from a few thousand
//!   keys live at once (about 2.5 buckets with five or more at 8,000 keys, about 54 at
//!   16,000), and a key stays live for the longest window after its last window opened.
//!   Two-choice hashing (eight ways across two buckets) would make that rare; not done yet.
//!
//! Time is milliseconds since the table's epoch, passed in by the caller so that tests
//! drive it.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use super::{Decision, Limit, Store};

/// Ways per bucket: their tags fill one 64-bit directory word.
const WAYS: usize = 4;
/// The index of the bucket's overflow way, after the keyed ones: it has a lease and windows
/// but no directory entry.
const OVERFLOW: usize = WAYS;
const TAG_BITS: u32 = 12;
const TAG_MASK: u16 = (1 << TAG_BITS) - 1;
const LEASE_TIME_BITS: u32 = 59;
const LEASE_TIME_MASK: u64 = (1 << LEASE_TIME_BITS) - 1;
/// Set in a lease by a claim of a held way: the new key's first commit starts its windows
/// from the overflow way's, where it may have been counted until then.
const SEED: u64 = 1 << LEASE_TIME_BITS;
/// A lease's generation: its top 4 bits.
const LEASE_GEN_SHIFT: u32 = 60;
const COUNT_BITS: u32 = 26;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const START_BITS: u32 = 64 - COUNT_BITS;
const START_MASK: u64 = (1 << START_BITS) - 1;

/// The most requests one window can count.
pub const MAX_REQUESTS: u64 = COUNT_MASK;
/// The most windows one policy can have: a commit remembers what it took on the stack.
pub const MAX_LIMITS: usize = 16;
/// The longest window: a live start is read back within twice this of its lease, which
/// must stay well inside the 2^38 ms a start wraps at (and Flex's limits are 32-bit).
pub const MAX_PERIOD_MS: u64 = i32::MAX as u64;

/// How many times a lookup re-reads a bucket with a claim in flight before giving the way
/// back to its holder.
const HALF_DONE_PATIENCE: u32 = 64;
/// Buckets of a keyed table: 65,536 keys with a way of their own, about 1.4 MB with one
/// window.
const KEYED_BUCKETS: usize = 1 << 14;
/// A keyed table with many windows gets fewer buckets, to stay under this.
const MAX_TABLE_BYTES: usize = 4 << 20;

pub struct Table {
    limits: Box<[Limit]>,
    /// The longest window: a lease covers this much from a window's start.
    longest: u64,
    /// Buckets - 1 (a power of two).
    mask: usize,
    /// Words per bucket.
    stride: usize,
    words: Box<[AtomicU64]>,
}

/// A way and the directory entry (tag and generation) it was found under.
#[derive(Clone, Copy)]
struct Way {
    index: usize,
    entry: u16,
}

/// What a window says about a request at `now`.
enum State {
    /// No live window: the request opens one.
    Fresh,
    Open {
        start: u64,
        count: u64,
        ends_in: u64,
    },
}

/// Why a commit stopped.
enum Stop {
    Full(u64),
    /// A window ended while it was being counted and needs a lease first: start over.
    Again,
}

impl Table {
    /// A table for `limits` (at most [`MAX_LIMITS`]): one bucket when every request
    /// shares one key, else as many as fit.
    pub fn new(limits: Vec<Limit>, keyed: bool) -> Table {
        let stride = stride(limits.len());
        let buckets = if keyed {
            let fit = MAX_TABLE_BYTES / (stride * 8);
            KEYED_BUCKETS.min(1 << fit.max(1).ilog2())
        } else {
            1
        };
        Table::with_buckets(limits, buckets)
    }

    fn with_buckets(limits: Vec<Limit>, buckets: usize) -> Table {
        debug_assert!(buckets.is_power_of_two() && limits.len() <= MAX_LIMITS);
        let stride = stride(limits.len());
        let longest = limits.iter().map(|l| l.period).max().unwrap_or(0);
        Table {
            limits: limits.into_boxed_slice(),
            longest,
            mask: buckets - 1,
            stride,
            words: (0..buckets * stride).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn directory(&self, bucket: usize) -> &AtomicU64 {
        &self.words[bucket * self.stride]
    }

    fn lease(&self, bucket: usize, way: usize) -> &AtomicU64 {
        &self.words[bucket * self.stride + 1 + way]
    }

    /// `way` is `0..WAYS` or [`OVERFLOW`].
    fn window(&self, bucket: usize, way: usize, j: usize) -> &AtomicU64 {
        &self.words[bucket * self.stride + 2 + WAYS + way * self.limits.len() + j]
    }

    /// The way that counts `tag`: its own, a free or idle one it claims, or, when the bucket
    /// is full of live keys, the overflow way.
    fn find_or_claim(&self, bucket: usize, tag: u16, now: u64) -> Way {
        let mut patience = HALF_DONE_PATIENCE;
        loop {
            let dir = self.directory(bucket).load(SeqCst);
            if let Some(index) = (0..WAYS).find(|&w| entry_tag(entry(dir, w)) == tag) {
                return Way {
                    index,
                    entry: entry(dir, index),
                };
            }
            let mut claimable = None;
            let mut half_done = None;
            for w in 0..WAYS {
                let e = entry(dir, w);
                let lease = self.lease(bucket, w).load(SeqCst);
                if lease_gen(lease) != entry_gen(e) {
                    half_done = Some((w, e, lease_gen(lease)));
                } else if entry_tag(e) == 0
                    || (lease_time(lease) <= now
                        && self.overflow_began_since(bucket, lease_time(lease), now))
                {
                    claimable = Some((w, lease));
                    break;
                }
            }
            match (claimable, half_done) {
                (Some((w, lease)), _) => self.claim(bucket, w, dir, lease, tag),
                // A claim in flight (perhaps this key's own, on another thread): sharing now
                // would count the key in two places. It ends within a few instructions;
                // one that does not (its thread was preempted) is given back.
                (None, Some((w, e, gen))) => {
                    if patience == 0 {
                        self.give_back(bucket, w, e, gen);
                        patience = HALF_DONE_PATIENCE;
                    } else {
                        patience -= 1;
                        std::hint::spin_loop();
                    }
                }
                (None, None) => {
                    return Way {
                        index: OVERFLOW,
                        entry: 0,
                    }
                }
            }
        }
    }

    /// Tries to give way `w` (directory `dir`, lease `lease`) to `tag`; the caller looks
    /// again whatever happened.
    fn claim(&self, bucket: usize, w: usize, dir: u64, lease: u64, tag: u16) {
        let old = entry(dir, w);
        let directory = self.directory(bucket);
        if entry_tag(old) == 0 {
            // A free way has no holder to revoke: one CAS on the directory, which also
            // proves the key has no other way.
            let new = with_entry(dir, w, make_entry(tag, entry_gen(old)));
            let _ = directory.compare_exchange(dir, new, SeqCst, SeqCst);
            return;
        }
        let gen = (entry_gen(old) + 1) & 0xF;
        // Revoke the idle holder's tenancy: from here on its lease cannot be extended.
        let revoked = with_lease_gen(lease, gen) | SEED;
        if self
            .lease(bucket, w)
            .compare_exchange(lease, revoked, SeqCst, SeqCst)
            .is_err()
        {
            return;
        }
        self.publish(bucket, w, dir, revoked, tag);
    }

    /// The second step of a claim of held way `w` (directory `dir`, lease now `revoked`):
    /// names `tag` in the directory. While the lease is ahead of the directory only this
    /// thread, or a helper giving the way back, changes this way's entry. A lease that moved
    /// on means the way was given back (and perhaps handed round since, until its entry
    /// looks like `old` again): then the claim is over.
    fn publish(&self, bucket: usize, w: usize, dir: u64, revoked: u64, tag: u16) {
        let old = entry(dir, w);
        let gen = lease_gen(revoked);
        let directory = self.directory(bucket);
        let mut current = dir;
        loop {
            if entry(current, w) != old || self.lease(bucket, w).load(SeqCst) != revoked {
                return;
            }
            let taken_elsewhere = (0..WAYS).any(|v| v != w && entry_tag(entry(current, v)) == tag);
            let new = if taken_elsewhere {
                make_entry(entry_tag(old), gen)
            } else {
                make_entry(tag, gen)
            };
            match directory.compare_exchange(current, with_entry(current, w, new), SeqCst, SeqCst) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// A claim of way `w` is half done (its lease moved to `gen`, its directory entry is
    /// still `seen`): gives the way back to the holder under `gen`, so that neither waits.
    fn give_back(&self, bucket: usize, w: usize, seen: u16, gen: u16) {
        let dir = self.directory(bucket);
        let mut current = dir.load(SeqCst);
        while entry(current, w) == seen {
            let new = with_entry(current, w, make_entry(entry_tag(seen), gen));
            match dir.compare_exchange(current, new, SeqCst, SeqCst) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Whether every live window of the overflow way began at or after `since` (the end of
    /// an idle way's lease, so after every window of its key): only then may the way change
    /// hands, since its key, if it comes back, is counted there, and must not find a window
    /// that overlaps its last one.
    fn overflow_began_since(&self, bucket: usize, since: u64, now: u64) -> bool {
        self.limits.iter().enumerate().all(|(j, limit)| {
            let w = self.window(bucket, OVERFLOW, j).load(SeqCst);
            let lease = lease_time(self.lease(bucket, OVERFLOW).load(SeqCst));
            match started_at(w, lease, self.longest) {
                Some(start) => start >= since || now >= start + limit.period,
                None => true,
            }
        })
    }

    /// Whether a commit of `tag` in `way` still counts there: its own way still names it,
    /// or, in the overflow way, it still has no way of its own.
    fn still_counts(&self, bucket: usize, way: Way, tag: u16) -> bool {
        let dir = self.directory(bucket).load(SeqCst);
        if way.index == OVERFLOW {
            (0..WAYS).all(|w| entry_tag(entry(dir, w)) != tag)
        } else {
            entry(dir, way.index) == way.entry
        }
    }

    /// Counts a request of `tag` in `way`; `None` when the way changed hands (or the key got
    /// a way of its own) and the key must be looked up again.
    fn commit(&self, bucket: usize, way: Way, tag: u16, now: u64) -> Option<Decision> {
        let gen = entry_gen(way.entry);
        let lease_cell = self.lease(bucket, way.index);
        'attempt: loop {
            if !self.still_counts(bucket, way, tag) {
                return None;
            }
            let lease = lease_cell.load(SeqCst);
            if lease_gen(lease) != gen {
                self.give_back(bucket, way.index, way.entry, lease_gen(lease));
                return None;
            }
            let mut until = lease_time(lease);
            if until <= now || lease & SEED != 0 {
                self.restart(bucket, way.index, lease, now);
                continue;
            }

            // Check: a full window refuses without touching anything.
            let mut opens = false;
            let mut full: Option<(usize, u64)> = None;
            for (j, limit) in self.limits.iter().enumerate() {
                let w = self.window(bucket, way.index, j).load(SeqCst);
                match classify(w, now, limit.period, until, self.longest) {
                    State::Fresh => opens = true,
                    State::Open { count, ends_in, .. } if count >= limit.max => {
                        if full.is_none_or(|(_, e)| ends_in > e) {
                            full = Some((j, ends_in));
                        }
                    }
                    State::Open { .. } => {}
                }
            }
            if let Some((j, ends_in)) = full {
                return Some(Decision::refused(&self.limits[j], ends_in));
            }

            // A window about to start must end before the lease does.
            if opens && until < now + self.longest {
                let extended = make_lease(gen, now + self.longest);
                if lease_cell
                    .compare_exchange(lease, extended, SeqCst, SeqCst)
                    .is_err()
                {
                    continue;
                }
                until = now + self.longest;
            }

            // Commit, window by window.
            let mut taken = [0u64; MAX_LIMITS];
            let mut report = Decision::passed();
            for (j, limit) in self.limits.iter().enumerate() {
                let cell = self.window(bucket, way.index, j);
                match count_in(cell, lease_cell, limit, now, until, self.longest) {
                    Ok((start, count, ends_in)) => {
                        taken[j] = start;
                        report.consider(limit, count, ends_in);
                    }
                    Err(stop) => {
                        self.give_up(bucket, way.index, &taken[..j]);
                        match stop {
                            Stop::Full(ends_in) => {
                                return Some(Decision::refused(limit, ends_in));
                            }
                            Stop::Again => continue 'attempt,
                        }
                    }
                }
            }
            // An overflow count that raced with the key's claim is taken back: the claim's
            // first commit copies the overflow windows only after it published the way.
            if !self.still_counts(bucket, way, tag) {
                self.give_up(bucket, way.index, &taken[..self.limits.len()]);
                return None;
            }
            return Some(report);
        }
    }

    /// Starts `way` (lease `lease`) over: its windows have all ended, or it was just claimed.
    /// Clears what the windows left, which may be older than a wrapping start can tell:
    /// values read while the lease stood still, so no request has counted in them since (one
    /// that does now fails its CAS). A claimed way (`SEED`) starts instead from the overflow
    /// way's live windows, read after the claim was published, so that a key that was
    /// counted there gets no fresh quota before that window ends; every overflow count of
    /// the key made after this read sees the published way and is taken back.
    fn restart(&self, bucket: usize, way: usize, lease: u64, now: u64) {
        let lease_cell = self.lease(bucket, way);
        let mut seen = [0u64; MAX_LIMITS];
        let mut start = [0u64; MAX_LIMITS];
        let mut until = now + self.longest;
        for (j, limit) in self.limits.iter().enumerate() {
            seen[j] = self.window(bucket, way, j).load(SeqCst);
            if lease & SEED == 0 {
                continue;
            }
            let w = self.window(bucket, OVERFLOW, j).load(SeqCst);
            // Read after the window: whoever started it had extended the lease before.
            let overflow_lease = lease_time(self.lease(bucket, OVERFLOW).load(SeqCst));
            if let Some(began) = started_at(w, overflow_lease, self.longest) {
                if now < began + limit.period {
                    start[j] = w;
                    until = until.max(began + limit.period);
                }
            }
        }
        if lease_cell.load(SeqCst) == lease {
            for j in 0..self.limits.len() {
                if seen[j] != start[j] {
                    let cell = self.window(bucket, way, j);
                    let _ = cell.compare_exchange(seen[j], start[j], SeqCst, SeqCst);
                }
            }
        }
        let restarted = make_lease(lease_gen(lease), until);
        let _ = lease_cell.compare_exchange(lease, restarted, SeqCst, SeqCst);
    }

    /// Takes back one request from each window whose instance (its start) is still the one
    /// it was counted in; a window that restarted since has forgotten it already.
    fn give_up(&self, bucket: usize, way: usize, taken: &[u64]) {
        for (j, &start) in taken.iter().enumerate() {
            let cell = self.window(bucket, way, j);
            let mut w = cell.load(SeqCst);
            while w & COUNT_MASK > 0 && w >> COUNT_BITS == start {
                match cell.compare_exchange_weak(w, w - 1, SeqCst, SeqCst) {
                    Ok(_) => break,
                    Err(actual) => w = actual,
                }
            }
        }
    }
}

impl Store for Table {
    fn take(&self, key: u64, now: u64) -> Decision {
        // Low bits pick the bucket, high bits the tag: independent parts of the hash.
        let bucket = (key as usize) & self.mask;
        let tag = ((key >> (64 - TAG_BITS)) as u16).max(1);
        loop {
            let way = self.find_or_claim(bucket, tag, now);
            if let Some(decision) = self.commit(bucket, way, tag, now) {
                return decision;
            }
        }
    }
}

/// Counts one request in `cell` (of the way whose lease is `lease_cell`, covering at least
/// `until`): `(start, count, ends_in)` of the window it went into.
fn count_in(
    cell: &AtomicU64,
    lease_cell: &AtomicU64,
    limit: &Limit,
    now: u64,
    until: u64,
    longest: u64,
) -> Result<(u64, u64, u64), Stop> {
    let mut w = cell.load(SeqCst);
    loop {
        // Read after the window: whoever started it had extended the lease before.
        let lease = lease_time(lease_cell.load(SeqCst)).max(until);
        let (start, count, ends_in) = match classify(w, now, limit.period, lease, longest) {
            State::Open {
                start,
                count,
                ends_in,
            } if count < limit.max => (start, count + 1, ends_in),
            State::Open { ends_in, .. } => return Err(Stop::Full(ends_in)),
            State::Fresh if lease >= now + limit.period => (now & START_MASK, 1, limit.period),
            State::Fresh => return Err(Stop::Again),
        };
        match cell.compare_exchange_weak(w, (start << COUNT_BITS) | count, SeqCst, SeqCst) {
            Ok(_) => return Ok((start, count, ends_in)),
            Err(actual) => w = actual,
        }
    }
}

/// Reads a window word at `now`, against the lease (`lease`, ms) of its way.
///
/// Every window started under a live lease began within `2 x longest` before the lease's
/// end, so the 38-bit start is read back as the one time in that band; a start outside it
/// is left from an earlier tenancy and has ended. A start after `now` (a thread that read
/// the clock later got there first) is a window that has only just begun.
fn classify(w: u64, now: u64, period: u64, lease: u64, longest: u64) -> State {
    let Some(began) = started_at(w, lease, longest) else {
        return State::Fresh;
    };
    let elapsed = now.saturating_sub(began);
    if elapsed < period {
        State::Open {
            start: w >> COUNT_BITS,
            count: w & COUNT_MASK,
            ends_in: period - elapsed,
        }
    } else {
        State::Fresh
    }
}

/// When the window in `w` began, in ms, read back against its way's lease (see
/// [`classify`]); `None` for an empty window or one left from an earlier tenancy.
fn started_at(w: u64, lease: u64, longest: u64) -> Option<u64> {
    if w & COUNT_MASK == 0 {
        return None;
    }
    let before_lease = lease.wrapping_sub(w >> COUNT_BITS) & START_MASK;
    (before_lease <= 2 * longest).then(|| lease.saturating_sub(before_lease))
}

/// Words per bucket: the directory, then a lease per way and the overflow way's, then their
/// windows.
fn stride(limits: usize) -> usize {
    1 + (WAYS + 1) * (1 + limits)
}

fn entry(dir: u64, w: usize) -> u16 {
    (dir >> (16 * w)) as u16
}

fn with_entry(dir: u64, w: usize, e: u16) -> u64 {
    (dir & !(0xFFFF << (16 * w))) | (u64::from(e) << (16 * w))
}

fn entry_tag(e: u16) -> u16 {
    e & TAG_MASK
}

fn entry_gen(e: u16) -> u16 {
    e >> TAG_BITS
}

fn make_entry(tag: u16, gen: u16) -> u16 {
    (gen << TAG_BITS) | (tag & TAG_MASK)
}

fn lease_gen(lease: u64) -> u16 {
    (lease >> LEASE_GEN_SHIFT) as u16
}

fn lease_time(lease: u64) -> u64 {
    lease & LEASE_TIME_MASK
}

fn make_lease(gen: u16, until: u64) -> u64 {
    (u64::from(gen) << LEASE_GEN_SHIFT) | (until & LEASE_TIME_MASK)
}

fn with_lease_gen(lease: u64, gen: u16) -> u64 {
    make_lease(gen, lease_time(lease))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use super::*;

    fn limit(max: u64, period: u64) -> Limit {
        Limit { max, period }
    }

    /// A key in bucket `bucket` with tag `tag`.
    fn key(bucket: u64, tag: u64) -> u64 {
        (tag << (64 - TAG_BITS)) | bucket
    }

    fn passes(t: &Table, key: u64, now: u64) -> bool {
        t.take(key, now).admitted
    }

    #[test]
    fn a_window_starts_with_the_first_request_and_refuses_past_its_maximum() {
        let t = Table::new(vec![limit(3, 1000)], true);
        let k = key(1, 1);
        assert!(passes(&t, k, 5000));
        assert!(passes(&t, k, 5100));
        let third = t.take(k, 5200);
        assert!(third.admitted);
        assert_eq!((third.limit, third.remaining, third.reset), (3, 0, 800));
        let refused = t.take(k, 5999);
        assert!(!refused.admitted);
        assert_eq!((refused.limit, refused.remaining, refused.reset), (3, 0, 1));
        // The window began at 5000, not at a boundary of the clock.
        let next = t.take(k, 6000);
        assert!(next.admitted);
        assert_eq!((next.remaining, next.reset), (2, 1000));
    }

    #[test]
    fn refused_requests_take_nothing() {
        let t = Table::new(vec![limit(1, 100)], true);
        let k = key(0, 9);
        assert!(passes(&t, k, 0));
        for now in 1..100 {
            assert!(!passes(&t, k, now));
        }
        assert!(passes(&t, k, 100));
    }

    #[test]
    fn a_request_needs_room_in_every_window_and_a_refusal_costs_none() {
        // 2 per 100 ms and 3 per 1000 ms.
        let t = Table::new(vec![limit(2, 100), limit(3, 1000)], true);
        let k = key(3, 3);
        assert!(passes(&t, k, 0));
        assert!(passes(&t, k, 10));
        // The short window is full: refused, and the long one keeps its third place.
        let refused = t.take(k, 20);
        assert!(!refused.admitted);
        assert_eq!((refused.limit, refused.reset), (2, 80));
        assert!(passes(&t, k, 100));
        // Now the long window is full though the short one has room.
        let refused = t.take(k, 110);
        assert!(!refused.admitted);
        assert_eq!(
            (refused.limit, refused.remaining, refused.reset),
            (3, 0, 890)
        );
        assert!(passes(&t, k, 1000));
    }

    #[test]
    fn headers_describe_the_window_closest_to_refusing() {
        let t = Table::new(vec![limit(10, 1000), limit(4, 60_000)], true);
        let k = key(0, 1);
        let d = t.take(k, 0);
        // 9 left of 10 versus 3 left of 4: the second is closer to refusing.
        assert_eq!((d.limit, d.remaining, d.reset), (4, 3, 60_000));
        let t = Table::new(vec![limit(2, 1000), limit(2, 5000)], true);
        let d = t.take(k, 0);
        // A tie: the one that frees up later.
        assert_eq!((d.limit, d.remaining, d.reset), (2, 1, 5000));
    }

    #[test]
    fn keys_count_apart() {
        let t = Table::new(vec![limit(1, 1000)], true);
        // Same bucket, different tags; and different buckets.
        let (a, b, c) = (key(5, 1), key(5, 2), key(6, 1));
        assert!(passes(&t, a, 0));
        assert!(passes(&t, b, 0));
        assert!(passes(&t, c, 0));
        assert!(!passes(&t, a, 1));
        assert!(!passes(&t, b, 1));
        assert!(!passes(&t, c, 1));
    }

    #[test]
    fn an_idle_key_gives_its_way_to_a_new_one() {
        let t = Table::with_buckets(vec![limit(1, 100)], 1);
        for tag in 1..=4 {
            assert!(passes(&t, key(0, tag), 0));
        }
        // All four ways are live until 100: a fifth key is counted in the overflow way.
        assert!(passes(&t, key(0, 5), 50));
        assert!(!passes(&t, key(0, 5), 51));
        // At 100 the ways fall idle, but the overflow window the fifth key was counted in
        // runs until 150: a way that changed hands now would let a key that comes back to
        // the overflow way into a window that overlaps its last one.
        assert!(!passes(&t, key(0, 5), 100));
        // At 150 the fifth key takes a way of its own.
        assert!(passes(&t, key(0, 5), 150));
        assert!(!passes(&t, key(0, 5), 151));
        let dir = t.directory(0).load(SeqCst);
        assert_eq!(
            (0..WAYS).filter(|&w| entry_tag(entry(dir, w)) == 5).count(),
            1
        );
        // The key it displaced starts afresh wherever it lands.
        assert!(passes(&t, key(0, 1), 152));
    }

    #[test]
    fn memory_stays_bounded_whatever_the_number_of_keys() {
        let t = Table::new(vec![limit(5, 1000)], true);
        let words = t.words.len();
        for i in 0..300_000u64 {
            let k = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            t.take(k, i / 100);
        }
        assert_eq!(t.words.len(), words);
        assert!(words * 8 <= MAX_TABLE_BYTES);
        // One window: the full 2^14 buckets.
        assert_eq!(t.mask + 1, KEYED_BUCKETS);
        // Sixteen windows: fewer buckets, same budget.
        let wide = Table::new((0..16).map(|_| limit(1, 1)).collect(), true);
        assert!(wide.words.len() * 8 <= MAX_TABLE_BYTES);
        assert!((wide.mask + 1).is_power_of_two());
    }

    #[test]
    fn idle_windows_older_than_the_start_can_tell_are_forgotten() {
        let t = Table::new(vec![limit(2, 1000)], true);
        let k = key(2, 2);
        assert!(passes(&t, k, 0));
        assert!(passes(&t, k, 1));
        // 2^38 ms later the start wraps to the same value: the lease says it ended.
        let later = 1 << START_BITS;
        assert!(passes(&t, k, later));
        assert!(passes(&t, k, later + 1));
        assert!(!passes(&t, k, later + 2));
    }

    #[test]
    fn a_clock_read_before_the_window_began_still_counts_in_it() {
        let t = Table::new(vec![limit(2, 1000)], true);
        let k = key(0, 3);
        assert!(passes(&t, k, 500));
        // A thread that read 499 before the window began at 500.
        assert!(passes(&t, k, 499));
        assert!(!passes(&t, k, 498));
    }

    /// Many threads hammering one key pass exactly the limit, with one window or three.
    #[test]
    fn threads_pass_exactly_the_limit() {
        for limits in [
            vec![limit(1000, 60_000)],
            vec![
                limit(1000, 60_000),
                limit(5000, 120_000),
                limit(1500, 30_000),
            ],
        ] {
            let t = Arc::new(Table::new(limits, true));
            let passed = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..8)
                .map(|i| {
                    let (t, passed) = (t.clone(), passed.clone());
                    std::thread::spawn(move || {
                        for n in 0..1000u64 {
                            // Clocks that disagree a little, as workers' do.
                            if t.take(key(7, 7), 1000 + (n + i) % 3).admitted {
                                passed.fetch_add(1, SeqCst);
                            }
                        }
                    })
                })
                .collect();
            for th in threads {
                th.join().expect("thread");
            }
            assert_eq!(passed.load(SeqCst), 1000);
        }
    }

    /// Runs `threads` threads through `phases` phases (a barrier between them); in phase
    /// `p`, thread `i` sends `per_thread` requests at `p x period`, for the keys
    /// `keys(p, i, n)`. Returns what passed, by phase and tag.
    fn race(
        table: &Arc<Table>,
        threads: u64,
        phases: u64,
        per_thread: u64,
        keys: fn(u64, u64, u64) -> u64,
    ) -> Vec<Vec<usize>> {
        let period = table.longest;
        let barrier = Arc::new(std::sync::Barrier::new(threads as usize));
        let passed: Arc<Vec<Vec<AtomicUsize>>> = Arc::new(
            (0..phases)
                .map(|_| (0..16).map(|_| AtomicUsize::new(0)).collect())
                .collect(),
        );
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (table, barrier, passed) = (table.clone(), barrier.clone(), passed.clone());
                std::thread::spawn(move || {
                    for p in 0..phases {
                        barrier.wait();
                        for n in 0..per_thread {
                            let tag = keys(p, i, n);
                            if table.take(key(0, tag), p * period).admitted {
                                passed[p as usize][tag as usize].fetch_add(1, SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        passed
            .iter()
            .map(|phase| phase.iter().map(|c| c.load(SeqCst)).collect())
            .collect()
    }

    /// Keys coming and going in one bucket (claims of free and idle ways racing with the
    /// holders' own requests) each pass exactly their limit per window.
    #[test]
    fn keys_taking_over_idle_ways_pass_exactly_their_limit() {
        // Phase p: tags p+1 ..= p+4, so each phase one key leaves and one arrives.
        let passed = race(
            &Arc::new(Table::with_buckets(vec![limit(50, 1000)], 1)),
            8,
            12,
            200,
            |p, i, n| 1 + p + (n + i) % 4,
        );
        for (p, phase) in passed.iter().enumerate() {
            for (tag, &count) in phase.iter().enumerate() {
                let active = (p + 1..=p + 4).contains(&tag);
                assert_eq!(count, if active { 50 } else { 0 }, "phase {p}: {phase:?}");
            }
        }
    }

    /// More keys than ways, all live: the keys with a way pass exactly their limit, the
    /// others share the overflow way's, and nobody pays for another key's requests.
    #[test]
    fn at_the_cap_the_extra_keys_share_the_overflow_way_and_charge_no_holder() {
        let table = Arc::new(Table::with_buckets(vec![limit(50, 10_000)], 1));
        let passed = race(&table, 6, 1, 3000, |_, i, n| 1 + (n + i) % 6);
        let dir = table.directory(0).load(SeqCst);
        let holders: Vec<usize> = (0..WAYS)
            .map(|w| usize::from(entry_tag(entry(dir, w))))
            .collect();
        for (tag, &count) in passed[0].iter().enumerate() {
            if holders.contains(&tag) {
                assert_eq!(count, 50, "{tag}: {:?} {holders:?}", passed[0]);
            }
        }
        let total: usize = passed[0].iter().sum();
        // Four ways and the overflow way, 50 each.
        assert_eq!(total, 250, "{:?}", passed[0]);
    }

    /// The review's case: a new key in a bucket full of live keys passed in a holder's
    /// window, then in a fresh way of its own while that window still ran.
    #[test]
    fn a_stranger_never_consumes_a_live_keys_quota() {
        let t = Table::with_buckets(vec![limit(2, 1000)], 1);
        let (a, b, e) = (key(0, 1), key(0, 2), key(0, 5));
        assert!(passes(&t, a, 0));
        for tag in 2..=4 {
            assert!(passes(&t, key(0, tag), 500));
        }
        assert!(passes(&t, e, 600));
        // B's quota is its own.
        assert!(passes(&t, b, 650));
        assert!(!passes(&t, b, 700));
        // A's way falls idle at 1000, but E's window runs until 1600: E stays counted there.
        assert!(passes(&t, e, 1000));
        assert!(!passes(&t, e, 1001));
        assert!(!passes(&t, e, 1599));
        assert!(passes(&t, e, 1600));
        assert!(passes(&t, e, 1601));
        assert!(!passes(&t, e, 1602));
        let dir = t.directory(0).load(SeqCst);
        assert!((0..WAYS).any(|w| entry_tag(entry(dir, w)) == 5));
    }

    #[test]
    fn a_way_does_not_change_hands_while_an_older_overflow_window_runs() {
        let t = Table::with_buckets(vec![limit(2, 100)], 1);
        let a = key(0, 1);
        assert!(passes(&t, a, 0));
        assert!(passes(&t, a, 99));
        for tag in 2..=4 {
            assert!(passes(&t, key(0, tag), 10));
        }
        // The overflow window opens at 50, before A's way falls idle at 100.
        assert!(passes(&t, key(0, 5), 50));
        // A newcomer at 100 joins the overflow way rather than take A's: had it taken it,
        // A would be counted from 101 in the overflow window that began at 50, which
        // overlaps the window A just used up (a third request within 100 ms).
        assert!(passes(&t, key(0, 6), 100));
        let dir = t.directory(0).load(SeqCst);
        assert!((0..WAYS).any(|w| entry_tag(entry(dir, w)) == 1));
        assert!(passes(&t, a, 101));
        assert!(passes(&t, a, 102));
        assert!(!passes(&t, a, 103));
    }

    /// Keys coming and going in a crowded bucket at random: whatever way each request is
    /// counted in, a key's windows (as its admissions report them) never overlap and none
    /// passes it more than its limit.
    #[test]
    fn an_overflowing_key_never_passes_more_than_its_limit_in_a_window() {
        let (max, period) = (3u64, 100u64);
        let t = Table::with_buckets(vec![limit(max, period)], 1);
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Per tag: the end of each window it passed in, and how many it passed there.
        let mut windows: Vec<Vec<(u64, u64)>> = vec![Vec::new(); 9];
        let mut now = 0;
        for _ in 0..50_000 {
            now += next() % 4;
            let tag = 1 + next() % 8;
            let d = t.take(key(0, tag), now);
            if d.admitted {
                let end = now + d.reset;
                let seen = &mut windows[tag as usize];
                match seen.last_mut() {
                    Some((last, count)) if *last == end => *count += 1,
                    _ => seen.push((end, 1)),
                }
            }
        }
        for (tag, seen) in windows.iter().enumerate() {
            for pair in seen.windows(2) {
                assert!(pair[1].0 >= pair[0].0 + period, "tag {tag}: {pair:?}");
            }
            assert!(seen.iter().all(|&(_, n)| n <= max), "tag {tag}: {seen:?}");
        }
        assert!(windows.iter().map(Vec::len).sum::<usize>() > 1000);
    }

    #[test]
    fn a_half_done_claim_is_given_back_to_the_holder() {
        let t = Table::with_buckets(vec![limit(1, 100)], 1);
        let k = key(0, 1);
        assert!(passes(&t, k, 0));
        // A claimer for tag 2 revoked way 0 at 100 and stalled before publishing.
        let dir = t.directory(0).load(SeqCst);
        let w = (0..WAYS).find(|&w| entry_tag(entry(dir, w)) == 1).unwrap();
        let lease = t.lease(0, w).load(SeqCst);
        let moved = with_lease_gen(lease, (entry_gen(entry(dir, w)) + 1) & 0xF) | SEED;
        t.lease(0, w).store(moved, SeqCst);
        // The holder does not wait: it takes the way back and counts in it.
        assert!(passes(&t, k, 100));
        assert!(!passes(&t, k, 101));
        let dir = t.directory(0).load(SeqCst);
        assert_eq!(entry_tag(entry(dir, w)), 1);
        assert_eq!(entry_gen(entry(dir, w)), lease_gen(moved));
    }

    /// A claimer stalled between its two steps, whose way was given back and then handed
    /// round until its entry looked the same again, does not publish over the live holder.
    #[test]
    fn a_stale_claim_does_not_publish_over_a_live_holder() {
        let t = Table::with_buckets(vec![limit(1, 100)], 1);
        assert!(passes(&t, key(0, 1), 0));
        let dir = t.directory(0).load(SeqCst);
        let w = (0..WAYS).find(|&w| entry_tag(entry(dir, w)) == 1).unwrap();
        let lease = t.lease(0, w).load(SeqCst);
        // What the claimer had revoked to, long ago; the holder's lease is live now.
        let revoked = with_lease_gen(lease, (entry_gen(entry(dir, w)) + 1) & 0xF) | SEED;
        t.publish(0, w, dir, revoked, 9);
        assert_eq!(t.directory(0).load(SeqCst), dir);
        assert!(!passes(&t, key(0, 1), 1));
    }
}
