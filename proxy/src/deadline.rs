//! A connection's one timer, serving each read and write it waits on. A timer made and
//! dropped per operation costs the runtime a registration and a removal in its timer wheel
//! every time, and so does moving a registered timer earlier. So the timer is only ever
//! moved earlier when an operation must end before it would fire; otherwise it is left
//! where it is, and when it fires before the operation's own deadline it is moved on to it.
//! A keep-alive connection whose operations alternate between short and long waits (15 s
//! for an upstream, 300 s for an idle client) thus touches the wheel about once per short
//! wait period instead of on every request.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Where a fresh timer points until its first use: far enough never to fire.
const UNARMED: Duration = Duration::from_secs(365 * 24 * 3600);

pub struct Deadline {
    /// Armed at or before the deadline of the operation waited on.
    sleep: Pin<Box<Sleep>>,
}

impl Default for Deadline {
    fn default() -> Self {
        Deadline {
            sleep: Box::pin(tokio::time::sleep(UNARMED)),
        }
    }
}

impl Deadline {
    /// Runs `op` until it completes or `wait` has passed; `None` when time ran out, and `op`
    /// is dropped unfinished. The operations of one connection run one at a time, so one
    /// timer serves them all.
    pub async fn within<F: Future>(&mut self, wait: Duration, mut op: F) -> Option<F::Output> {
        let due = Instant::now() + wait;
        if self.sleep.deadline() > due {
            self.sleep.as_mut().reset(due);
        }
        // Polled where it is, not moved into a pinned slot of its own (a copy of the whole
        // operation, per read and write).
        // SAFETY: `op` lives in this future's state, which is pinned while it runs, and is
        // neither moved nor reached any other way after this point.
        let mut op = unsafe { Pin::new_unchecked(&mut op) };
        let sleep = &mut self.sleep;
        poll_fn(move |cx| {
            // The operation first: one that is done wins even if the time is up as well.
            if let Poll::Ready(out) = op.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            // Fired: at `due` the time is up; earlier (armed for an operation before this
            // one), it moves on to `due` and waits again.
            while sleep.as_mut().poll(cx).is_ready() {
                if sleep.deadline() >= due {
                    return Poll::Ready(None);
                }
                sleep.as_mut().reset(due);
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_a_timed_runtime(test: impl Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(test);
    }

    #[test]
    fn an_operation_finishes_in_time_or_is_cut_off_and_the_timer_serves_again() {
        on_a_timed_runtime(async {
            let mut deadline = Deadline::default();
            assert_eq!(
                deadline.within(Duration::from_secs(1), async { 7 }).await,
                Some(7)
            );
            let slow = tokio::time::sleep(Duration::from_secs(5));
            let started = Instant::now();
            assert_eq!(deadline.within(Duration::from_millis(50), slow).await, None);
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(50) && took < Duration::from_secs(2));
            // Re-armed later than its last deadline, then earlier again.
            let quick = tokio::time::sleep(Duration::from_millis(20));
            assert_eq!(
                deadline.within(Duration::from_secs(10), quick).await,
                Some(())
            );
            let slow = tokio::time::sleep(Duration::from_secs(5));
            let started = Instant::now();
            assert_eq!(deadline.within(Duration::from_millis(30), slow).await, None);
            assert!(started.elapsed() < Duration::from_secs(2));
        });
    }

    #[test]
    fn a_timer_left_armed_for_a_shorter_wait_neither_cuts_a_longer_one_short_nor_forgets_it() {
        on_a_timed_runtime(async {
            let mut deadline = Deadline::default();
            assert_eq!(
                deadline
                    .within(Duration::from_millis(40), async { 1 })
                    .await,
                Some(1)
            );
            // Still armed 40 ms after the first operation began: it fires during this one.
            let done_in_time = tokio::time::sleep(Duration::from_millis(150));
            assert_eq!(
                deadline
                    .within(Duration::from_millis(400), done_in_time)
                    .await,
                Some(())
            );
            assert_eq!(
                deadline
                    .within(Duration::from_millis(40), async { 2 })
                    .await,
                Some(2)
            );
            let started = Instant::now();
            let slow = tokio::time::sleep(Duration::from_secs(5));
            assert_eq!(
                deadline.within(Duration::from_millis(200), slow).await,
                None
            );
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(200) && took < Duration::from_secs(2),
                "cut off at its own deadline, not the earlier one: {took:?}"
            );
        });
    }
}
