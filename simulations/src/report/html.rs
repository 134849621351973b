//! `report.html`: one self-contained page (no scripts, no network) with the figures as tables
//! and the series as SVG plots drawn with `plotters`.

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::Report;

const WIDTH: u32 = 720;
const HEIGHT: u32 = 320;
/// Lines drawn at most in the rollout plot (the rest are summarised in the table).
const MAX_WRITE_LINES: usize = 24;

/// The page for `report`.
pub fn render(report: &Report) -> anyhow::Result<String> {
    let mut body = String::new();
    body.push_str(&format!(
        "<h1>{}</h1>\n<p>{}</p>\n",
        escape(&report.scenario),
        escape(&report.description)
    ));
    body.push_str(&summary(report));
    body.push_str("<h2>Policy rollout</h2>\n");
    body.push_str(&rollout_plot(report)?);
    body.push_str("<h2>Failure detection</h2>\n");
    if report.kills.is_empty() {
        body.push_str("<p>No node was killed.</p>\n");
    } else {
        body.push_str(&detection_plot(report)?);
    }
    body.push_str("<h2>Membership</h2>\n");
    body.push_str(&liveness_plot(report)?);
    body.push_str("<h2>Gossip bytes per node</h2>\n");
    body.push_str(&gossip_plot(report)?);
    body.push_str("<h2>Incidents and actions</h2>\n");
    if report.actions.incidents == 0 {
        body.push_str("<p>The scenario has no incident workload.</p>\n");
    } else {
        body.push_str(&workload_plot(report)?);
        body.push_str(&mesh_actions_plot(report)?);
        body.push_str(&mesh_actions_table(report));
        body.push_str("<h2>Evaluation latency</h2>\n");
        body.push_str(&latency_plot(report)?);
    }
    Ok(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>mesh-sim: {}</title><style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n",
        escape(&report.scenario)
    ))
}

const STYLE: &str = "body{font-family:sans-serif;max-width:780px;margin:2em auto;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;\
text-align:left}.ok{color:#060}.fail{color:#a00;font-weight:bold}figure{margin:1em 0}";

fn summary(r: &Report) -> String {
    let opt = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.0} ms"));
    let mut rows = vec![
        ("engine", r.engine.clone()),
        ("nodes", format!("{} (up to {})", r.nodes, r.max_nodes)),
        ("seed", r.seed.to_string()),
        ("gossip interval", format!("{} ms", r.gossip_interval_ms)),
        ("duration", format!("{} s", r.duration_sec)),
        ("membership complete", opt(r.membership_ms)),
        ("writes", r.writes.len().to_string()),
        (
            "rollout to 99%, median / max",
            format!(
                "{} / {}",
                opt(r.rollout.reach_99_median_ms),
                opt(r.rollout.reach_99_max_ms)
            ),
        ),
        (
            "rollout to 100%, median / max",
            format!(
                "{} / {}",
                opt(r.rollout.reach_100_median_ms),
                opt(r.rollout.reach_100_max_ms)
            ),
        ),
        (
            "false dead, most pairs at once",
            r.false_dead_max.to_string(),
        ),
        (
            "gossip per node, mean / max",
            format!(
                "{:.1} / {:.1} KB/s",
                r.gossip.bytes_per_node_per_sec / 1e3,
                r.gossip.bytes_per_node_per_sec_max / 1e3
            ),
        ),
        (
            "gossip messages lost",
            format!("{} of {}", r.gossip.messages_lost, r.gossip.messages),
        ),
        (
            "incidents decided (with a failed policy)",
            format!("{} ({})", r.actions.incidents, r.actions.evaluation_errors),
        ),
        ("node actions sent", r.actions.node_actions.to_string()),
        (
            "mesh actions: sent / duplicates / takeovers",
            format!(
                "{} / {} / {}",
                r.actions.mesh.len(),
                r.actions.duplicates,
                r.actions.takeovers
            ),
        ),
        (
            "evaluation latency, median / p99 (bucket bounds)",
            format!(
                "{} / {}",
                us(r.run.evaluation.p50_us),
                us(r.run.evaluation.p99_us)
            ),
        ),
        ("wall time", format!("{:.1} s", r.run.wall_ms / 1e3)),
        ("peak memory", format!("{:.0} MB", r.run.peak_rss_mb)),
    ];
    for k in &r.kills {
        rows.push((
            "killed node seen dead by all",
            format!("node {}: {}", k.node, opt(k.all_seen_ms)),
        ));
    }
    let mut out = String::from("<table>\n");
    for (name, value) in rows {
        out.push_str(&format!(
            "<tr><th>{name}</th><td>{}</td></tr>\n",
            escape(&value)
        ));
    }
    out.push_str("</table>\n");
    if !r.expectations.is_empty() {
        out.push_str("<table>\n<tr><th>expectation</th><th>result</th><th></th></tr>\n");
        for e in &r.expectations {
            let (class, word) = if e.ok {
                ("ok", "met")
            } else {
                ("fail", "FAILED")
            };
            out.push_str(&format!(
                "<tr><td>{}</td><td class=\"{class}\">{word}</td><td>{}</td></tr>\n",
                escape(&e.what),
                escape(&e.detail)
            ));
        }
        out.push_str("</table>\n");
    }
    out
}

