//! Reading a server's Prometheus metrics (`--metrics-listen`, which the
//! harness gives every master and chunkserver process it starts).

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The text of `GET /metrics` at `addr` (an error unless 200 OK).
pub async fn scrape(addr: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_string(&mut answer),
    )
    .await
    .context("scrape timed out")??;
    let (head, body) = answer.split_once("\r\n\r\n").context("no HTTP head")?;
    if !head.starts_with("HTTP/1.1 200 ") {
        bail!("{addr}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// One sample of the text: its metric name, labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of `text` (label values without escapes, as the servers'
/// own names are).
pub fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let inner = rest.trim_end_matches('}');
                let labels = inner
                    .split("\",")
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once("=\"")?;
                        Some((k.to_string(), v.trim_end_matches('"').to_string()))
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (series.to_string(), Vec::new()),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The sum of the samples of `name` whose labels include every one of
/// `with` (0 if none).
pub fn sum(text: &str, name: &str, with: &[(&str, &str)]) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name == name && with.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_their_labels() {
        let text = "# HELP a A.\n# TYPE a gauge\na 3\nb_total{dir=\"/x/y\",op=\"read\"} 5\nb_total{dir=\"/z\",op=\"read\"} 2.5\nb_total{dir=\"/z\",op=\"write\"} 7\n# EOF\n";
        assert_eq!(sum(text, "a", &[]), 3.0);
        assert_eq!(sum(text, "b_total", &[("op", "read")]), 7.5);
        assert_eq!(sum(text, "b_total", &[("dir", "/z")]), 9.5);
        assert_eq!(sum(text, "c", &[]), 0.0);
        let s = &samples(text)[1];
        assert_eq!(s.label("dir"), Some("/x/y"));
    }
}
