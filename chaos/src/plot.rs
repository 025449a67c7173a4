//! The failover plot of a chaos run: an SVG histogram of client-visible
//! outages per scenario, on buckets that grow by about 2x (so a 100 ms
//! failover and a 9 s one are both readable), written beside the JSON
//! report and the Markdown summary. Pure: samples in, text out.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Upper bounds of the buckets, ms; the last bucket is everything above.
pub const BUCKETS_MS: [u64; 10] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 60_000,
];

const WIDTH: u32 = 760;
const HEIGHT: u32 = 360;
const LEFT: u32 = 60;
const BOTTOM: u32 = 60;
const TOP: u32 = 40;
const COLORS: [&str; 4] = ["#3b6ea8", "#d08a2c", "#4c9a5b", "#a8473b"];

/// Index of the bucket `ms` falls in.
pub fn bucket(ms: u64) -> usize {
    BUCKETS_MS
        .iter()
        .position(|&b| ms <= b)
        .unwrap_or(BUCKETS_MS.len())
}

fn label(i: usize) -> String {
    let fmt = |ms: u64| {
        if ms >= 1_000 {
            format!("{}s", ms / 1_000)
        } else {
            format!("{ms}ms")
        }
    };
    match i {
        0 => format!("≤{}", fmt(BUCKETS_MS[0])),
        i if i == BUCKETS_MS.len() => format!(">{}", fmt(BUCKETS_MS[i - 1])),
        i => format!("≤{}", fmt(BUCKETS_MS[i])),
    }
}

/// The histogram of `outages` (scenario -> samples, ms) as an SVG document.
pub fn failover_svg(title: &str, outages: &BTreeMap<String, Vec<u64>>) -> String {
    let n = BUCKETS_MS.len() + 1;
    let counts: Vec<(&str, Vec<u64>)> = outages
        .iter()
        .map(|(scenario, samples)| {
            let mut c = vec![0u64; n];
            for &ms in samples {
                c[bucket(ms)] += 1;
            }
            (scenario.as_str(), c)
        })
        .collect();
    let max = counts
        .iter()
        .flat_map(|(_, c)| c.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = WIDTH - LEFT - 20;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let group_w = plot_w / n as u32;
    let bar_w = (group_w - 6) / counts.len().max(1) as u32;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"22\" font-size=\"14\">{}</text>\n",
        escape(title)
    );
    let base = TOP + plot_h;
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"black\"/>",
        LEFT + plot_w
    );
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{base}\" stroke=\"black\"/>"
    );
    for tick in [0, max / 2, max] {
        let y = base - (tick * u64::from(plot_h) / max) as u32;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{tick}</text>",
            LEFT - 6,
            y + 4
        );
    }
    for i in 0..n {
        let x0 = LEFT + i as u32 * group_w + 3;
        for (k, (scenario, c)) in counts.iter().enumerate() {
            if c[i] == 0 {
                continue;
            }
            let h = (c[i] * u64::from(plot_h) / max).max(1) as u32;
            let _ = writeln!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"{bar_w}\" height=\"{h}\" fill=\"{}\"><title>{}: {} in {}</title></rect>",
                x0 + k as u32 * bar_w,
                base - h,
                COLORS[k % COLORS.len()],
                escape(scenario),
                c[i],
                label(i)
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x0 + group_w / 2,
            base + 16,
            label(i)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">client-visible outage (first failed to first answered request)</text>",
        LEFT + plot_w / 2,
        base + 36
    );
    for (k, (scenario, c)) in counts.iter().enumerate() {
        let y = TOP + 4 + k as u32 * 16;
        let x = LEFT + plot_w - 220;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{y}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{} ({} outages)</text>",
            COLORS[k % COLORS.len()],
            x + 14,
            y + 9,
            escape(scenario),
            c.iter().sum::<u64>()
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_duration() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(50), 0);
        assert_eq!(bucket(51), 1);
        assert_eq!(bucket(350), 3);
        assert_eq!(bucket(9_000), 7);
        assert_eq!(bucket(u64::MAX), BUCKETS_MS.len());
        assert_eq!(label(0), "≤50ms");
        assert_eq!(label(7), "≤10s");
        assert_eq!(label(BUCKETS_MS.len()), ">60s");
    }

    #[test]
    fn the_plot_has_a_bar_per_nonempty_bucket_and_a_legend() {
        let mut outages = BTreeMap::new();
        outages.insert("pair <fast>".to_string(), vec![300, 320, 350, 9_000]);
        outages.insert("slice".to_string(), vec![1_500]);
        let svg = failover_svg("run & plot", &outages);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        // Bars: pair in two buckets, slice in one; plus the background and
        // two legend swatches.
        assert_eq!(svg.matches("<rect").count(), 1 + 3 + 2, "{svg}");
        assert!(svg.contains("pair &lt;fast&gt;: 3 in ≤500ms"), "{svg}");
        assert!(svg.contains("slice: 1 in ≤2s"), "{svg}");
        assert!(svg.contains("run &amp; plot"));
        assert!(svg.contains("pair &lt;fast&gt; (4 outages)"));
        // Nothing to plot is still a document.
        let empty = failover_svg("none", &BTreeMap::new());
        assert!(empty.starts_with("<svg") && empty.contains("≤50ms"));
    }
}
