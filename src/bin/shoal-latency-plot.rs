//! `shoal-latency-plot`: HdrHistogram interval logs (`.hlog`, as `GET
//! /v1/stats/{volume}/histogram?format=hlog` serves them) to a latency-percentile plot (SVG).
//!
//! Every interval of a file with the same tag is merged into one line; with several files, the
//! lines are named after the files (and the tags, when a file has several), so two runs can be
//! compared at a glance. A summary table (count and percentiles in µs) goes to stdout.

use clap::Parser;
use hdrhistogram::Histogram;
use shoal::stats::export::read_interval_log;
use shoal::stats::plot::{Series, render_svg};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Plot latency percentiles from HdrHistogram interval logs.
#[derive(Debug, Parser)]
#[command(name = "shoal-latency-plot", version)]
struct Args {
    /// Interval log files (`-` for stdin).
    #[arg(value_name = "LOG", required = true)]
    logs: Vec<PathBuf>,
    /// Output SVG file.
    #[arg(short, long, value_name = "FILE", default_value = "latency.svg")]
    output: PathBuf,
    /// Plot title.
    #[arg(long, default_value = "Command latency by percentile")]
    title: String,
    /// Only the histograms whose tag contains this (e.g. `.read`).
    #[arg(long, value_name = "TEXT")]
    tag: Option<String>,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .map_err(|e| format!("stdin: {e}"))?;
        return Ok(buf);
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "stdin".into(), |s| s.to_string_lossy().into_owned())
}

/// The series of every file: (file stem, tag) → merged histogram.
fn load(args: &Args) -> Result<Vec<Series>, String> {
    let mut groups: Vec<(String, BTreeMap<String, Histogram<u64>>)> = Vec::new();
    for path in &args.logs {
        let text = read(path)?;
        let intervals = read_interval_log(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut tags: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
        for i in intervals {
            let tag = i.tag.unwrap_or_default();
            if args.tag.as_ref().is_some_and(|t| !tag.contains(t.as_str())) {
                continue;
            }
            let merged = tags
                .entry(tag)
                .or_insert_with(|| shoal::stats::new_histogram(3));
            merged
                .add(&i.histogram)
                .map_err(|e| format!("{}: {e:?}", path.display()))?;
        }
        groups.push((stem(path), tags));
    }
    let several_files = groups.len() > 1;
    let mut series = Vec::new();
    for (file, tags) in groups {
        let several_tags = tags.len() > 1;
        for (tag, histogram) in tags {
            // One file: its tags; several: the files, with the tag when a file has several.
            let name = if tag.is_empty() {
                file.clone()
            } else if !several_files {
                tag
            } else if several_tags {
                format!("{file}: {tag}")
            } else {
                file.clone()
            };
            series.push(Series { name, histogram });
        }
    }
    Ok(series)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let series = match load(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shoal-latency-plot: {e}");
            return ExitCode::from(2);
        }
    };
    if series.is_empty() {
        eprintln!("shoal-latency-plot: no histogram in the input");
        return ExitCode::from(2);
    }
    let svg = render_svg(&args.title, &series);
    if let Err(e) = std::fs::write(&args.output, svg) {
        eprintln!("shoal-latency-plot: {}: {e}", args.output.display());
        return ExitCode::from(1);
    }
    println!(
        "{:<32} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "series", "count", "p50", "p99", "p99.9", "max"
    );
    for s in &series {
        let h = &s.histogram;
        let us = |q: f64| format!("{:.1}", h.value_at_quantile(q) as f64 / 1000.0);
        println!(
            "{:<32} {:>10} {:>10} {:>10} {:>10} {:>10}",
            s.name,
            h.len(),
            us(0.5),
            us(0.99),
            us(0.999),
            format!("{:.1}", h.max() as f64 / 1000.0)
        );
    }
    println!("wrote {} (latency in µs)", args.output.display());
    ExitCode::SUCCESS
}
