//! Pending jobs in policy order: sorted blocks with per-block summaries
//! (smallest GPU count, shortest estimate), so a pass can skip, block by
//! block, jobs that cannot fit now or cannot be backfilled, instead of
//! visiting every waiting job at every event.

use std::cmp::Ordering;

/// A waiting job as ordered: (key, submitted, job index), plus what the
/// skip tests read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    pub key: f64,
    pub submitted: f64,
    pub job: u32,
    pub gpus: u32,
    /// Remaining expected run time (infinite when unknown).
    pub estimate: f64,
}

impl Entry {
    /// The policy order (`policy::compare`'s: key, then submission, then id).
    pub fn order(&self, other: &Self) -> Ordering {
        self.key
            .total_cmp(&other.key)
            .then(self.submitted.total_cmp(&other.submitted))
            .then(self.job.cmp(&other.job))
    }
}

const BLOCK: usize = 256;

#[derive(Debug, Clone, Default)]
struct Block {
    items: Vec<Entry>,
    min_gpus: u32,
    min_estimate: f64,
}

impl Block {
    fn summarize(&mut self) {
        self.min_gpus = self.items.iter().map(|e| e.gpus).min().unwrap_or(u32::MAX);
        self.min_estimate = self
            .items
            .iter()
            .map(|e| e.estimate)
            .fold(f64::INFINITY, f64::min);
    }
}

/// What a block or entry must offer to be worth visiting.
pub trait Filter {
    /// Whether some entry with at least `min_gpus` GPUs and at least
    /// `min_estimate` remaining could pass (a necessary condition).
    fn maybe(&self, min_gpus: u32, min_estimate: f64) -> bool;
}

/// Waiting jobs, sorted by [`Entry::order`].
#[derive(Debug, Clone, Default)]
pub struct Pending {
    blocks: Vec<Block>,
    len: usize,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Replaces the contents (sorted here).
    pub fn rebuild(&mut self, mut entries: Vec<Entry>) {
        entries.sort_unstable_by(Entry::order);
        self.len = entries.len();
        self.blocks = entries
            .chunks(BLOCK)
            .map(|c| {
                let mut b = Block {
                    items: c.to_vec(),
                    ..Block::default()
                };
                b.summarize();
                b
            })
            .collect();
    }

    /// Every entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.blocks.iter().flat_map(|b| b.items.iter())
    }

    /// The block that holds (or would hold) `e`.
    fn block_of(&self, e: &Entry) -> usize {
        let i = self
            .blocks
            .partition_point(|b| b.items.last().is_some_and(|l| l.order(e) == Ordering::Less));
        i.min(self.blocks.len().saturating_sub(1))
    }

    pub fn insert(&mut self, e: Entry) {
        self.len += 1;
        if self.blocks.is_empty() {
            let mut b = Block {
                items: vec![e],
                ..Block::default()
            };
            b.summarize();
            self.blocks.push(b);
            return;
        }
        let bi = self.block_of(&e);
        let b = &mut self.blocks[bi];
        let pos = b.items.partition_point(|x| x.order(&e) == Ordering::Less);
        b.items.insert(pos, e);
        b.min_gpus = b.min_gpus.min(e.gpus);
        b.min_estimate = b.min_estimate.min(e.estimate);
        if b.items.len() > 2 * BLOCK {
            let tail = b.items.split_off(BLOCK);
            b.summarize();
            let mut nb = Block {
                items: tail,
                ..Block::default()
            };
            nb.summarize();
            self.blocks.insert(bi + 1, nb);
        }
    }

    /// Removes `e` (an entry as inserted); false if absent.
    pub fn remove(&mut self, e: &Entry) -> bool {
        if self.blocks.is_empty() {
            return false;
        }
        let bi = self.block_of(e);
        let b = &mut self.blocks[bi];
        let pos = b.items.partition_point(|x| x.order(e) == Ordering::Less);
        if b.items
            .get(pos)
            .is_none_or(|x| x.order(e) != Ordering::Equal)
        {
            return false;
        }
        let gone = b.items.remove(pos);
        self.len -= 1;
        if b.items.is_empty() {
            self.blocks.remove(bi);
        } else if gone.gpus == b.min_gpus || gone.estimate == b.min_estimate {
            b.summarize();
        }
        true
    }

    /// Up to `n` entries after `after` (from the start when `None`) in
    /// order, skipping entries (and whole blocks) `filter` rules out.
    pub fn next_matching(
        &self,
        after: Option<&Entry>,
        n: usize,
        filter: Option<&dyn Filter>,
        out: &mut Vec<Entry>,
    ) {
        out.clear();
        let (mut bi, mut ii) = match after {
            None => (0, 0),
            Some(a) => {
                let bi = self.blocks.partition_point(|b| {
                    b.items
                        .last()
                        .is_some_and(|l| l.order(a) != Ordering::Greater)
                });
                let ii = self.blocks.get(bi).map_or(0, |b| {
                    b.items.partition_point(|x| x.order(a) != Ordering::Greater)
                });
                (bi, ii)
            }
        };
        while let Some(b) = self.blocks.get(bi) {
            if ii == 0 {
                if let Some(f) = filter {
                    if !f.maybe(b.min_gpus, b.min_estimate) {
                        bi += 1;
                        continue;
                    }
                }
            }
            for e in &b.items[ii..] {
                if filter.is_none_or(|f| f.maybe(e.gpus, e.estimate)) {
                    out.push(*e);
                    if out.len() >= n {
                        return;
                    }
                }
            }
            bi += 1;
            ii = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(job: u32, key: f64, gpus: u32, estimate: f64) -> Entry {
        Entry {
            key,
            submitted: 0.0,
            job,
            gpus,
            estimate,
        }
    }

    struct AtMost(u32);
    impl Filter for AtMost {
        fn maybe(&self, g: u32, _est: f64) -> bool {
            g <= self.0
        }
    }

    #[test]
    fn stays_sorted_through_inserts_removes_and_splits() {
        let mut p = Pending::default();
        let n = 5000u32;
        for i in 0..n {
            // A scrambled order of keys.
            let k = f64::from((i * 7919) % n);
            p.insert(e(i, k, 1 + i % 8, 10.0));
        }
        assert_eq!(p.len(), n as usize);
        let keys: Vec<f64> = p.iter().map(|x| x.key).collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]));
        for i in (0..n).step_by(3) {
            let k = f64::from((i * 7919) % n);
            assert!(p.remove(&e(i, k, 1 + i % 8, 10.0)));
        }
        assert!(!p.remove(&e(0, 0.0, 1, 10.0)));
        assert_eq!(p.len(), p.iter().count());
        let mut out = Vec::new();
        p.next_matching(None, 10, Some(&AtMost(1)), &mut out);
        assert_eq!(out.len(), 10);
        assert!(out.iter().all(|x| x.gpus == 1));
        let last = out[9];
        let mut more = Vec::new();
        p.next_matching(Some(&last), 5, Some(&AtMost(1)), &mut more);
        assert!(more
            .iter()
            .all(|x| x.order(&last) == Ordering::Greater && x.gpus == 1));
        // Nothing passes: every block is skipped.
        p.next_matching(None, 10, Some(&AtMost(0)), &mut out);
        assert!(out.is_empty());
    }
}
