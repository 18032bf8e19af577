//! The binary layout of one key's state in the KV bucket, versioned so it can evolve.
//!
//! ```text
//! byte 0     layout version (1)
//! byte 1     kind: 1 token bucket, 2 sliding window, 3 leases
//! kind 1     u64 TAT (ns, server time)
//! kind 2     u32 n, then n x u64 grant times (ns)
//! kind 3     u32 n, then n x (u64 expiry ns, u8 holder length, holder bytes)
//! kind 4     a policy key: u64 ban end (ns, 0: none), u16 n windows, then
//!            per window its u64 rule tag, a u8 kind and its state: 1 u64 TAT (0: none),
//!            2 u32 n + n x u64 grant times, 3 u64 first slot + u32 n +
//!            n x u32 counts
//! kind 5     a policy's list: u32 n, then n x (u64 expiry ns, 0: never,
//!            u16 entry length, entry bytes)
//! ```
//!
//! Integers are little-endian. An absent or deleted key is the empty state.

use crate::lease::Lease;
use crate::policy::decide::{PolicyCell, WindowCell};
use crate::quota::{RateCell, RateSpec};
use std::collections::VecDeque;

/// The layout this build writes and reads.
pub const VERSION: u8 = 1;

/// One key's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum State {
    /// Nothing stored (or a layout of another kind, which a policy change left behind).
    #[default]
    Empty,
    /// A token bucket.
    Bucket {
        /// Theoretical arrival time, ns of server time.
        tat: u64,
    },
    /// A sliding window.
    Window {
        /// The last grants, oldest first, ns of server time.
        grants: VecDeque<u64>,
    },
    /// A concurrency limiter.
    Leases {
        /// Current holders and when their leases run out.
        leases: Vec<Lease>,
    },
    /// A policy key: its ban and its windows.
    Policy(PolicyCell),
    /// A policy's allow or deny list: entry -> expiry (ns; 0: never).
    List(std::collections::BTreeMap<String, u64>),
}

/// Why stored bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Written by a newer build.
    NewerVersion(u8),
    /// Cut short or otherwise malformed.
    Malformed,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NewerVersion(v) => write!(
                f,
                "state layout version {v} is newer than this build reads ({VERSION}); upgrade ratesync on every host"
            ),
            DecodeError::Malformed => write!(f, "state value is malformed"),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        if self.0.len() < N {
            return Err(DecodeError::Malformed);
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().map_err(|_| DecodeError::Malformed)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take::<8>()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take::<4>()?))
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

