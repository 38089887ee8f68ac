//! `caas ps`, `caas logs`, `caas stats` and `caas hosts`: what the API says, as tables.

use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::Method;
use serde_json::Value;

use crate::client::{Client, api_failure, seg};
use crate::exit::Failure;
use crate::table::Table;

/// `caas ps [APP]`.
pub(crate) async fn ps(api: &Client, app: Option<&str>, json_out: bool) -> Result<(), Failure> {
    let apps: Vec<String> = match app {
        Some(a) => vec![a.to_owned()],
        None => api
            .get("/v1/apps")
            .await?
            .get("apps")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a["app"].as_str().map(str::to_owned))
            .collect(),
    };
    let mut views = Vec::with_capacity(apps.len());
    for a in &apps {
        views.push(api.get(&format!("/v1/apps/{}", seg(a))).await?);
    }
    if json_out {
        let out = if app.is_some() {
            views.pop().unwrap_or(Value::Null)
        } else {
            Value::Array(views)
        };
        outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        out!("{}", instances_table(&views));
        for v in &views {
            for ver in v["versions"].as_array().into_iter().flatten() {
                let s = &ver["status"];
                if let Some(m) = s["message"].as_str() {
                    outln!(
                        "{}:{} {}: {m}",
                        v["app"].as_str().unwrap_or("?"),
                        ver["version"].as_str().unwrap_or("?"),
                        s["phase"].as_str().unwrap_or("?")
                    );
                }
            }
        }
    }
    Ok(())
}

/// Every instance of the given app views.
pub(crate) fn instances_table(views: &[Value]) -> String {
    let mut t = Table::new(&[
        "APP", "VERSION", "INSTANCE", "HOST", "ADDRESS", "STATE", "HEALTH", "RESTARTS", "AGE",
    ]);
    for v in views {
        let app = v["app"].as_str().unwrap_or("?");
        for i in v["instances"].as_array().into_iter().flatten() {
            t.row(vec![
                app.to_owned(),
                text(&i["version"]),
                text(&i["id"]),
                text(&i["host"]),
                text(&i["address"]),
                text(&i["state"]),
                text(&i["health"]),
                text(&i["restarts"]),
                i["age_s"].as_u64().map_or_else(|| "-".to_owned(), age),
            ]);
        }
    }
    t.render()
}

/// `caas hosts`.
pub(crate) fn hosts_table(hosts: &Value) -> String {
    let mut t = Table::new(&[
        "HOST",
        "ALIVE",
        "IP",
        "MEMORY",
        "CPU SHARES",
        "INSTANCES",
        "CPU IDLE",
        "LABELS",
        "DRAINING",
    ]);
    for h in hosts.as_array().into_iter().flatten() {
        let pair = |k: &str, f: fn(u64) -> String| match (
            h["allocated"][k].as_u64(),
            h["capacity"][k].as_u64(),
        ) {
            (Some(a), Some(c)) => format!("{}/{}", f(a), f(c)),
            _ => "-".to_owned(),
        };
        let labels = h["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        t.row(vec![
            text(&h["id"]),
            yes_no(&h["alive"]),
            text(&h["ip"]),
            pair("memory", mib),
            pair("cpu_shares", |n| n.to_string()),
            pair("instances", |n| n.to_string()),
            h["cpu_idle"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |f| format!("{:.0}%", f * 100.0)),
            if labels.is_empty() {
                "-".into()
            } else {
                labels
            },
            yes_no(&h["draining"]),
        ]);
        if let Some(e) = h["error"].as_str() {
            t.row(vec![String::new(), format!("(unreadable: {e})")]);
        }
    }
    t.render()
}

/// `caas stats`: one row for the app, one per version and one per endpoint (requests,
/// responses by class, upstream errors, in flight, bytes, latency quantiles from the
/// buckets), summed over the gateways that answered; then those that did not.
pub(crate) fn stats_text(s: &Value) -> String {
    let mut t = Table::new(&[
        "SCOPE",
        "REQUESTS",
        "2XX",
        "3XX",
        "4XX",
        "5XX",
        "UPSTREAM ERR",
        "IN FLIGHT",
        "BYTES IN",
        "BYTES OUT",
        "P50",
        "P99",
    ]);
    let app = s["app"].as_str().unwrap_or("?");
    let root = &s["stats"]["stats"];
    if root.is_object() {
        t.row(stats_row(app.to_owned(), root));
        for (v, vs) in root["versions"].as_object().into_iter().flatten() {
            t.row(stats_row(format!("{app}:{v}"), vs));
            for (ep, es) in vs["endpoints"].as_object().into_iter().flatten() {
                t.row(stats_row(format!("  {ep}"), es));
            }
        }
    }
    let mut out = format!("gateways counted: {}\n", text(&s["gateways"]));
    if let Some(m) = s["missing"].as_array().filter(|m| !m.is_empty()) {
        let names: Vec<String> = m.iter().map(text).collect();
        out.push_str(&format!("not counted (no answer): {}\n", names.join(", ")));
    }
    out.push_str(&t.render());
    out
}

fn stats_row(scope: String, c: &Value) -> Vec<String> {
    let n = |v: &Value| v.as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string());
    let r = &c["responses"];
    vec![
        scope,
        n(&c["requests"]),
        n(&r["2xx"]),
        n(&r["3xx"]),
        n(&r["4xx"]),
        n(&r["5xx"]),
        n(&c["upstream_errors"]),
        n(&c["in_flight"]),
        n(&c["bytes_in"]),
        n(&c["bytes_out"]),
        quantile(&c["latency_us"]["le"], 0.50),
        quantile(&c["latency_us"]["le"], 0.99),
    ]
}

