//! The upload memory budget (`UPLOAD_MEMORY_MB`): every upload reserves the bytes it may
//! hold before its body is read, and gives them back when its input is in S3. So the
//! bodies held in memory never add up to more than the budget, however many clients send
//! at once. An upload that finds no room within `UPLOAD_ADMISSION_WAIT_MS` is answered
//! 503 with `Retry-After` and its body is never stored.
//!
//! Reservations are all-or-nothing and taken before reading, so an admitted upload can
//! always finish: two half-read uploads can never wait for each other's memory.
//! The semaphore is fair (first come, first served), so a large upload is not starved
//! by a stream of small ones.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// What one upload costs beyond its bytes: the connection's read buffer and the
/// multipart parser's, which live as long as the upload does.
pub const PER_UPLOAD_OVERHEAD_BYTES: u64 = 64 * 1024;

/// The budget is counted in KiB so a 4 GiB budget fits the semaphore's `u32` requests.
const UNIT: u64 = 1024;

pub struct UploadBudget {
    permits: Arc<Semaphore>,
    capacity_units: u64,
    metrics: Arc<Metrics>,
}

/// Room for one upload; dropping it gives the room back.
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    metrics: Arc<Metrics>,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reservation({} bytes)", self.bytes)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.metrics.upload_memory_in_use.dec_by(self.bytes as i64);
    }
}

/// No room within the admission wait.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl UploadBudget {
    pub fn new(capacity_bytes: u64, metrics: Arc<Metrics>) -> Self {
        let capacity_units = capacity_bytes / UNIT;
        metrics.upload_memory_budget.set(capacity_bytes as i64);
        UploadBudget {
            permits: Arc::new(Semaphore::new(capacity_units as usize)),
            capacity_units,
            metrics,
        }
    }

    /// What an upload that may hold `body_bytes` reserves.
    pub fn cost(body_bytes: u64) -> u64 {
        body_bytes + PER_UPLOAD_OVERHEAD_BYTES
    }

    /// Reserves [`Self::cost`] of `body_bytes`, waiting up to `wait` for room.
    pub async fn admit(&self, body_bytes: u64, wait: Duration) -> Result<Reservation, Full> {
        let units = Self::cost(body_bytes)
            .div_ceil(UNIT)
            .min(self.capacity_units);
        let units = u32::try_from(units).map_err(|_| Full)?;
        let permit = match self.permits.clone().try_acquire_many_owned(units) {
            Ok(permit) => permit,
            Err(_) if wait.is_zero() => return Err(Full),
            Err(_) => {
                self.metrics.uploads_waiting.inc();
                let waited =
                    tokio::time::timeout(wait, self.permits.clone().acquire_many_owned(units))
                        .await;
                self.metrics.uploads_waiting.dec();
                match waited {
                    Ok(Ok(permit)) => permit,
                    _ => return Err(Full),
                }
            }
        };
        let bytes = u64::from(units) * UNIT;
        self.metrics.upload_memory_in_use.inc_by(bytes as i64);
        Ok(Reservation {
            _permit: permit,
            bytes,
            metrics: self.metrics.clone(),
        })
    }

    /// Bytes not reserved right now.
    pub fn available_bytes(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[tokio::test]
    async fn reservations_never_exceed_the_budget_and_come_back_on_drop() {
        let budget = UploadBudget::new(20 * MIB, Arc::new(Metrics::default()));
        let first = budget.admit(8 * MIB, Duration::ZERO).await.unwrap();
        let second = budget.admit(8 * MIB, Duration::ZERO).await.unwrap();
        assert_eq!(first.bytes(), UploadBudget::cost(8 * MIB));
        assert_eq!(
            budget.admit(8 * MIB, Duration::ZERO).await.unwrap_err(),
            Full
        );
        // Small uploads still fit in what is left.
        let small = budget.admit(1024, Duration::ZERO).await.unwrap();
        drop(first);
        let third = budget.admit(8 * MIB, Duration::ZERO).await.unwrap();
        drop((second, third, small));
        assert_eq!(budget.available_bytes(), 20 * MIB);
    }

    #[tokio::test]
    async fn a_waiting_upload_gets_room_as_soon_as_it_is_freed() {
        let budget = Arc::new(UploadBudget::new(10 * MIB, Arc::new(Metrics::default())));
        let held = budget.admit(8 * MIB, Duration::ZERO).await.unwrap();
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.admit(8 * MIB, Duration::from_secs(30)).await }
        });
        // The waiter cannot have been admitted while `held` is alive.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        assert!(waiting.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_is_bounded() {
        let budget = UploadBudget::new(10 * MIB, Arc::new(Metrics::default()));
        let _held = budget.admit(8 * MIB, Duration::ZERO).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(
            budget
                .admit(8 * MIB, Duration::from_secs(2))
                .await
                .unwrap_err(),
            Full
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
