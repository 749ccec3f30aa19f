//! Fair turns at the model server: [`FairModelClient`] lets at most
//! `slm.max_concurrent` model calls run at once (the server's parallel slots)
//! and, when they are all taken, hands the next free one to the tenants
//! waiting in turn, one call each, round-robin. A tenant alone holds at most
//! all slots but one, so a second tenant finds one free at once; with others
//! holding or waiting for slots, each takes at most an equal share. Without
//! it a tenant within its own limits (64 streams) could fill the server's
//! queue, and every other tenant's first token would wait behind all of it.
//!
//! The wait for a slot counts against the first-token deadline, and a slot is
//! handed on as soon as its answer's stream ends.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::{Deadline, ModelClient, ModelRequest, ModelStream, SlmError};

/// Slots, and who waits for one.
pub struct FairGate {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    in_use: usize,
    /// Slots each tenant holds.
    held: HashMap<String, usize>,
    /// Tenants with a waiting call, in the order they are served (each at most once: `queued`).
    turn: VecDeque<String>,
    queued: std::collections::HashSet<String>,
    /// Each waiting tenant's calls, oldest first.
    waiting: HashMap<String, VecDeque<oneshot::Sender<Slot>>>,
}

/// A model call's slot; dropping it hands the slot on.
pub struct Slot {
    gate: Option<Arc<FairGate>>,
    tenant: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            FairGate::release(&gate, &self.tenant);
        }
    }
}

