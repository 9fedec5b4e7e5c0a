//! `vigil top`'s interactive screen.
//!
//! The interactive screen: a window is taken in the background while the screen answers keys
//! (switch engine or GPU, change the window, pause, quit) and redraws on each new window and
//! on resize. An endpoint that goes away shows as unreachable until it answers again.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table};
use ratatui::Frame;

use super::snapshot::Snapshot;
use super::verdict::{seconds, why_slow};

/// Windows kept for the sparklines.
const HISTORY: usize = 120;
const MIN_WINDOW: Duration = Duration::from_millis(500);
const MAX_WINDOW: Duration = Duration::from_secs(60);

struct State {
    urls: Vec<String>,
    snapshot: Option<Snapshot>,
    /// Per engine (url, model, engine): generation tokens/s and TTFT p99 of past windows.
    history: HashMap<(String, String, String), VecDeque<(f64, f64)>>,
    engine: usize,
    gpu: usize,
    paused: bool,
    window: Duration,
}

impl State {
    fn take(&mut self, s: Snapshot) {
        for e in &s.engines {
            let key = (e.url.clone(), e.model_name.clone(), e.engine.clone());
            let h = self.history.entry(key).or_default();
            h.push_back((e.generation_tokens_per_s, e.ttft.1));
            if h.len() > HISTORY {
                h.pop_front();
            }
        }
        self.engine = self.engine.min(s.engines.len().saturating_sub(1));
        self.gpu = self.gpu.min(s.gpus.len().saturating_sub(1));
        self.snapshot = Some(s);
    }
}

pub(super) fn run(
    urls: Vec<String>,
    window: Duration,
    save: Option<PathBuf>,
) -> anyhow::Result<()> {
    let window_ms = Arc::new(AtomicU64::new(window.as_millis() as u64));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let reader = {
        let (urls, window_ms, stop) = (urls.clone(), window_ms.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let window = Duration::from_millis(window_ms.load(Ordering::Relaxed));
                match super::window(&urls, window, save.as_ref()) {
                    Ok(s) => {
                        if tx.send(s).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let mut s = Snapshot::default();
                        s.missing.push((String::new(), format!("{e:#}")));
                        if tx.send(s).is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    let mut state = State {
        urls,
        snapshot: None,
        history: HashMap::new(),
        engine: 0,
        gpu: 0,
        paused: false,
        window,
    };
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        loop {
            terminal.draw(|f| draw(f, &state))?;
            if event::poll(Duration::from_millis(200))? {
                match event::read()? {
                    Event::Key(k) if k.kind == KeyEventKind::Press => {
                        let ctrl_c = k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL);
                        match k.code {
                            _ if ctrl_c => return Ok(()),
                            KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                            KeyCode::Char('p') | KeyCode::Char(' ') => state.paused = !state.paused,
                            KeyCode::Down | KeyCode::Tab | KeyCode::Char('j') => {
                                let n = state.snapshot.as_ref().map_or(0, |s| s.engines.len());
                                state.engine = (state.engine + 1) % n.max(1);
                            }
                            KeyCode::Up | KeyCode::BackTab | KeyCode::Char('k') => {
                                let n = state.snapshot.as_ref().map_or(0, |s| s.engines.len());
                                state.engine = (state.engine + n.max(1) - 1) % n.max(1);
                            }
                            KeyCode::Char('g') => {
                                let n = state.snapshot.as_ref().map_or(0, |s| s.gpus.len());
                                state.gpu = (state.gpu + 1) % n.max(1);
                            }
                            KeyCode::Char('+') => state.window = (state.window * 2).min(MAX_WINDOW),
                            KeyCode::Char('-') => state.window = (state.window / 2).max(MIN_WINDOW),
                            _ => {}
                        }
                        window_ms.store(state.window.as_millis() as u64, Ordering::Relaxed);
                    }
                    // A resize redraws on the next turn of the loop.
                    _ => {}
                }
            }
            while let Ok(s) = rx.try_recv() {
                if !state.paused {
                    state.take(s);
                }
            }
        }
    })();
    ratatui::restore();
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    // The reader finishes its window (at most a minute) on its own; nothing waits for it.
    drop(reader);
    result
}

fn draw(f: &mut Frame, state: &State) {
    let s = state.snapshot.as_ref();
    let engines = s.map_or(0, |s| s.engines.len()) as u16;
    let gpus = s.map_or(0, |s| s.gpus.len()) as u16;
    let frontends = s.map_or(0, |s| s.frontends.len()) as u16;
    let host = s.map_or(0, |s| s.host.len() + s.device.len()) as u16;
    let missing = s.map_or(0, |s| s.missing.len()) as u16;
    let [header, why, engine_area, frontend_area, spark_area, gpu_area, host_area, missing_area, _, footer] =
        Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(3),
            Constraint::Length(engines.max(1) + 3),
            // Shown only where an endpoint is a Dynamo frontend (or a Vigil, which is one too).
            Constraint::Length(if frontends > 0 { frontends + 3 } else { 0 }),
            Constraint::Length(5),
            Constraint::Length(gpus.max(1) + 3),
            Constraint::Length(host.max(1) + 3),
            Constraint::Length(missing),
            Constraint::Min(0),
            Constraint::Length(1),
        ])
        .areas(f.area());
    let paused = if state.paused { "  [PAUSED]" } else { "" };
    f.render_widget(
        Paragraph::new(format!(
            "vigil top: {} endpoint(s), window {:.1} s{paused}  {}",
            state.urls.len(),
            state.window.as_secs_f64(),
            state.urls.join(" ")
        ))
        .style(Style::new().add_modifier(Modifier::BOLD)),
        header,
    );
    let Some(s) = s else {
        f.render_widget(Paragraph::new("reading the first window..."), why);
        draw_footer(f, footer);
        return;
    };
    let verdict = why_slow(s);
    let calm = verdict.starts_with("nothing stands out");
    f.render_widget(
        Paragraph::new(verdict)
            .style(Style::new().fg(if calm { Color::Green } else { Color::Yellow }))
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title("Why is it slow?"),
            ),
        why,
    );
    draw_engines(f, engine_area, s, state.engine);
    draw_frontends(f, frontend_area, s);
    draw_sparklines(f, spark_area, s, state);
    draw_gpus(f, gpu_area, s, state.gpu);
    draw_host(f, host_area, s);
    let lines: Vec<Line> = s
        .missing
        .iter()
        .map(|(url, what)| {
            Line::from(Span::styled(
                format!("missing at {url}: {what}"),
                Style::new().fg(Color::DarkGray),
            ))
        })
        .collect();
    f.render_widget(Paragraph::new(lines), missing_area);
    draw_footer(f, footer);
}

