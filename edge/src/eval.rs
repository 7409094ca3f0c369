//! `edge eval`: offline QA evaluation (EM/F1 and ARCap) of one or more models.
//!
//! A thin layer over [`dgpo_core::eval::evaluate`]: it loads the dataset, the models and the
//! retriever, and writes `results.json` (per question: trace and scores; per model: summaries),
//! `summary.md` (a markdown table) and `chart.png` (EM and the ARCap sub-scores per dataset,
//! models side by side) into `--out`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ask::TurnArgs;
use anyhow::{Context, Result, bail};
use clap::Args;
use dgpo_core::corpus::Passage;
use dgpo_core::eval::{EvalConfig, EvalReport, NamedModel, Summary, evaluate, markdown_table};
use dgpo_core::model::{BackendKind, LanguageModel, LoadOptions};
use dgpo_core::retrieve::{MemoryRetriever, Retriever, RetrieverSpec};

/// Arguments of `edge eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Dataset: Search-R1 parquet or JSONL (`id`, `question`, `golden_answers`, `data_source`),
    /// or FlashRAG JSONL.
    pub dataset: PathBuf,
    /// Model (GGUF file or HF folder); repeat to compare models side by side.
    #[arg(long = "model", required = true)]
    pub models: Vec<PathBuf>,
    /// tokenizer.json to use instead of the models' own.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Disk index directory built by `edge index build`.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Query embedder for the index (default: the one it records).
    #[arg(long)]
    pub embedder: Option<String>,
    /// Corpus JSONL: searched in memory with BM25 when no --index is given; with --index, only
    /// scanned for evidence passages (Source Referencing).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Backend: auto, candle or llama.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Evaluate only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Questions evaluated in parallel.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Output folder.
    #[arg(long, default_value = "eval-out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub turns: TurnArgs,
    /// Retriever results scanned for an evidence passage.
    #[arg(long, default_value_t = 20)]
    pub evidence_depth: usize,
    /// Skip the evidence-given runs (Source Referencing / Thinking).
    #[arg(long)]
    pub no_evidence: bool,
    /// CPU threads (llama.cpp backend).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Report names: file stems, made unique.
fn model_names(paths: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in paths {
        let base = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string());
        let mut name = base.clone();
        let mut k = 2;
        while names.contains(&name) {
            name = format!("{base}-{k}");
            k += 1;
        }
        names.push(name);
    }
    names
}