impl FairGate {
    /// At most `capacity` calls at once (0 = no bound).
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { capacity, state: Mutex::new(State::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for one call of `tenant`: at once if one is free and the tenant is under its
    /// share, else in the tenant's turn.
    pub async fn acquire(self: &Arc<Self>, tenant: &str) -> Slot {
        if self.capacity == 0 {
            return Slot { gate: None, tenant: String::new() };
        }
        let receiver = {
            let mut state = self.lock();
            // Calls of this tenant that stopped waiting (their clients left) hold no place.
            if let Some(queue) = state.waiting.get_mut(tenant) {
                queue.retain(|sender| !sender.is_closed());
                if queue.is_empty() {
                    // Its place in `turn` stays until a release passes it; `queued` keeps it once.
                    state.waiting.remove(tenant);
                }
            }
            // A free slot is free to take: a waiter that could have taken it was handed it when
            // it came free, so whoever still waits is at its share (or is this tenant, whose
            // calls keep their order).
            let active = Self::active(&state);
            if state.in_use < self.capacity && self.may_take(&state, tenant, active) && !state.waiting.contains_key(tenant) {
                state.in_use += 1;
                *state.held.entry(tenant.to_owned()).or_default() += 1;
                return Slot { gate: Some(self.clone()), tenant: tenant.to_owned() };
            }
            let (sender, receiver) = oneshot::channel();
            let state = &mut *state;
            state.waiting.entry(tenant.to_owned()).or_default().push_back(sender);
            if state.queued.insert(tenant.to_owned()) {
                state.turn.push_back(tenant.to_owned());
            }
            receiver
        };
        match receiver.await {
            Ok(slot) => slot,
            // The gate hands a slot to every waiter it removes; a closed channel cannot happen
            // while the gate lives, and a slot of a gone gate bounds nothing.
            Err(_) => Slot { gate: None, tenant: String::new() },
        }
    }

    /// Whether `tenant` may take one more slot, `active` tenants holding or waiting for slots:
    /// alone, all but one (so a second tenant finds one free); with others, an equal share.
    fn may_take(&self, state: &State, tenant: &str, active: usize) -> bool {
        let others = active - usize::from(state.held.contains_key(tenant) || state.waiting.contains_key(tenant));
        let share = if others == 0 { self.capacity.saturating_sub(1) } else { self.capacity / (others + 1) };
        state.held.get(tenant).copied().unwrap_or(0) < share.max(1)
    }

    /// How many tenants hold or wait for a slot.
    fn active(state: &State) -> usize {
        state.held.len() + state.waiting.keys().filter(|tenant| !state.held.contains_key(*tenant)).count()
    }

    /// `from`'s slot is free: hand it to the next tenant in turn that may take one and whose
    /// caller still waits.
    fn release(gate: &Arc<Self>, from: &str) {
        let mut state = gate.lock();
        if let Some(held) = state.held.get_mut(from) {
            *held -= 1;
            if *held == 0 {
                state.held.remove(from);
            }
        }
        // Counted once: the loop below changes it only when it hands the slot on, and then returns.
        let active = Self::active(&state);
        let mut skipped = Vec::new();
        while let Some(tenant) = state.turn.pop_front() {
            if !gate.may_take(&state, &tenant, active) {
                skipped.push(tenant);
                continue;
            }
            let sender = state.waiting.get_mut(&tenant).and_then(VecDeque::pop_front);
            if state.waiting.get(&tenant).is_some_and(|queue| !queue.is_empty()) {
                state.turn.push_back(tenant.clone());
            } else {
                state.waiting.remove(&tenant);
                state.queued.remove(&tenant);
            }
            let Some(sender) = sender else { continue };
            // The slot moves to the waiter; if it has gone (its client hung up), the slot comes
            // back in the failed send and the next tenant in turn is tried.
            match sender.send(Slot { gate: Some(gate.clone()), tenant: tenant.clone() }) {
                Ok(()) => {
                    *state.held.entry(tenant).or_default() += 1;
                    state.turn.extend(skipped);
                    return;
                }
                Err(mut slot) => slot.gate = None,
            }
        }
        state.turn.extend(skipped);
        state.in_use -= 1;
    }
}

/// A [`ModelClient`] whose calls take a slot of a [`FairGate`] first.
pub struct FairModelClient {
    inner: Arc<dyn ModelClient>,
    gate: Arc<FairGate>,
    /// The first-token deadline, which the wait for a slot counts against.
    first_token: Duration,
}

impl FairModelClient {
    pub fn new(inner: Arc<dyn ModelClient>, gate: Arc<FairGate>, first_token: Duration) -> Self {
        Self { inner, gate, first_token }
    }
}

impl ModelClient for FairModelClient {
    fn stream(&self, request: ModelRequest) -> ModelStream {
        let (inner, gate, deadline) = (self.inner.clone(), self.gate.clone(), self.first_token);
        let started = async move {
            let tenant = request.context.tenant.clone();
            let asked = tokio::time::Instant::now();
            let Ok(slot) = tokio::time::timeout(deadline, gate.acquire(&tenant)).await else {
                return futures_util::stream::once(async { Err(SlmError::Timeout(Deadline::FirstToken)) }).boxed();
            };
            // The first content must come within the deadline counted from before the wait.
            let first_by = asked + deadline;
            let mut answer = inner.stream(request);
            let first = tokio::time::timeout_at(first_by, answer.next()).await;
            let Ok(first) = first else {
                return futures_util::stream::once(async { Err(SlmError::Timeout(Deadline::FirstToken)) }).boxed();
            };
            // The slot is held until the answer's stream ends (or is dropped), then handed on.
            let release = futures_util::stream::once(async move {
                drop(slot);
                None
            });
            futures_util::stream::iter(first.map(Some)).chain(answer.map(Some)).chain(release).filter_map(std::future::ready).boxed()
        };
        futures_util::stream::once(started).flatten().boxed()
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), SlmError>> {
        self.inner.ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiting_tenant_is_served_before_a_busy_tenants_next_call() {
        let gate = FairGate::new(3);
        let (a1, a2) = (gate.acquire("a").await, gate.acquire("a").await);
        let c = gate.acquire("c").await;
        // Tenant a queues three more calls, then tenant b one.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for tenant in ["a", "a", "a", "b"] {
            let (gate, order) = (gate.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let slot = gate.acquire(tenant).await;
                order.lock().unwrap().push(tenant);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
            }));
            tokio::task::yield_now().await;
        }
        drop(a1);
        drop(a2);
        drop(c);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order[..2].iter().filter(|t| **t == "b").count(), 1, "b is served with the first free slots, not after a's queue: {order:?}");
        assert_eq!(gate.lock().in_use, 0, "every slot came back");
    }

    #[tokio::test]
    async fn a_call_that_stopped_waiting_does_not_keep_its_tenant_from_a_free_slot() {
        let gate = FairGate::new(3);
        let (a1, a2) = (gate.acquire("a").await, gate.acquire("a").await);
        assert!(tokio::time::timeout(Duration::from_millis(10), gate.acquire("a")).await.is_err(), "a at its share: waits, then gives up");
        drop(a1);
        let again = tokio::time::timeout(Duration::from_millis(50), gate.acquire("a")).await;
        assert!(again.is_ok(), "a's call finds the freed slot");
        drop((a2, again));
        assert_eq!(gate.lock().in_use, 0);
    }

    #[tokio::test]
    async fn with_another_tenant_active_each_takes_at_most_an_equal_share() {
        let gate = FairGate::new(4);
        let (a1, a2, a3) = (gate.acquire("a").await, gate.acquire("a").await, gate.acquire("a").await);
        let b = gate.acquire("b").await;
        drop(a1);
        assert!(tokio::time::timeout(Duration::from_millis(20), gate.acquire("a")).await.is_err(), "a holds 2 of 4 while b is active");
        let b2 = tokio::time::timeout(Duration::from_millis(20), gate.acquire("b")).await.expect("b takes its share");
        drop((a2, a3, b, b2));
        assert_eq!(gate.lock().in_use, 0);
    }

    #[tokio::test]
    async fn a_tenant_never_holds_the_last_slot_so_another_finds_one_at_once() {
        let gate = FairGate::new(3);
        let (a1, a2) = (gate.acquire("a").await, gate.acquire("a").await);
        let third = tokio::time::timeout(Duration::from_millis(20), gate.acquire("a")).await;
        assert!(third.is_err(), "a holds all slots but one");
        let b = tokio::time::timeout(Duration::from_millis(20), gate.acquire("b")).await.expect("b finds the slot left free");
        drop((a1, a2, b));
        assert_eq!(gate.lock().in_use, 0);
        assert!(gate.lock().held.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_that_gave_up_passes_its_slot_on() {
        let gate = FairGate::new(1);
        let held = gate.acquire("a").await;
        let gone = tokio::time::timeout(Duration::from_millis(10), gate.acquire("b")).await;
        assert!(gone.is_err(), "b waits, then gives up");
        let next = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire("c").await }
        });
        tokio::task::yield_now().await;
        drop(held);
        let slot = tokio::time::timeout(Duration::from_secs(1), next).await.expect("c is served").unwrap();
        drop(slot);
        assert_eq!(gate.lock().in_use, 0);
    }
}
