//! The HTML report: one self-contained file (inline CSS, JavaScript and SVG; nothing is
//! fetched), what a researcher would otherwise draw with CircuitsVis in a notebook.
//!
//! Tables (head scores, copying, composition, attribution, path terms, ablation) are
//! written as static HTML, readable without scripts. The attention heatmaps are drawn by
//! the embedded script from the data embedded as JSON: one thumbnail per head (SVG
//! `#hm-L{l}H{h}`, one `rect.cell` per causal (query, key) pair) and a large view of the
//! selected head with token labels (`#hm-main`, `rect.mcell`); hovering a cell shows
//! query, key, their tokens and the attention weight. When the script has run, `<body>`
//! carries `data-rendered="1"`.

use std::fmt::Write;

use nalgebra::DMatrix;

use super::ablation::AblationReport;
use super::attribution::{Dla, TermImportance};
use super::{AnalysisReport, HeadDetection};

/// Everything a report can show; all but the patterns and the analysis are optional.
pub struct ReportInput<'a> {
    pub title: String,
    /// One line describing the model (shape, storage, processing).
    pub model_line: String,
    /// Findings, one sentence each (the demo's summary), shown at the top.
    pub findings: Vec<String>,
    pub tokens: &'a [u32],
    /// A display string per token id (the blob's vocabulary, else `#id`).
    pub vocab: Vec<String>,
    /// `[layer][head]` [q_pos, k_pos] patterns of `tokens`.
    pub patterns: &'a [Vec<DMatrix<f32>>],
    pub analysis: &'a AnalysisReport,
    pub detection: Option<&'a HeadDetection>,
    /// What the head scores were measured on (e.g. "16 repeated sequences").
    pub detection_note: String,
    pub dla: Option<&'a Dla>,
    pub importance: Option<&'a TermImportance>,
    pub ablation: Option<&'a AblationReport>,
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// Background colour of a value on a diverging scale (blue negative, red positive),
/// saturated at `|v| = scale`.
fn diverging(v: f64, scale: f64) -> String {
    if !v.is_finite() || scale <= 0.0 {
        return "#eee".into();
    }
    let t = (v / scale).clamp(-1.0, 1.0);
    let (r, g, b) = if t >= 0.0 {
        (255.0, 255.0 - 150.0 * t, 255.0 - 170.0 * t)
    } else {
        (255.0 + 200.0 * t, 255.0 + 120.0 * t, 255.0)
    };
    format!("rgb({},{},{})", r as u8, g as u8, b as u8)
}

/// Background of a value in [0, 1] on a sequential scale (white to blue).
fn sequential(v: f64) -> String {
    if !v.is_finite() {
        return "#eee".into();
    }
    let t = v.clamp(0.0, 1.0);
    format!(
        "rgb({},{},{})",
        (255.0 - 222.0 * t) as u8,
        (255.0 - 153.0 * t) as u8,
        (255.0 - 75.0 * t) as u8
    )
}