fn draw_footer(f: &mut Frame, area: Rect) {
    f.render_widget(
        Paragraph::new("q quit  p pause  ↑/↓ engine  g GPU  +/- window")
            .style(Style::new().fg(Color::DarkGray)),
        area,
    );
}

fn num(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.decimals$}")
    }
}

fn pair(p: (f64, f64)) -> String {
    format!("{} / {}", seconds(p.0), seconds(p.1))
}

fn draw_engines(f: &mut Frame, area: Rect, s: &Snapshot, selected: usize) {
    let header = Row::new([
        "model",
        "engine",
        "run",
        "wait",
        "KV %",
        "hit %",
        "preempt/s",
        "prompt t/s",
        "gen t/s",
        "TTFT p50/p99",
        "ITL p50/p99",
        "E2E p50/p99",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = s.engines.iter().enumerate().map(|(i, e)| {
        let style = if i == selected {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        };
        Row::new([
            Cell::from(e.model_name.clone()),
            Cell::from(e.engine.clone()),
            Cell::from(num(e.running, 0)),
            Cell::from(num(e.waiting, 0)),
            Cell::from(num(e.kv_cache_usage * 100.0, 1)),
            Cell::from(num(e.prefix_cache_hit_rate * 100.0, 1)),
            Cell::from(num(e.preemptions_per_s, 2)),
            Cell::from(num(e.prompt_tokens_per_s, 1)),
            Cell::from(num(e.generation_tokens_per_s, 1)),
            Cell::from(pair(e.ttft)),
            Cell::from(pair(e.itl)),
            Cell::from(pair(e.e2e)),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Min(10),
        Constraint::Length(6),
        Constraint::Length(4),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(18),
        Constraint::Length(18),
        Constraint::Length(18),
    ];
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::default().borders(Borders::ALL).title("Engines")),
        area,
    );
}

fn draw_frontends(f: &mut Frame, area: Rect, s: &Snapshot) {
    if area.height == 0 {
        return;
    }
    let header = Row::new([
        "model",
        "in flight",
        "queued",
        "requests/s",
        "out t/s",
        "TTFT p50/p99",
        "ITL p50/p99",
        "duration p50/p99",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = s.frontends.iter().map(|fe| {
        Row::new([
            fe.model.clone(),
            num(fe.inflight, 0),
            num(fe.queued, 0),
            num(fe.requests_per_s, 2),
            num(fe.output_tokens_per_s, 1),
            pair(fe.ttft),
            pair(fe.itl),
            pair(fe.duration),
        ])
    });
    let widths = [
        Constraint::Min(10),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(18),
        Constraint::Length(18),
        Constraint::Length(18),
    ];
    f.render_widget(
        Table::new(rows, widths).header(header).block(
            Block::default()
                .borders(Borders::ALL)
                .title("Dynamo frontends"),
        ),
        area,
    );
}

fn draw_sparklines(f: &mut Frame, area: Rect, s: &Snapshot, state: &State) {
    let [left, right] = Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)]).areas(area);
    let Some(e) = s.engines.get(state.engine) else {
        return;
    };
    let key = (e.url.clone(), e.model_name.clone(), e.engine.clone());
    let history = state.history.get(&key);
    let series = |pick: fn(&(f64, f64)) -> f64, scale: f64| -> Vec<u64> {
        history.map_or(Vec::new(), |h| {
            h.iter()
                .map(|v| {
                    let v = pick(v);
                    if v.is_finite() {
                        (v * scale) as u64
                    } else {
                        0
                    }
                })
                .collect()
        })
    };
    let gen = series(|v| v.0, 10.0);
    let ttft = series(|v| v.1, 1e6);
    let title = |what: &str| format!("{what}: {} ({})", e.model_name, e.url);
    f.render_widget(
        Sparkline::default()
            .data(&gen[gen.len().saturating_sub(left.width as usize)..])
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(title("gen tokens/s")),
            ),
        left,
    );
    f.render_widget(
        Sparkline::default()
            .data(&ttft[ttft.len().saturating_sub(right.width as usize)..])
            .style(Style::new().fg(Color::Cyan))
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(title("TTFT p99")),
            ),
        right,
    );
}

