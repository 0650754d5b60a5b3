//! What the load clients share (included by the examples with `#[path]`): their own CPU, running
//! their workers, and latency percentiles.

/// This process's CPU time (user and system) so far, from /proc (in clock ticks of 1/100 s, which
/// Linux reports on every architecture this runs on).
pub(crate) fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    ticks / 100.0
}

/// Runs `n` tasks made by `task` on `rt` to their end and returns all their latencies, sorted.
pub(crate) fn gather<F, Fut>(rt: &tokio::runtime::Runtime, n: usize, task: F) -> Vec<u32>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<u32>> + Send + 'static,
{
    let mut all: Vec<u32> = rt.block_on(async {
        let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(task())).collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    });
    all.sort_unstable();
    all
}

/// The `p` quantile of sorted latencies (0 when there are none).
pub(crate) fn percentile(sorted: &[u32], p: f64) -> u32 {
    sorted.get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or(0)
}
