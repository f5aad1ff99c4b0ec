//! Claims are compare-and-set: runners racing for the same rows never run one job twice.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use surrealdb::types::ToSql;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_run_each_of_500_jobs_exactly_once() {
    const JOBS: usize = 500;
    let store = mem_store().await;
    let backend = TestBackend::start(|_, _| Reply::ok().after(Duration::from_millis(2))).await;
    sp00ky_job_runner::commands::prepare_tables(&store, &backends(&backend.url, "job"))
        .await
        .unwrap();
    let mut ids = Vec::new();
    // Half before the runners start, half while they run.
    for n in 0..JOBS / 2 {
        ids.push(
            job("/spookify")
                .payload(json!({"id": format!("t{n}")}))
                .insert(&store)
                .await,
        );
    }
    let first = start_runner(
        &store,
        backends(&backend.url, "job"),
        fast_options("runner-a"),
    )
    .await;
    let second = start_runner(
        &store,
        backends(&backend.url, "job"),
        fast_options("runner-b"),
    )
    .await;
    for n in JOBS / 2..JOBS {
        ids.push(
            job("/spookify")
                .payload(json!({"id": format!("t{n}")}))
                .insert(&store)
                .await,
        );
    }
    wait_until("all jobs to succeed", Duration::from_secs(120), || async {
        count_status(&store, "job", "success").await == JOBS
    })
    .await;
    first.stop().await;
    second.stop().await;

    let mut per_job: HashMap<String, usize> = HashMap::new();
    for request in backend.requests() {
        *per_job
            .entry(request.header("idempotency-key").unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(per_job.len(), JOBS, "every job reached the backend");
    let twice: Vec<_> = per_job.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "jobs executed more than once: {twice:?}");
    for id in &ids {
        assert!(per_job.contains_key(&id.to_sql()));
    }
}

/// A batch of successes is fenced row by row: a row whose lease moved to another claim is left
/// alone, while the rest of the batch is written.
#[tokio::test]
async fn batched_successes_only_write_rows_whose_lease_they_hold() {
    let store = job_table().await;
    for n in 0..3 {
        job("/spookify")
            .payload(json!({"id": n}))
            .insert(&store)
            .await;
    }
    let claimer = claimer_a();
    let claimed = claimer
        .claim(
            &store,
            &table_named("job"),
            3,
            &mut sp00ky_job_runner::job::claim::Watermark::new(Duration::from_secs(1)),
            std::time::Instant::now(),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    // Another claim took the third row over (as a lease rescue does).
    let taken_over = &claimed[2];
    store
        .client()
        .query("UPDATE $id SET lease_token = 'someone-else'")
        .bind(("id", taken_over.id.clone()))
        .await
        .unwrap()
        .check()
        .unwrap();

    let fences = claimed
        .iter()
        .map(|job| (job.id.clone(), job.token.clone()))
        .collect();
    let written = store.write_successes(fences).await.unwrap();

    assert_eq!(written.len(), 2, "{written:?}");
    assert!(!written.contains(&taken_over.id));
    for job in &claimed[..2] {
        let row = row(&store, &job.id).await;
        assert_eq!(row["status"], "success", "{row}");
        assert_eq!(row["lease_token"], serde_json::Value::Null, "{row}");
    }
    let kept = row(&store, &taken_over.id).await;
    assert_eq!(kept["status"], "processing", "{kept}");
    assert_eq!(kept["lease_token"], "someone-else", "{kept}");
}

/// A look starts where the previous one found work (see `claim::Watermark`). A row that becomes
/// due below that point, here through a client's own `due_at` an hour back, is not seen by the
/// narrow looks but by the next full one, an interval later: late by at most that, never lost.
#[tokio::test]
async fn a_row_due_below_where_looks_start_is_claimed_by_the_next_full_look() {
    let store = job_table().await;
    let create = async |due: &str| -> surrealdb::types::RecordId {
        let mut response = store
            .client()
            .query(format!(
                "CREATE ONLY job SET path = '/spookify', payload = '{{}}', due_at = time::now() - {due} RETURN VALUE id"
            ))
            .await
            .unwrap();
        let id: Option<surrealdb::types::RecordId> = response.take(0).unwrap();
        id.unwrap()
    };
    let first = create("2s").await;
    let second = create("1s").await;
    let claimer = claimer_a();
    let every = Duration::from_secs(1);
    let mut watermark = sp00ky_job_runner::job::claim::Watermark::new(every);
    let start = std::time::Instant::now();
    let mut claim_one = async |at| {
        let claimed = claimer
            .claim(&store, &table_named("job"), 1, &mut watermark, at)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "one row is due");
        claimed[0].id.clone()
    };
    assert_eq!(claim_one(start).await, first, "a full look, oldest first");

    let backdated = create("1h").await;

    assert_eq!(
        claim_one(start).await,
        second,
        "a narrow look starts at the first row's due_at"
    );
    assert_eq!(
        claim_one(start + every).await,
        backdated,
        "the full look, once the interval has passed, finds the older row"
    );
}

