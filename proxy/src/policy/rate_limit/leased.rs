//! A clusterizable rate limit's counters with a `sharedStorage`: quota leased from Redis in
//! batches, spent here on atomics.
//!
//! Redis counts what the fleet has reserved of each window (the lease script in
//! [`crate::shared`]); a replica spends what it reserved without asking again. Because quota
//! is reserved before it is used, the fleet never passes more than the limit in a window.
//! What a replica reserved and did not use by the window's end is lost: at most one grant
//! per replica and key, `max(1, ceil(max / 100))` ([`shared::grant_cap`]).
//!
//! Per key (a slot of a direct-mapped table, by the local key hash) and limit, one word
//! holds the tokens left (26 bits) and the local time the reservation's window ends (38
//! bits). A request takes a token from every limit (all or none) with one CAS each: that is
//! the common path. When tokens run low (half a batch) a refill is sent in the background,
//! one at a time per slot (`busy`); a request that finds none waits for it
//! ([`Outcome::Wait`]). A batch doubles when the last one lasted under [`HORIZON_MS`] and
//! halves when it lasted over four times that, up to the cap: the busier the key, the
//! fewer round trips.
//!
//! The window's end is taken as the time the refill was sent plus the TTL Redis reported,
//! which is never later than its real end, so local tokens never outlive their window.
//! A refill that finds the old window still open locally adds to it (Redis ran it in the
//! same window); otherwise it replaces it. When Redis says a window has nothing left, the
//! slot refuses locally until it ends. A key that takes a slot from another drops the other
//! key's tokens (quota lost, never extra).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::{Decision, Limit};
use crate::shared::{self, Grant, Handle, Lease, Unavailable, Window};

const COUNT_BITS: u32 = 26;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Slots of the table: keys with a lease at once.
const SLOTS: usize = 1 << 14;
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
    slots: Box<[Slot]>,
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
        Leased::with_slots(limits, binding, storage, epoch, SLOTS)
    }

    fn with_slots(
        limits: Vec<Limit>,
        binding: &str,
        storage: Handle,
        epoch: Instant,
        slots: usize,
    ) -> Leased {
        let lanes = slots * limits.len();
        Leased {
            limits: limits.into_boxed_slice(),
            prefix: format!("ringwall:rl:{{{binding}"),
            slots: (0..slots).map(|_| Slot::default()).collect(),
            lanes: (0..lanes).map(|_| Lane::default()).collect(),
            storage,
            epoch,
        }
    }

    fn lane(&self, slot: usize, j: usize) -> &Lane {
        &self.lanes[slot * self.limits.len() + j]
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
        let s = (hash as usize) & (self.slots.len() - 1);
        let slot = &self.slots[s];
        if slot.key.load(SeqCst) == id {
            if let Some((decision, low)) = self.spend(s, id, now) {
                if low {
                    self.refill(s, id, now, key_text);
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
        if slot.busy.load(SeqCst) || self.refill(s, id, now, key_text) {
            return Outcome::Wait;
        }
        // Lost a race for the slot to another refill, or Redis went down just now.
        if self.storage.is_up() {
            Outcome::Wait
        } else {
            Outcome::Unavailable
        }
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
                        let target = batch.min(shared::grant_cap(limit.max));
                        low |= tokens - 1 <= target / 2 && lane.full_until.load(SeqCst) <= now;
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
            let w = lane.word.load(SeqCst);
            let empty = (w >> COUNT_BITS) <= now || w & COUNT_MASK == 0;
            let until = lane.full_until.load(SeqCst);
            if empty && until > now {
                return Some(Decision::refused(limit, until - now));
            }
        }
        None
    }

    /// Sends a refill for slot `s` on behalf of key `id`, taking the slot if another key
    /// has it. `false` when one is already in flight or Redis is down.
    fn refill(
        self: &Arc<Self>,
        s: usize,
        id: u64,
        now: u64,
        key_text: impl FnOnce() -> Vec<u8>,
    ) -> bool {
        let slot = &self.slots[s];
        if !self.storage.is_up()
            || slot
                .busy
                .compare_exchange(false, true, SeqCst, SeqCst)
                .is_err()
        {
            return false;
        }
        if slot.key.load(SeqCst) != id {
            // Drop the other key's tokens first, then take the slot.
            for j in 0..self.limits.len() {
                let lane = self.lane(s, j);
                lane.word.store(0, SeqCst);
                lane.full_until.store(0, SeqCst);
                lane.left.store(0, SeqCst);
            }
            slot.batch.store(1, SeqCst);
            slot.refilled.store(now, SeqCst);
            slot.key.store(id, SeqCst);
        }
        let since = now.saturating_sub(slot.refilled.swap(now, SeqCst));
        let mut batch = slot.batch.load(SeqCst).max(1);
        if since < HORIZON_MS {
            batch = batch.saturating_mul(2);
        } else if since > 4 * HORIZON_MS {
            batch = (batch / 2).max(1);
        }
        let widest = self.limits.iter().map(|l| shared::grant_cap(l.max)).max();
        slot.batch.store(batch.min(widest.unwrap_or(1)), SeqCst);

        let text = redis_key_text(&key_text());
        let windows: Vec<Window> = self
            .limits
            .iter()
            .enumerate()
            .map(|(j, limit)| {
                let w = self.lane(s, j).word.load(SeqCst);
                let tokens = if w >> COUNT_BITS > now {
                    w & COUNT_MASK
                } else {
                    0
                };
                let target = batch.min(shared::grant_cap(limit.max));
                Window {
                    key: format!(
                        "{}:{text}}}:{j}:{}:{}",
                        self.prefix, limit.max, limit.period
                    ),
                    want: target.saturating_sub(tokens),
                    max: limit.max,
                    period: limit.period,
                }
            })
            .collect();
        let this = Arc::clone(self);
        self.storage.lease(Lease::new(
            windows,
            Box::new(move |result, sent| this.refilled(s, result, sent)),
        ));
        true
    }

    /// A refill's answer, on the shared-storage thread.
    fn refilled(&self, s: usize, result: Result<Vec<Grant>, Unavailable>, sent: Instant) {
        if let Ok(grants) = result {
            let sent = ms(sent.saturating_duration_since(self.epoch));
            let now = ms(self.epoch.elapsed());
            for (j, grant) in grants.iter().enumerate().take(self.limits.len()) {
                self.apply(s, j, grant, sent, now);
            }
        }
        self.slots[s].busy.store(false, SeqCst);
    }

    fn apply(&self, s: usize, j: usize, grant: &Grant, sent: u64, now: u64) {
        let lane = self.lane(s, j);
        let end = sent + grant.ttl;
        lane.left.store(grant.left, SeqCst);
        if grant.left == 0 {
            lane.full_until.fetch_max(end, SeqCst);
        }
        let mut w = lane.word.load(SeqCst);
        loop {
            let (old_end, tokens) = (w >> COUNT_BITS, w & COUNT_MASK);
            let new = if old_end > now {
                // Redis ran the script before `now`, in the window still open here.
                (old_end.max(end) << COUNT_BITS) | (tokens + grant.granted).min(COUNT_MASK)
            } else {
                (end << COUNT_BITS) | grant.granted.min(COUNT_MASK)
            };
            match lane.word.compare_exchange_weak(w, new, SeqCst, SeqCst) {
                Ok(_) => return,
                Err(actual) => w = actual,
            }
        }
    }
}

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