/// Fraction of running nodes holding each write, over time.
fn rollout_plot(r: &Report) -> anyhow::Result<String> {
    let t = &r.series.policy_t_ms;
    let end = t.last().copied().unwrap_or(1.0).max(1.0) / 1e3;
    figure("Fraction of running nodes holding each write", |root| {
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..end, 0f64..1.02f64)?;
        chart
            .configure_mesh()
            .x_desc("simulated seconds")
            .y_desc("fraction of nodes")
            .draw()?;
        for (k, fractions) in r
            .series
            .policy_fraction
            .iter()
            .take(MAX_WRITE_LINES)
            .enumerate()
        {
            let color = Palette99::pick(k).to_rgba();
            chart.draw_series(LineSeries::new(
                t.iter().zip(fractions).map(|(t, f)| (t / 1e3, *f)),
                color.stroke_width(2),
            ))?;
        }
        Ok(())
    })
}

/// For each killed node: the fraction of observers that had seen it dead, by time since the kill.
fn detection_plot(r: &Report) -> anyhow::Result<String> {
    let end = r
        .kills
        .iter()
        .flat_map(|k| k.observers_ms.last().copied())
        .fold(1.0, f64::max)
        / 1e3;
    figure("When each node saw each killed node dead", |root| {
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..end * 1.05, 0f64..1.02f64)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the kill")
            .y_desc("fraction of observers")
            .draw()?;
        for (k, kill) in r.kills.iter().enumerate() {
            let n = kill.observers_ms.len().max(1) as f64;
            let color = Palette99::pick(k).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    kill.observers_ms
                        .iter()
                        .enumerate()
                        .map(|(i, t)| (t / 1e3, (i + 1) as f64 / n)),
                    color.stroke_width(2),
                ))?
                .label(format!("node {}", kill.node))
                .legend(move |at| swatch(at, color));
        }
        legend(&mut chart)?;
        Ok(())
    })
}

