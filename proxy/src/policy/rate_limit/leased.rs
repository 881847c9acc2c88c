//! A clusterizable rate limit's counters with a `sharedStorage`: quota leased from Redis in
//! batches, spent here on atomics.
//!
//! Redis counts what the fleet has reserved of each window (the lease script in
//! [`crate::shared`]); a replica spends what it reserved without asking again. Because quota
//! is reserved before it is used, the fleet never passes more than the limit in a window
//! (as long as Redis keeps its keys). What a replica reserved and did not use by the
//! window's end is lost: at most one grant per replica and key, `max(1, ceil(max / 100))`
//! ([`shared::grant_cap`]).
//!
//! Per key (a slot: one of the [`WAYS`] ways of the set its local hash picks) and limit, one
//! word holds the tokens left (26 bits) and the local time the reservation's window ends (38
//! bits). A request takes a token from every limit (all or none) with one CAS each: that is
//! the common path. When tokens run low (half a batch) a refill is sent in the background,
//! one at a time per slot (`busy`); a refill that lands to find them low again (spent while
//! it was in flight, in a window still open) sends the next itself; a request that finds
//! none waits for it ([`Outcome::Wait`]). A key's first batch is one token; a batch doubles
//! when the last one lasted under [`HORIZON_MS`] and halves when it lasted over four times
//! that, up to the cap: the busier the key, the fewer round trips.
//!
//! A key takes a way only when that way holds no tokens (its windows have ended or are
//! spent) and no refill is in flight, so another key never drops a key's reserved quota.
//! A key whose set has no such way gets a one-off lease of one token per limit in a spare
//! slot, taken by its next look (one Redis round trip for the request, nothing cached
//! ahead). A spare's token that no request took within [`CLAIM_MS`] (its request gave up)
//! may be dropped for another key: one token, counted as if it had passed.
//!
//! The window's end is taken as the time the refill was sent plus the TTL Redis reported,
//! which is never later than its real end, so local tokens never outlive their window.
//! A refill that Redis ran in the window still open here adds to it; otherwise it replaces
//! it, also when Redis started a new window while the old one is open here (it lost the
//! key), so that old tokens are not carried into a window Redis counts from zero. When
//! Redis says a window has nothing left, the slot refuses locally until it ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::{Decision, Limit};
use crate::shared::{self, Grant, Handle, Lease, Unavailable, Window};

const COUNT_BITS: u32 = 26;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Ways of a set: keys whose hashes pick the same set share its ways.
const WAYS: usize = 4;
/// Slots of the table (`WAYS` per set): keys with a lease at once.
const SLOTS: usize = 1 << 14;
/// Slots for one-off leases, for keys whose set has no way free.
const SPARES: usize = 64;
/// A one-off token nobody took this long after its lease was sent may be dropped.
const CLAIM_MS: u64 = 1000;
/// A batch should last about this long at the key's rate.
pub const HORIZON_MS: u64 = 50;
/// Key text longer than this goes to Redis as its SHA-256.
const MAX_KEY_TEXT: usize = 128;

/// What a request gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Decided(Decision),
    /// A refill is in flight: ask again shortly.
    Wait,
    /// Redis is down, or did not answer in time.
    Unavailable,
}

pub struct Leased {
    limits: Box<[Limit]>,
    /// `ringwall:rl:{<binding>`: Redis keys are this, the key text, `}:` and the limit's
    /// index, so that a key's windows share a cluster hash slot.
    prefix: String,
    /// The cached slots (the first `cached`), then the spares.
    slots: Box<[Slot]>,
    cached: usize,
    /// `slots.len() x limits.len()`.
    lanes: Box<[Lane]>,
    storage: Handle,
    epoch: Instant,
}

#[derive(Default)]
struct Slot {
    /// The key hash holding the slot (0: none).
    key: AtomicU64,
    /// A refill is in flight, or the slot is changing hands.
    busy: AtomicBool,
    batch: AtomicU64,
    /// When the last refill was sent (ms).
    refilled: AtomicU64,
}

#[derive(Default)]
struct Lane {
    /// Window end (ms) << 26 | tokens.
    word: AtomicU64,
    /// Redis had nothing left in the window ending then (ms).
    full_until: AtomicU64,
    /// What the fleet had left at the last refill, for the headers.
    left: AtomicU64,
}

