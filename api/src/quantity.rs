//! Kubernetes resource quantities (`64Mi`, `1.5G`, `250m`, `1e6`) as numbers: memory in bytes,
//! CPU in millicores. Pure.

/// Bytes of a memory quantity.
pub fn bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    for (suffix, factor) in suffixes {
        if let Some(n) = q.strip_suffix(suffix) {
            let v: f64 = n.parse().ok()?;
            return (v >= 0.0).then(|| (v * factor).ceil() as u64);
        }
    }
    let v: f64 = q.parse().ok()?;
    (v >= 0.0).then(|| v.ceil() as u64)
}

/// Millicores of a CPU quantity, rounded up.
pub fn millicores(q: &str) -> Option<u64> {
    millicores_exact(q).map(|v| v.ceil() as u64)
}

/// Millicores of a CPU quantity, with fractions (`250000n` is 0.25m: metrics are written in
/// nanocores).
pub fn millicores_exact(q: &str) -> Option<f64> {
    let q = q.trim();
    let (number, scale) = if let Some(n) = q.strip_suffix('n') {
        (n, 1e-6)
    } else if let Some(u) = q.strip_suffix('u') {
        (u, 1e-3)
    } else if let Some(m) = q.strip_suffix('m') {
        (m, 1.0)
    } else {
        (q, 1000.0)
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|v| *v >= 0.0 && v.is_finite())
        .map(|v| v * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(bytes("64Mi"), Some(64 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(bytes("129e6"), Some(129_000_000));
        assert_eq!(bytes("1024"), Some(1024));
        assert_eq!(bytes("lots"), None);
        assert_eq!(bytes("-1Mi"), None);
        assert_eq!(millicores("250m"), Some(250));
        assert_eq!(millicores("1.5"), Some(1500));
        assert_eq!(millicores_exact("250000n"), Some(0.25));
        assert_eq!(millicores_exact("30u"), Some(0.03));
        assert_eq!(millicores("lots"), None);
        assert_eq!(millicores("250m"), Some(250));
        assert_eq!(millicores("1.5"), Some(1500));
        assert_eq!(millicores("2"), Some(2000));
    }
}