fn text_colour(bg_strength: f64) -> &'static str {
    if bg_strength > 0.6 {
        "#fff"
    } else {
        "#111"
    }
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// A `[layer][head]` table with sequential colours for values in [0, 1] or diverging
/// colours otherwise.
fn grid_table(id: &str, values: &[Vec<f64>], signed: bool, scale: f64) -> String {
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

/// Composition scores of earlier heads (rows) into later heads (columns).
fn composition_table(id: &str, scores: &[Vec<Vec<Vec<f64>>>], signed: bool, scale: f64) -> String {
    let nl = scores.len();
    let nh = scores.first().map_or(0, |r| r.len());
    let mut s = format!("<table class=\"grid\" id=\"{id}\"><tr><th>from \\ to</th>");
    for l2 in 1..nl {
        for h2 in 0..nh {
            let _ = write!(s, "<th>L{l2}H{h2}</th>");
        }
    }
    s.push_str("</tr>");
    for (l1, by_h1) in scores.iter().enumerate().take(nl.saturating_sub(1)) {
        for (h1, by_l2) in by_h1.iter().enumerate() {
            let _ = write!(s, "<tr><th>L{l1}H{h1}</th>");
            for (l2, by_h2) in by_l2.iter().enumerate().skip(1) {
                for (h2, v) in by_h2.iter().enumerate() {
                    if l1 >= l2 {
                        s.push_str("<td class=\"na\"></td>");
                        continue;
                    }
                    let (bg, strength) = if signed {
                        (diverging(*v, scale), (v.abs() / scale).min(1.0))
                    } else {
                        (sequential(*v / scale), (*v / scale).clamp(0.0, 1.0))
                    };
                    let _ = write!(
                        s,
                        "<td style=\"background:{bg};color:{}\" title=\"L{l1}H{h1} → L{l2}H{h2}: {v}\">{}</td>",
                        text_colour(strength),
                        fmt_num(*v)
                    );
                }
            }
            s.push_str("</tr>");
        }
    }
    s.push_str("</table>");
    s
}

fn max_abs(values: impl IntoIterator<Item = f64>) -> f64 {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(0.0, |m, v| m.max(v.abs()))
}

fn dla_table(d: &Dla, label: &dyn Fn(u32) -> String) -> String {
    let n = d.tokens.len();
    let mut rows: Vec<(String, Vec<f64>)> = vec![("direct".into(), d.direct.clone())];
    for (l, heads) in d.heads.iter().enumerate() {
        for (h, v) in heads.iter().enumerate() {
            rows.push((format!("L{l}H{h}"), v.clone()));
        }
    }
    rows.push(("biases".into(), d.biases.clone()));
    let scale = max_abs(rows.iter().flat_map(|(_, v)| v.iter().copied())).max(1e-9);
    let mut s =
        String::from("<div class=\"scroll\"><table class=\"grid dla\" id=\"dla\"><tr><th>pos</th>");
    for p in 0..n {
        let _ = write!(
            s,
            "<th title=\"position {p}: {} → {}\">{p}<br><span class=\"tok\">{}</span><br>→<span class=\"tok\">{}</span></th>",
            esc(&label(d.tokens[p])),
            esc(&label(d.targets[p])),
            esc(&label(d.tokens[p])),
            esc(&label(d.targets[p]))
        );
    }
    s.push_str("</tr>");
    for (name, v) in &rows {
        let _ = write!(s, "<tr><th>{}</th>", esc(name));
        for (p, x) in v.iter().enumerate() {
            let _ = write!(
                s,
                "<td style=\"background:{};color:{}\" title=\"{name} at {p}: {x}\">{}</td>",
                diverging(*x, scale),
                text_colour(x.abs() / scale),
                fmt_num(*x)
            );
        }
        s.push_str("</tr>");
    }
    for (name, v) in [
        ("sum", &d.sum),
        ("model logit", &d.model_logit),
        ("sum − model", &d.residual_error),
    ] {
        let _ = write!(s, "<tr class=\"total\"><th>{name}</th>");
        for x in v {
            let _ = write!(
                s,
                "<td title=\"{x}\">{}</td>",
                if name.starts_with("sum −") {
                    format!("{x:.1e}")
                } else {
                    fmt_num(*x)
                }
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</table></div>");
    s
}

fn importance_tables(t: &TermImportance) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<p>Next-token loss on this prompt with all terms {:.4} (the model's loss, up to the sum check above); with the bias terms only {:.4}.</p>\
         <table class=\"plain\" id=\"orders\"><tr><th>order</th><th>terms</th><th>loss without this order</th>\
         <th>increase</th><th>loss with orders ≤ this</th></tr>",
        t.loss_all_terms, t.loss_biases_only
    );
    for o in &t.orders {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{:+.4}</td><td>{:.4}</td></tr>",
            o.order, o.n_terms, o.loss_without, o.loss_increase_when_dropped, o.loss_up_to
        );
    }
    s.push_str("</table><h3>Largest terms</h3><table class=\"plain\" id=\"terms\"><tr><th>term</th><th>order</th><th>RMS logit</th><th>mean next-token logit</th><th>loss increase when dropped</th></tr>");
    for term in t.terms.iter().take(16) {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{:+.3}</td><td>{:+.4}</td></tr>",
            esc(&term.name),
            term.order.map_or("–".into(), |o| o.to_string()),
            term.rms,
            term.mean_next_token_logit,
            term.loss_increase_when_dropped
        );
    }
    s.push_str("</table>");
    s
}

fn ablation_section(a: &AblationReport) -> String {
    let mut s = String::new();
    let mode = match a.mode {
        super::ablation::Mode::Zero => "zero",
        super::ablation::Mode::Mean => "mean",
    };
    let _ = write!(
        s,
        "<p>{mode} ablation over {} prompts ({} predictions); baseline loss {:.4}{}.</p>",
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
        let scale = max_abs(grid.iter().flatten().copied()).max(1e-9);
        let _ = write!(s, "<h3>{what}, one head at a time</h3>");
        s.push_str(&grid_table("ablation-grid", grid, true, scale));
    }
    if !a.groups.is_empty() {
        s.push_str("<h3>Groups ablated together</h3><table class=\"plain\"><tr><th>heads</th><th>loss</th><th>increase</th><th>repeated-half loss</th></tr>");
        for g in &a.groups {
            let names: Vec<String> = g.heads.iter().map(|[l, h]| format!("L{l}H{h}")).collect();
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

const CSS: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;background:#fafbfc}
header{background:#1f2a44;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:22px;font-weight:600}
header .model{opacity:.8;font-size:13px;margin-top:4px}
main{padding:8px 28px 40px;max-width:1500px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:14px 18px;margin:16px 0}
h2{font-size:17px;margin:0 0 8px}
h3{font-size:14px;margin:14px 0 6px;color:#444}
.findings li{margin:3px 0}
.tokens span{display:inline-block;border:1px solid #d0d7de;border-radius:4px;padding:1px 5px;margin:2px;font-family:ui-monospace,monospace;font-size:12px;background:#f6f8fa}
.tokens span.hot{background:#ffe08a;border-color:#d4a72c}
.attn{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
.thumbs{display:grid;gap:10px}
.thumb{cursor:pointer;text-align:center;font-size:12px;border:2px solid transparent;border-radius:6px;padding:3px}
.thumb.sel{border-color:#2f6fde}
.thumb .sc{color:#666;font-size:11px}
svg text{font-family:ui-monospace,monospace}
table{border-collapse:collapse;font-size:12px}
table.grid td,table.grid th{border:1px solid #e6e8eb;padding:3px 6px;text-align:center;min-width:44px}
table.grid th{background:#f6f8fa;font-weight:600}
table.grid td.na{background:#fafafa}
table.plain td,table.plain th{border-bottom:1px solid #eee;padding:3px 10px;text-align:right}
table.plain th{background:#f6f8fa}
table.plain td:first-child{text-align:left;font-family:ui-monospace,monospace}
tr.total td{font-family:ui-monospace,monospace;color:#333;background:#fbfbfb}
.tok{font-family:ui-monospace,monospace;font-weight:400;font-size:11px}
.scroll{overflow-x:auto}
.dla td{min-width:38px;font-size:11px}
.note{color:#555;font-size:12.5px;max-width:1100px}
.row{display:flex;gap:28px;flex-wrap:wrap}
#tip{position:fixed;pointer-events:none;background:#1f2a44;color:#fff;padding:4px 8px;border-radius:4px;font:12px ui-monospace,monospace;display:none;z-index:10;white-space:nowrap}
"#;

const JS: &str = r#"
(function(){
const D=JSON.parse(document.getElementById('report-data').textContent);
const NS='http://www.w3.org/2000/svg';
const n=D.tokens.length, L=D.patterns.length, H=L?D.patterns[0].length:0;
const tip=document.getElementById('tip');
function colour(v){const t=Math.max(0,Math.min(1,v));return 'rgb('+Math.round(255-222*t)+','+Math.round(255-153*t)+','+Math.round(255-75*t)+')';}
function el(tag,attrs,parent){const e=document.createElementNS(NS,tag);for(const k in attrs)e.setAttribute(k,attrs[k]);if(parent)parent.appendChild(e);return e;}
function lab(p){return D.labels[p];}
function showTip(ev,text){tip.textContent=text;tip.style.display='block';tip.style.left=(ev.clientX+14)+'px';tip.style.top=(ev.clientY+12)+'px';}
function hideTip(){tip.style.display='none';hot(-1,-1);}
function hot(q,k){document.querySelectorAll('.tokens span').forEach((s,i)=>{s.classList.toggle('hot',i===q||i===k);});}
function draw(svg,l,h,cell,margin,cls,labels){
  const A=D.patterns[l][h];
  for(let q=0;q<n;q++){for(let k=0;k<=q;k++){
    const v=A[q][k];
    const r=el('rect',{x:margin+k*cell,y:margin+q*cell,width:cell,height:cell,fill:colour(v),class:cls,'data-q':q,'data-k':k},svg);
    r.addEventListener('mousemove',ev=>{showTip(ev,'L'+l+'H'+h+'  query '+q+' '+lab(q)+'  \u2192  key '+k+' '+lab(k)+'   '+v.toFixed(3));hot(q,k);});
    r.addEventListener('mouseleave',hideTip);
  }}
  el('rect',{x:margin,y:margin,width:n*cell,height:n*cell,fill:'none',stroke:'#c9ced6'},svg);
  if(labels){
    for(let p=0;p<n;p++){
      const t=el('text',{x:margin-4,y:margin+p*cell+cell*0.75,'text-anchor':'end','font-size':Math.min(11,cell*0.9)},svg);t.textContent=lab(p);
      const u=el('text',{x:0,y:0,'text-anchor':'start','font-size':Math.min(11,cell*0.9),transform:'translate('+(margin+p*cell+cell*0.75)+','+(margin-4)+') rotate(-90)'},svg);u.textContent=lab(p);
    }
  }
}
const thumbs=document.getElementById('thumbs');
thumbs.style.gridTemplateColumns='repeat('+H+',auto)';
const tsize=Math.max(2,Math.floor(150/Math.max(n,1)));
let sel=D.selected||[L-1,0];
function main(l,h){
  const box=document.getElementById('main-view');box.innerHTML='';
  const cell=Math.max(6,Math.min(18,Math.floor(440/Math.max(n,1))));const m=64;
  const svg=el('svg',{id:'hm-main',width:m+n*cell+8,height:m+n*cell+8},box);
  draw(svg,l,h,cell,m,'mcell',true);
  document.getElementById('main-title').textContent='L'+l+'H'+h+(D.head_notes[l][h]?'  ('+D.head_notes[l][h]+')':'');
  document.querySelectorAll('.thumb').forEach(t=>t.classList.toggle('sel',t.dataset.l==l&&t.dataset.h==h));
}
for(let l=0;l<L;l++){for(let h=0;h<H;h++){
  const d=document.createElement('div');d.className='thumb';d.dataset.l=l;d.dataset.h=h;
  const svg=el('svg',{id:'hm-L'+l+'H'+h,class:'heatmap',width:n*tsize+2,height:n*tsize+2},d);
  draw(svg,l,h,tsize,1,'cell',false);
  const c=document.createElement('div');c.innerHTML='<b>L'+l+'H'+h+'</b> <span class="sc">'+(D.head_notes[l][h]||'')+'</span>';d.appendChild(c);
  d.addEventListener('click',()=>main(l,h));thumbs.appendChild(d);
}}
if(L>0)main(sel[0],sel[1]);
document.body.setAttribute('data-rendered','1');
})();
"#;

/// Renders the report.
pub fn render(r: &ReportInput<'_>) -> String {
    let label = |t: u32| -> String {
        r.vocab
            .get(t as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{t}"))
    };
    let labels: Vec<String> = r.tokens.iter().map(|t| label(*t)).collect();
    let nl = r.patterns.len();
    let nh = r.patterns.first().map_or(0, |l| l.len());
    let patterns: Vec<Vec<Vec<Vec<f32>>>> = r
        .patterns
        .iter()
        .map(|layer| {
            layer
                .iter()
                .map(|a| {
                    (0..a.nrows())
                        .map(|q| (0..=q).map(|k| (a[(q, k)] * 1e4).round() / 1e4).collect())
                        .collect()
                })
                .collect()
        })
        .collect();
    // A short note per head under its thumbnail: the detector scores.
    let head_notes: Vec<Vec<String>> = (0..nl)
        .map(|l| {
            (0..nh)
                .map(|h| match r.detection {
                    Some(d) => format!(
                        "prev {:.2} · ind {:.2}",
                        d.previous_token[l][h], d.induction[l][h]
                    ),
                    None => String::new(),
                })
                .collect()
        })
        .collect();
    // Open the head with the highest induction score (else the last layer's first head).
    let selected = r.detection.and_then(|d| {
        let mut best: Option<(usize, usize, f64)> = None;
        for (l, row) in d.induction.iter().enumerate() {
            for (h, v) in row.iter().enumerate() {
                if v.is_finite() && best.is_none_or(|b| *v > b.2) {
                    best = Some((l, h, *v));
                }
            }
        }
        best.map(|(l, h, _)| [l, h])
    });
    let data = serde_json::json!({
        "tokens": r.tokens,
        "labels": labels,
        "patterns": patterns,
        "head_notes": head_notes,
        "selected": selected,
    });
    let data = data.to_string().replace("</", "<\\/");

    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{CSS}</style></head><body>\
         <header><h1>{}</h1><div class=\"model\">{}</div></header><main>",
        esc(&r.title),
        esc(&r.title),
        esc(&r.model_line)
    );
    if !r.findings.is_empty() {
        s.push_str("<section id=\"findings\"><h2>Findings</h2><ul class=\"findings\">");
        for f in &r.findings {
            let _ = write!(s, "<li>{}</li>", esc(f));
        }
        s.push_str("</ul></section>");
    }
    s.push_str("<section id=\"attention\"><h2>Attention patterns</h2><div class=\"tokens\">");
    for (p, l) in labels.iter().enumerate() {
        let _ = write!(s, "<span title=\"position {p}\">{}</span>", esc(l));
    }
    s.push_str(
        "</div><p class=\"note\">Each square is one head's pattern (row = query position, \
         column = key position, darker = more attention; only keys at or before the \
         query exist). Click a head to enlarge it; hover a cell for its value.</p>\
         <div class=\"attn\"><div><div id=\"thumbs\" class=\"thumbs\"></div></div>\
         <div><h3 id=\"main-title\"></h3><div id=\"main-view\"></div></div></div>\
         <noscript>The heatmaps need JavaScript; the tables below do not.</noscript></section>",
    );

    if let Some(d) = r.detection {
        let _ = write!(
            s,
            "<section id=\"head-scores\"><h2>Head detector scores</h2><p class=\"note\">\
             TransformerLens <code>head_detector</code> ('mul'): the share of a head's \
             attention on the positions a previous-token, duplicate-token or induction \
             head would attend to. {}</p><div class=\"row\">",
            esc(&r.detection_note)
        );
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
        s.push_str("</div></section>");
    }

    let a = r.analysis;
    s.push_str("<section id=\"circuits\"><h2>Static circuits</h2><div class=\"row\">");
    if let Some(c) = &a.copying {
        let _ = write!(
            s,
            "<div><h3>Copying score</h3><p class=\"note\">sum(λ)/sum(|λ|) over the \
             eigenvalues of the full OV circuit W<sub>E</sub>W<sub>V</sub>W<sub>O</sub>W<sub>U</sub>; \
             1 = the head copies the token it attends to.</p>{}</div>",
            grid_table("copying", c, true, 1.0)
        );
    }
    let sizes: Vec<Vec<f64>> = (0..nl)
        .map(|l| {
            (0..nh)
                .map(|h| a.virtual_heads.heads[l * nh + h].relative_to_direct)
                .collect()
        })
        .collect();
    let _ = write!(
        s,
        "<div><h3>Full OV circuit size</h3><p class=\"note\">‖W<sub>E</sub>W<sub>OV</sub>W<sub>U</sub>‖ \
         relative to the direct path ‖W<sub>E</sub>W<sub>U</sub>‖.</p>{}</div></div>",
        grid_table("ov-size", &sizes, false, max_abs(sizes.iter().flatten().copied()).max(1e-9))
    );
    if nl > 1 {
        let _ = write!(
            s,
            "<h3>Composition scores</h3><p class=\"note\">‖L R‖/(‖L‖‖R‖) with L = OV of \
             the earlier head (rows) and R the later head's QK (Q-composition), QKᵀ \
             (K-composition) or OV (V-composition), as TransformerLens's \
             <code>all_composition_scores</code>; random matrices of these shapes score \
             {:.3} ± {:.3} (the baseline the paper subtracts).</p><div class=\"row\">",
            a.composition_baseline.mean, a.composition_baseline.std
        );
        let all = [&a.composition.k, &a.composition.q, &a.composition.v];
        let scale = max_abs(
            all.iter()
                .flat_map(|m| m.iter().flatten().flatten().flatten().copied()),
        )
        .max(1e-9);
        for (name, m, id) in [
            ("K-composition", &a.composition.k, "comp-K"),
            ("Q-composition", &a.composition.q, "comp-Q"),
            ("V-composition", &a.composition.v, "comp-V"),
        ] {
            let _ = write!(
                s,
                "<div><h3>{name}</h3>{}</div>",
                composition_table(id, m, false, scale)
            );
        }
        s.push_str("</div><h3>Baseline-subtracted</h3><div class=\"row\">");
        let sub = &a.composition_baseline_subtracted;
        let scale = max_abs(
            [&sub.k, &sub.q, &sub.v]
                .iter()
                .flat_map(|m| m.iter().flatten().flatten().flatten().copied()),
        )
        .max(1e-9);
        for (name, m, id) in [
            ("K", &sub.k, "comp-K-sub"),
            ("Q", &sub.q, "comp-Q-sub"),
            ("V", &sub.v, "comp-V-sub"),
        ] {
            let _ = write!(
                s,
                "<div><h3>{name}</h3>{}</div>",
                composition_table(id, m, true, scale)
            );
        }
        s.push_str("</div>");
    }
    s.push_str("</section>");

    if let Some(d) = r.dla {
        let _ = write!(
            s,
            "<section id=\"attribution\"><h2>Direct logit attribution</h2><p class=\"note\">\
             Each row's contribution to the logit of the token the model should predict next \
             (the last position: its own prediction), through the final LayerNorm with its \
             scale frozen at the recorded value. The rows add up to the model's logit; the \
             last row is the difference (max |error| {:.1e}).</p>{}</section>",
            d.max_abs_residual_error,
            dla_table(d, &label)
        );
    }
    if let Some(t) = r.importance {
        let _ = write!(
            s,
            "<section id=\"paths\"><h2>Path expansion with frozen attention</h2><p class=\"note\">\
             With patterns and LN scales frozen, the logits split exactly into the direct path, \
             one term per head, one per virtual head (h1 → h2) and the bias terms. Term \
             importance: the loss increase when a term, or every term of one order, is dropped.</p>{}</section>",
            importance_tables(t)
        );
    }
    if let Some(ab) = r.ablation {
        let _ = write!(
            s,
            "<section id=\"ablation\"><h2>Ablation</h2>{}</section>",
            ablation_section(ab)
        );
    }
    let _ = writeln!(
        s,
        "</main><footer class=\"note\" style=\"padding:0 28px 20px\">Generated by tinylens {}.</footer>\
         <div id=\"tip\"></div><script type=\"application/json\" id=\"report-data\">{data}</script>\
         <script>{JS}</script></body></html>",
        env!("CARGO_PKG_VERSION")
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_colours() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(sequential(0.0), "rgb(255,255,255)");
        assert_eq!(diverging(0.0, 1.0), "rgb(255,255,255)");
        assert_eq!(diverging(f64::NAN, 1.0), "#eee");
        assert!(diverging(1.0, 1.0).starts_with("rgb(255,105,"));
    }
}
