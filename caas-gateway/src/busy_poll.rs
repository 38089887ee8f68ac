//! Busy polling for a one-worker (current-thread) tokio runtime.
//!
//! When a worker runs out of ready tasks, tokio puts it to sleep in `epoll_wait` until the
//! kernel has an event for it. On a virtual machine an idle vCPU then halts, and waking it
//! again for the next packet can cost more than the packet's work: at one connection it is
//! much of a proxied request's latency. [`install`] lets the worker ask the kernel for
//! events without blocking, again and again, until a budget of wall time has passed since
//! a client connection last had work, and only then sleep. Between two polls it yields its
//! CPU (`sched_yield`), and a yield that let another thread run ends the spin, so the spin
//! gives way to a backend or a client on the same CPU. What it costs is CPU time nobody
//! else asked for: once requests come closer together than the budget, a whole CPU.
//!
//! The spin uses only tokio's public hooks: the worker's park hook wakes a task of its own
//! that does nothing, and a worker with a task to run polls the kernel with a zero timeout
//! instead of sleeping. Timers and I/O are served as usual throughout. What counts as work
//! is the gateway's client connections being polled (`server::drive`); other tasks of an
//! embedding program run as usual but do not extend a spin.

use std::cell::Cell;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// The longest budget [`install`] accepts (the config's `busy_poll_us` is checked against
/// it): a spin is meant to bridge the gap between two packets, not to replace sleeping.
pub const MAX_BUDGET: Duration = Duration::from_millis(10);

/// A `sched_yield` that took this long ran another thread: the CPU has other work.
const CONTENDED: Duration = Duration::from_micros(20);

thread_local! {
    /// Times a client connection of this thread was polled (wrapping).
    static WORK: Cell<u64> = const { Cell::new(0) };
}

/// Counts one poll of a client connection: work, which starts the spin's budget again.
#[inline]
pub(crate) fn note_work() {
    WORK.set(WORK.get().wrapping_add(1));
}

struct Spin {
    budget: Duration,
    /// A yield that took this long ends the spin ([`CONTENDED`]; the tests change it).
    contended: Duration,
    state: Mutex<SpinState>,
}

#[derive(Default)]
struct SpinState {
    /// The spinner task's waker, once it has been polled.
    waker: Option<Waker>,
    /// When the budget started: the last time the worker ran out of work after client
    /// connections had some. `None` while no spin is under way.
    since: Option<Instant>,
    /// `WORK` when the budget started.
    work: u64,
    /// The spinner task has been spawned.
    spawned: bool,
}

/// Makes the current-thread runtime `builder` builds poll for events for up to `budget`
/// (at most [`MAX_BUDGET`]) after its client connections last had work, before its worker
/// sleeps, as long as no other thread wants its CPU. Sets the builder's `on_thread_park`
/// hook; a zero budget installs nothing.
///
/// Only for a runtime of one worker (`Builder::new_current_thread`): a multi-thread
/// runtime's workers would share one spin.
pub fn install(builder: &mut tokio::runtime::Builder, budget: Duration) {
    install_with(builder, budget, CONTENDED);
}

fn install_with(builder: &mut tokio::runtime::Builder, budget: Duration, contended: Duration) {
    if budget.is_zero() {
        return;
    }
    let spin = Arc::new(Spin {
        budget: budget.min(MAX_BUDGET),
        contended,
        state: Mutex::default(),
    });
    builder.on_thread_park(move || before_park(&spin));
}

