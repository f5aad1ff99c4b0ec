//! Printing the figures, and reading the process's memory.

use super::*;

/// A field of /proc/self/status, in MiB (0 where /proc is unavailable).
pub(super) fn rss_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(super) fn describe_machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let profile = if cfg!(debug_assertions) {
        "debug build (figures are not representative)"
    } else {
        "release build"
    };
    format!(
        "sp00ky-job-runner {} bench: {cpu}, {cores} cores, {profile}",
        env!("CARGO_PKG_VERSION")
    )
}

pub(super) fn print_table(result: &ModeResult) {
    let p = &result.pickup_ms;
    println!("mode {:?}", result.mode);
    println!(
        "  ceiling (ideal batched queue)       {:>10.0} jobs/s   batch {}, {} loops",
        result.ceiling_jobs_per_s, result.ceiling_batch, result.ceiling_loops
    );
    let probes: Vec<String> = result
        .ceiling_probes
        .iter()
        .map(|(batch, loops, rate)| format!("{batch}x{loops} {rate:.0}"))
        .collect();
    println!("    probes (batch x loops jobs/s): {}", probes.join(", "));
    println!(
        "  limit (runner's own statements)     {:>10.0} jobs/s",
        result.limit_jobs_per_s
    );
    println!(
        "  throughput (runner, 0 ms backend)   {:>10.0} jobs/s   {:.0} % of ceiling, {:.0} % of limit",
        result.throughput_jobs_per_s,
        result.ratio_to_ceiling * 100.0,
        result.ratio_to_limit * 100.0
    );
    println!(
        "  pickup latency ({} jobs)           p50 {:.1} ms   p95 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        result.pickup_samples, p.p50, p.p95, p.p99, p.max
    );
    println!(
        "  I/O-bound (50 ms backend)           {:>10.1} jobs/s   {:.1}x one-at-a-time ({:.1} jobs/s)",
        result.io_bound_jobs_per_s, result.io_bound_ratio_to_serial, result.serial_jobs_per_s
    );
    println!(
        "  memory                              peak {:.0} MiB   after first batch {:.0} MiB   after last {:.0} MiB   growth {:.2}x (+{:.0} MiB)",
        result.peak_rss_mb,
        result.rss_first_batch_mb,
        result.rss_last_batch_mb,
        result.rss_growth_ratio,
        result.rss_last_batch_mb - result.rss_first_batch_mb
    );
    if let Some(growth) = result.database_alone_rss_growth_mb {
        println!(
            "  memory, database alone              +{growth:.0} MiB over the same batches (the engine shares this process)"
        );
    }
    println!();
}

/// How often a phase that is still running says so on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Tells a person watching stderr what the benchmark is doing: each phase as it starts, and a
/// line at least every [`PROGRESS_EVERY`] while one runs (a full run takes many minutes).
/// Nothing goes to stdout, so `--json` output stays one object per mode.
pub(super) struct Progress {
    current: Arc<Mutex<(String, Instant)>>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub(super) fn start() -> Progress {
        let current = Arc::new(Mutex::new(("starting".to_string(), Instant::now())));
        let shared = current.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let (phase, since) = shared.lock().expect("progress lock").clone();
                eprintln!(
                    "bench: still {phase} ({} s so far)",
                    since.elapsed().as_secs()
                );
            }
        });
        Progress { current, ticker }
    }

    /// `mode` starts `phase`.
    pub(super) fn phase(&self, mode: Mode, phase: &str) {
        let phase = format!("{mode:?}: {phase}");
        eprintln!("bench: {phase}");
        *self.current.lock().expect("progress lock") = (phase, Instant::now());
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}