/// An embedded store with the `job` table ready.
async fn job_table() -> sp00ky_job_runner::store::Store {
    let store = mem_store().await;
    sp00ky_job_runner::commands::prepare_tables(&store, &backends("http://127.0.0.1:9", "job"))
        .await
        .unwrap();
    store
}

/// A claimer with a lease that outlasts any test.
fn claimer_a() -> sp00ky_job_runner::job::claim::Claimer {
    sp00ky_job_runner::job::claim::Claimer::new("runner-a", Duration::from_secs(60))
}

/// Jobs claimed ahead of the free slots keep their leases while they wait, however long the calls
/// before them take: a second runner with free slots, watching the same table, never rescues
/// them. They start in claim order, and a shutdown puts the waiting ones back to `pending`
/// without spending an attempt, for the other runner to run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_claimed_ahead_hold_their_leases_while_they_wait() {
    const CALL: Duration = Duration::from_millis(2500);
    let store = mem_store().await;
    let backend = TestBackend::start(|_, _| Reply::ok().after(CALL)).await;
    let ids = insert_in_order(&store, &backend.url, 3).await;
    // One slot, two ahead, a lease of a second: the last job waits a whole call, 2.5 leases.
    let ahead = start_runner(
        &store,
        backends(&backend.url, "job"),
        sp00ky_job_runner::runner::RunnerOptions {
            concurrency: 1,
            claim_ahead: 2,
            lease: Duration::from_secs(1),
            shutdown_grace: Duration::ZERO,
            ..fast_options("ahead")
        },
    )
    .await;
    wait_until("one runner to claim all three", WAIT, || async {
        count_status(&store, "job", "processing").await == 3 && backend.count() == 1
    })
    .await;
    let idle = start_runner(
        &store,
        backends(&backend.url, "job"),
        sp00ky_job_runner::runner::RunnerOptions {
            claim_ahead: 0,
            lease: Duration::from_secs(1),
            ..fast_options("idle")
        },
    )
    .await;
    wait_until("the second job's call", WAIT, || async {
        backend.count() == 2
    })
    .await;
    let waiting = row(&store, &ids[2]).await;
    assert_eq!(waiting["status"], "processing", "{waiting}");
    assert_eq!(
        waiting["assignee"], "ahead",
        "still held by its claimer: {waiting}"
    );
    let called = backend.called_ids();
    assert_eq!(called, ["t0", "t1"], "claim order");

    // Stopping with no grace cancels the running call and releases the waiting job.
    ahead.stop().await;
    let rows = futures::future::join_all(ids.iter().map(|id| wait_final(&store, id, WAIT))).await;
    idle.stop().await;
    for done in &rows {
        assert_eq!(done["status"], "success", "{done}");
        assert_eq!(done["retries"], 0, "no attempt was spent or lost: {done}");
        assert_eq!(done["errors"], json!([]), "no lease ran out: {done}");
    }
    let calls = backend.requests();
    let last = calls.iter().filter(|r| r.json()["id"] == "t2").count();
    assert_eq!(last, 1, "the job that waited ran once, after its release");
}