/// Write `bytes` to `path` through a temporary file and a rename (never a half-written file).
fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path.file_name().context("output path has no file name")?;
    // Keep the extension last: the PNG encoder picks the format from it.
    let tmp = path.with_file_name(format!(".tmp-{}", name.to_string_lossy()));
    write(&tmp)?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Run `edge eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    let mut questions = dgpo_core::data::load(&args.dataset)?;
    if let Some(n) = args.limit {
        if n == 0 {
            bail!("--limit 0 leaves no question to evaluate");
        }
        questions.truncate(n);
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    // The retriever, and the corpus (when loaded) for the evidence lookup.
    let (retriever, corpus): (Arc<dyn Retriever>, Option<Arc<MemoryRetriever>>) =
        match (&args.index, &args.corpus) {
            (Some(dir), corpus) => {
                let r = dgpo_core::retrieve::open(&RetrieverSpec::Index {
                    dir: dir.clone(),
                    embedder: args.embedder.clone(),
                })?;
                let c = match corpus {
                    Some(p) => Some(Arc::new(
                        MemoryRetriever::from_jsonl(p)
                            .with_context(|| format!("loading corpus {}", p.display()))?,
                    )),
                    None => None,
                };
                (r, c)
            }
            (None, Some(p)) => {
                let m = Arc::new(
                    MemoryRetriever::from_jsonl(p)
                        .with_context(|| format!("loading corpus {}", p.display()))?,
                );
                (m.clone(), Some(m))
            }
            (None, None) => bail!("no retriever: pass --index DIR or --corpus corpus.jsonl"),
        };
    let opts = LoadOptions {
        tokenizer: args.tokenizer.clone(),
        backend: args.backend.parse::<BackendKind>()?,
        threads: args.threads,
        max_context: None,
        ..Default::default()
    };
    let loaded: Vec<Arc<dyn LanguageModel>> = args
        .models
        .iter()
        .map(|p| {
            dgpo_core::model::load(p, &opts)
                .with_context(|| format!("loading model {}", p.display()))
        })
        .collect::<Result<_>>()?;
    let names = model_names(&args.models);
    let models: Vec<NamedModel<'_>> = names
        .iter()
        .zip(&loaded)
        .map(|(name, m)| NamedModel {
            name,
            model: m.as_ref(),
        })
        .collect();
    let cfg = EvalConfig {
        agent: args.turns.agent_config(),
        concurrency: args.concurrency,
        evidence: !args.no_evidence,
        evidence_depth: args.evidence_depth,
        keep_traces: true,
        progress: true,
    };
    tracing::info!(
        questions = questions.len(),
        models = models.len(),
        retriever = %retriever.describe(),
        "evaluating"
    );
    let passages: Option<&[Passage]> = corpus.as_ref().map(|c| c.passages());
    let report = evaluate(&models, retriever.as_ref(), passages, &questions, &cfg)?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json_path = args.out.join("results.json");
    write_atomic(&json_path, |tmp| {
        let f = std::fs::File::create(tmp).with_context(|| format!("writing {}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(f);
        serde_json::to_writer_pretty(&mut w, &report)?;
        w.flush()?;
        Ok(())
    })?;
    let table = markdown_table(&report);
    let md_path = args.out.join("summary.md");
    let md = format!(
        "# Evaluation of {}\n\nRetriever: {}. Questions: {}.\n\n{table}\n{}\n",
        args.dataset.display(),
        report.retriever,
        questions.len(),
        report.evidence_protocol
    );
    write_atomic(&md_path, |tmp| {
        std::fs::write(tmp, &md).with_context(|| format!("writing {}", tmp.display()))
    })?;
    let png_path = args.out.join("chart.png");
    write_atomic(&png_path, |tmp| chart::render(&report, tmp))?;
    println!("{table}");
    println!(
        "wrote {}, {} and {}",
        json_path.display(),
        md_path.display(),
        png_path.display()
    );
    Ok(())
}

/// One bar group of the chart: a data source (or all) and a model.
struct Category<'a> {
    label: String,
    summary: &'a Summary,
}

fn categories(report: &EvalReport) -> Vec<Category<'_>> {
    let sources = report.sources();
    let several = report.models.len() > 1;
    // Two label lines (dataset, then model) so that long model names do not run together.
    let label = |src: &str, model: &str| {
        if several {
            format!("{src}\n{model}")
        } else {
            src.to_string()
        }
    };
    let mut cats = Vec::new();
    for src in &sources {
        for m in &report.models {
            if let Some(s) = m.by_source.get(*src) {
                cats.push(Category {
                    label: label(src, &m.name),
                    summary: s,
                });
            }
        }
    }
    if sources.len() > 1 {
        for m in &report.models {
            cats.push(Category {
                label: label("all", &m.name),
                summary: &m.overall,
            });
        }
    }
    cats
}

/// The PNG chart (plotters' bitmap backend; text through ab_glyph and a bundled font).
mod chart {
    use super::*;
    use plotters::prelude::*;
    use plotters::style::FontStyle;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
    const FAMILY: &str = "dgpo-mono";

    type Metric = (&'static str, fn(&Summary) -> Option<f64>);

    const METRICS: [Metric; 4] = [
        ("EM", |s| Some(s.em)),
        ("Hit ratio (query rewriting)", |s| Some(s.hit_ratio)),
        ("EM w/o think (source referencing)", |s| s.em_without_think),
        ("EM w/ think (thinking)", |s| s.em_with_think),
    ];

    fn register() -> Result<()> {
        static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let ok = *ONCE.get_or_init(|| {
            plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok()
        });
        if !ok {
            bail!("the bundled chart font could not be loaded");
        }
        Ok(())
    }

    fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
        anyhow::anyhow!("drawing the chart: {e}")
    }

    /// Draw a category label (one line per `\n`) under the axis point `at`, each line cut to
    /// fit `width` pixels (monospace: about 8.4 px per character at 14 px).
    fn draw_label(
        root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
        label: &str,
        at: (i32, i32),
        width: i32,
        style: &TextStyle<'_>,
    ) -> Result<()> {
        let max_chars = ((width as f64 / 8.4) as usize).max(2);
        for (k, line) in label.lines().enumerate() {
            let text: String = if line.chars().count() > max_chars {
                let mut t: String = line.chars().take(max_chars - 1).collect();
                t.push('…');
                t
            } else {
                line.to_string()
            };
            root.draw(&Text::new(
                text,
                (at.0, at.1 + 8 + 16 * k as i32),
                style.clone(),
            ))
            .map_err(plot_err)?;
        }
        Ok(())
    }

    /// Render `report` into the PNG file `path`.
    pub fn render(report: &EvalReport, path: &Path) -> Result<()> {
        register()?;
        let cats = categories(report);
        let n = cats.len().max(1);
        let width = (200 + 170 * n).clamp(800, 4000) as u32;
        let height = 760u32;
        let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (top, bottom) = root.split_vertically(480);
        let mut chart = ChartBuilder::on(&top)
            .caption(
                "EM and ARCap sub-scores per dataset",
                (FAMILY, 22).into_font(),
            )
            .margin(12)
            .x_label_area_size(46)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..n as f64, 0f64..1.45f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|_| String::new())
            .y_desc("score")
            .label_style((FAMILY, 14).into_font())
            .axis_desc_style((FAMILY, 15).into_font())
            .draw()
            .map_err(plot_err)?;
        let label_style =
            TextStyle::from((FAMILY, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        // Category names under the axis, centred on their bar group (drawn on the root area
        // in backend pixels: plotters' tick labels cannot be placed at group centres).
        for (i, c) in cats.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            let (x1, _) = chart.backend_coord(&(i as f64 + 1.0, 0.0));
            draw_label(
                &root,
                &c.label,
                (px, py),
                (2 * (x1 - px)).max(16),
                &label_style,
            )?;
        }
        let bar_w = 0.8 / METRICS.len() as f64;
        for (mi, (name, get)) in METRICS.iter().enumerate() {
            let color = Palette99::pick(mi).to_rgba();
            let bars = cats.iter().enumerate().filter_map(|(i, c)| {
                get(c.summary).map(|v| {
                    let x0 = i as f64 + 0.1 + mi as f64 * bar_w;
                    Rectangle::new([(x0, 0.0), (x0 + bar_w * 0.9, v)], color.filled())
                })
            });
            chart
                .draw_series(bars)
                .map_err(plot_err)?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled())
                });
            // The value above each bar, so the chart reads without the JSON.
            chart
                .draw_series(cats.iter().enumerate().filter_map(|(i, c)| {
                    get(c.summary).map(|v| {
                        let x0 = i as f64 + 0.1 + mi as f64 * bar_w;
                        Text::new(format!("{v:.2}"), (x0, v + 0.06), (FAMILY, 11).into_font())
                    })
                }))
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FAMILY, 13).into_font())
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;

        let max_steps = cats
            .iter()
            .map(|c| c.summary.search_steps)
            .fold(0.0f64, f64::max);
        let y_top = (max_steps * 1.25).max(1.0);
        let mut steps = ChartBuilder::on(&bottom)
            .caption(
                "Search steps per question (query rewriting)",
                (FAMILY, 18).into_font(),
            )
            .margin(12)
            .x_label_area_size(46)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..n as f64, 0f64..y_top)
            .map_err(plot_err)?;
        steps
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|_| String::new())
            .y_desc("searches")
            .label_style((FAMILY, 14).into_font())
            .axis_desc_style((FAMILY, 15).into_font())
            .draw()
            .map_err(plot_err)?;
        for (i, c) in cats.iter().enumerate() {
            let (px, py) = steps.backend_coord(&(i as f64 + 0.5, 0.0));
            let (x1, _) = steps.backend_coord(&(i as f64 + 1.0, 0.0));
            draw_label(
                &root,
                &c.label,
                (px, py),
                (2 * (x1 - px)).max(16),
                &label_style,
            )?;
        }
        let color = Palette99::pick(4).to_rgba();
        steps
            .draw_series(cats.iter().enumerate().map(|(i, c)| {
                let v = c.summary.search_steps;
                Rectangle::new([(i as f64 + 0.3, 0.0), (i as f64 + 0.7, v)], color.filled())
            }))
            .map_err(plot_err)?;
        steps
            .draw_series(cats.iter().enumerate().map(|(i, c)| {
                let v = c.summary.search_steps;
                Text::new(
                    format!("{v:.2}"),
                    (i as f64 + 0.4, v + y_top * 0.06),
                    (FAMILY, 12).into_font(),
                )
            }))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_unique_stems() {
        let n = model_names(&[
            PathBuf::from("/a/m.gguf"),
            PathBuf::from("/b/m.gguf"),
            PathBuf::from("/c/tiny-qwen2"),
        ]);
        assert_eq!(n, vec!["m", "m-2", "tiny-qwen2"]);
    }
}
