//! Which backups a retention rule keeps: a pure function of the backups'
//! creation times, in the keep-last/daily/weekly/monthly style of Proxmox.

use std::collections::{BTreeSet, HashSet};

use crate::calendar;

/// A retention rule. Each count keeps the newest backup of that many of the
/// most recent periods that have a backup; the kept sets are united. A rule
/// whose counts are all zero keeps everything (pruning needs a rule).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Keep the newest N backups.
    pub keep_last: u32,
    /// Keep the newest backup of each of the N most recent days with backups.
    pub keep_daily: u32,
    /// The same per week (weeks start on Monday, UTC).
    pub keep_weekly: u32,
    /// The same per calendar month (UTC).
    pub keep_monthly: u32,
}

impl Retention {
    /// Whether the rule keeps everything (all counts zero).
    pub fn keeps_all(&self) -> bool {
        *self == Retention::default()
    }
}

/// Positions in `created` (Unix seconds) of the backups `rule` keeps.
/// Backups of the same second are told apart by position: the later one is
/// the newer (pass them oldest first, as [`crate::list`] gives them).
pub fn select(created: &[u64], rule: &Retention) -> BTreeSet<usize> {
    if rule.keeps_all() {
        return (0..created.len()).collect();
    }
    // Newest first; of one second, the later position first.
    let mut order: Vec<usize> = (0..created.len()).collect();
    order.sort_by(|&a, &b| created[b].cmp(&created[a]).then(b.cmp(&a)));
    let mut keep: BTreeSet<usize> = order
        .iter()
        .copied()
        .take(rule.keep_last as usize)
        .collect();
    type Period = fn(u64) -> i64;
    let per_period: [(u32, Period); 3] = [
        (rule.keep_daily, calendar::day),
        (rule.keep_weekly, calendar::week),
        (rule.keep_monthly, calendar::month),
    ];
    for (count, period) in per_period {
        let mut seen = HashSet::new();
        for &i in &order {
            if seen.len() >= count as usize {
                break;
            }
            if seen.insert(period(created[i])) {
                keep.insert(i);
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules() -> impl Strategy<Value = Retention> {
        (0u32..5, 0u32..5, 0u32..5, 0u32..5).prop_map(|(l, d, w, m)| Retention {
            keep_last: l,
            keep_daily: d,
            keep_weekly: w,
            keep_monthly: m,
        })
    }

    fn times() -> impl Strategy<Value = Vec<u64>> {
        // Up to 40 backups over about a year, several a day possible.
        proptest::collection::vec(1_700_000_000u64..1_732_000_000, 0..40)
    }

    proptest! {
        #[test]
        fn kept_set_is_bounded_and_keeps_the_newest(ts in times(), rule in rules()) {
            let keep = select(&ts, &rule);
            prop_assert!(keep.iter().all(|&i| i < ts.len()));
            if rule.keeps_all() {
                prop_assert_eq!(keep.len(), ts.len());
            } else {
                let bound = (rule.keep_last + rule.keep_daily + rule.keep_weekly + rule.keep_monthly) as usize;
                prop_assert!(keep.len() <= bound);
                if let Some(newest) = ts.iter().max() {
                    prop_assert!(keep.iter().any(|&i| ts[i] == *newest));
                }
            }
        }

        #[test]
        fn keep_last_keeps_exactly_the_n_newest(ts in times(), n in 0u32..10) {
            let rule = Retention { keep_last: n, ..Retention::default() };
            prop_assume!(n > 0);
            let keep = select(&ts, &rule);
            prop_assert_eq!(keep.len(), ts.len().min(n as usize));
            let oldest_kept = keep.iter().map(|&i| ts[i]).min();
            for (i, t) in ts.iter().enumerate() {
                if !keep.contains(&i) {
                    prop_assert!(Some(*t) <= oldest_kept);
                }
            }
        }

        #[test]
        fn daily_keeps_the_newest_of_each_recent_day(ts in times(), n in 1u32..6) {
            let rule = Retention { keep_daily: n, ..Retention::default() };
            let keep = select(&ts, &rule);
            let mut days: Vec<i64> = ts.iter().map(|&t| calendar::day(t)).collect();
            days.sort_unstable_by(|a, b| b.cmp(a));
            days.dedup();
            let recent: Vec<i64> = days.into_iter().take(n as usize).collect();
            prop_assert_eq!(keep.len(), recent.len());
            for &i in &keep {
                let d = calendar::day(ts[i]);
                prop_assert!(recent.contains(&d));
                prop_assert!(ts.iter().all(|&t| calendar::day(t) != d || t <= ts[i]));
            }
        }

        #[test]
        fn pruning_again_keeps_the_same(ts in times(), rule in rules()) {
            let keep = select(&ts, &rule);
            let kept: Vec<u64> = keep.iter().map(|&i| ts[i]).collect();
            let again = select(&kept, &rule);
            prop_assert_eq!(again.len(), kept.len());
        }
    }
}