impl State {
    /// Reads stored bytes; empty bytes are the empty state.
    pub fn decode(bytes: &[u8]) -> Result<State, DecodeError> {
        let mut r = Reader(bytes);
        let Ok([version]) = r.take::<1>() else {
            return Ok(State::Empty);
        };
        if version > VERSION {
            return Err(DecodeError::NewerVersion(version));
        }
        let [kind] = r.take::<1>()?;
        let state = match kind {
            1 => State::Bucket { tat: r.u64()? },
            2 => {
                let n = r.u32()? as usize;
                let mut grants = VecDeque::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    grants.push_back(r.u64()?);
                }
                State::Window { grants }
            }
            3 => {
                let n = r.u32()? as usize;
                let mut leases = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    let expires_at = r.u64()?;
                    let [len] = r.take::<1>()?;
                    let holder = std::str::from_utf8(r.bytes(len as usize)?)
                        .map_err(|_| DecodeError::Malformed)?
                        .to_string();
                    leases.push(Lease { holder, expires_at });
                }
                State::Leases { leases }
            }
            4 => {
                let banned_until = r.u64()?;
                let [a, b] = r.take::<2>()?;
                let n = u16::from_le_bytes([a, b]);
                let mut windows = Vec::with_capacity(usize::from(n));
                for _ in 0..n {
                    let mut w = WindowCell {
                        tag: r.u64()?,
                        ..WindowCell::default()
                    };
                    match r.take::<1>()? {
                        [1] => w.rate.tat = Some(r.u64()?).filter(|&t| t > 0),
                        [2] => {
                            let n = r.u32()? as usize;
                            for _ in 0..n {
                                w.rate.grants.push_back(r.u64()?);
                            }
                        }
                        [3] => {
                            w.counts.first = r.u64()?;
                            let n = r.u32()? as usize;
                            for _ in 0..n {
                                w.counts.counts.push_back(r.u32()?);
                            }
                        }
                        _ => return Err(DecodeError::Malformed),
                    }
                    windows.push(w);
                }
                State::Policy(PolicyCell {
                    banned_until,
                    windows,
                })
            }
            5 => {
                let n = r.u32()? as usize;
                let mut list = std::collections::BTreeMap::new();
                for _ in 0..n {
                    let exp = r.u64()?;
                    let [a, b] = r.take::<2>()?;
                    let len = usize::from(u16::from_le_bytes([a, b]));
                    let entry = std::str::from_utf8(r.bytes(len)?)
                        .map_err(|_| DecodeError::Malformed)?
                        .to_string();
                    list.insert(entry, exp);
                }
                State::List(list)
            }
            _ => return Err(DecodeError::Malformed),
        };
        Ok(state)
    }

    /// The bytes to store.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match self {
            State::Empty => out.truncate(0),
            State::Bucket { tat } => {
                out.push(1);
                out.extend_from_slice(&tat.to_le_bytes());
            }
            State::Window { grants } => {
                out.push(2);
                out.extend_from_slice(&(grants.len() as u32).to_le_bytes());
                for g in grants {
                    out.extend_from_slice(&g.to_le_bytes());
                }
            }
            State::Leases { leases } => {
                out.push(3);
                out.extend_from_slice(&(leases.len() as u32).to_le_bytes());
                for l in leases {
                    out.extend_from_slice(&l.expires_at.to_le_bytes());
                    // Holder ids are short ASCII (see HolderId); longer ones are cut.
                    let h = &l.holder.as_bytes()[..l.holder.len().min(255)];
                    out.push(h.len() as u8);
                    out.extend_from_slice(h);
                }
            }
            State::List(list) => {
                out.push(5);
                out.extend_from_slice(&(list.len() as u32).to_le_bytes());
                for (entry, exp) in list {
                    // Entries are at most MAX_LIST_ENTRY bytes (checked when added).
                    let e = &entry.as_bytes()[..entry.len().min(usize::from(u16::MAX))];
                    out.extend_from_slice(&exp.to_le_bytes());
                    out.extend_from_slice(&(e.len() as u16).to_le_bytes());
                    out.extend_from_slice(e);
                }
            }
            State::Policy(cell) => {
                out.push(4);
                out.extend_from_slice(&cell.banned_until.to_le_bytes());
                let n = cell.windows.len().min(usize::from(u16::MAX));
                out.extend_from_slice(&(n as u16).to_le_bytes());
                for w in &cell.windows[..n] {
                    out.extend_from_slice(&w.tag.to_le_bytes());
                    if !w.counts.counts.is_empty() {
                        out.push(3);
                        out.extend_from_slice(&w.counts.first.to_le_bytes());
                        out.extend_from_slice(&(w.counts.counts.len() as u32).to_le_bytes());
                        for c in &w.counts.counts {
                            out.extend_from_slice(&c.to_le_bytes());
                        }
                    } else if !w.rate.grants.is_empty() {
                        out.push(2);
                        out.extend_from_slice(&(w.rate.grants.len() as u32).to_le_bytes());
                        for g in &w.rate.grants {
                            out.extend_from_slice(&g.to_le_bytes());
                        }
                    } else {
                        out.push(1);
                        out.extend_from_slice(&w.rate.tat.unwrap_or(0).to_le_bytes());
                    }
                }
            }
        }
        out
    }

    /// The rate state, for a decision ([`RateSpec::measure_and_replace`]).
    pub fn into_cell(self) -> RateCell {
        match self {
            State::Bucket { tat } => RateCell {
                tat: Some(tat),
                grants: VecDeque::new(),
            },
            State::Window { grants } => RateCell { tat: None, grants },
            _ => RateCell::default(),
        }
    }

    /// The state to store for `rate` after a decision left `cell`.
    pub fn of_cell(rate: &RateSpec, cell: RateCell) -> State {
        match (rate, cell.tat) {
            (RateSpec::TokenBucket(_), Some(tat)) => State::Bucket { tat },
            (RateSpec::TokenBucket(_), None) => State::Empty,
            (RateSpec::SlidingWindow(_), _) => State::Window {
                grants: cell.grants,
            },
        }
    }

    /// A policy's list (empty for any other state).
    pub fn into_list(self) -> std::collections::BTreeMap<String, u64> {
        match self {
            State::List(list) => list,
            _ => Default::default(),
        }
    }

    /// A policy key's state (empty for any other state).
    pub fn into_policy(self) -> PolicyCell {
        match self {
            State::Policy(cell) => cell,
            _ => PolicyCell::default(),
        }
    }

    /// The leases (empty for any other state).
    pub fn into_leases(self) -> Vec<Lease> {
        match self {
            State::Leases { leases } => leases,
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let states = [
            State::Empty,
            State::Bucket { tat: u64::MAX - 7 },
            State::Window {
                grants: [1, 2, 1 << 60].into_iter().collect(),
            },
            State::Leases {
                leases: vec![
                    Lease {
                        holder: "1a-2b-3".into(),
                        expires_at: 99,
                    },
                    Lease {
                        holder: String::new(),
                        expires_at: 0,
                    },
                ],
            },
            State::List(
                [("10.0.0.0/8".to_string(), 0), ("k".to_string(), 9)]
                    .into_iter()
                    .collect(),
            ),
            State::Policy(PolicyCell {
                banned_until: 42,
                windows: vec![
                    WindowCell::default(),
                    WindowCell {
                        rate: RateCell {
                            tat: Some(7),
                            grants: VecDeque::new(),
                        },
                        ..WindowCell::default()
                    },
                    WindowCell {
                        rate: RateCell {
                            tat: None,
                            grants: [3, 4].into_iter().collect(),
                        },
                        ..WindowCell::default()
                    },
                    WindowCell {
                        counts: crate::counter::Counts {
                            first: 9,
                            counts: [0, 2, 5].into_iter().collect(),
                        },
                        ..WindowCell::default()
                    },
                ],
            }),
        ];
        for s in states {
            assert_eq!(State::decode(&s.encode()), Ok(s));
        }
    }

    #[test]
    fn newer_and_broken_layouts_are_errors() {
        assert_eq!(
            State::decode(&[2, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::NewerVersion(2))
        );
        assert_eq!(State::decode(&[1, 1, 0]), Err(DecodeError::Malformed));
        assert_eq!(
            State::decode(&[1, 2, 5, 0, 0, 0]),
            Err(DecodeError::Malformed)
        );
        assert_eq!(State::decode(&[1, 9]), Err(DecodeError::Malformed));
    }
}
