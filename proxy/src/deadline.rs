//! A connection's one timer, re-armed for each read and write it waits on. A timer made
//! and dropped per operation costs the runtime a registration and a removal in its timer
//! wheel every time; re-arming one that is already registered to a later instant only
//! moves its deadline (tokio re-files it lazily, if it ever comes due), so the steady state
//! of a keep-alive connection touches the wheel about once per timeout period.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Where a fresh timer points until its first use: far enough never to fire.
const UNARMED: Duration = Duration::from_secs(365 * 24 * 3600);

pub struct Deadline {
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
    pub async fn within<F: Future>(&mut self, wait: Duration, op: F) -> Option<F::Output> {
        self.sleep.as_mut().reset(Instant::now() + wait);
        let mut op = pin!(op);
        let sleep = &mut self.sleep;
        poll_fn(move |cx| {
            // The operation first: one that is done wins even if the time is up as well.
            if let Poll::Ready(out) = op.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            sleep.as_mut().poll(cx).map(|()| None)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_finishes_in_time_or_is_cut_off_and_the_timer_serves_again() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
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
}
