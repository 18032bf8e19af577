//! The bounded queue between the checks and the writer. A check adds its
//! event to its own thread's open chunk (a lock no other thread takes but
//! the writer, when it collects); a full chunk goes into a lock-free
//! bounded queue of chunks as one item. So the threads checking share
//! nothing per event: one shared queue operation per `CHUNK` events (a
//! shared queue operation per event, and the counts beside it, were most
//! of what logging cost an in-process check, in `benches/decision_log.rs`).
//! The writer takes chunks, and when there are none it collects the open
//! ones, so an event waits at most a flush interval whatever its thread
//! does next; a thread that ends hands its open chunk over.
//!
//! Bounded: at most `capacity` events in queued chunks, plus one open
//! chunk per thread. A chunk the full queue cannot take is dropped, its
//! events counted.

use super::event::DecisionEvent;
use crossbeam_queue::ArrayQueue;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// Events per chunk.
pub const CHUNK: usize = 64;

type Open = Arc<Mutex<Vec<DecisionEvent>>>;

pub(super) struct EventQueue {
    chunks: ArrayQueue<Vec<DecisionEvent>>,
    chunk: usize,
    /// Every thread's open chunk, for the writer to collect.
    open: Mutex<Vec<Weak<Mutex<Vec<DecisionEvent>>>>>,
    id: u64,
    accepted: Striped,
    dropped: Striped,
}

/// One thread's open chunk of one queue; handed over when the thread ends.
struct Slot {
    id: u64,
    open: Open,
    queue: Weak<EventQueue>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(q) = self.queue.upgrade() {
            let rest =
                std::mem::take(&mut *self.open.lock().unwrap_or_else(PoisonError::into_inner));
            q.hand_over(rest);
        }
    }
}

thread_local! {
    static SLOTS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

impl EventQueue {
    pub(super) fn new(capacity: usize, batch: usize) -> Arc<Self> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let chunk = CHUNK.min(batch).max(1);
        Arc::new(Self {
            chunks: ArrayQueue::new(capacity.div_ceil(chunk).max(1)),
            chunk,
            open: Mutex::new(Vec::new()),
            id: IDS.fetch_add(1, Relaxed),
            accepted: Striped::default(),
            dropped: Striped::default(),
        })
    }

    /// Adds `event` to this thread's chunk; true when that filled the
    /// chunk and it went into the queue (or was dropped).
    pub(super) fn push(self: &Arc<Self>, event: DecisionEvent) -> bool {
        self.accepted.add(1);
        let full = SLOTS.with(|slots| {
            let mut slots = slots.borrow_mut();
            let at = match slots.iter().position(|s| s.id == self.id) {
                Some(at) => at,
                None => {
                    slots.retain(|s| s.queue.strong_count() > 0);
                    let open: Open = Arc::new(Mutex::new(Vec::with_capacity(self.chunk)));
                    self.open
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Arc::downgrade(&open));
                    slots.push(Slot {
                        id: self.id,
                        open,
                        queue: Arc::downgrade(self),
                    });
                    slots.len() - 1
                }
            };
            let mut o = slots[at]
                .open
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            o.push(event);
            (o.len() >= self.chunk)
                .then(|| std::mem::replace(&mut *o, Vec::with_capacity(self.chunk)))
        });
        match full {
            Some(chunk) => {
                self.hand_over(chunk);
                true
            }
            None => false,
        }
    }

    /// Whether an event made now would be dropped: the queue is full and
    /// this thread has no room of its own (checked before building one).
    pub(super) fn would_drop(&self) -> bool {
        self.chunks.is_full()
            && SLOTS.with(|slots| {
                slots
                    .borrow()
                    .iter()
                    .find(|s| s.id == self.id)
                    .is_none_or(|s| s.open.lock().map_or(true, |o| o.len() + 1 >= self.chunk))
            })
    }

    /// Counts an event not made because it would have been dropped.
    pub(super) fn count_dropped(&self, n: u64) {
        self.accepted.add(n);
        self.dropped.add(n);
    }

    fn hand_over(&self, chunk: Vec<DecisionEvent>) {
        if chunk.is_empty() {
            return;
        }
        let n = chunk.len() as u64;
        if self.chunks.push(chunk).is_err() {
            self.dropped.add(n);
        }
    }

    /// Moves up to `max` events (whole chunks; at least one when there is
    /// any) into `into`; with no chunk queued, collects the open ones.
    pub(super) fn take(&self, into: &mut Vec<DecisionEvent>, max: usize) {
        while into.len() < max {
            match self.chunks.pop() {
                Some(mut c) => into.append(&mut c),
                None => break,
            }
        }
        if into.is_empty() {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            open.retain(|w| w.strong_count() > 0);
            for o in open.iter().filter_map(Weak::upgrade) {
                into.append(&mut o.lock().unwrap_or_else(PoisonError::into_inner));
            }
        }
    }

    /// Events offered (queued, open, or dropped).
    pub(super) fn accepted(&self) -> u64 {
        self.accepted.sum()
    }

    /// Events dropped.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.sum()
    }
}