impl Leased {
    /// A store for the binding `binding`, with `epoch` the policy's clock.
    pub fn new(limits: Vec<Limit>, binding: &str, storage: Handle, epoch: Instant) -> Leased {
        Leased::with_slots(limits, binding, storage, epoch, SLOTS, SPARES)
    }

    /// `slots` and `spares` are powers of two, at least [`WAYS`].
    fn with_slots(
        limits: Vec<Limit>,
        binding: &str,
        storage: Handle,
        epoch: Instant,
        slots: usize,
        spares: usize,
    ) -> Leased {
        let all = slots + spares;
        Leased {
            prefix: format!("ringwall:rl:{{{binding}"),
            slots: (0..all).map(|_| Slot::default()).collect(),
            cached: slots,
            lanes: (0..all * limits.len()).map(|_| Lane::default()).collect(),
            limits: limits.into_boxed_slice(),
            storage,
            epoch,
        }
    }

    fn lane(&self, slot: usize, j: usize) -> &Lane {
        &self.lanes[slot * self.limits.len() + j]
    }

    /// The first slot of the key's set of cached slots, and of its set of spares.
    fn sets(&self, hash: u64) -> [usize; 2] {
        let spares = self.slots.len() - self.cached;
        [
            (hash as usize) & (self.cached - 1) & !(WAYS - 1),
            self.cached + ((hash >> 32) as usize & (spares - 1) & !(WAYS - 1)),
        ]
    }

    fn is_spare(&self, s: usize) -> bool {
        s >= self.cached
    }

    /// Counts a request of the key hashed `hash` at `now`. `key_text` writes the key as
    /// replicas agree on it; it is called only for a refill.
    pub fn take(
        self: &Arc<Self>,
        hash: u64,
        now: u64,
        key_text: impl FnOnce() -> Vec<u8>,
    ) -> Outcome {
        let id = hash.max(1);
        let found = self.find(hash, id, now);
        if let Some(s) = found {
            if let Some((decision, low)) = self.spend(s, id, now) {
                if low && !self.is_spare(s) {
                    self.refill(s, hash, now, key_text);
                }
                return Outcome::Decided(decision);
            }
            // No tokens: a window Redis said is full refuses here.
            if let Some(refused) = self.known_full(s, now) {
                return Outcome::Decided(refused);
            }
        }
        if !self.storage.is_up() {
            return Outcome::Unavailable;
        }
        // The key's own cached slot, or its one-off lease in flight; else a free slot.
        let s = match found {
            Some(s) if !self.is_spare(s) || self.slots[s].busy.load(SeqCst) => s,
            _ => match self.vacancy(hash, now) {
                Some(s) => s,
                None => return Outcome::Wait,
            },
        };
        if self.refill(s, hash, now, key_text) {
            return Outcome::Wait;
        }
        // Lost a race for the slot to another refill, or Redis went down just now.
        if self.storage.is_up() {
            Outcome::Wait
        } else {
            Outcome::Unavailable
        }
    }

    /// The key's slot: the one with tokens or a refill in flight, else any it holds.
    fn find(&self, hash: u64, id: u64, now: u64) -> Option<usize> {
        let mut held = None;
        for first in self.sets(hash) {
            for s in first..first + WAYS {
                if self.slots[s].key.load(SeqCst) != id {
                    continue;
                }
                if self.slots[s].busy.load(SeqCst) || self.holds_tokens(s, now) {
                    return Some(s);
                }
                held = held.or(Some(s));
            }
        }
        held
    }

    /// A slot another key may take: a way of the key's set, else a spare.
    fn vacancy(&self, hash: u64, now: u64) -> Option<usize> {
        self.sets(hash)
            .into_iter()
            .flat_map(|first| first..first + WAYS)
            .find(|&s| !self.slots[s].busy.load(SeqCst) && self.free(s, now))
    }

    /// Whether taking slot `s` drops no quota: it holds no tokens, or it is a spare whose
    /// token nobody came for.
    fn free(&self, s: usize, now: u64) -> bool {
        let slot = &self.slots[s];
        slot.key.load(SeqCst) == 0
            || !self.holds_tokens(s, now)
            || self.is_spare(s) && now.saturating_sub(slot.refilled.load(SeqCst)) > CLAIM_MS
    }

