//! The statistics the benchmarks print: medians and the summary of a set of ratios.
//! Owns no measurement and prints nothing itself.

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Mean, 95% CI half-width, median and quartiles of `v` (not empty).
pub fn summary(v: &[f64]) -> String {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
    format!(
        "median {:.3}, mean {:.4} ± {:.4} (95% CI), quartiles {:.3}–{:.3}",
        sorted[sorted.len() / 2],
        mean,
        1.96 * sd / n.sqrt(),
        sorted[sorted.len() / 4],
        sorted[(3 * sorted.len()) / 4]
    )
}
