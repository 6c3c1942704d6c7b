//! Face processor benchmark (docs/benchmarks.md): per-image latency by stage at
//! concurrency 1, then jobs/s with several jobs at once, as a worker pod runs them.
//! `make bench-face` pins it to one core (taskset), like a pod with a 1-CPU limit.
//!
//!   cargo run -p qwp-face --example bench -- [ROUNDS] [CONCURRENCY...]
//!
//! Photos: dlib's johns (150×150 face crops) and examples/faces (full photos), from
//! `make face-fetch`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use qwp_face::{Limits, Models, Timings};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().map_or(3, |a| a.parse().expect("ROUNDS"));
    let concurrencies: Vec<usize> = if args.len() > 1 {
        args[1..]
            .iter()
            .map(|a| a.parse().expect("CONCURRENCY"))
            .collect()
    } else {
        vec![1, 2, 4]
    };
    let cache = std::env::var_os("QWP_FACE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/face"));
    let started = Instant::now();
    let models = Models::load(&cache.join("models"), Limits::default()).expect("make face-fetch");
    println!("models loaded in {:.2} s", started.elapsed().as_secs_f64());

    let sets = [
        ("johns crops 150x150", photos(&cache.join("photos/johns"))),
        ("full photos (faces/)", photos(&cache.join("photos/faces"))),
    ];
    println!("\nconcurrency 1, {rounds} rounds, median per image (ms):");
    println!("| photos | n | decode | detect | align | embed | total |");
    println!("|---|---|---|---|---|---|---|");
    for (label, set) in &sets {
        let mut timings: Vec<Timings> = Vec::new();
        for _ in 0..rounds {
            for bytes in set {
                // Photos without a face (dogs.jpg) still cost decode + detect.
                if let Ok(face) = models.analyse(bytes) {
                    timings.push(face.timings);
                }
            }
        }
        let median = |f: fn(&Timings) -> Duration| {
            let mut v: Vec<f64> = timings.iter().map(|t| f(t).as_secs_f64() * 1e3).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "| {label} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            timings.len(),
            median(|t| t.decode),
            median(|t| t.detect),
            median(|t| t.align),
            median(|t| t.embed),
            median(|t| t.total()),
        );
    }

    let jobs: Vec<&Vec<u8>> = sets[0].1.iter().collect();
    let total = jobs.len() * rounds;
    println!("\njohns crops, {total} jobs, threads sharing this process's CPUs:");
    println!("| concurrency | jobs/s | median latency (ms) | p95 (ms) |");
    println!("|---|---|---|---|");
    for &concurrency in &concurrencies {
        let next = AtomicUsize::new(0);
        let started = Instant::now();
        let mut latencies: Vec<f64> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..concurrency)
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= total {
                                return mine;
                            }
                            let t = Instant::now();
                            let _ = models.analyse(jobs[i % jobs.len()]);
                            mine.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        println!(
            "| {concurrency} | {:.1} | {:.0} | {:.0} |",
            total as f64 / elapsed,
            latencies[latencies.len() / 2],
            latencies[latencies.len() * 95 / 100],
        );
    }
}

fn photos(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if qwp_face::gallery::is_photo_name(&path.to_string_lossy()) {
                paths.push(path);
            }
        }
    }
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}
