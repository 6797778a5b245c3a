//! Pending logins: connections accepted that have not reached Full Feature
//! Phase. Each holds a file descriptor and a task before it has proven
//! anything, so they are capped all together and per source (an IPv4
//! address or an IPv6 /64, [`chap::SourceKey`]). When a cap is reached the
//! oldest connection that has not sent a complete Login Request yet (a
//! silent one) is dropped to make room; if every pending connection has
//! spoken, the newcomer is refused instead. Once a connection has sent a
//! Login Request it is only ended by the login's own timeouts.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use chap::SourceKey;
use tokio::sync::Notify;

/// Caps on pending logins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Caps {
    /// Pending logins of every source together.
    pub total: usize,
    /// Pending logins of one source.
    pub per_source: usize,
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Full {
    /// The source has `per_source` pending logins, none of them silent.
    Source,
    /// There are `total` pending logins, none of them silent.
    Total,
}

/// What [`PendingLogins::admit`] did to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Admitted {
    /// Silent connections of the same source dropped.
    pub evicted_same_source: usize,
    /// Silent connections of other sources dropped (total cap).
    pub evicted_other: usize,
}

struct Conn {
    source: SourceKey,
    silent: bool,
    evict: Arc<Notify>,
}

#[derive(Default)]
struct SourceEntry {
    count: usize,
    /// Ids of this source's silent connections, oldest first.
    silent: BTreeSet<u64>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    conns: HashMap<u64, Conn>,
    /// Ids of every silent connection, oldest first (ids grow with time).
    silent: BTreeSet<u64>,
    sources: HashMap<SourceKey, SourceEntry>,
}

impl Table {
    /// Drops connection `id` from the table and tells its task to end.
    fn evict(&mut self, id: u64) {
        if let Some(c) = self.remove(id) {
            c.evict.notify_one();
        }
    }

    fn remove(&mut self, id: u64) -> Option<Conn> {
        let c = self.conns.remove(&id)?;
        self.silent.remove(&id);
        if let Some(e) = self.sources.get_mut(&c.source) {
            e.count -= 1;
            e.silent.remove(&id);
            if e.count == 0 {
                self.sources.remove(&c.source);
            }
        }
        Some(c)
    }

    fn oldest_silent_of(&self, source: &SourceKey) -> Option<u64> {
        self.sources
            .get(source)
            .and_then(|e| e.silent.first().copied())
    }
}

/// The pending logins of a server.
pub(super) struct PendingLogins {
    caps: Caps,
    table: Mutex<Table>,
}