    fn holds_tokens(&self, s: usize, now: u64) -> bool {
        (0..self.limits.len()).any(|j| self.tokens(s, j, now) > 0)
    }

    /// The tokens of limit `j` at slot `s` if its window is still open at `now`, else 0.
    fn tokens(&self, s: usize, j: usize, now: u64) -> u64 {
        self.open_tokens(s, j, now).unwrap_or(0)
    }

    /// The tokens of limit `j` at slot `s`, or `None` once its window has ended at `now`.
    fn open_tokens(&self, s: usize, j: usize, now: u64) -> Option<u64> {
        let w = self.lane(s, j).word.load(SeqCst);
        (w >> COUNT_BITS > now).then_some(w & COUNT_MASK)
    }

    /// Takes a token from every limit: the decision and whether a refill is due.
    fn spend(&self, s: usize, id: u64, now: u64) -> Option<(Decision, bool)> {
        let slot = &self.slots[s];
        let batch = slot.batch.load(SeqCst).max(1);
        let mut taken = [0u64; super::table::MAX_LIMITS];
        let mut report = Decision::passed();
        let mut low = false;
        for (j, limit) in self.limits.iter().enumerate() {
            let lane = self.lane(s, j);
            let mut w = lane.word.load(SeqCst);
            loop {
                let (end, tokens) = (w >> COUNT_BITS, w & COUNT_MASK);
                if end <= now || tokens == 0 {
                    self.give_back(s, &taken[..j]);
                    return None;
                }
                match lane.word.compare_exchange_weak(w, w - 1, SeqCst, SeqCst) {
                    Ok(_) => {
                        taken[j] = end;
                        let left = lane.left.load(SeqCst) + tokens - 1;
                        report.consider(limit, limit.max.saturating_sub(left), end - now);
                        low |= self.low(s, j, tokens - 1, batch, now);
                        break;
                    }
                    Err(actual) => w = actual,
                }
            }
        }
        // The slot changed hands while this counted: the tokens were not this key's.
        if slot.key.load(SeqCst) != id {
            self.give_back(s, &taken[..self.limits.len()]);
            return None;
        }
        Some((report, low))
    }

    /// Whether `tokens` left of limit `j` at slot `s` call for a refill: half a batch or
    /// less, unless Redis said the window is full.
    fn low(&self, s: usize, j: usize, tokens: u64, batch: u64, now: u64) -> bool {
        let target = batch.min(shared::grant_cap(self.limits[j].max));
        tokens <= target / 2 && self.lane(s, j).full_until.load(SeqCst) <= now
    }

    /// Returns tokens taken from windows ending at `taken[j]`, if those still stand.
    fn give_back(&self, s: usize, taken: &[u64]) {
        for (j, &end) in taken.iter().enumerate() {
            let word = &self.lane(s, j).word;
            let mut w = word.load(SeqCst);
            while w >> COUNT_BITS == end && end != 0 {
                match word.compare_exchange_weak(w, w + 1, SeqCst, SeqCst) {
                    Ok(_) => break,
                    Err(actual) => w = actual,
                }
            }
        }
    }

    /// A refusal, when a limit with no tokens here has nothing left in Redis either.
    fn known_full(&self, s: usize, now: u64) -> Option<Decision> {
        for (j, limit) in self.limits.iter().enumerate() {
            let lane = self.lane(s, j);
            // `full_until` before the word: a refill stores its last tokens before it marks
            // the window full, so a mark seen here comes with those tokens.
            let until = lane.full_until.load(SeqCst);
            let w = lane.word.load(SeqCst);
            let empty = (w >> COUNT_BITS) <= now || w & COUNT_MASK == 0;
            if empty && until > now {
                return Some(Decision::refused(limit, until - now));
            }
        }
        None
    }

