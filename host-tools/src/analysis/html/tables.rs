//! The static HTML tables: readable without the script, and what a user copies from.

use std::fmt::Write;

use super::style::{diverging, esc, fmt_num, sequential, text_colour};
use super::CompareData;
use crate::analysis::ablation::{AblationReport, Mode};
use crate::analysis::HeadDetection;

/// A `[layer][head]` table with sequential colours for values in [0, 1] or diverging
/// colours otherwise.
pub fn grid_table(id: &str, values: &[Vec<f64>], signed: bool, scale: f64) -> String {
    let mut s = format!("<table class=\"grid\" id=\"{id}\"><tr><th></th>");
    for h in 0..values.first().map_or(0, |r| r.len()) {
        let _ = write!(s, "<th>H{h}</th>");
    }
    s.push_str("</tr>");
    for (l, row) in values.iter().enumerate() {
        let _ = write!(s, "<tr><th>L{l}</th>");
        for (h, v) in row.iter().enumerate() {
            let (bg, strength) = if signed {
                (diverging(*v, scale), (v.abs() / scale).min(1.0))
            } else {
                (sequential(*v / scale), (*v / scale).clamp(0.0, 1.0))
            };
            let _ = write!(
                s,
                "<td style=\"background:{bg};color:{}\" title=\"L{l}H{h}: {v}\">{}</td>",
                text_colour(strength),
                fmt_num(*v)
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}

/// Previous-token, duplicate-token and induction scores side by side.
pub fn detection_tables(d: &HeadDetection) -> String {
    let mut s = String::from("<div class=\"row\">");
    for (name, v, id) in [
        ("previous token", &d.previous_token, "scores-prev"),
        ("duplicate token", &d.duplicate_token, "scores-dup"),
        ("induction", &d.induction, "scores-ind"),
    ] {
        let _ = write!(
            s,
            "<div><h3>{name}</h3>{}</div>",
            grid_table(id, v, false, 1.0)
        );
    }
    s.push_str("</div>");
    s
}

pub fn ablation_section(a: &AblationReport) -> String {
    let mut s = String::new();
    let mode = match a.mode {
        Mode::Zero => "zero",
        Mode::Mean => "mean",
    };
    let _ = write!(
        s,
        "<p class=\"cap\">Each head's output replaced by {} ({mode} ablation) over {} prompts ({} predictions); \
         the cell is the loss increase (red = the model needs the head). Baseline loss {:.4}{}.</p>",
        if a.mode == Mode::Mean { "its mean over the data" } else { "zeros" },
        a.n_prompts,
        a.n_predictions,
        a.baseline.all,
        a.baseline
            .repeat
            .map_or(String::new(), |r| format!(", on the repeated half {r:.4}"))
    );
    let (grid, what) = match &a.repeat_loss_increase {
        Some(g) => (g, "loss increase on the repeated half"),
        None => (&a.loss_increase, "loss increase"),
    };
    if !grid.is_empty() {
        let scale = grid
            .iter()
            .flatten()
            .filter(|v| v.is_finite())
            .fold(0.0f64, |m, v| m.max(v.abs()))
            .max(1e-9);
        let _ = write!(
            s,
            "<h3>Each head alone: {what}</h3>{}",
            grid_table("ablation-grid", grid, true, scale)
        );
    }
    if !a.groups.is_empty() {
        s.push_str(
            "<h3>Groups</h3><table class=\"plain\" id=\"ablation-groups\"><tr><th>heads</th><th>loss</th>\
             <th>increase</th><th>repeated-half loss</th></tr>",
        );
        for g in &a.groups {
            let names: Vec<String> = g
                .heads
                .iter()
                .map(|h| format!("L{}H{}", h[0], h[1]))
                .collect();
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{:.4}</td><td>{:+.4}</td><td>{}</td></tr>",
                names.join(", "),
                g.loss.all,
                g.increase,
                g.loss.repeat.map_or("–".into(), |r| format!("{r:.4}"))
            );
        }
        s.push_str("</table>");
    }
    s
}

/// Head roles a score of 0.4 or more names (the demo's threshold): a head that has the
/// role in one model and not the other is the strongest highlight.
const ROLE_THRESHOLD: f64 = 0.4;

/// Head by head: this model, the other, the difference; differences above the metric's
/// threshold are highlighted, and a head that changes role is marked.
pub fn compare_table(c: &CompareData) -> String {
    let mut s = String::new();
    let mut changed = Vec::new();
    let role_metrics = ["previous-token", "induction"];
    for r in &c.rows {
        for (i, m) in c.metrics.iter().enumerate() {
            let (a, b) = r.values[i];
            if role_metrics.contains(&m.as_str())
                && ((a >= ROLE_THRESHOLD) != (b >= ROLE_THRESHOLD))
            {
                changed.push(format!("L{}H{} {m}", r.head[0], r.head[1]));
            }
        }
    }
    let _ = write!(
        s,
        "<p class=\"note\" id=\"compare-verdict\"><b>{}</b></p>",
        if changed.is_empty() {
            format!(
                "Circuit kept: every head has the same previous-token and induction role (score ≥ {ROLE_THRESHOLD}) in both models."
            )
        } else {
            format!("Circuit changed: {}.", esc(&changed.join(", ")))
        }
    );
    s.push_str("<div class=\"scroll\"><table class=\"grid cmp\" id=\"compare-table\"><tr><th rowspan=\"2\">head</th>");
    for (m, t) in c.metrics.iter().zip(&c.thresholds) {
        let _ = write!(
            s,
            "<th colspan=\"3\">{}<br><span class=\"hint\">Δ &gt; {t}</span></th>",
            esc(m)
        );
    }
    s.push_str("</tr><tr>");
    for _ in &c.metrics {
        s.push_str("<th>this</th><th>other</th><th>Δ</th>");
    }
    s.push_str("</tr>");
    for r in &c.rows {
        let _ = write!(s, "<tr><th>L{}H{}</th>", r.head[0], r.head[1]);
        for (i, m) in c.metrics.iter().enumerate() {
            let (a, b) = r.values[i];
            let d = a - b;
            let role = role_metrics.contains(&m.as_str())
                && ((a >= ROLE_THRESHOLD) != (b >= ROLE_THRESHOLD));
            let class = if role {
                " class=\"role\""
            } else if d.abs() > c.thresholds[i] {
                " class=\"hi\""
            } else {
                ""
            };
            let _ = write!(
                s,
                "<td>{}</td><td>{}</td><td{class} title=\"{d}\">{}{}</td>",
                fmt_num(a),
                fmt_num(b),
                if d >= 0.0 { "+" } else { "" },
                fmt_num(d)
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</table></div>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::html::CompareRow;

    /// The cells of row `head` ("L0H1") of a comparison table, as (class, text).
    fn cells(html: &str, head: &str) -> Vec<(String, String)> {
        let start = html.find(&format!("<tr><th>{head}</th>")).unwrap();
        let row = &html[start..start + html[start..].find("</tr>").unwrap()];
        row.split("<td")
            .skip(1)
            .map(|c| {
                let class = c
                    .split_once("class=\"")
                    .filter(|(before, _)| !before.contains('>'))
                    .map(|(_, rest)| rest[..rest.find('"').unwrap()].to_string())
                    .unwrap_or_default();
                let text = c[c.find('>').unwrap() + 1..c.find("</td>").unwrap()].to_string();
                (class, text)
            })
            .collect()
    }

    /// A head and its (this, other) value per metric.
    type Row = ([usize; 2], Vec<(f64, f64)>);

    fn data(rows: Vec<Row>) -> CompareData {
        CompareData {
            name: "model-f32.tlm".into(),
            crc: 1,
            metrics: vec![
                "previous-token".into(),
                "induction".into(),
                "copying".into(),
            ],
            thresholds: vec![0.05, 0.05, 0.1],
            rows: rows
                .into_iter()
                .map(|(head, values)| CompareRow { head, values })
                .collect(),
            eigen: Vec::new(),
            n_prompts: 4,
        }
    }

    #[test]
    fn a_head_that_changes_role_is_named_and_marked() {
        let html = compare_table(&data(vec![
            // Keeps its roles; copying moves by less than its threshold.
            ([0, 0], vec![(0.90, 0.88), (0.01, 0.02), (0.50, 0.45)]),
            // Loses its induction role (0.62 → 0.31): the role mark, not only a highlight.
            ([1, 3], vec![(0.02, 0.02), (0.31, 0.62), (0.20, 0.21)]),
            // Copying changes by more than 0.1: highlighted, no role change.
            ([1, 5], vec![(0.10, 0.12), (0.05, 0.05), (0.90, 0.40)]),
        ]));
        assert!(
            html.contains("Circuit changed: L1H3 induction."),
            "verdict: {html}"
        );
        let kept = cells(&html, "L0H0");
        assert_eq!(kept.len(), 9);
        assert!(kept.iter().all(|(class, _)| class.is_empty()), "{kept:?}");
        let lost = cells(&html, "L1H3");
        assert_eq!(lost[5].0, "role");
        assert!(lost[5].1.starts_with('-'), "{:?}", lost[5]);
        assert!(lost
            .iter()
            .enumerate()
            .all(|(i, (c, _))| i == 5 || c.is_empty()));
        let moved = cells(&html, "L1H5");
        assert_eq!(moved[8].0, "hi");
        assert!(moved[8].1.starts_with('+'), "{:?}", moved[8]);
        assert!(moved
            .iter()
            .enumerate()
            .all(|(i, (c, _))| i == 8 || c.is_empty()));
    }

    #[test]
    fn a_kept_circuit_says_so() {
        let html = compare_table(&data(vec![(
            [0, 1],
            vec![(0.70, 0.69), (0.80, 0.81), (0.3, 0.3)],
        )]));
        assert!(html.contains("Circuit kept"), "{html}");
        assert!(!html.contains("class=\"role\"") && !html.contains("class=\"hi\""));
    }
}
