//! Arrival traces: how many jobs arrive when, and the shape of the pool that serves them.

use std::f64::consts::PI;

#[derive(Clone, Debug)]
pub struct Trace {
    pub name: &'static str,
    pub description: &'static str,
    /// Seconds during which jobs arrive.
    pub arrival_seconds: u64,
    /// Seconds of work per job.
    pub job_seconds: f64,
    /// Jobs one pod runs at once.
    pub concurrency: u32,
    pub max_replicas: u32,
    /// Arrival rate (jobs per second) at second `t`.
    rate: fn(f64) -> f64,
}

impl Trace {
    pub fn rate_at(&self, t: f64) -> f64 {
        if t < self.arrival_seconds as f64 {
            (self.rate)(t)
        } else {
            0.0
        }
    }
}

/// Seeds 002/004: 20 clients for 60 s accepted 48.27 orders/s; 3 s of work each; 5 slots a
/// pod; seed 000's 0–15 workers.
pub fn flash_sale() -> Trace {
    Trace {
        name: "flash-sale",
        description: "48.27 jobs/s for 60 s, 3 s each, concurrency 5, max 15",
        arrival_seconds: 60,
        job_seconds: 3.0,
        concurrency: 5,
        max_replicas: 15,
        rate: |_| 48.27,
    }
}

pub fn steady() -> Trace {
    Trace {
        name: "steady",
        description: "4 jobs/s for 20 min, 2 s each, concurrency 5, max 20",
        arrival_seconds: 20 * 60,
        job_seconds: 2.0,
        concurrency: 5,
        max_replicas: 20,
        rate: |_| 4.0,
    }
}

/// A burst of 300 jobs within 5 s every 10 minutes, four times.
pub fn spiky() -> Trace {
    Trace {
        name: "spiky",
        description: "300 jobs in 5 s every 10 min (4 bursts), 3 s each, concurrency 5, max 15",
        arrival_seconds: 30 * 60 + 5,
        job_seconds: 3.0,
        concurrency: 5,
        max_replicas: 15,
        rate: |t| if t % 600.0 < 5.0 { 60.0 } else { 0.0 },
    }
}

/// A day compressed into an hour: the rate swings from 0 to 12 jobs/s and back.
pub fn diurnal() -> Trace {
    Trace {
        name: "diurnal",
        description: "0 → 12 → 0 jobs/s over 60 min (a day compressed), 3 s each, concurrency 5, max 15",
        arrival_seconds: 60 * 60,
        job_seconds: 3.0,
        concurrency: 5,
        max_replicas: 15,
        rate: |t| 12.0 * (1.0 - (2.0 * PI * t / 3600.0).cos()) / 2.0,
    }
}

pub fn all() -> Vec<Trace> {
    vec![flash_sale(), steady(), spiky(), diurnal()]
}
