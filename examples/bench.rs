//! The project's benchmark binary: the canonical workloads of DESIGN.md §6, each reported as a
//! fraction of this machine's limits (f32 FMA peak, streaming read bandwidth) measured in the same
//! run, at its start and again at its end.
//!
//! ```text
//! cargo run --release --example bench -- [--threads N] [--workloads P1,P2,P3,D1,D2] [--reps N]
//!     [--json-only] [--kv f32,f16,bf16,i8] [--cache warm|cold|both] [--isa scalar|portable|avx2-fma|neon]
//!     [--bw-mib N] [--no-check]
//! ```
//!
//! Output: a table, then one JSON object per line (each workload, and the `fma_peak` and
//! `read_bw` limits at the start and at the end of the run and the best of the run, which the
//! fractions divide by). `others_cpu` says how much of the machine other processes took meanwhile.
//! See `benches/README.md`.

#[path = "bench/limits.rs"]
mod limits;
#[path = "bench/sysload.rs"]
mod sysload;
#[path = "bench/workloads.rs"]
mod workloads;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use gated_attention::{reference, AttentionOptions, Isa, Tensor};
use limits::BwBuffer;
use workloads::{workload, Inputs, KvDtype, Workload, WORKLOADS};

const USAGE: &str = "\
usage: cargo run --release --example bench -- [options]
  --threads N          rayon pool size and thread count of the limit measurements (default 2)
  --workloads LIST     comma list of P1,P2,P3,D1,D2 (default all)
  --reps N             timed calls per workload after warm-up (default 9)
  --json-only          print only the JSON lines on stdout (progress still goes to stderr)
  --kv LIST            KV dtypes for every selected workload, of f32,f16,bf16,i8
                       (default: f32 for P1-P3, f32,f16 for D1 and D2)
  --cache MODE         decode only: warm (KV left in cache between calls, as the peers run),
                       cold (last-level cache evicted before every timed call) or both (default)
  --evict WHERE        cold decode: which threads read the eviction buffer: pool (default; every
                       thread of the pool, as a model's other work between layers) or calling
  --isa NAME           force scalar, portable, avx2-fma or neon (default: automatic)
  --bw-mib N           size of the bandwidth buffer (default 1024, 512 when memory is short)
  --no-check           skip the check of sampled output rows against the f64 reference";

/// Absolute error above which a workload's output is reported as wrong.
const CHECK_TOL: f64 = 1e-3;
/// MiB read to evict the last-level cache before a cold decode call (32 MiB L3 on the reference
/// machine).
const EVICT_MIB: usize = 128;

struct Args {
    threads: usize,
    workloads: Vec<Workload>,
    reps: usize,
    json_only: bool,
    kv: Option<Vec<KvDtype>>,
    cache: Vec<CacheMode>,
    evict_on_pool: bool,
    isa: Option<Isa>,
    bw_mib: Option<usize>,
    check: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CacheMode {
    Warm,
    Cold,
}

impl CacheMode {
    fn name(self) -> &'static str {
        match self {
            CacheMode::Warm => "warm",
            CacheMode::Cold => "cold",
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        threads: 2,
        workloads: WORKLOADS.to_vec(),
        reps: 9,
        json_only: false,
        kv: None,
        cache: vec![CacheMode::Warm, CacheMode::Cold],
        evict_on_pool: true,
        isa: None,
        bw_mib: None,
        check: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        // Accept both `--opt value` and `--opt=value`.
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value =
            |name: &str| inline.clone().or_else(|| it.next()).ok_or_else(|| format!("{name} needs a value"));
        let number = |s: String, name: &str| -> Result<usize, String> {
            s.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| format!("{name}: not a positive integer: {s}"))
        };
        match key.as_str() {
            "--threads" => a.threads = number(value("--threads")?, "--threads")?,
            "--reps" => a.reps = number(value("--reps")?, "--reps")?,
            "--bw-mib" => a.bw_mib = Some(number(value("--bw-mib")?, "--bw-mib")?),
            "--json-only" => a.json_only = true,
            "--no-check" => a.check = false,
            "--workloads" => {
                a.workloads = value("--workloads")?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| workload(s).ok_or_else(|| format!("unknown workload {s}")))
                    .collect::<Result<_, _>>()?;
            }
            "--kv" | "--dtypes" => {
                let kv = value("--kv")?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| KvDtype::from_name(s).ok_or_else(|| format!("unknown KV dtype {s}")))
                    .collect::<Result<Vec<_>, _>>()?;
                a.kv = Some(kv);
            }
            "--cache" => {
                a.cache = match value("--cache")?.as_str() {
                    "warm" => vec![CacheMode::Warm],
                    "cold" => vec![CacheMode::Cold],
                    "both" => vec![CacheMode::Warm, CacheMode::Cold],
                    s => return Err(format!("--cache: warm, cold or both, not {s}")),
                }
            }
            "--evict" => {
                a.evict_on_pool = match value("--evict")?.as_str() {
                    "pool" => true,
                    "calling" => false,
                    s => return Err(format!("--evict: pool or calling, not {s}")),
                }
            }
            "--isa" => {
                let s = value("--isa")?;
                a.isa = Some(Isa::from_name(&s).ok_or_else(|| format!("unknown ISA {s}"))?);
            }
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok(a)
}

/// Median, min and max of a sample, in the sample's unit.
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(mut x: Vec<f64>) -> Stats {
        x.sort_by(f64::total_cmp);
        let n = x.len();
        let median = if n % 2 == 1 { x[n / 2] } else { 0.5 * (x[n / 2 - 1] + x[n / 2]) };
        Stats { median, min: x[0], max: x[n - 1] }
    }
}