    /// Sends a refill for slot `s` on behalf of the key hashed `hash`, taking the slot if it
    /// is free. `false` when one is already in flight, the slot is not free, Redis is down,
    /// or there is nothing to ask for.
    fn refill(
        self: &Arc<Self>,
        s: usize,
        hash: u64,
        now: u64,
        key_text: impl FnOnce() -> Vec<u8>,
    ) -> bool {
        let id = hash.max(1);
        let slot = &self.slots[s];
        if !self.storage.is_up()
            || slot
                .busy
                .compare_exchange(false, true, SeqCst, SeqCst)
                .is_err()
        {
            return false;
        }
        let batch = if slot.key.load(SeqCst) != id {
            if !self.take_over(s, hash, now) {
                slot.busy.store(false, SeqCst);
                return false;
            }
            1
        } else if self.is_spare(s) {
            slot.refilled.store(now, SeqCst);
            1
        } else {
            self.next_batch(slot, now)
        };
        self.send(s, id, batch, redis_key_text(&key_text()), now)
    }

    /// Leases a batch of `batch` for slot `s`, whose refill flag is held, under the key `id`
    /// and its text `text`. `false` (and the flag released) when there is nothing to ask for.
    fn send(self: &Arc<Self>, s: usize, id: u64, batch: u64, text: String, now: u64) -> bool {
        let mut want = [0u64; super::table::MAX_LIMITS];
        for (j, limit) in self.limits.iter().enumerate() {
            let target = batch.min(shared::grant_cap(limit.max));
            want[j] = target.saturating_sub(self.tokens(s, j, now));
        }
        // A batch that just shrank (the last one lasted long) can be no more than what is
        // left: a refill asking for nothing would hold `busy` until it came back empty.
        if want.iter().all(|&w| w == 0) {
            self.release(s, id, text, now);
            return false;
        }
        let windows = self
            .limits
            .iter()
            .zip(want)
            .enumerate()
            .map(|(j, (limit, want))| Window {
                key: format!(
                    "{}:{text}}}:{j}:{}:{}",
                    self.prefix, limit.max, limit.period
                ),
                want,
                max: limit.max,
                period: limit.period,
            })
            .collect();
        let this = Arc::clone(self);
        self.storage.lease(Lease::new(
            windows,
            Box::new(move |result, sent| this.refilled(s, id, result, sent, text)),
        ));
        true
    }

    /// Drops slot `s`'s refill flag, held for the key `id`. A request that ran the tokens
    /// low while the flag was held sent no refill; its spend is seen here, and the refill it
    /// could not send goes now (a request after this sends its own). Otherwise the key could
    /// spend its last token with none in flight, and leave its way free for another key.
    fn release(self: &Arc<Self>, s: usize, id: u64, text: String, now: u64) {
        let slot = &self.slots[s];
        slot.busy.store(false, SeqCst);
        if !self.wants_more(s, now)
            || slot
                .busy
                .compare_exchange(false, true, SeqCst, SeqCst)
                .is_err()
        {
            return;
        }
        // The flag was free a moment: the slot may have changed hands.
        if slot.key.load(SeqCst) != id {
            slot.busy.store(false, SeqCst);
            return;
        }
        let batch = self.next_batch(slot, now);
        self.send(s, id, batch, text, now);
    }

    /// Whether cached slot `s` should be refilled without waiting for a request: a limit
    /// whose window is open is low, as a spend would find it. A window that has ended waits
    /// for the key's next request (its period may be shorter than a round trip).
    fn wants_more(&self, s: usize, now: u64) -> bool {
        if self.is_spare(s) || !self.storage.is_up() {
            return false;
        }
        let batch = self.slots[s].batch.load(SeqCst).max(1);
        (0..self.limits.len()).any(|j| {
            self.open_tokens(s, j, now)
                .is_some_and(|tokens| self.low(s, j, tokens, batch, now))
        })
    }

    /// Gives the free slot `s` (its refill flag held) to the key hashed `hash`, with a
    /// first batch of one. `false` when it is not free, or another slot of the key's sets
    /// took the key.
    fn take_over(&self, s: usize, hash: u64, now: u64) -> bool {
        let id = hash.max(1);
        let slot = &self.slots[s];
        if !self.free(s, now) {
            return false;
        }
        // The slot holds no tokens of its key (or only a token nobody came for). A request of
        // that key giving back a token it took just now loses it: quota lost, never extra.
        for j in 0..self.limits.len() {
            let lane = self.lane(s, j);
            lane.word.store(0, SeqCst);
            lane.full_until.store(0, SeqCst);
            lane.left.store(0, SeqCst);
        }
        slot.batch.store(1, SeqCst);
        slot.refilled.store(now, SeqCst);
        slot.key.store(id, SeqCst);
        // Two requests of a new key may each take a slot at once: the second to look
        // (after its own store) sees the other and gives way, so only one holds a lease.
        let twin = self
            .sets(hash)
            .into_iter()
            .flat_map(|first| first..first + WAYS)
            .any(|t| {
                t != s
                    && self.slots[t].key.load(SeqCst) == id
                    && (self.slots[t].busy.load(SeqCst) || self.holds_tokens(t, now))
            });
        if twin {
            slot.key.store(0, SeqCst);
        }
        !twin
    }

