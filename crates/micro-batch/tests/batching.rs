//! The batcher on a real Tokio runtime: batch sizes follow the load, results go to their callers.

use micro_batch::{MicroBatcher, SubmitError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A batcher whose batches take `busy` and double their items; it records the batch sizes.
fn doubler(
    slots: usize,
    max: usize,
    busy: Duration,
) -> (MicroBatcher<u32, u32>, Arc<Mutex<Vec<usize>>>) {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&sizes);
    let b = MicroBatcher::start(slots, max, move |items: Vec<u32>| {
        seen.lock().unwrap().push(items.len());
        async move {
            tokio::time::sleep(busy).await;
            items.into_iter().map(|i| i * 2).collect()
        }
    });
    (b, sizes)
}

/// Submits `first` and waits until its batch is running, then submits `rest` all at once.
async fn busy_then(
    b: &MicroBatcher<u32, u32>,
    sizes: &Mutex<Vec<usize>>,
    first: u32,
    rest: std::ops::Range<u32>,
) -> Vec<(u32, Result<u32, SubmitError<u32>>)> {
    let lead = tokio::spawn({
        let b = b.clone();
        async move { b.submit(first).await }
    });
    while sizes.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut out =
        futures::future::join_all(rest.map(|i| async move { (i, b.submit(i).await) })).await;
    out.insert(0, (first, lead.await.unwrap()));
    out
}

#[tokio::test]
async fn an_idle_batcher_runs_each_item_at_once_alone() {
    let (b, sizes) = doubler(1, 64, Duration::ZERO);
    for i in 0..3 {
        assert_eq!(b.submit(i).await, Ok(i * 2));
    }
    assert_eq!(*sizes.lock().unwrap(), vec![1, 1, 1]);
}

/// The server's shape: each request is its own task on the multi-thread runtime, and the
/// requests one read from a connection become ready together. Tokio runs a task it has just
/// woken next (its LIFO slot), so a dispatcher that took what was queued at once would take
/// only the first request and send the rest one by one. It lets the tasks that were ready
/// first submit, and they go together.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn requests_that_become_ready_together_go_together_although_a_slot_is_free() {
    let (b, sizes) = doubler(1, 64, Duration::ZERO);
    let answers = tokio::spawn(async move {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.submit(i).await) })
            })
            .collect();
        futures::future::join_all(tasks).await
    })
    .await
    .unwrap();
    for a in answers {
        let (i, r) = a.unwrap();
        assert_eq!(r, Ok(i * 2));
    }
    assert_eq!(*sizes.lock().unwrap(), vec![8]);
}

#[tokio::test]
async fn items_that_arrive_while_the_slots_are_busy_go_together_each_with_its_own_result() {
    // Items that arrive together form one batch.
    let (b, sizes) = doubler(1, 64, Duration::ZERO);
    let all = futures::future::join_all((0..8).map(|i| b.submit(i))).await;
    assert!(all.iter().enumerate().all(|(i, r)| *r == Ok(i as u32 * 2)));
    assert_eq!(*sizes.lock().unwrap(), vec![8]);

    let (b, sizes) = doubler(1, 64, Duration::from_millis(50));
    for (i, r) in busy_then(&b, &sizes, 0, 1..20).await {
        assert_eq!(r, Ok(i * 2));
    }
    // The first item found the slot free; the other 19 queued behind it.
    assert_eq!(*sizes.lock().unwrap(), vec![1, 19]);
}

#[tokio::test]
async fn a_batch_never_exceeds_its_maximum() {
    let (b, sizes) = doubler(1, 5, Duration::from_millis(20));
    let results = futures::future::join_all((0..21).map(|i| b.submit(i))).await;
    assert!(
        results
            .iter()
            .enumerate()
            .all(|(i, r)| *r == Ok(i as u32 * 2))
    );
    let sizes = sizes.lock().unwrap();
    assert!(sizes.iter().all(|&n| (1..=5).contains(&n)), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 21);
    assert_eq!(sizes.len(), 5, "{sizes:?}");
}

#[tokio::test]
async fn two_slots_run_two_batches_at_once() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let b = MicroBatcher::start(2, 64, {
        let (running, most, sizes) = (running.clone(), most.clone(), sizes.clone());
        move |items: Vec<u32>| {
            sizes.lock().unwrap().push(items.len());
            let (running, most) = (running.clone(), most.clone());
            async move {
                most.fetch_max(running.fetch_add(1, SeqCst) + 1, SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                running.fetch_sub(1, SeqCst);
                items
            }
        }
    });
    let results = busy_then(&b, &sizes, 0, 1..10).await;
    assert!(results.iter().all(|(i, r)| *r == Ok(*i)));
    // 1 alone, then 9 together in the second slot while the first still runs.
    assert_eq!(*sizes.lock().unwrap(), vec![1, 9]);
    assert_eq!(most.load(SeqCst), 2);
}

#[tokio::test]
async fn an_item_without_a_result_is_reported_lost() {
    // A faulty batch function that answers only the first item of each batch.
    let b = MicroBatcher::start(1, 64, |items: Vec<u32>| async move {
        items.into_iter().take(1).collect::<Vec<u32>>()
    });
    let results = futures::future::join_all((10..14).map(|i| b.submit(i))).await;
    assert_eq!(results[0], Ok(10));
    assert!(
        results[1..].iter().all(|r| *r == Err(SubmitError::Lost)),
        "{results:?}"
    );
}
