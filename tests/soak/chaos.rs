//! Faults injected into the shared Redis while traffic runs: pauses
//! (SIGSTOP) of a few hundred milliseconds, and kills followed by a restart
//! (empty). Runs on a thread of its own, since the server helpers block.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::support::redis_server::RedisServer;
use crate::Dice;

#[derive(Debug, Default, Clone, Copy)]
pub struct ChaosReport {
    pub pauses: u32,
    pub kills: u32,
}

impl ChaosReport {
    pub fn events(&self) -> u32 {
        self.pauses + self.kills
    }
}

/// Starts injecting faults until `stop` is set or `max_events` have
/// happened; the server is left running and resumed.
pub fn start(
    server: Arc<RedisServer>,
    stop: Arc<AtomicBool>,
    seed: u64,
    max_events: u32,
) -> thread::JoinHandle<ChaosReport> {
    thread::spawn(move || {
        let mut dice = Dice(seed);
        let mut report = ChaosReport::default();
        let nap = |stop: &AtomicBool, length: Duration| {
            let until = Instant::now() + length;
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(10));
            }
        };
        // Let the traffic warm up first.
        nap(&stop, Duration::from_millis(1500));
        while !stop.load(Ordering::SeqCst) && report.events() < max_events {
            // Alternate the kinds, so even a short run sees both.
            if report.events() % 2 == 0 {
                server.pause();
                thread::sleep(Duration::from_millis(200 + dice.below(400) as u64));
                server.resume();
                report.pauses += 1;
            } else {
                server.kill();
                thread::sleep(Duration::from_millis(100 + dice.below(400) as u64));
                server.restart();
                report.kills += 1;
            }
            nap(&stop, Duration::from_millis(1500 + dice.below(2500) as u64));
        }
        server.resume();
        report
    })
}
