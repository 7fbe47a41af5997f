//! CSS, colour scales and number formatting shared by the static tables. The layout is
//! sized for a 1400-px window: the widest figures (16 head thumbnails a row, three
//! composition maps side by side) are computed by the script from the section's width.

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
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
/// saturated at `|v| = scale` (the same scale as `div()` in `js/common.js`).
pub fn diverging(v: f64, scale: f64) -> String {
    if !v.is_finite() || scale <= 0.0 {
        return "#eee".into();
    }
    let t = (v / scale).clamp(-1.0, 1.0);
    let (r, g, b) = if t >= 0.0 {
        (255.0 - 35.0 * t, 255.0 - 175.0 * t, 255.0 - 185.0 * t)
    } else {
        (255.0 + 205.0 * t, 255.0 + 135.0 * t, 255.0 + 25.0 * t)
    };
    format!("rgb({},{},{})", r as u8, g as u8, b as u8)
}

/// Background of a value in [0, 1] on a sequential scale (white to blue, as `seq()` in
/// `js/common.js`).
pub fn sequential(v: f64) -> String {
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

pub fn text_colour(bg_strength: f64) -> &'static str {
    if bg_strength > 0.6 {
        "#fff"
    } else {
        "#111"
    }
}

/// A number in at most 6 characters (tables never wrap a number).
pub fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0e}")
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub const CSS: &str = r#"
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;background:#f4f6f8}
header{background:#1f2a44;color:#fff;padding:16px 28px}
header h1{margin:0;font-size:21px;font-weight:600}
header .model{opacity:.85;font-size:13px;margin-top:4px}
header .prov{font-size:13px;margin-top:6px;padding:4px 8px;background:#2f3f63;border-radius:4px;display:inline-block;margin-right:8px}
nav#bar{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid #d8dde3;padding:8px 28px;display:flex;gap:18px;align-items:center;flex-wrap:wrap;font-size:13px}
nav#bar select{font-size:13px;max-width:340px}
main{padding:4px 28px 32px;max-width:1400px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:12px 16px;margin:14px 0;overflow:hidden}
h2{font-size:17px;margin:0 0 2px}
h3{font-size:13.5px;margin:10px 0 4px;color:#333}
p.cap{color:#444;font-size:13px;margin:0 0 8px;max-width:1300px}
.note{color:#555;font-size:12.5px;max-width:1300px}
.src{color:#7a5b00;font-size:12px;margin:6px 0 0}
.hint{color:#777;font-size:12px}
.findings li{margin:3px 0}
.row{display:flex;gap:22px;flex-wrap:wrap;align-items:flex-start}
.thumbs{display:grid;gap:6px;margin-bottom:8px}
.thumb{cursor:pointer;text-align:center;font-size:11px;border:2px solid transparent;border-radius:5px;padding:2px;white-space:nowrap;overflow:hidden}
.thumb.sel{border-color:#2f6fde}
.thumb .sc{color:#666}
canvas{display:block}
.smalls{display:grid;gap:4px}
.small{text-align:center;font-size:11px;cursor:pointer;border:2px solid transparent;border-radius:4px;white-space:nowrap}
.small.sel{border-color:#2f6fde}
.legend{font-size:11px;color:#444}
.legend canvas{border:1px solid #ccc}
.keys{display:flex;flex-wrap:wrap;gap:2px 10px;font-size:11px;margin-top:4px}
.keys span i{display:inline-block;width:10px;height:10px;margin-right:3px;vertical-align:-1px}
.tv-controls{display:flex;gap:16px;font-size:13px;margin-bottom:6px;align-items:center}
.tv{font:13px/1.9 ui-monospace,SFMono-Regular,Menlo,monospace;max-height:260px;overflow-y:auto}
.tv span{display:inline-block;padding:0 2px;margin:1px 1px;line-height:1.5;border-radius:3px;border:1px solid transparent;cursor:default;white-space:pre}
.tv span.hov{border-color:#111}
table{border-collapse:collapse;font-size:12px}
table.grid td,table.grid th{border:1px solid #e6e8eb;padding:2px 4px;text-align:center;min-width:40px;white-space:nowrap;font-variant-numeric:tabular-nums}
table.grid th{background:#f6f8fa;font-weight:600}
table.plain td,table.plain th{border-bottom:1px solid #eee;padding:2px 8px;text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
table.plain th{background:#f6f8fa}
table.plain td:first-child{text-align:left;font-family:ui-monospace,monospace}
table.cmp td,table.cmp th{min-width:0;padding:2px 5px}
table.cmp td.hi{background:#ffd6cc;font-weight:600}
table.cmp td.role{background:#ff9f8a;font-weight:700}
.scroll{overflow-x:auto}
footer{padding:0 28px 20px}
#tip{position:fixed;pointer-events:none;background:#1f2a44;color:#fff;padding:4px 8px;border-radius:4px;font:12px ui-monospace,monospace;display:none;z-index:10;white-space:pre}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_colours_and_numbers() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(sequential(0.0), "rgb(255,255,255)");
        assert_eq!(diverging(0.0, 1.0), "rgb(255,255,255)");
        assert_eq!(diverging(f64::NAN, 1.0), "#eee");
        assert_eq!(diverging(1.0, 1.0), "rgb(220,80,70)");
        for v in [0.123456, -12.3456, 345.6, -98765.0, 1e9] {
            assert!(fmt_num(v).chars().count() <= 6, "{v} -> {}", fmt_num(v));
        }
    }
}