/// The limits measured at one point of the run.
struct Limits {
    phase: &'static str,
    unix_time: u64,
    /// The 1-minute load average when measured (other processes on the machine), if readable.
    loadavg: Option<f64>,
    /// Fraction of the CPUs other processes used while these were measured.
    others_cpu: Option<f64>,
    /// (threads, GFLOP/s)
    fma: Vec<(usize, f64)>,
    /// (threads, GB/s)
    bw: Vec<(usize, f64)>,
}

impl Limits {
    fn measure(phase: &'static str, threads: usize, buf: &BwBuffer) -> Limits {
        let counts: Vec<usize> = if threads > 1 { vec![1, threads] } else { vec![1] };
        let cpu0 = sysload::sample();
        let fma = counts.iter().map(|&t| (t, limits::fma_peak_gflops(t, 7, 50))).collect();
        let bw = counts.iter().map(|&t| (t, buf.read_gbps(t, 5))).collect();
        let others_cpu = sysload::others_busy(cpu0, sysload::sample());
        Limits { phase, unix_time: unix_time(), loadavg: loadavg(), others_cpu, fma, bw }
    }

    fn fma_at(&self, threads: usize) -> f64 {
        self.fma.iter().find(|p| p.0 == threads).map_or(f64::NAN, |p| p.1)
    }

    fn bw_at(&self, threads: usize) -> f64 {
        self.bw.iter().find(|p| p.0 == threads).map_or(f64::NAN, |p| p.1)
    }
}

/// All of a run's measurements of one limit on N threads (start, between workloads, end). The
/// fractions divide by `max`; `min` and `median` say how far the host moved the limit meanwhile.
struct Spread {
    samples: usize,
    min: f64,
    median: f64,
    max: f64,
}

