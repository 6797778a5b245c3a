//! Round-trip estimate and the adaptive retransmit timeout.
//!
//! The smoothed round trip and its mean deviation follow the classic
//! estimator (RFC 6298's gains, 1/8 and 1/4), which the Linux `aoe` driver
//! uses too: the timeout is the mean plus four deviations, kept between
//! [`Settings::min_rto`] and [`Settings::max_rto`]. Every transmission of a
//! frame carries its own tag, so every reply is an unambiguous sample (no
//! Karn's rule is needed).

use std::time::Duration;

use crate::settings::Settings;

/// The round-trip estimate of one target.
#[derive(Debug, Clone, Copy)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    initial: Duration,
    min: Duration,
    max: Duration,
}

impl RttEstimator {
    /// An estimator with no sample yet.
    pub fn new(s: &Settings) -> RttEstimator {
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            initial: s.initial_rto,
            min: s.min_rto,
            max: s.max_rto.max(s.min_rto),
        }
    }

    /// Takes one measured round trip.
    pub fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// The smoothed round trip, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The retransmit timeout for a first transmission.
    pub fn rto(&self) -> Duration {
        match self.srtt {
            None => self.initial.clamp(self.min, self.max),
            Some(srtt) => (srtt + self.rttvar * 4).clamp(self.min, self.max),
        }
    }

    /// The timeout for a frame already sent `retries` times before: doubled
    /// per retry, never above the ceiling.
    pub fn backed_off(&self, retries: u32) -> Duration {
        let factor = 1u32 << retries.min(16);
        self.rto().saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn first_sample_sets_mean_and_half_deviation() {
        let s = Settings {
            min_rto: ms(1),
            ..Settings::default()
        };
        let mut e = RttEstimator::new(&s);
        assert_eq!(e.rto(), s.initial_rto);
        e.sample(ms(10));
        assert_eq!(e.srtt(), Some(ms(10)));
        // 10 + 4 * 5
        assert_eq!(e.rto(), ms(30));
    }

    #[test]
    fn steady_samples_shrink_the_timeout_to_the_floor() {
        let s = Settings::default();
        let mut e = RttEstimator::new(&s);
        for _ in 0..100 {
            e.sample(Duration::from_micros(200));
        }
        assert_eq!(e.rto(), s.min_rto);
    }

    #[test]
    fn slow_samples_raise_it_to_the_ceiling_and_backoff_is_capped() {
        let s = Settings::default();
        let mut e = RttEstimator::new(&s);
        e.sample(Duration::from_secs(5));
        assert_eq!(e.rto(), s.max_rto);
        let mut e = RttEstimator::new(&s);
        e.sample(ms(100));
        assert_eq!(e.backed_off(0), ms(300));
        assert_eq!(e.backed_off(1), ms(600));
        assert_eq!(e.backed_off(40), s.max_rto);
    }
}
