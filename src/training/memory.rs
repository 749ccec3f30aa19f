//! The in-process `LockStore` (embedded mode, one instance): the same
//! semantics as Redis, with `tokio::time::Instant` for expiry.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::lock::{Acquired, Expired, LockError, LockInfo, LockRequest, LockStore, Owned};

struct Lease {
    tenant: String,
    info: LockInfo,
    expires: Instant,
}

impl Lease {
    fn expired(self) -> Expired {
        Expired { tenant: self.tenant, owner: self.info.owner, reason: self.info.reason, fencing_token: self.info.fencing_token }
    }
}

#[derive(Default)]
struct State {
    locks: HashMap<String, Lease>,
    /// Lapsed locks replaced before anyone claimed their expiry.
    lapsed: Vec<Lease>,
    fencing: HashMap<String, u64>,
    tenants: BTreeSet<String>,
}

#[derive(Default)]
pub struct InMemoryLockStore {
    /// A plain mutex: every operation is a few map lookups and never awaits.
    state: Mutex<State>,
}

impl InMemoryLockStore {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, LockError> {
        let mut state = self.state.lock().map_err(|_| LockError::Unavailable("lock state poisoned".into()))?;
        Ok(f(&mut state))
    }
}

fn live(held: &Lease, now: Instant) -> Option<LockInfo> {
    (held.expires > now).then(|| LockInfo { ttl_ms: (held.expires - now).as_millis() as u64, ..held.info.clone() })
}

impl LockStore for InMemoryLockStore {
    fn acquire<'a>(&'a self, request: LockRequest<'a>) -> BoxFuture<'a, Result<Acquired, LockError>> {
        let LockRequest { tenant, owner, reason, token, ttl, floor } = request;
        Box::pin(async move {
            let now = Instant::now();
            self.with(|s| {
                if let Some(info) = s.locks.get(tenant).and_then(|h| live(h, now)) {
                    return Acquired::Held(info);
                }
                if let Some(old) = s.locks.remove(tenant) {
                    s.lapsed.push(old);
                }
                let fencing = s.fencing.entry(tenant.to_owned()).or_insert(0);
                *fencing = (*fencing).max(floor) + 1;
                let info =
                    LockInfo { token: token.into(), owner: owner.into(), reason: reason.into(), fencing_token: *fencing, ttl_ms: ttl.as_millis() as u64 };
                s.locks.insert(tenant.to_owned(), Lease { tenant: tenant.to_owned(), info: info.clone(), expires: now + ttl });
                s.tenants.insert(tenant.to_owned());
                Acquired::Acquired(info)
            })
        })
    }

    fn renew<'a>(&'a self, tenant: &'a str, token: &'a str, ttl: Duration) -> BoxFuture<'a, Result<Owned, LockError>> {
        Box::pin(async move {
            let now = Instant::now();
            self.with(|s| match s.locks.get_mut(tenant) {
                Some(held) if held.expires > now && held.info.token == token => {
                    held.expires = now + ttl;
                    Owned::Done(LockInfo { ttl_ms: ttl.as_millis() as u64, ..held.info.clone() })
                }
                other => Owned::NotOwner(other.and_then(|h| live(h, now))),
            })
        })
    }

    fn release<'a>(&'a self, tenant: &'a str, token: &'a str) -> BoxFuture<'a, Result<Owned, LockError>> {
        Box::pin(async move {
            let now = Instant::now();
            self.with(|s| match s.locks.get(tenant) {
                Some(held) if held.expires > now && held.info.token == token => {
                    let info = LockInfo { ttl_ms: 0, ..held.info.clone() };
                    s.locks.remove(tenant);
                    Owned::Done(info)
                }
                other => Owned::NotOwner(other.and_then(|h| live(h, now))),
            })
        })
    }

    fn status<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<Option<LockInfo>, LockError>> {
        Box::pin(async move {
            let now = Instant::now();
            self.with(|s| s.locks.get(tenant).and_then(|h| live(h, now)))
        })
    }

    fn claim_expired(&self) -> BoxFuture<'_, Result<Vec<Expired>, LockError>> {
        Box::pin(async move {
            let now = Instant::now();
            self.with(|s| {
                let lapsed: Vec<String> = s.locks.iter().filter(|(_, h)| h.expires <= now).map(|(k, _)| k.clone()).collect();
                let mut out: Vec<Expired> = s.lapsed.drain(..).map(Lease::expired).collect();
                out.extend(lapsed.into_iter().filter_map(|key| s.locks.remove(&key)).map(Lease::expired));
                out
            })
        })
    }

    fn tenants(&self) -> BoxFuture<'_, Result<Vec<String>, LockError>> {
        Box::pin(async move { self.with(|s| s.tenants.iter().cloned().collect()) })
    }
}