    /// The batch of the key holding the cached slot `slot`, by how long the last one
    /// lasted.
    fn next_batch(&self, slot: &Slot, now: u64) -> u64 {
        let since = now.saturating_sub(slot.refilled.swap(now, SeqCst));
        let mut batch = slot.batch.load(SeqCst).max(1);
        if since < HORIZON_MS {
            batch = batch.saturating_mul(2);
        } else if since > 4 * HORIZON_MS {
            batch = (batch / 2).max(1);
        }
        let widest = self.limits.iter().map(|l| shared::grant_cap(l.max)).max();
        let batch = batch.min(widest.unwrap_or(1));
        slot.batch.store(batch, SeqCst);
        batch
    }

    /// A refill's answer for the key `id` and its text `text`, on the shared-storage thread
    /// (or on a worker, when that thread has stopped). When requests spent the tokens low
    /// while it was in flight, the next refill goes now, the flag kept.
    fn refilled(
        self: &Arc<Self>,
        s: usize,
        id: u64,
        result: Result<Vec<Grant>, Unavailable>,
        sent: Instant,
        text: String,
    ) {
        let Ok(grants) = result else {
            self.slots[s].busy.store(false, SeqCst);
            return;
        };
        let sent = ms(sent.saturating_duration_since(self.epoch));
        let now = ms(self.epoch.elapsed());
        for (j, grant) in grants.iter().enumerate().take(self.limits.len()) {
            self.apply(s, j, grant, sent, now);
        }
        if self.wants_more(s, now) {
            let batch = self.next_batch(&self.slots[s], now);
            self.send(s, id, batch, text, now);
        } else {
            self.release(s, id, text, now);
        }
    }

    fn apply(&self, s: usize, j: usize, grant: &Grant, sent: u64, now: u64) {
        let lane = self.lane(s, j);
        let end = sent + grant.ttl;
        // In one window, two ends differ by at most the older refill's round trip (under
        // the call timeout), rounding, and how far Redis's clock ran apart from this one's
        // (allowed 0.1%); an end past that is a window Redis started anew.
        let slack = ROUND_TRIP_MS + self.limits[j].period / 1000;
        lane.left.store(grant.left, SeqCst);
        let mut w = lane.word.load(SeqCst);
        loop {
            let (old_end, tokens) = (w >> COUNT_BITS, w & COUNT_MASK);
            let same = old_end > now && end <= old_end + slack;
            let new = if same {
                (old_end.max(end) << COUNT_BITS) | (tokens + grant.granted).min(COUNT_MASK)
            } else {
                (end << COUNT_BITS) | grant.granted.min(COUNT_MASK)
            };
            match lane.word.compare_exchange_weak(w, new, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(actual) => w = actual,
            }
        }
        // After the tokens: a request that finds none and sees the mark must not be refused
        // while this grant's last tokens are on their way in (`known_full`).
        if grant.left == 0 {
            lane.full_until.fetch_max(end, SeqCst);
        }
    }
}

/// The longest round trip of an answered call, and rounding to milliseconds.
const ROUND_TRIP_MS: u64 = shared::TIMEOUT.as_millis() as u64 + 2;

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The key as it goes into a Redis key name: as written when short and printable (and
/// without the braces that delimit the hash tag), else its SHA-256 in hex.
fn redis_key_text(key: &[u8]) -> String {
    let plain = key.len() <= MAX_KEY_TEXT
        && key
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b'{' && b != b'}' || b == b' ');
    if plain {
        return String::from_utf8_lossy(key).into_owned();
    }
    let digest = Sha256::digest(key);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests;
