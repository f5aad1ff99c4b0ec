//! The database's ceiling, measured apart from the runner's code: the cheapest batched queue
//! (find due ids, one conditional claim, one result write; see [`Store::ceiling_round`]) run by
//! several loops at once, each on rows of its own, at the batch size and number of loops that
//! move the most rows on this database. The runner's throughput is reported against it.

use super::*;

/// Batch sizes and loop counts tried; the best pair is then measured on the full job count.
const BATCHES: [usize; 4] = [32, 64, 128, 256];
const LOOPS: [usize; 4] = [1, 2, 4, 8];

/// The best the ideal queue did, and how; `probes` holds every pair tried, as
/// `(batch, loops, jobs/s)`, so the runner can also be compared at its own batch size.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub jobs_per_s: f64,
    pub batch: usize,
    pub loops: usize,
    pub probes: Vec<(usize, usize, f64)>,
}

/// Tries every batch size with every loop count on a slice of the jobs, then measures the best
/// pair on `args.jobs` rows.
pub(super) async fn ceiling(
    store: &Store,
    args: &BenchArgs,
    progress: &Progress,
    mode: Mode,
) -> Result<Ceiling, BenchError> {
    let probe_jobs = (args.jobs / 5).max(1_000);
    let mut best = Ceiling {
        jobs_per_s: 0.0,
        batch: BATCHES[0],
        loops: LOOPS[0],
        probes: Vec::new(),
    };
    for loops in LOOPS {
        for batch in BATCHES {
            progress.phase(
                mode,
                &format!("ceiling probe: batch {batch}, {loops} loops"),
            );
            let name = format!("probe_{batch}x{loops}");
            let rate = measure(store, &name, probe_jobs, batch, loops).await?;
            best.probes
                .push((batch, loops, (rate * 10.0).round() / 10.0));
            if rate > best.jobs_per_s {
                best.jobs_per_s = rate;
                best.batch = batch;
                best.loops = loops;
            }
        }
    }
    progress.phase(
        mode,
        &format!("ceiling: batch {}, {} loops", best.batch, best.loops),
    );
    let jobs_per_s = measure(store, "best", args.jobs, best.batch, best.loops).await?;
    Ok(Ceiling { jobs_per_s, ..best })
}

/// Inserts `jobs` rows split over `loops` tables, then times the loops draining them together.
/// Each measurement has tables of its own (named after `name`), so none walks over the index
/// entries an earlier one left behind.
async fn measure(
    store: &Store,
    name: &str,
    jobs: usize,
    batch: usize,
    loops: usize,
) -> Result<f64, BenchError> {
    let per_loop = jobs.div_ceil(loops);
    let mut tables = Vec::new();
    for lane in 0..loops {
        let table = bench_table(&format!("bench_ceiling_{name}_{lane}"));
        store.apply_schema(&table).await?;
        insert(store, &table, per_loop).await?;
        tables.push(table);
    }
    let started = Instant::now();
    let mut lanes = JoinSet::new();
    for table in tables {
        let store = store.clone();
        lanes.spawn(async move {
            let mut done = 0;
            while done < per_loop {
                let moved = store.ceiling_round(&table, batch).await?;
                if moved == 0 {
                    return Err(BenchError::Setup(format!(
                        "{table}: the ceiling loop found no due row after {done} of {per_loop}"
                    )));
                }
                done += moved;
            }
            Ok::<(), BenchError>(())
        });
    }
    while let Some(lane) = lanes.join_next().await {
        lane.map_err(|e| BenchError::Setup(e.to_string()))??;
    }
    Ok((per_loop * loops) as f64 / started.elapsed().as_secs_f64())
}