/// Running nodes, and (observer, node) pairs falsely not seen live, over time.
fn liveness_plot(r: &Report) -> anyhow::Result<String> {
    let t = &r.series.liveness_t_ms;
    let end = t.last().copied().unwrap_or(1.0).max(1.0) / 1e3;
    let top = r
        .series
        .running
        .iter()
        .chain(&r.series.false_dead)
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    figure(
        "Running nodes, and pairs where a settled node was not seen live",
        |root| {
            let mut chart = ChartBuilder::on(&root)
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..end, 0f64..top * 1.05)?;
            chart.configure_mesh().x_desc("simulated seconds").draw()?;
            chart
                .draw_series(LineSeries::new(
                    t.iter()
                        .zip(&r.series.running)
                        .map(|(t, n)| (t / 1e3, *n as f64)),
                    BLUE.stroke_width(2),
                ))?
                .label("running nodes")
                .legend(|at| swatch(at, BLUE.to_rgba()));
            chart
                .draw_series(LineSeries::new(
                    t.iter()
                        .zip(&r.series.false_dead)
                        .map(|(t, n)| (t / 1e3, *n as f64)),
                    RED.stroke_width(2),
                ))?
                .label("false dead pairs")
                .legend(|at| swatch(at, RED.to_rgba()));
            legend(&mut chart)?;
            Ok(())
        },
    )
}

/// Histogram of the nodes' gossip rates.
fn gossip_plot(r: &Report) -> anyhow::Result<String> {
    let rates: Vec<f64> = r.gossip.per_node.iter().map(|b| b / 1e3).collect();
    let top = rates.iter().copied().fold(0.0, f64::max).max(0.1);
    const BINS: usize = 30;
    let width = top / BINS as f64;
    let mut counts = [0u32; BINS];
    for rate in &rates {
        counts[((rate / width) as usize).min(BINS - 1)] += 1;
    }
    let highest = counts.iter().copied().max().unwrap_or(1).max(1);
    figure("Nodes by gossip payload sent (KB/s)", |root| {
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..top * 1.02, 0u32..highest + 1)?;
        chart
            .configure_mesh()
            .x_desc("KB/s")
            .y_desc("nodes")
            .draw()?;
        chart.draw_series(counts.iter().enumerate().map(|(b, &c)| {
            let x0 = b as f64 * width;
            Rectangle::new([(x0, 0), (x0 + width, c)], BLUE.mix(0.6).filled())
        }))?;
        Ok(())
    })
}

/// Incidents decided and node actions sent, per simulated second.
fn workload_plot(r: &Report) -> anyhow::Result<String> {
    let per = &r.actions.per_sec;
    let top = per
        .incidents
        .iter()
        .chain(&per.node_actions)
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let end = per.incidents.len().max(1) as f64;
    figure(
        "Incidents decided and node actions sent, per second",
        |root| {
            let mut chart = ChartBuilder::on(&root)
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(55)
                .build_cartesian_2d(0f64..end, 0f64..top * 1.05)?;
            chart
                .configure_mesh()
                .x_desc("simulated seconds")
                .y_desc("per second")
                .draw()?;
            for (series, name, color) in [
                (&per.incidents, "incidents", BLUE.to_rgba()),
                (&per.node_actions, "node actions", GREEN.to_rgba()),
            ] {
                chart
                    .draw_series(LineSeries::new(
                        series
                            .iter()
                            .enumerate()
                            .map(|(t, n)| (t as f64, *n as f64)),
                        color.stroke_width(2),
                    ))?
                    .label(name)
                    .legend(move |at| swatch(at, color));
            }
            legend(&mut chart)?;
            Ok(())
        },
    )
}

/// Mesh action sends and duplicates per simulated second, as bars.
fn mesh_actions_plot(r: &Report) -> anyhow::Result<String> {
    let per = &r.actions.per_sec;
    let top = per.mesh_actions.iter().copied().max().unwrap_or(0).max(1) as f64;
    let end = per.mesh_actions.len().max(1) as f64;
    figure(
        "Mesh action sends per second (takeovers included) and duplicates",
        |root| {
            let mut chart = ChartBuilder::on(&root)
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(45)
                .build_cartesian_2d(0f64..end, 0f64..top + 1.0)?;
            chart
                .configure_mesh()
                .x_desc("simulated seconds")
                .y_desc("sends")
                .draw()?;
            for (series, name, color, inset) in [
                (&per.mesh_actions, "sends", BLUE.mix(0.6), 0.1),
                (&per.duplicates, "duplicates", RED.mix(0.8), 0.3),
            ] {
                let rgba = color.to_rgba();
                chart
                    .draw_series(series.iter().enumerate().filter(|(_, n)| **n > 0).map(
                        |(t, n)| {
                            let x = t as f64;
                            Rectangle::new(
                                [(x + inset, 0.0), (x + 1.0 - inset, *n as f64)],
                                color.filled(),
                            )
                        },
                    ))?
                    .label(name)
                    .legend(move |at| swatch(at, rgba));
            }
            legend(&mut chart)?;
            Ok(())
        },
    )
}