/// Runs as the worker is about to sleep. Within the budget, yields the CPU once and, if no
/// other thread took it, makes the spinner task ready, so the worker polls the kernel
/// without blocking and comes back here. Past the budget, or if another thread ran, lets
/// the worker sleep and ends the spin.
fn before_park(spin: &Arc<Spin>) {
    let now = Instant::now();
    let work = WORK.get();
    {
        let mut s = spin.state.lock().unwrap_or_else(PoisonError::into_inner);
        let since = match s.since {
            Some(since) if s.work == work => since,
            _ => {
                s.work = work;
                *s.since.insert(now)
            }
        };
        if now.saturating_duration_since(since) >= spin.budget {
            s.since = None;
            return;
        }
    }
    // Whatever else wants this CPU runs now. If something did, the CPU is not idle and the
    // spin would only take time from it.
    let yielded = Instant::now();
    std::thread::yield_now();
    let contended = yielded.elapsed() >= spin.contended;
    let mut s = spin.state.lock().unwrap_or_else(PoisonError::into_inner);
    if contended {
        s.since = None;
    } else if let Some(waker) = &s.waker {
        waker.wake_by_ref();
    } else if !s.spawned {
        // The hook runs inside the runtime's context: the spawned task is work to do, so
        // this first round of the spin polls without blocking too.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        s.spawned = true;
        let spinner = Arc::clone(spin);
        handle.spawn(poll_fn(move |cx| {
            let mut s = spinner.state.lock().unwrap_or_else(PoisonError::into_inner);
            if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                s.waker = Some(cx.waker().clone());
            }
            Poll::<()>::Pending
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests run side by side on a few CPUs: a spin they measure must not end because
    /// another test's thread wanted the CPU.
    const NEVER: Duration = Duration::MAX;

    /// Times the worker really slept while a task woke every 2 ms for 100 ms, calling
    /// `note_work` (as a client connection's poll does) or not.
    fn sleeps_while_ticking(budget: Duration, note: bool, contended: Duration) -> u64 {
        let mut b = tokio::runtime::Builder::new_current_thread();
        install_with(&mut b, budget, contended);
        let rt = b.enable_all().build().expect("runtime");
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(1)).await });
        let before = rt.metrics().worker_park_count(0);
        rt.block_on(async {
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            for _ in 0..50 {
                tick.tick().await;
                if note {
                    note_work();
                }
            }
        });
        rt.metrics().worker_park_count(0) - before
    }

    #[test]
    fn the_worker_polls_until_the_budget_from_its_last_work_runs_out() {
        let budget = Duration::from_millis(10);
        // No busy polling: the worker sleeps between any two ticks.
        let off = sleeps_while_ticking(Duration::ZERO, true, NEVER);
        // Work every 2 ms within a 10 ms budget: it polls throughout and never sleeps.
        let working = sleeps_while_ticking(budget, true, NEVER);
        // Ticks that are not client work: it sleeps once the budget from its last wake-up
        // has run out, about every 10 ms, and polls in between.
        let idle = sleeps_while_ticking(budget, false, NEVER);
        assert!(
            off >= 40,
            "without busy polling it slept only {off} times in 50 ticks"
        );
        assert!(working <= 2, "slept {working} times with work every 2 ms");
        assert!(
            (4..=25).contains(&idle),
            "slept {idle} times in 100 ms with no work and a 10 ms budget"
        );
    }

    #[test]
    fn a_thread_waiting_for_the_cpu_ends_the_spin() {
        use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        // This thread (the runtime's worker) and a thread that never sleeps share one CPU.
        let allowed = sched_getaffinity(None).expect("affinity");
        let cpu = (0..CpuSet::MAX_CPU)
            .find(|&c| allowed.is_set(c))
            .expect("a CPU");
        let mut one = CpuSet::new();
        one.set(cpu);
        sched_setaffinity(None, &one).expect("pin the test thread");
        let stop = Arc::new(AtomicBool::new(false));
        let busy = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                sched_setaffinity(None, &one).expect("pin the busy thread");
                while !stop.load(Relaxed) {
                    std::hint::spin_loop();
                }
            }
        });
        // Work every 2 ms: a spin that ignored the busy thread would never sleep; here its
        // first yield hands the CPU over and the worker sleeps after (nearly) every tick.
        let budget = Duration::from_millis(10);
        let ignoring = sleeps_while_ticking(budget, true, NEVER);
        let giving_way = sleeps_while_ticking(budget, true, CONTENDED);
        stop.store(true, Relaxed);
        busy.join().expect("busy thread");
        assert!(
            ignoring <= 2,
            "slept {ignoring} times though told to ignore the busy thread"
        );
        assert!(
            giving_way >= 10,
            "slept only {giving_way} times in 50 ticks beside a busy thread"
        );
    }

    #[test]
    fn a_spinning_worker_serves_sockets_and_timers() {
        let mut b = tokio::runtime::Builder::new_current_thread();
        install_with(&mut b, MAX_BUDGET, NEVER);
        let rt = b.enable_all().build().expect("runtime");
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 5];
                for _ in 0..100 {
                    s.read_exact(&mut buf).await.expect("read");
                    s.write_all(&buf).await.expect("write");
                }
            });
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut buf = [0u8; 5];
            for i in 0..100u8 {
                // Gaps both inside and beyond the budget, so replies land while the worker
                // spins and after it has gone to sleep.
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                c.write_all(&[i; 5]).await.expect("write");
                c.read_exact(&mut buf).await.expect("read");
                assert_eq!(buf, [i; 5]);
            }
            server.await.expect("server");
        });
    }
}
