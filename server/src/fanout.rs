//! Spreading per-client work over cores: a slice of items split into one run of items per
//! worker, each run on a scoped thread of its own (the first on the calling thread).
//!
//! The tick uses it to build, encode and seal nothing but what each client needs while
//! the world is read-only (`--workers`). With one worker nothing is spawned and the
//! items run in order on the calling thread; with more, each call spawns `workers - 1`
//! scoped threads, so the call costs a thread start per extra worker (tens of
//! microseconds) whatever the item count. (A thread the system cannot start is a panic,
//! as running out of memory is.)

/// Runs `work(index, item, worker)` for every item, the items split into contiguous runs,
/// one per worker.
pub fn fan_out<T: Send, W: Send>(
    items: &mut [T],
    workers: &mut [W],
    work: impl Fn(usize, &mut T, &mut W) + Sync,
) {
    let Some((first_worker, others)) = workers.split_first_mut() else {
        return;
    };
    if others.is_empty() || items.len() < 2 {
        for (i, item) in items.iter_mut().enumerate() {
            work(i, item, first_worker);
        }
        return;
    }
    let run = items.len().div_ceil(others.len() + 1);
    let work = &work;
    std::thread::scope(|scope| {
        let mut runs = items.chunks_mut(run).enumerate();
        let first = runs.next();
        for ((n, items), worker) in runs.zip(others.iter_mut()) {
            scope.spawn(move || {
                for (i, item) in items.iter_mut().enumerate() {
                    work(n * run + i, item, worker);
                }
            });
        }
        if let Some((_, items)) = first {
            for (i, item) in items.iter_mut().enumerate() {
                work(i, item, first_worker);
            }
        }
    });
}

/// Workers for `--workers 0` ("as many as the machine has, less one for the tick").
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_worked_once_with_its_index_whatever_the_workers() {
        for workers in 1..=4 {
            for len in [0, 1, 2, 7, 100] {
                let mut items: Vec<(usize, u32)> = (0..len).map(|i| (i, 0)).collect();
                let mut pool: Vec<u32> = vec![0; workers];
                fan_out(&mut items, &mut pool, |index, item, worker| {
                    assert_eq!(index, item.0);
                    item.1 += 1;
                    *worker += 1;
                });
                assert!(items.iter().all(|&(_, n)| n == 1), "{workers} {len}");
                assert_eq!(pool.iter().sum::<u32>() as usize, len);
                if workers > 1 && len >= 7 {
                    assert!(pool.iter().filter(|&&n| n > 0).count() > 1, "spread");
                }
            }
        }
    }
}