/// A shutdown gives calls in flight their grace period, but a job still waiting for a slot goes
/// back to `pending` at once: it never starts a call during the grace period (one that would only
/// be cancelled at its end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_waiting_ahead_go_back_to_pending_when_shutdown_starts() {
    let store = mem_store().await;
    let backend = TestBackend::start(|_, _| Reply::ok().after(Duration::from_millis(800))).await;
    let ids = insert_in_order(&store, &backend.url, 3).await;
    let runner = start_runner(
        &store,
        backends(&backend.url, "job"),
        sp00ky_job_runner::runner::RunnerOptions {
            concurrency: 1,
            claim_ahead: 2,
            shutdown_grace: Duration::from_secs(10),
            ..fast_options("ahead")
        },
    )
    .await;
    wait_until("one call and two jobs waiting", WAIT, || async {
        count_status(&store, "job", "processing").await == 3 && backend.count() == 1
    })
    .await;
    runner.stop().await;
    assert_eq!(backend.count(), 1, "no call started after shutdown began");
    let first = row(&store, &ids[0]).await;
    assert_eq!(
        first["status"], "success",
        "the call in flight finished: {first}"
    );
    for id in &ids[1..] {
        let waiting = row(&store, id).await;
        assert_eq!(waiting["status"], "pending", "{waiting}");
        assert_eq!(waiting["retries"], 0, "no attempt spent: {waiting}");
        assert_eq!(waiting["errors"], json!([]), "{waiting}");
    }
}

/// While a backlog drains, a look and its claim go to the database in one request. It claims the
/// oldest due rows first, up to its limit, by the same compare-and-set as the two-step claim
/// (a row already claimed is not taken again), says where the backlog continues, and claims
/// nothing when a row of another priority is due: the two-step claim orders those.
#[tokio::test]
async fn one_request_claims_oldest_first_and_yields_to_other_priorities() {
    use sp00ky_job_runner::store::Look;
    let store = job_table().await;
    let create = async |due: &str, priority: i64| -> surrealdb::types::RecordId {
        let mut response = store
            .client()
            .query(format!(
                "CREATE ONLY job SET path = '/spookify', payload = '{{}}', priority = {priority}, \
                 due_at = time::now() - {due} RETURN VALUE id"
            ))
            .await
            .unwrap();
        let id: Option<surrealdb::types::RecordId> = response.take(0).unwrap();
        id.unwrap()
    };
    let oldest = create("3s", 0).await;
    let second = create("2s", 0).await;
    let third = create("1s", 0).await;
    let narrow = Look {
        from: None,
        expired: false,
    };
    let claimer = claimer_a();
    let take = async |limit| {
        claimer
            .look_and_take(&store, &table_named("job"), limit, narrow)
            .await
            .unwrap()
    };

    let (found, jobs) = take(2).await.expect("no other priority is due");
    let ids: Vec<_> = jobs.iter().map(|j| j.id.clone()).collect();
    assert_eq!(
        ids,
        [oldest.clone(), second.clone()],
        "oldest first, up to the limit"
    );
    assert_eq!(sp00ky_job_runner::job::claim::Claimer::found(&found), 2);
    for id in &ids {
        let claimed = row(&store, id).await;
        assert_eq!(claimed["status"], "processing", "{claimed}");
        assert_eq!(claimed["assignee"], "runner-a", "{claimed}");
        assert_eq!(claimed["lease_token"], jobs[0].token.as_str(), "{claimed}");
    }

    let (_, jobs) = take(5).await.expect("no other priority is due");
    let ids: Vec<_> = jobs.iter().map(|j| j.id.clone()).collect();
    assert_eq!(ids, [third], "claimed rows are not taken again");

    let plain = create("1s", 0).await;
    let low = create("1s", -1).await;
    assert!(
        take(5).await.is_none(),
        "a lower priority the ordered claim would take after the plain row hands over to it"
    );
    assert_eq!(row(&store, &plain).await["status"], "pending");
    let (_, jobs) = take(1)
        .await
        .expect("a lower priority the limit leaves out does not hand over");
    assert_eq!(jobs[0].id, plain);
    assert_eq!(row(&store, &low).await["status"], "pending");

    create("1s", 0).await;
    let urgent = create("1s", 5).await;
    assert!(
        take(1).await.is_none(),
        "a due row of a higher priority hands over to the ordered claim"
    );
    assert_eq!(row(&store, &urgent).await["status"], "pending");
}

