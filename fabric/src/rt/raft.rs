//! openraft 0.9.25 `AsyncRuntime` on `fabric::rt` (tokio on hosts, madsim in the simulation).
//! No `cfg(madsim)` needed: madsim-tokio is imported as `tokio`, and every type used
//! here exists under the same path in both worlds.
use std::future::Future;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend};

use crate::rt; // fabric::rt (spawn, now, Elapsed, seeded_rng)

/// The runtime marker type named in `declare_raft_types!`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RtRuntime;

/// openraft's `Instant` is only implemented for real `tokio::time::Instant`; under madsim
/// `tokio::time::Instant` is `std::time::Instant` (virtual via `clock_gettime`), and the orphan
/// rule forbids implementing openraft's trait for it, so wrap it (in both worlds, for one type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RtInstant(pub std::time::Instant);

impl Add<Duration> for RtInstant {
    type Output = Self;
    fn add(self, d: Duration) -> Self {
        Self(self.0 + d)
    }
}
impl AddAssign<Duration> for RtInstant {
    fn add_assign(&mut self, d: Duration) {
        self.0 += d
    }
}
impl Sub<Duration> for RtInstant {
    type Output = Self;
    fn sub(self, d: Duration) -> Self {
        Self(self.0 - d)
    }
}
impl SubAssign<Duration> for RtInstant {
    fn sub_assign(&mut self, d: Duration) {
        self.0 -= d
    }
}
impl Sub<RtInstant> for RtInstant {
    type Output = Duration;
    fn sub(self, other: Self) -> Duration {
        self.0.saturating_duration_since(other.0)
    }
}
impl openraft::Instant for RtInstant {
    /// This node's clock, which the simulation may skew (`rt::skew`).
    fn now() -> Self {
        Self(rt::skew::now())
    }
}

/// Sleep for `d` of this node's clock.
fn sleep(d: Duration) -> tokio::time::Sleep {
    tokio::time::sleep(rt::skew::true_duration(d))
}

/// Sleep until this node's clock shows `deadline`.
fn sleep_until(deadline: RtInstant) -> tokio::time::Sleep {
    sleep(deadline.0.saturating_duration_since(rt::skew::now()))
}

pin_project_lite::pin_project! {
    /// `AsyncRuntime::Timeout`: must be a nameable, `Send` future type. madsim's
    /// `time::timeout` returns an unnameable, non-`Send` `impl Future`, and tokio's
    /// `Timeout<T>` has no public constructor, so race the future against a `Sleep` ourselves.
    pub struct RtTimeout<F> {
        #[pin]
        future: F,
        #[pin]
        sleep: tokio::time::Sleep,
        duration: Duration,
    }
}

impl<F: Future> Future for RtTimeout<F> {
    type Output = Result<F::Output, rt::Elapsed>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The future first, like tokio: a ready result wins over an expired deadline.
        if let Poll::Ready(v) = this.future.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(rt::Elapsed(*this.duration))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRuntime for RtRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = RtInstant;
    type TimeoutError = rt::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = RtTimeout<T>;
    type ThreadLocalRng = rand::rngs::SmallRng;
    // tokio::sync is real tokio in both worlds (madsim-tokio re-exports it), and so is
    // openraft's own `TokioOneShotSender` wrapper: reuse both.
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        rt::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        RtTimeout {
            future,
            sleep: sleep(duration),
            duration,
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        let duration = deadline.0.saturating_duration_since(rt::skew::now());
        RtTimeout {
            future,
            sleep: sleep_until(deadline),
            duration,
        }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    /// Called once per `Raft::new` (to draw this node's election timeout). Seeded from the
    /// world's generator, so a madsim seed replays the same timeouts.
    fn thread_rng() -> Self::ThreadLocalRng {
        rt::seeded_rng()
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}