/// A counter every thread adds to without sharing a cache line: one cell
/// per stripe, a thread on its own stripe, summed when read.
#[derive(Default)]
pub(super) struct Striped([Padded; STRIPES]);

const STRIPES: usize = 8;

#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

thread_local! {
    static STRIPE: usize = rand::random::<usize>() % STRIPES;
}

impl Striped {
    pub(super) fn add(&self, n: u64) {
        let stripe = STRIPE.with(|s| *s);
        self.0[stripe].0.fetch_add(n, Relaxed);
    }

    pub(super) fn sum(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use crate::decision_log::queue::{EventQueue, CHUNK};
    use crate::decision_log::DecisionEvent;

    fn event(seq: i64) -> DecisionEvent {
        DecisionEvent {
            origin: 1,
            seq,
            ts_us: 0,
            key: "k".into(),
            policy: "p".into(),
            window: "w".into(),
            tier: None,
            path: None,
            method: None,
            allowed: true,
            action: "allow".into(),
            count: 0,
            limit: None,
            cost: 1,
            ip: None,
            user: None,
            host: "h".into(),
            config_version: 1,
        }
    }

    #[test]
    fn open_chunks_are_collected_and_an_ending_thread_hands_its_over() {
        let q = EventQueue::new(1000, 1000);
        for i in 0..(CHUNK as i64 + 5) {
            q.push(event(i));
        }
        let other = q.clone();
        std::thread::spawn(move || {
            for i in 0..3 {
                other.push(event(1000 + i));
            }
        })
        .join()
        .unwrap();
        let mut got = Vec::new();
        q.take(&mut got, 1000);
        // The full chunk, and the ended thread's three, from the queue.
        assert_eq!(got.len(), CHUNK + 3);
        let mut open = Vec::new();
        q.take(&mut open, 1000);
        assert_eq!(
            open.len(),
            5,
            "with no chunk queued, this thread's open one is collected"
        );
        got.append(&mut open);
        let mut seqs: Vec<i64> = got.iter().map(|e| e.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), CHUNK + 8, "each once");
        assert_eq!((q.accepted(), q.dropped()), (CHUNK as u64 + 8, 0));
    }

    #[test]
    fn a_full_queue_drops_whole_chunks_and_counts_them() {
        let q = EventQueue::new(CHUNK, 1000);
        for i in 0..(3 * CHUNK as i64) {
            q.push(event(i));
        }
        assert_eq!(q.dropped(), 2 * CHUNK as u64);
        assert!(
            !q.would_drop(),
            "the queue is full, but this thread's chunk has room"
        );
        for i in 0..(CHUNK as i64 - 1) {
            q.push(event(10_000 + i));
        }
        assert!(
            q.would_drop(),
            "the next event would fill a chunk the queue cannot take"
        );
        let mut got = Vec::new();
        q.take(&mut got, 10_000);
        assert_eq!(got.len(), CHUNK);
    }
}