impl Spread {
    fn of(mut xs: Vec<f64>) -> Spread {
        xs.retain(|x| x.is_finite());
        xs.sort_by(f64::total_cmp);
        let n = xs.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => xs[n / 2],
            _ => 0.5 * (xs[n / 2 - 1] + xs[n / 2]),
        };
        Spread {
            samples: n,
            min: xs.first().copied().unwrap_or(f64::NAN),
            median,
            max: xs.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// The JSON fields `min`, `median` and `max`, and `max / min` as `spread`.
    fn json(&self) -> String {
        format!(
            "\"min\":{},\"median\":{},\"max\":{},\"spread\":{}",
            json_num(self.min),
            json_num(self.median),
            json_num(self.max),
            json_num(self.max / self.min)
        )
    }
}

/// One measured (workload, KV dtype, cache mode).
struct Row {
    w: Workload,
    dt: KvDtype,
    cache: Option<CacheMode>,
    /// Cold calls: which threads read the eviction buffer before each (`pool` or `calling`).
    evict: Option<&'static str>,
    reps: usize,
    ms: Stats,
    gflops: f64,
    gbps: Option<f64>,
    max_abs_err: Option<f64>,
    /// Fraction of the CPUs other processes used during the timed calls.
    others_cpu: Option<f64>,
}

fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

fn unix_time() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Max |ours − f64 reference| over sampled query rows of the last call's output. Prefill rows
/// `[a, a + r)` are checked on a problem cut down to those query rows and the keys up to the
/// last of them, which (bottom-right aligned, causal) sees exactly the same keys.
fn check(inp: &Inputs) -> Result<f64, String> {
    let w = inp.w;
    let r = w.lq.min(3);
    let mut starts = vec![0, w.lq / 2, w.lq - r];
    starts.dedup();
    let row = w.hq * w.d;
    let mut err = 0.0f64;
    for a in starts {
        let p = w.lk - w.lq + a + r; // keys of the cut-down problem
        let re = reference::attention(
            &Tensor::bshd(&inp.q[a * row..(a + r) * row], 1, r, w.hq, w.d),
            &inp.k.tensor(p, w.hkv, w.d),
            &inp.v.tensor(p, w.hkv, w.d),
            &w.options(),
        )
        .map_err(|e| format!("reference: {e:?}"))?;
        for i in 0..r {
            for h in 0..w.hq {
                for x in 0..w.d {
                    let ours = inp.o[(a + i) * row + h * w.d + x] as f64;
                    let e = (ours - re.out_at(0, i, h, x)).abs();
                    // NaN counts as an infinite error.
                    err = if e.is_nan() { f64::INFINITY } else { err.max(e) };
                }
            }
        }
    }
    Ok(err)
}

/// Warm-up, then `reps` timed calls: their times and the share of the CPUs other processes used
/// meanwhile.
fn measure(
    inp: &mut Inputs,
    mode: Option<CacheMode>,
    evict_on_pool: bool,
    reps: usize,
    buf: &BwBuffer,
) -> Result<(Stats, Option<f64>), String> {
    let call = |inp: &mut Inputs| inp.run().map_err(|e| format!("{} {}: {e:?}", inp.w.name, inp.dt.name()));
    // Warm-up: at least one call and 0.2 s, at most 10 calls.
    let t0 = Instant::now();
    for _ in 0..10 {
        call(inp)?;
        if t0.elapsed().as_secs_f64() > 0.2 {
            break;
        }
    }
    let mut ms = Vec::with_capacity(reps);
    let cpu0 = sysload::sample();
    for _ in 0..reps {
        if mode == Some(CacheMode::Cold) {
            if evict_on_pool {
                buf.evict_caches_on_pool(EVICT_MIB);
            } else {
                buf.evict_caches(EVICT_MIB);
            }
        }
        let t = Instant::now();
        call(inp)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let others = sysload::others_busy(cpu0, sysload::sample());
    Ok((Stats::of(ms), others))
}

fn json_num(x: f64) -> String {
    if x.is_finite() {
        let s = format!("{x:.4}");
        // Keep integers readable and drop trailing zeros of the fixed format.
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        "null".to_string()
    }
}

fn json_opt(x: Option<f64>) -> String {
    x.map_or_else(|| "null".to_string(), json_num)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };
    let threads = args.threads;
    if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global() {
        eprintln!("error: cannot build the rayon pool: {e}");
        return ExitCode::FAILURE;
    }
    // The ISA every call runs (`--isa`, else GATED_ATTENTION_ISA, else the CPU's best), or the
    // error every call would return.
    let mut isa_opts = AttentionOptions::new();
    isa_opts.isa = args.isa;
    let isa = match isa_opts.resolved_isa() {
        Ok(isa) => isa.name(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };

    let bw_mib = args.bw_mib.unwrap_or(match limits::mem_available_mib() {
        Some(m) if m < 4096 => 512,
        _ => 1024,
    });
    eprintln!("bench: {threads} threads, {} reps; measuring limits ({bw_mib} MiB read buffer) ...", args.reps);
    let buf = BwBuffer::new(bw_mib, threads);
    let start = Limits::measure("start", threads, &buf);
    eprintln!(
        "  fma peak {:.1} GFLOP/s on {threads} threads, read {:.1} GB/s",
        start.fma_at(threads),
        start.bw_at(threads)
    );

    let mut rows = Vec::new();
    let mut between: Vec<(f64, f64)> = Vec::new();
    let mut failed = false;
    for &w in &args.workloads {
        let dts = args.kv.clone().unwrap_or_else(|| w.kv_dtypes.to_vec());
        for dt in dts {
            eprint!("  {} kv {} ...", w.name, dt.name());
            let mut inp = Inputs::new(w, dt);
            inp.isa = args.isa;
            let modes: Vec<Option<CacheMode>> =
                if w.is_decode() { args.cache.iter().map(|&m| Some(m)).collect() } else { vec![None] };
            let mut max_abs_err = None;
            for (k, &mode) in modes.iter().enumerate() {
                let (ms, others_cpu) = match measure(&mut inp, mode, args.evict_on_pool, args.reps, &buf) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!(" failed: {e}");
                        failed = true;
                        break;
                    }
                };
                if k == 0 && args.check {
                    match check(&inp) {
                        Ok(e) => {
                            if e > CHECK_TOL {
                                failed = true;
                                eprint!(" WRONG OUTPUT (max abs err {e:.2e})");
                            }
                            max_abs_err = Some(e);
                        }
                        Err(e) => {
                            failed = true;
                            eprint!(" check failed: {e}");
                        }
                    }
                }
                let t = ms.median / 1e3;
                eprint!(" {}{:.2} ms", mode.map_or(String::new(), |m| format!("{}: ", m.name())), ms.median);
                rows.push(Row {
                    w,
                    dt,
                    cache: mode,
                    evict: (mode == Some(CacheMode::Cold)).then_some(if args.evict_on_pool {
                        "pool"
                    } else {
                        "calling"
                    }),
                    reps: args.reps,
                    gflops: w.flops() / t / 1e9,
                    gbps: w.is_decode().then(|| w.kv_bytes(dt) / t / 1e9),
                    ms,
                    max_abs_err,
                    others_cpu,
                });
            }
            eprintln!();
            // A short look at the limits between workloads: the peak is the best seen in the run,
            // and bursts of other processes at the start or the end must not lower it.
            between.push((limits::fma_peak_gflops(threads, 3, 40), buf.read_gbps(threads, 2)));
        }
    }