/// Every mesh action and who sent it when.
fn mesh_actions_table(r: &Report) -> String {
    if r.actions.mesh.is_empty() {
        return "<p>No mesh action was sent.</p>\n".into();
    }
    let mut out = String::from(
        "<table>\n<tr><th>mesh action</th><th>policy</th><th>incident</th><th>sends</th></tr>\n",
    );
    for action in &r.actions.mesh {
        let sends: Vec<String> = action
            .sends
            .iter()
            .map(|s| {
                format!(
                    "node {} at {:.2} s{}",
                    s.node,
                    s.at_ms / 1e3,
                    if s.takeover { " (takeover)" } else { "" }
                )
            })
            .collect();
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&action.action_id),
            action.policy_id,
            escape(&action.incident_key),
            escape(&sends.join("; "))
        ));
    }
    out.push_str("</table>\n");
    out
}

/// The engine's evaluation latency over every incident, on a log scale.
fn latency_plot(r: &Report) -> anyhow::Result<String> {
    let buckets = &r.run.evaluation.buckets;
    let finite: Vec<(f64, f64, u64)> = buckets
        .iter()
        .map(|&(upper, n)| {
            let upper = if upper.is_finite() {
                upper
            } else {
                r.run.evaluation.max_us.max(1.0)
            };
            (upper / 2f64.powf(0.25), upper, n)
        })
        .collect();
    let lo = finite.first().map_or(0.1, |b| b.0).max(0.01);
    let hi = finite.last().map_or(10.0, |b| b.1).max(lo * 2.0);
    let top = finite.iter().map(|b| b.2).max().unwrap_or(1).max(1) as f64;
    figure(
        "Evaluations by engine latency (µs, wall time, log scale)",
        |root| {
            let mut chart = ChartBuilder::on(&root)
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(55)
                .build_cartesian_2d((lo..hi).log_scale(), 0f64..top * 1.05)?;
            chart
                .configure_mesh()
                .x_desc("µs")
                .y_desc("evaluations")
                .draw()?;
            chart.draw_series(finite.iter().map(|&(a, b, n)| {
                Rectangle::new([(a, 0.0), (b, n as f64)], BLUE.mix(0.6).filled())
            }))?;
            Ok(())
        },
    )
}

fn us(value: Option<f64>) -> String {
    value.map_or("—".to_owned(), |v| {
        if v.is_finite() {
            format!("≤ {v:.1} µs")
        } else {
            "over 100 ms".to_owned()
        }
    })
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The legend of a chart whose series have labels.
fn legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
}

/// A series' mark in the legend: a short line in its colour.
fn swatch((x, y): (i32, i32), color: RGBAColor) -> PathElement<(i32, i32)> {
    PathElement::new(vec![(x, y), (x + 16, y)], color)
}

/// One plot as an inline `<figure>` with an SVG drawn by `draw`.
fn figure(
    caption: &str,
    draw: impl FnOnce(Area<'_>) -> Result<(), Box<dyn std::error::Error + '_>>,
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        draw(root.clone()).map_err(|e| anyhow::anyhow!("plotting `{caption}`: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(format!(
        "<figure>\n{svg}\n<figcaption>{}</figcaption>\n</figure>\n",
        escape(caption)
    ))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
