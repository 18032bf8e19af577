//! The audit trail of enforcement actions (bans set and lifted, allow and
//! deny list changes, reloads): append-only and tamper-evident. Each record
//! carries the SHA-256 of the previous record's hash and its own fields,
//! so changing, removing or reordering any record breaks every link after
//! it, and [`verify`] names the first broken one.

use super::sink::StoredRecord;
use sha2::{Digest, Sha256};

/// The `prev` of the first record: 64 zeros.
pub fn genesis() -> String {
    "0".repeat(64)
}

/// The hash of `rec` chained to `prev`: SHA-256 over a versioned tag, then
/// each field length-prefixed (so no two records' fields can be shifted
/// into each other), in hex.
pub fn seal(prev: &str, rec: &StoredRecord) -> String {
    let mut h = Sha256::new();
    h.update(b"ratesync-audit-v1");
    for field in [
        prev.as_bytes(),
        &rec.seq.to_be_bytes(),
        &rec.ts_us.to_be_bytes(),
        rec.actor.as_bytes(),
        rec.action.as_bytes(),
        rec.policy.as_bytes(),
        rec.subject.as_bytes(),
        rec.detail.as_bytes(),
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `draft` as the record after `last` (its seq and hash), sealed.
pub fn chained(mut draft: StoredRecord, last: Option<(i64, String)>) -> StoredRecord {
    let (seq, prev) = last.map_or_else(|| (1, genesis()), |(s, h)| (s + 1, h));
    draft.seq = seq;
    draft.prev = prev;
    draft.hash = seal(&draft.prev, &draft);
    draft
}

/// Where a trail stops holding together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The first record that does not follow from the one before.
    pub seq: i64,
    /// What is wrong with it.
    pub why: String,
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "record {}: {}", self.seq, self.why)
    }
}

/// Checks records read in order, carrying the chain across calls (feed
/// pages of the trail one after another).
#[derive(Debug, Clone)]
pub struct Verifier {
    seq: i64,
    hash: String,
    checked: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: genesis(),
            checked: 0,
        }
    }
}

impl Verifier {
    /// Checks the next records; the first that breaks the chain is the error.
    pub fn feed(&mut self, records: &[StoredRecord]) -> Result<(), BrokenLink> {
        for r in records {
            let broken = |why: String| BrokenLink { seq: r.seq, why };
            if r.seq != self.seq + 1 {
                return Err(broken(format!(
                    "expected record {} next: records were removed or inserted",
                    self.seq + 1
                )));
            }
            if r.prev != self.hash {
                return Err(broken(
                    "its link to the record before does not match: that record was changed or replaced".into(),
                ));
            }
            if seal(&r.prev, r) != r.hash {
                return Err(broken(
                    "its hash does not match its fields: the record was changed".into(),
                ));
            }
            self.seq = r.seq;
            self.hash = r.hash.clone();
            self.checked += 1;
        }
        Ok(())
    }

    /// Records checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// The last record checked.
    pub fn last_seq(&self) -> i64 {
        self.seq
    }
}

/// Checks a whole trail in order.
pub fn verify(records: &[StoredRecord]) -> Result<u64, BrokenLink> {
    let mut v = Verifier::default();
    v.feed(records)?;
    Ok(v.checked())
}

#[cfg(test)]
mod tests {
    use crate::decision_log::audit_trail::*;

    fn draft(subject: &str) -> StoredRecord {
        StoredRecord {
            seq: 0,
            ts_us: 1_700_000_000_000_000,
            actor: "cli".into(),
            action: "ban".into(),
            policy: "api".into(),
            subject: subject.into(),
            detail: "for 15m".into(),
            prev: String::new(),
            hash: String::new(),
        }
    }

    fn trail(n: usize) -> Vec<StoredRecord> {
        let mut out: Vec<StoredRecord> = Vec::new();
        for i in 0..n {
            let last = out.last().map(|r| (r.seq, r.hash.clone()));
            out.push(chained(draft(&format!("k{i}")), last));
        }
        out
    }

    #[test]
    fn an_intact_trail_verifies() {
        assert_eq!(verify(&trail(5)), Ok(5));
    }

    #[test]
    fn a_changed_removed_or_reordered_record_is_found() {
        let mut t = trail(5);
        t[2].subject = "someone else".into();
        assert_eq!(verify(&t).unwrap_err().seq, 3);
        let mut t = trail(5);
        t.remove(1);
        assert_eq!(verify(&t).unwrap_err().seq, 3);
        let mut t = trail(5);
        // Rehashing the changed record itself still breaks the next link.
        t[1].detail = "for 1s".into();
        t[1].hash = seal(&t[1].prev.clone(), &t[1]);
        assert_eq!(verify(&t).unwrap_err().seq, 3);
    }

    #[test]
    fn fields_cannot_be_shifted_into_each_other() {
        let mut a = draft("ab");
        a.detail = "c".into();
        let mut b = draft("a");
        b.detail = "bc".into();
        assert_ne!(seal(&genesis(), &a), seal(&genesis(), &b));
    }
}
