//! What operators rely on: jobs that end (dead, kept, retried through the admin service),
//! queue gauges that follow the queue with or without a worker, and the Liveblocks key check.

use crate::support::*;
use service_runtime::Settled;
use stand_ins::LiveblocksMode;
use std::time::Duration;
use tonic::Code;
use vbase_proto::workspace::v1 as pb;

async fn enqueue(env: &Env, rooms: &[&str]) {
    let values: Vec<String> = rooms.iter().map(|r| format!("('{r}')")).collect();
    env.sql(&format!(
        "INSERT INTO liveblocks_cleanup_jobs (room_id) VALUES {}",
        values.join(",")
    ))
    .await;
}

async fn jobs(env: &Env, state: pb::JobState) -> Vec<pb::Job> {
    env.admin_client()
        .await
        .list_jobs(env.operator(pb::ListJobsRequest {
            queue: pb::JobQueue::LiveblocksCleanup.into(),
            state: state.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .jobs
}

async fn retry(env: &Env, which: pb::retry_jobs_request::Which) -> i64 {
    env.admin_client()
        .await
        .retry_jobs(env.operator(pb::RetryJobsRequest {
            queue: pb::JobQueue::LiveblocksCleanup.into(),
            which: Some(which),
        }))
        .await
        .unwrap()
        .into_inner()
        .retried
}

#[tokio::test]
async fn permanent_answers_and_spent_attempts_make_jobs_dead_until_an_operator_retries() {
    let env = start_custom(true, |c| c.liveblocks.liveblocks_max_attempts = 3).await;
    // 422 is permanent: dead after one attempt.
    env.liveblocks.set_mode(LiveblocksMode::Unprocessable);
    enqueue(&env, &["doc:a", "doc:b"]).await;
    eventually("both dead", Duration::from_secs(10), || async {
        jobs(&env, pb::JobState::Dead).await.len() == 2
    })
    .await;
    let dead = jobs(&env, pb::JobState::Dead).await;
    assert_eq!(
        dead.iter()
            .map(|j| (j.key.as_str(), j.attempts))
            .collect::<Vec<_>>(),
        [("doc:a", 1), ("doc:b", 1)]
    );
    assert!(dead[0].last_error.starts_with("422"), "{:?}", dead[0]);
    assert!(dead[0].dead_at.is_some());
    let requests = env.liveblocks.requests();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.liveblocks.requests(),
        requests,
        "dead jobs are not tried"
    );
    eventually("gauges", Duration::from_secs(10), || async {
        env.metric("liveblocks_cleanup_dead_jobs").await == Some(2.0)
            && env.metric("liveblocks_cleanup_queue_depth").await == Some(0.0)
    })
    .await;
    let depths = env
        .admin_client()
        .await
        .get_queue_depths(env.operator(pb::GetQueueDepthsRequest {}))
        .await
        .unwrap()
        .into_inner();
    let live = &depths.queues[0];
    assert_eq!(
        (live.queue, live.pending, live.failing, live.dead),
        (pb::JobQueue::LiveblocksCleanup.into(), 0, 0, 2)
    );

    // Fixed at Liveblocks: one retried by key, then every dead one.
    env.liveblocks.set_mode(LiveblocksMode::Up);
    assert_eq!(
        retry(&env, pb::retry_jobs_request::Which::Key("doc:a".into())).await,
        1
    );
    eventually("doc:a deleted", Duration::from_secs(10), || async {
        env.liveblocks.deleted() == ["doc:a"]
    })
    .await;
    assert_eq!(
        retry(
            &env,
            pb::retry_jobs_request::Which::State(pb::JobState::Dead.into())
        )
        .await,
        1
    );
    eventually("doc:b deleted", Duration::from_secs(10), || async {
        env.count("liveblocks_cleanup_jobs").await == 0
    })
    .await;
    assert_eq!(env.liveblocks.deleted(), ["doc:a", "doc:b"]);

    // Transient failures until the attempts are spent: dead after the third.
    env.liveblocks.set_mode(LiveblocksMode::Down);
    enqueue(&env, &["doc:c"]).await;
    eventually("doc:c dead", Duration::from_secs(15), || async {
        jobs(&env, pb::JobState::Dead).await.len() == 1
    })
    .await;
    let c = &jobs(&env, pb::JobState::Dead).await[0];
    assert_eq!(c.attempts, 3);
    assert!(c.last_error.contains("gave up after 3 attempts"), "{c:?}");

    // Nonsense is refused with a reason.
    let err = env
        .admin_client()
        .await
        .retry_jobs(env.operator(pb::RetryJobsRequest {
            queue: pb::JobQueue::LiveblocksCleanup.into(),
            which: Some(pb::retry_jobs_request::Which::State(
                pb::JobState::Pending.into(),
            )),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = env
        .admin_client()
        .await
        .list_jobs(env.operator(pb::ListJobsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn job_listings_page_through_every_job() {
    let env = start_with(false).await;
    let rooms: Vec<String> = (0..7).map(|i| format!("doc:{i}")).collect();
    enqueue(&env, &rooms.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = env
            .admin_client()
            .await
            .list_jobs(env.operator(pb::ListJobsRequest {
                queue: pb::JobQueue::LiveblocksCleanup.into(),
                page_size: 3,
                page_token: token,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(page.jobs.len() <= 3);
        seen.extend(page.jobs.into_iter().map(|j| {
            assert_eq!(j.state, pb::JobState::Pending as i32);
            j.key
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, rooms);
}

#[tokio::test]
async fn gauges_follow_the_queue_when_no_worker_runs() {
    // No LIVEBLOCKS_SECRET_KEY: no worker, but the gauges and /status still tell.
    let env = start_with(false).await;
    enqueue(&env, &["doc:x", "doc:y", "doc:z"]).await;
    eventually("the depth gauge", Duration::from_secs(15), || async {
        env.metric("liveblocks_cleanup_queue_depth").await == Some(3.0)
    })
    .await;
    assert!(
        env.metric("liveblocks_cleanup_oldest_job_seconds")
            .await
            .unwrap()
            >= 0.0
    );
    assert_eq!(env.metric("liveblocks_key_valid").await, Some(-1.0));
    let (code, status) = env.http_get("/status").await;
    assert_eq!(code, 503, "{status}");
    assert!(
        status.contains("LIVEBLOCKS_SECRET_KEY is not set"),
        "{status}"
    );
}

#[tokio::test]
async fn the_key_is_checked_at_start() {
    let bad = start_custom(true, |c| {
        c.liveblocks.liveblocks_secret_key = Some("sk_wrong".into());
    })
    .await;
    eventually("the bad key reported", Duration::from_secs(10), || async {
        bad.metric("liveblocks_key_valid").await == Some(0.0)
    })
    .await;
    let (code, status) = bad.http_get("/status").await;
    assert_eq!(code, 503, "{status}");
    assert!(
        status.contains(
            "liveblocks_key: PROBLEM LIVEBLOCKS_SECRET_KEY rejected (403 INVALID_SECRET_KEY)"
        ),
        "{status}"
    );
    assert!(
        !status.contains("sk_wrong"),
        "the key itself is never shown"
    );

    let good = start_with(true).await;
    eventually("the good key reported", Duration::from_secs(10), || async {
        good.metric("liveblocks_key_valid").await == Some(1.0)
    })
    .await;
    let (code, status) = good.http_get("/status").await;
    assert_eq!(
        (code, status.as_str()),
        (200, "liveblocks_key: ok LIVEBLOCKS_SECRET_KEY accepted\n")
    );
}

/// A host that is not Liveblocks (a proxy, a wrong host) answers 404 to everything: that is not
/// a room already gone. The jobs are dead (kept, saying why), never finished, and the key check
/// says the URL is wrong.
#[tokio::test]
async fn a_404_that_is_not_liveblocks_finishes_no_job() {
    let env = start_with(true).await;
    env.liveblocks.set_mode(LiveblocksMode::NotLiveblocks);
    enqueue(&env, &["doc:p", "doc:q"]).await;
    eventually("both dead", Duration::from_secs(10), || async {
        jobs(&env, pb::JobState::Dead).await.len() == 2
    })
    .await;
    let dead = jobs(&env, pb::JobState::Dead).await;
    assert!(
        dead[0].last_error.contains("LIVEBLOCKS_API_URL"),
        "{:?}",
        dead[0]
    );
    assert_eq!(
        env.metric("liveblocks_cleanup_deliveries_total{outcome=\"rejected\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        env.metric("liveblocks_cleanup_deliveries_total{outcome=\"already_gone\"}")
            .await
            .unwrap_or_default(),
        0.0
    );
    // A replica starting against that host: its key check reports the URL.
    let wrong = start_custom(true, |c| {
        c.liveblocks.liveblocks_api_url = env.liveblocks.base_url();
    })
    .await;
    eventually("the URL reported", Duration::from_secs(10), || async {
        wrong.metric("liveblocks_key_valid").await == Some(0.0)
    })
    .await;
    let (code, status) = wrong.http_get("/status").await;
    assert_eq!(code, 503, "{status}");
    assert!(
        status.contains("LIVEBLOCKS_API_URL answered 404"),
        "{status}"
    );
}

/// A replica that stops (a rolling deploy) finishes the calls in flight and gives back the jobs
/// it leased ahead: none stays leased until its lease expires, and none spent an attempt it
/// never made.
#[tokio::test]
async fn a_stopping_worker_gives_back_the_jobs_it_leased_ahead() {
    let env = start_with(true).await;
    env.liveblocks.set_latency(Duration::from_millis(300));
    let rooms: Vec<String> = (0..100).map(|i| format!("doc:stop-{i:03}")).collect();
    enqueue(&env, &rooms.iter().map(String::as_str).collect::<Vec<_>>()).await;
    eventually("calls in flight", Duration::from_secs(10), || async {
        env.liveblocks.peak_in_flight() >= 8
    })
    .await;
    let Env {
        server,
        db,
        liveblocks,
        ..
    } = env;
    server.stop().await.unwrap();
    let deleted = liveblocks.deleted().len() as i64;
    assert!(deleted >= 8, "the calls in flight finished: {deleted}");
    let left = |sql: &'static str| {
        let url = db.url().to_owned();
        async move {
            #[derive(diesel::QueryableByName)]
            struct N {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            let pool = service_runtime::db::build_pool(&url, 1, workspace_service::PLANS).unwrap();
            let n: N = diesel::sql_query(sql)
                .one(&mut pool.get().await.unwrap())
                .await
                .unwrap();
            n.n
        }
    };
    assert_eq!(
        left("SELECT count(*) AS n FROM liveblocks_cleanup_jobs").await,
        100 - deleted
    );
    assert_eq!(
        left("SELECT count(*) AS n FROM liveblocks_cleanup_jobs WHERE lease_token IS NOT NULL OR attempts > 0").await,
        0,
        "a job left leased, or with an attempt it never made"
    );
}
