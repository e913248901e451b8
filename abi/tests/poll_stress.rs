//! Stress test of polled rings with real threads: a guest thread pushes 200 000 entries through a
//! [`Producer`] and rings only on [`NeedsDoorbell::Yes`]; a host thread consumes through a
//! [`Consumer`], polls for a random while when idle, then announces sleep and blocks on a doorbell.
//! Both sides sleep at random moments. A lost wake-up would leave the host blocked with entries
//! published: the doorbell wait times out and the test fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vpm_abi::{features, Consumer, NeedsDoorbell, Producer, SharedPage, SleepCheck};

const ENTRIES: u64 = 200_000;
const RING: u32 = 8;

/// A tiny xorshift generator (each thread its own seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The doorbell: rings counted under a mutex, the host waits on the condvar.
#[derive(Default)]
struct Doorbell {
    pending: Mutex<u64>,
    rung: Condvar,
}

#[test]
fn every_entry_is_served_and_some_doorbells_are_skipped() {
    let page: &'static SharedPage = Box::leak(Box::new(SharedPage::zeroed()));
    let mut producer = Producer::prepare(page, RING, features::ALL).unwrap();
    let mut consumer = Consumer::attach(page, features::POLLED).unwrap();
    let bell = Arc::new(Doorbell::default());
    let done = Arc::new(AtomicBool::new(false));

    let host = {
        let (bell, done) = (bell.clone(), done.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let (mut next_seq, mut sleeps) = (1u64, 0u64);
            loop {
                // Poll: take everything, then stay idle-polling for up to ~20 µs.
                let idle = Instant::now();
                let window = Duration::from_nanos(rng.next() % 20_000);
                loop {
                    while let Some(t) = consumer.take(page).unwrap() {
                        assert_eq!(t.entry.seq, next_seq, "entries out of order");
                        next_seq += 1;
                        assert!(consumer.finish(page, &t, 0));
                    }
                    if next_seq > ENTRIES || idle.elapsed() >= window {
                        break;
                    }
                    std::hint::spin_loop();
                }
                if next_seq > ENTRIES {
                    return sleeps;
                }
                if consumer.prepare_sleep(page) == SleepCheck::Pending {
                    continue;
                }
                sleeps += 1;
                let mut pending = bell.pending.lock().unwrap();
                while *pending == 0 {
                    let (p, timeout) = bell
                        .rung
                        .wait_timeout(pending, Duration::from_secs(20))
                        .unwrap();
                    pending = p;
                    assert!(
                        !timeout.timed_out() || done.load(Ordering::Acquire),
                        "lost wake-up: host asleep at seq {next_seq} with entries published"
                    );
                }
                *pending = 0;
                drop(pending);
                consumer.wake(page);
            }
        })
    };

    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (mut rung, mut skipped) = (0u64, 0u64);
    for _ in 0..ENTRIES {
        let ticket = loop {
            match producer.push(0, 0, 0) {
                Ok(t) => break t,
                // Everything before is published; the host will make room.
                Err(_) => std::thread::yield_now(),
            }
        };
        match producer.publish() {
            NeedsDoorbell::Yes => {
                rung += 1;
                *bell.pending.lock().unwrap() += 1;
                bell.rung.notify_one();
            }
            NeedsDoorbell::No => skipped += 1,
        }
        match rng.next() % 4096 {
            0 => std::thread::sleep(Duration::from_micros(50 + rng.next() % 200)),
            1..=64 => {
                // Wait for this entry, as a guest waiting for its persist does.
                while producer.wait_for(ticket, 1_000).is_err() {
                    std::thread::yield_now();
                }
            }
            _ => {}
        }
    }
    done.store(true, Ordering::Release);
    let host_sleeps = host.join().expect("host thread");
    assert_eq!(producer.in_flight(), 0);
    assert_eq!(page.header.served.load(Ordering::Relaxed), ENTRIES);
    eprintln!("doorbells rung {rung}, skipped {skipped}, host sleeps {host_sleeps}");
    assert!(skipped > 0, "the host never polled");
    assert!(rung > 0, "the host never slept");
}
