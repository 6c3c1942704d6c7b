//! `cargo run --release -p qwp-simulator -- --out docs/sim`: replays every trace under qwp's
//! decision function and under the KEDA + HPA model, prints a markdown table and writes one
//! timeline CSV per trace (render them with `scripts/plot_timelines.py`).

use std::path::PathBuf;

use clap::Parser;
use qwp_simulator::model::{self, Settings};
use qwp_simulator::policy::{KedaHpa, KedaSettings, Qwp, Scaler};
use qwp_simulator::{report, trace};

#[derive(Parser)]
#[command(about = "Compare qwp's scaling with KEDA + HPA on arrival traces")]
struct Args {
    /// Traces to run (flash-sale, steady, spiky, diurnal); all when omitted.
    #[arg(long = "trace")]
    traces: Vec<String>,
    /// Seconds from a scale-up to a pod taking messages.
    #[arg(long, default_value_t = 5)]
    pod_startup_seconds: u64,
    /// Folder for the timeline CSVs.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let settings = Settings {
        pod_startup_ms: args.pod_startup_seconds * 1000,
        ..Settings::default()
    };
    let known = trace::all();
    for name in &args.traces {
        if !known.iter().any(|t| t.name == name) {
            eprintln!(
                "unknown trace {name:?}; choose from: {}",
                known.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
            );
            std::process::exit(2);
        }
    }
    let selected: Vec<_> = known
        .into_iter()
        .filter(|t| args.traces.is_empty() || args.traces.iter().any(|n| n == t.name))
        .collect();

    let mut rows = Vec::new();
    for trace in selected {
        let scalers: Vec<Box<dyn Scaler>> = vec![
            Box::new(Qwp::with_defaults(trace.concurrency, trace.max_replicas)),
            Box::new(KedaHpa::with_defaults(
                trace.concurrency,
                trace.max_replicas,
            )),
            // `make bench-keda`'s keda-fast: polling 5 s, cooldown 60 s, no scale-up steps.
            Box::new(KedaHpa::new(
                "keda+hpa-tuned",
                KedaSettings::fast(trace.concurrency, trace.max_replicas, 5, 60),
            )),
        ];
        let outcomes: Vec<_> = scalers
            .into_iter()
            .map(|mut scaler| model::run(&trace, scaler.as_mut(), settings))
            .collect();
        if let Some(dir) = &args.out {
            std::fs::create_dir_all(dir)?;
            std::fs::write(
                dir.join(format!("{}.csv", trace.name)),
                report::timeline_csv(&outcomes),
            )?;
        }
        rows.push((trace, outcomes));
    }
    println!("pod start-up delay: {} s\n", args.pod_startup_seconds);
    for (trace, _) in &rows {
        println!("- {}: {}", trace.name, trace.description);
    }
    println!();
    print!("{}", report::markdown_table(&rows));
    Ok(())
}