impl PendingLogins {
    pub fn new(caps: Caps) -> PendingLogins {
        PendingLogins {
            caps: Caps {
                total: caps.total.max(1),
                per_source: caps.per_source.max(1),
            },
            table: Mutex::new(Table::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new connection from `peer`: counted as a silent pending login,
    /// after dropping the oldest silent ones a cap calls for; or refused.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<(PendingSlot, Admitted), Full> {
        let source = SourceKey::from(peer);
        let mut t = self.lock();
        let mut made = Admitted::default();
        let count = t.sources.get(&source).map_or(0, |e| e.count);
        if count >= self.caps.per_source {
            let id = t.oldest_silent_of(&source).ok_or(Full::Source)?;
            t.evict(id);
            made.evicted_same_source += 1;
        }
        if t.conns.len() >= self.caps.total {
            // Room is made with the source's own silent connections first.
            let id = t
                .oldest_silent_of(&source)
                .or_else(|| t.silent.first().copied())
                .ok_or(Full::Total)?;
            let same = t.conns.get(&id).is_some_and(|c| c.source == source);
            t.evict(id);
            if same {
                made.evicted_same_source += 1;
            } else {
                made.evicted_other += 1;
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        let evict = Arc::new(Notify::new());
        t.conns.insert(
            id,
            Conn {
                source,
                silent: true,
                evict: evict.clone(),
            },
        );
        t.silent.insert(id);
        let e = t.sources.entry(source).or_default();
        e.count += 1;
        e.silent.insert(id);
        drop(t);
        Ok((
            PendingSlot {
                table: self.clone(),
                id,
                evict,
            },
            made,
        ))
    }

    /// Drops the oldest silent connection of any source (to free a file
    /// descriptor when accept runs out of them); false if there is none.
    pub fn evict_oldest_silent(&self) -> bool {
        let mut t = self.lock();
        match t.silent.first().copied() {
            Some(id) => {
                t.evict(id);
                true
            }
            None => false,
        }
    }

    /// Pending logins now: all, and silent ones.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let t = self.lock();
        (t.conns.len(), t.silent.len())
    }
}

/// One pending login, counted until dropped (the connection ended or
/// reached Full Feature Phase).
pub(super) struct PendingSlot {
    table: Arc<PendingLogins>,
    id: u64,
    evict: Arc<Notify>,
}

impl PendingSlot {
    /// The connection sent a complete Login Request: it is no longer silent,
    /// so no cap drops it any more.
    pub fn spoke(&self) {
        let mut t = self.table.lock();
        let t = &mut *t;
        if let Some(c) = t.conns.get_mut(&self.id) {
            if std::mem::replace(&mut c.silent, false) {
                t.silent.remove(&self.id);
                if let Some(e) = t.sources.get_mut(&c.source) {
                    e.silent.remove(&self.id);
                }
            }
        }
    }

    /// Completes once a cap dropped this connection to make room.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.table.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    async fn is_evicted(s: &PendingSlot) -> bool {
        tokio::time::timeout(Duration::from_millis(10), s.evicted())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_source_at_its_cap_loses_its_oldest_silent_connection() {
        let p = Arc::new(PendingLogins::new(Caps {
            total: 100,
            per_source: 3,
        }));
        let a: Vec<PendingSlot> = (0..3)
            .map(|_| p.admit(ip("192.0.2.1")).unwrap().0)
            .collect();
        a[0].spoke();
        // Another address of the same /64 is the same source; other sources
        // are not counted against it.
        let v6: Vec<PendingSlot> = (1..=3)
            .map(|i| p.admit(ip(&format!("fd00::{i}"))).unwrap().0)
            .collect();
        let (_other, made) = p.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(made, Admitted::default());
        let (_d, made) = p.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(made.evicted_same_source, 1);
        // The oldest silent one went, not the one that spoke.
        assert!(!is_evicted(&a[0]).await);
        assert!(is_evicted(&a[1]).await);
        assert!(!is_evicted(&a[2]).await);
        let (_e, _) = p.admit(ip("fd00::99")).unwrap();
        assert!(is_evicted(&v6[0]).await);
        assert!(!is_evicted(&v6[1]).await);
        assert_eq!(p.counts(), (3 + 3 + 1, 3 + 3));
    }

    #[tokio::test]
    async fn a_source_whose_connections_all_spoke_is_refused() {
        let p = Arc::new(PendingLogins::new(Caps {
            total: 100,
            per_source: 2,
        }));
        let a: Vec<PendingSlot> = (0..2)
            .map(|_| p.admit(ip("192.0.2.1")).unwrap().0)
            .collect();
        a.iter().for_each(PendingSlot::spoke);
        assert_eq!(p.admit(ip("192.0.2.1")).err(), Some(Full::Source));
        drop(a);
        assert_eq!(p.counts(), (0, 0));
        assert!(p.admit(ip("192.0.2.1")).is_ok());
    }

    #[tokio::test]
    async fn the_total_cap_drops_the_oldest_silent_connection_of_any_source() {
        let p = Arc::new(PendingLogins::new(Caps {
            total: 3,
            per_source: 3,
        }));
        let (first, _) = p.admit(ip("192.0.2.1")).unwrap();
        let (second, _) = p.admit(ip("192.0.2.2")).unwrap();
        let (third, _) = p.admit(ip("192.0.2.3")).unwrap();
        first.spoke();
        let (_fourth, made) = p.admit(ip("192.0.2.4")).unwrap();
        assert_eq!(made.evicted_other, 1);
        assert!(!is_evicted(&first).await);
        assert!(is_evicted(&second).await);
        // A source at the total cap makes room with its own silent ones first.
        let (fifth, made) = p.admit(ip("192.0.2.4")).unwrap();
        assert_eq!(made.evicted_same_source, 1);
        assert!(!is_evicted(&third).await);
        third.spoke();
        fifth.spoke();
        // Nothing silent is left to drop: the newcomer is refused.
        assert_eq!(p.admit(ip("192.0.2.5")).err(), Some(Full::Total));
        assert!(!p.evict_oldest_silent());
        drop(fifth);
        let (sixth, _) = p.admit(ip("192.0.2.5")).unwrap();
        assert!(p.evict_oldest_silent());
        assert!(is_evicted(&sixth).await);
        assert_eq!(p.counts(), (2, 0));
    }
}