    eprintln!("  re-measuring limits ...");
    let end = Limits::measure("end", threads, &buf);
    // The machine's limit is the best measurement of the run (at the start, between workloads,
    // at the end): other processes only ever lower a measurement.
    let fma_spread = Spread::of(
        [start.fma_at(threads), end.fma_at(threads)].into_iter().chain(between.iter().map(|b| b.0)).collect(),
    );
    let bw_spread =
        Spread::of([start.bw_at(threads), end.bw_at(threads)].into_iter().chain(between.iter().map(|b| b.1)).collect());
    let (peak, bw) = (fma_spread.max, bw_spread.max);
    let samples = fma_spread.samples;

    if !args.json_only {
        print!("{}", table(&rows, &start, &end, threads, isa, &fma_spread, &bw_spread));
    }
    for l in [&start, &end] {
        for &(t, g) in &l.fma {
            println!(
                "{{\"limit\":\"fma_peak\",\"phase\":\"{}\",\"threads\":{t},\"gflops\":{},\"kernel\":\"{}\",\"unix_time\":{},\"loadavg\":{},\"others_cpu\":{}}}",
                l.phase,
                json_num(g),
                limits::fma_kernel_name(),
                l.unix_time,
                json_opt(l.loadavg),
                json_opt(l.others_cpu)
            );
        }
        for &(t, g) in &l.bw {
            println!(
                "{{\"limit\":\"read_bw\",\"phase\":\"{}\",\"threads\":{t},\"gbps\":{},\"buffer_mib\":{},\"unix_time\":{},\"loadavg\":{},\"others_cpu\":{}}}",
                l.phase,
                json_num(g),
                buf.mib(),
                l.unix_time,
                json_opt(l.loadavg),
                json_opt(l.others_cpu)
            );
        }
    }
    println!(
        "{{\"limit\":\"fma_peak\",\"phase\":\"run_max\",\"threads\":{threads},\"gflops\":{},\"samples\":{samples},{}}}",
        json_num(peak),
        fma_spread.json()
    );
    println!(
        "{{\"limit\":\"read_bw\",\"phase\":\"run_max\",\"threads\":{threads},\"gbps\":{},\"samples\":{samples},{}}}",
        json_num(bw),
        bw_spread.json()
    );
    for r in &rows {
        println!(
            "{{\"workload\":\"{}\",\"dtype_kv\":\"{}\",\"threads\":{threads},\"median_ms\":{},\"min_ms\":{},\"max_ms\":{},\
\"gflops\":{},\"frac_fma_peak\":{},\"gbps\":{},\"frac_read_bw\":{},\"isa\":\"{isa}\",\"cache\":{},\"evict\":{},\"reps\":{},\
\"lk_eff\":{},\"max_abs_err\":{},\"others_cpu\":{}}}",
            r.w.name,
            r.dt.name(),
            json_num(r.ms.median),
            json_num(r.ms.min),
            json_num(r.ms.max),
            json_num(r.gflops),
            json_num(r.gflops / peak),
            json_opt(r.gbps),
            json_opt(r.gbps.map(|g| g / bw)),
            r.cache.map_or_else(|| "null".to_string(), |m| format!("\"{}\"", m.name())),
            r.evict.map_or_else(|| "null".to_string(), |e| format!("\"{e}\"")),
            r.reps,
            json_num(r.w.lk_eff()),
            r.max_abs_err.map_or_else(|| "null".to_string(), |e| format!("{e:.3e}")),
            json_opt(r.others_cpu),
        );
    }
    if failed {
        eprintln!("bench: some workloads failed or gave wrong output (see above)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn table(
    rows: &[Row],
    start: &Limits,
    end: &Limits,
    threads: usize,
    isa: &str,
    fma: &Spread,
    bw_spread: &Spread,
) -> String {
    let (peak, bw) = (fma.max, bw_spread.max);
    let mut s = String::new();
    let _ = writeln!(s, "gated-attention bench: {threads} threads, ISA {isa}");
    for l in [start, end] {
        let _ = write!(s, "  limits at {:<5}: f32 FMA peak", l.phase);
        for &(t, g) in &l.fma {
            let _ = write!(s, " {g:.1} GFLOP/s ({t}T)");
        }
        let _ = write!(s, "; read bandwidth");
        for &(t, g) in &l.bw {
            let _ = write!(s, " {g:.1} GB/s ({t}T)");
        }
        if let Some(la) = l.loadavg {
            let _ = write!(s, "; load average {la:.2}");
        }
        if let Some(o) = l.others_cpu {
            let _ = write!(s, "; other processes {:.0}% of the CPUs", 100.0 * o);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "  fractions are of the best of {} measurements in the run: {peak:.1} GFLOP/s, {bw:.1} GB/s ({threads}T)",
        fma.samples
    );
    let _ = writeln!(
        s,
        "  spread of those measurements (min / median / max): FMA peak {:.1} / {:.1} / {:.1} GFLOP/s, \
read bandwidth {:.1} / {:.1} / {:.1} GB/s",
        fma.min, fma.median, fma.max, bw_spread.min, bw_spread.median, bw_spread.max
    );
    let _ = writeln!(
        s,
        "{:<4} {:<4} {:<5} {:>6} {:>10} {:>10} {:>10} {:>9} {:>6} {:>8} {:>6} {:>9} {:>6}",
        "wl",
        "kv",
        "cache",
        "Lk_eff",
        "median ms",
        "min ms",
        "max ms",
        "GFLOP/s",
        "%peak",
        "KV GB/s",
        "%bw",
        "max err",
        "other"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<4} {:<4} {:<5} {:>6.1} {:>10.3} {:>10.3} {:>10.3} {:>9.2} {:>5.1}% {:>8} {:>6} {:>9} {:>6}",
            r.w.name,
            r.dt.name(),
            r.cache.map_or("-", CacheMode::name),
            r.w.lk_eff(),
            r.ms.median,
            r.ms.min,
            r.ms.max,
            r.gflops,
            100.0 * r.gflops / peak,
            r.gbps.map_or_else(|| "-".to_string(), |g| format!("{g:.2}")),
            r.gbps.map_or_else(|| "-".to_string(), |g| format!("{:.1}%", 100.0 * g / bw)),
            r.max_abs_err.map_or_else(|| "-".to_string(), |e| format!("{e:.1e}")),
            r.others_cpu.map_or_else(|| "-".to_string(), |o| format!("{:.0}%", 100.0 * o)),
        );
    }
    s
}
