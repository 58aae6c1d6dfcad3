//! How much of the machine other processes used while something was measured (Linux only): on a
//! shared VM a row measured next to a compiler or a fuzzer is not comparable, and this says so.
#![allow(dead_code)] // shared by several targets (bench, decode_sweep, benches/attention), each using a part

/// CPU time counters at one instant, in clock ticks.
#[derive(Clone, Copy)]
pub struct CpuSample {
    /// All CPUs' time (user, nice, system, idle, iowait, irq, softirq, steal).
    total: u64,
    /// All CPUs' idle and iowait time.
    idle: u64,
    /// This process's user + system time, all threads.
    own: u64,
}

/// The counters now, or `None` where `/proc` is not available.
pub fn sample() -> Option<CpuSample> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if cpu.len() < 8 {
        return None;
    }
    let own_stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces), starting at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest: Vec<&str> = own_stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some(CpuSample { total: cpu.iter().sum(), idle: cpu[3] + cpu[4], own: utime + stime })
}

/// Fraction of all CPUs' time between `a` and `b` that other processes (and the hypervisor,
/// through steal time) used: 0 on an otherwise idle machine, 0.5 when one of two cores was taken.
/// The counters tick at 100 Hz, so a span of a few tens of milliseconds reads coarsely.
pub fn others_busy(a: Option<CpuSample>, b: Option<CpuSample>) -> Option<f64> {
    let (a, b) = (a?, b?);
    let total = b.total.checked_sub(a.total)?;
    if total == 0 {
        return None;
    }
    let busy = (b.total - b.idle) as f64 - (a.total - a.idle) as f64;
    let own = b.own as f64 - a.own as f64;
    Some(((busy - own) / total as f64).clamp(0.0, 1.0))
}