/// Two runners claiming the same backlog in one request each take disjoint sets of rows that
/// together are the whole backlog: the server-side claim is the same compare-and-set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_claims_racing_on_one_backlog_never_take_a_row_twice() {
    use sp00ky_job_runner::job::claim::Claimer;
    use sp00ky_job_runner::store::Look;
    const JOBS: usize = 300;
    let store = job_table().await;
    store
        .client()
        .query(format!(
            "FOR $n IN 0..{JOBS} {{ CREATE job SET path = '/spookify', payload = '{{}}', \
               due_at = time::now() - 1s + duration::from_millis($n) }}"
        ))
        .await
        .unwrap()
        .check()
        .unwrap();
    let narrow = Look {
        from: None,
        expired: false,
    };
    // Each runner drains in a task of its own. Their first rounds start together, so both race
    // for the same rows: the loser's claim conflicts and is retried while the winner waits for
    // the next round. Left to run free from the start, one drain can win every race on a busy
    // machine and take the whole backlog, and the test would show no race at all.
    const RACED_ROUNDS: usize = 3;
    let round = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let drain = |claimer: Claimer| {
        let (store, round) = (store.clone(), round.clone());
        tokio::spawn(async move {
            let mut mine = Vec::new();
            for turn in 0.. {
                if turn < RACED_ROUNDS {
                    round.wait().await;
                }
                match claimer
                    .look_and_take(&store, &table_named("job"), 16, narrow)
                    .await
                {
                    Ok(Some((found, jobs))) => {
                        if Claimer::found(&found) == 0 {
                            return mine;
                        }
                        mine.extend(jobs.into_iter().map(|j| j.id.to_sql()));
                    }
                    Ok(None) => panic!("no other priority is due"),
                    Err(e) if e.is_conflict() => {}
                    Err(e) => panic!("{e}"),
                }
            }
            unreachable!("a drain returns once nothing is due")
        })
    };
    let b = Claimer::new("runner-b", Duration::from_secs(60));
    let (a, b) = (drain(claimer_a()), drain(b));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both runners claimed: {} and {}",
        a.len(),
        b.len()
    );
    let mut all: Vec<String> = a.iter().chain(&b).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), a.len() + b.len(), "a row was claimed twice");
    assert_eq!(all.len(), JOBS, "every row was claimed");
}

/// For any mix of priorities and due times, the one-request claim takes exactly the rows the
/// ordered two-step claim takes, or hands over to it: the same tables (explicit ids), one
/// claimed each way, compared.
#[test]
fn one_request_claims_take_what_the_ordered_claim_takes() {
    use proptest::prelude::*;
    use sp00ky_job_runner::job::claim::Watermark;
    use sp00ky_job_runner::store::Look;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rows = prop::collection::vec((-2i64..=2, 1u32..120), 0..12);
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(rows in rows, limit in 1usize..10, weights in prop::collection::vec(0u32..3, 12))| {
        // Mostly priority 0, as in practice; `weights` picks which rows keep their priority.
        let rows: Vec<(i64, u32)> = rows
            .iter()
            .zip(&weights)
            .map(|(&(priority, age), &w)| (if w == 0 { priority } else { 0 }, age))
            .collect();
        let (quick, ordered) = runtime.block_on(async {
            let fill = async || {
                let store = job_table().await;
                for (n, (priority, age)) in rows.iter().enumerate() {
                    store
                        .client()
                        .query(format!(
                            "CREATE job:r{n} SET path = '/spookify', payload = '{{}}', \
                             priority = {priority}, due_at = time::now() - {age}s"
                        ))
                        .await
                        .unwrap()
                        .check()
                        .unwrap();
                }
                store
            };
            let narrow = Look { from: None, expired: false };
            let quick = claimer_a()
                .look_and_take(&fill().await, &table_named("job"), limit, narrow)
                .await
                .unwrap()
                .map(|(_, jobs)| jobs.into_iter().map(|j| j.id.to_sql()).collect::<Vec<_>>());
            let mut watermark = Watermark::new(Duration::from_secs(60));
            let ordered: Vec<String> = claimer_a()
                .claim(&fill().await, &table_named("job"), limit, &mut watermark, std::time::Instant::now())
                .await
                .unwrap()
                .into_iter()
                .map(|j| j.id.to_sql())
                .collect();
            (quick, ordered)
        });
        match quick {
            Some(quick) => {
                let mut expected = ordered.clone();
                expected.sort();
                let mut got = quick.clone();
                got.sort();
                prop_assert_eq!(got, expected, "rows {:?}, limit {}", rows, limit);
            }
            None => {
                // Handing over is right only when the ordered claim takes a row of another
                // priority.
                let other = ordered.iter().any(|id| {
                    let n: usize = id.trim_start_matches("job:r").parse().unwrap();
                    rows[n].0 != 0
                });
                prop_assert!(other, "handed over needlessly: rows {:?}, limit {}, ordered {:?}", rows, limit, ordered);
            }
        }
    });
}