/// The upper bound of the latency bucket holding quantile `q` (`≤ 1ms`), from per-bucket
/// counts keyed by their bound in µs.
fn quantile(le: &Value, q: f64) -> String {
    let Some(m) = le.as_object() else {
        return "-".to_owned();
    };
    let mut buckets: Vec<(u64, u64)> = m
        .iter()
        .filter_map(|(k, v)| Some((k.parse().unwrap_or(u64::MAX), v.as_u64()?)))
        .collect();
    buckets.sort_unstable();
    let total: u64 = buckets.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return "-".to_owned();
    }
    let want = (q * total as f64).ceil() as u64;
    let mut seen = 0;
    for (bound, n) in buckets {
        seen += n;
        if seen >= want {
            return match bound {
                u64::MAX => "> 10s".to_owned(),
                b if b >= 1000 => format!("≤ {}ms", b / 1000),
                b => format!("≤ {b}µs"),
            };
        }
    }
    "-".to_owned()
}

/// `caas logs APP [INSTANCE]`: one instance's logs, or every instance's with each line
/// prefixed by its id; with `follow`, until interrupted.
pub(crate) async fn logs(
    api: &Client,
    app: &str,
    instance: Option<&str>,
    follow: bool,
    tail: Option<u64>,
) -> Result<(), Failure> {
    let ids: Vec<String> = match instance {
        Some(i) => vec![i.to_owned()],
        None => {
            let view = api.get(&format!("/v1/apps/{}", seg(app))).await?;
            let ids: Vec<String> = view["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect();
            if ids.is_empty() {
                return Err(Failure::deploy(format!("{app} has no instances")));
            }
            ids
        }
    };
    let mut query = format!("?follow={follow}");
    if let Some(n) = tail {
        query.push_str(&format!("&tail={n}"));
    }
    let prefix = ids.len() > 1;
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for id in ids {
        let path = format!("/v1/apps/{}/instances/{}/logs{query}", seg(app), seg(&id));
        let resp = api.send(Method::GET, &path, None).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err(api_failure(status, &v));
        }
        let out = Arc::clone(&out);
        tasks.push(tokio::spawn(async move {
            let mut body = resp.into_body();
            let mut partial: Vec<u8> = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Failure::unreachable(format!("{id}: {e}")))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                partial.extend_from_slice(&data);
                while let Some(nl) = partial.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=nl).collect();
                    write_line(&out, prefix.then_some(id.as_str()), &line);
                }
            }
            if !partial.is_empty() {
                partial.push(b'\n');
                write_line(&out, prefix.then_some(id.as_str()), &partial);
            }
            Ok::<_, Failure>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| Failure::internal(format!("log stream: {e}")))??;
    }
    Ok(())
}

fn write_line(out: &Mutex<std::io::Stdout>, prefix: Option<&str>, line: &[u8]) {
    // A poisoned lock only means another stream panicked mid-line; keep printing.
    let out = out
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let _held = out.lock();
    // One line at a time through the same writer as every other output (a closed stdout
    // ends the program quietly).
    let line = String::from_utf8_lossy(line);
    match prefix {
        Some(p) => out!("{p} | {line}"),
        None => out!("{line}"),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn yes_no(v: &Value) -> String {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
    .to_owned()
}

fn mib(bytes: u64) -> String {
    format!("{}Mi", bytes / (1 << 20))
}

fn age(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stats_show_the_app_its_versions_and_endpoints_and_the_gateways_missing() {
        let c = |req: u64| {
            json!({"requests": req, "responses": {"2xx": req - 1, "5xx": 1}, "in_flight": 0,
                   "bytes_in": 0, "bytes_out": 10, "upstream_errors": 1,
                   "latency_us": {"le": {"500": req - 2, "1000": 1, "+Inf": 1}}})
        };
        let mut v2 = c(100);
        v2["endpoints"] = json!({"127.0.0.1:25701": c(100)});
        let mut app = c(100);
        app["versions"] = json!({"v2": v2});
        let s = json!({"app": "hello", "gateways": 2, "missing": ["gw-b"],
                       "stats": {"generation": 9, "stats": app}});
        let out = stats_text(&s);
        assert!(
            out.starts_with("gateways counted: 2\nnot counted (no answer): gw-b\n"),
            "{out}"
        );
        let rows: Vec<&str> = out.lines().skip(3).collect();
        assert_eq!(rows.len(), 3, "{out}");
        assert!(rows[0].starts_with("hello "), "{out}");
        assert!(rows[1].starts_with("hello:v2 "), "{out}");
        assert!(rows[2].starts_with("  127.0.0.1:25701 "), "{out}");
        assert!(rows[0].contains(" 99 "), "2xx: {out}");
        assert!(
            rows[0].contains("≤ 500µs") && rows[0].contains("≤ 1ms"),
            "p50, p99: {out}"
        );
    }

    #[test]
    fn hosts_show_use_against_capacity() {
        let h = json!([{"id": "h1", "alive": true, "ip": "127.0.0.2",
            "capacity": {"memory": 4294967296u64, "cpu_shares": 2048, "instances": 100},
            "allocated": {"memory": 536870912, "cpu_shares": 1024, "instances": 1},
            "cpu_idle": 0.5, "labels": {"zone": "a"}, "draining": false}]);
        let out = hosts_table(&h);
        assert!(out.contains("512Mi/4096Mi"), "{out}");
        assert!(out.contains("1024/2048"), "{out}");
        assert!(out.contains("zone=a"), "{out}");
        assert!(out.contains("50%"), "{out}");
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(59), "59s");
        assert_eq!(age(61), "1m");
        assert_eq!(age(7200), "2h");
    }
}