fn draw_gpus(f: &mut Frame, area: Rect, s: &Snapshot, selected: usize) {
    let header = Row::new([
        "gpu",
        "model",
        "util %",
        "memory GiB",
        "power W",
        "temp °C",
        "throttled by",
        "XID",
        "ECC",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    let gib = |b: f64| b / (1u64 << 30) as f64;
    let rows = s.gpus.iter().enumerate().map(|(i, g)| {
        let errors = g.xid_errors > 0.0 || g.ecc_errors > 0.0 || !g.up || !g.fatal_xids.is_empty();
        let mut style = Style::new();
        if errors || !g.throttled_by.is_empty() {
            style = style.fg(Color::Red);
        }
        if i == selected {
            style = style.add_modifier(Modifier::REVERSED);
        }
        Row::new([
            g.gpu.clone(),
            g.model.clone(),
            num(g.utilization * 100.0, 0),
            format!(
                "{} / {}",
                num(gib(g.memory_used), 1),
                num(gib(g.memory_total), 1)
            ),
            num(g.power_watts, 0),
            num(g.temperature, 0),
            if !g.up {
                "LOST".into()
            } else if g.throttled_by.is_empty() {
                "-".into()
            } else {
                g.throttled_by.join(",")
            },
            num(g.xid_errors, 0),
            num(g.ecc_errors, 0),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Length(4),
        Constraint::Min(12),
        Constraint::Length(7),
        Constraint::Length(14),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(20),
        Constraint::Length(5),
        Constraint::Length(5),
    ];
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::default().borders(Borders::ALL).title("GPUs")),
        area,
    );
}

fn draw_host(f: &mut Frame, area: Rect, s: &Snapshot) {
    let header = Row::new(["thread role", "run-queue p99", "involuntary switches/s"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    let mut rows: Vec<Row> = s
        .host
        .iter()
        .map(|h| {
            Row::new([
                h.role.clone(),
                seconds(h.runqueue_p99),
                num(h.involuntary_switches_per_s, 1),
            ])
        })
        .collect();
    rows.extend(s.device.iter().map(|d| {
        Row::new([
            "device steps".to_owned(),
            format!("busy {}%", num(d.busy_fraction * 100.0, 1)),
            String::new(),
        ])
    }));
    let widths = [
        Constraint::Length(14),
        Constraint::Length(16),
        Constraint::Length(24),
    ];
    f.render_widget(
        Table::new(rows, widths).header(header).block(
            Block::default()
                .borders(Borders::ALL)
                .title("Host scheduling"),
        ),
        area,
    );
}
