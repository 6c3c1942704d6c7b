//! The Grafana dashboard (`charts/qwp/dashboards/qwp.json`, linked from `docs/grafana/`)
//! checked for what Grafana needs to load it and against the metrics the binaries register:
//! every PromQL expression may use only series that the operator's, the worker's and the API
//! server's own registries expose. No Grafana tooling is installable here (`@grafana/schema`
//! on npm is TypeScript types only, no JSON schema), so the checks are structural.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo().join("charts/qwp/dashboards/qwp.json"))
        .expect("read charts/qwp/dashboards/qwp.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Sample names a registry's exposition has, by family type: a counter `x` is `x_total`, a
/// histogram `x` is `x_bucket`, `x_sum` and `x_count`.
fn exposed_series(exposition: &str) -> BTreeMap<String, &'static str> {
    let mut series = BTreeMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
        let suffixes: &[(&str, &'static str)] = match kind {
            "counter" => &[("_total", "counter")],
            "gauge" => &[("", "gauge")],
            "histogram" => &[
                ("_bucket", "histogram"),
                ("_sum", "counter"),
                ("_count", "counter"),
            ],
            other => panic!("{name}: unexpected metric type {other}"),
        };
        for (suffix, kind) in suffixes {
            series.insert(format!("{name}{suffix}"), *kind);
        }
    }
    series
}

/// Every series the three binaries export, from their own registries. A labelled family
/// appears in the exposition only once it has a series, so each gets one, through the same
/// calls the binaries make.
fn registered_series() -> BTreeMap<String, &'static str> {
    let operator = qwp_operator::metrics::Metrics::default();
    operator.set_pool("jobs", "thumbs", Some(1), 1);
    operator.count_read("ok");
    operator.count_error("queue");
    operator
        .scale_events
        .get_or_create(&qwp_operator::metrics::PoolLabels {
            namespace: "jobs".into(),
            pool: "thumbs".into(),
        })
        .inc();
    let api = qwp_api_server::metrics::Metrics::default();
    api.requests
        .get_or_create(&qwp_api_server::metrics::RequestLabels {
            route: "/".into(),
            method: "POST".into(),
            status: 200,
        })
        .inc();
    api.latency
        .get_or_create(&qwp_api_server::metrics::RouteLabels { route: "/".into() })
        .observe(0.1);
    let operator = operator.encode();
    let worker = qwp_worker::metrics::Metrics::new(1).encode();
    let api = qwp_runtime::metrics::encode(api.as_ref());
    let mut all = BTreeMap::new();
    for (prefix, exposition) in [
        ("qwp_operator_", operator),
        ("qwp_worker_", worker),
        ("qwp_api_", api),
    ] {
        let series = exposed_series(&exposition);
        assert!(
            !series.is_empty() && series.keys().all(|name| name.starts_with(prefix)),
            "{prefix}: {series:?}"
        );
        all.extend(series);
    }
    all
}

/// What a PromQL expression refers to.
#[derive(Debug, Default)]
struct Refs {
    /// Metric names, each with the function directly around it (`rate`, `increase`, ...).
    metrics: Vec<(String, Option<String>)>,
    /// Labels of `by (...)` / `without (...)` clauses.
    grouping: BTreeSet<String>,
    /// Dashboard variables (`$x`, `${x}`).
    variables: BTreeSet<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2"];

fn variables_in(text: &str, into: &mut BTreeSet<String>) {
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let braced = rest.starts_with('{');
        let name: String = rest
            .trim_start_matches('{')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(!name.is_empty(), "a bare $ in {text:?}");
        if braced {
            assert!(
                rest[1 + name.len()..].starts_with('}'),
                "unclosed ${{ in {text:?}"
            );
        }
        into.insert(name);
    }
}

/// A small PromQL reader: enough to find metric names, the function around each, grouping
/// labels and variables, and to insist on balanced brackets.
fn promql_refs(expr: &str) -> Refs {
    let mut refs = Refs::default();
    variables_in(expr, &mut refs.variables);
    let chars: Vec<char> = expr.chars().collect();
    let mut calls: Vec<Option<String>> = Vec::new();
    let mut pending_call: Option<String> = None;
    let mut i = 0;
    let skip_to = |from: usize, close: char| -> usize {
        let mut j = from;
        let mut quote: Option<char> = None;
        while j < chars.len() {
            match (quote, chars[j]) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), '\\') => j += 1,
                (None, '"' | '\'' | '`') => quote = Some(chars[j]),
                (None, c) if c == close => return j,
                _ => {}
            }
            j += 1;
        }
        panic!("unclosed {close:?} in {expr:?}");
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_to(i + 1, '}') + 1;
        } else if c == '[' {
            i = skip_to(i + 1, ']') + 1;
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i + 1, c) + 1;
        } else if c == '(' {
            calls.push(pending_call.take());
            i += 1;
        } else if c == ')' {
            assert!(calls.pop().is_some(), "unbalanced ) in {expr:?}");
            i += 1;
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_{}".contains(chars[i]))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let opens = chars.get(next) == Some(&'(');
            let optional_list = word == "group_left" || word == "group_right";
            if optional_list && !opens {
                // `group_left` alone: no extra labels.
            } else if GROUPING.contains(&word.as_str()) {
                assert!(opens, "{word} without a label list in {expr:?}");
                let close = skip_to(next + 1, ')');
                let labels: String = chars[next + 1..close].iter().collect();
                refs.grouping.extend(
                    labels
                        .split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string),
                );
                i = close + 1;
            } else if opens
                || AGGREGATIONS.contains(&word.as_str())
                || KEYWORDS.contains(&word.as_str())
            {
                // A function, or an aggregation/operator whose argument follows.
                pending_call = Some(word);
            } else {
                let around = calls.last().cloned().flatten();
                refs.metrics.push((word, around));
            }
        } else {
            i += 1;
        }
    }
    assert!(calls.is_empty(), "unbalanced ( in {expr:?}");
    refs
}

/// A panel's gridPos: x, y, w, h.
type GridBox = (u64, u64, u64, u64);

struct Target<'a> {
    panel: &'a str,
    expr: &'a str,
    legend: &'a str,
}

fn targets(dashboard: &Value) -> Vec<Target<'_>> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| Target {
                    panel: title,
                    expr: t["expr"].as_str().unwrap_or_default(),
                    legend: t["legendFormat"].as_str().unwrap_or_default(),
                })
        })
        .collect()
}

#[test]
fn the_promql_reader_finds_metrics_functions_and_labels() {
    let refs = promql_refs(
        r#"histogram_quantile(0.95, sum by (pool, le) (rate(a_bucket{x=~"$ns", y="}"}[$__rate_interval]))) / on (pool) group_left b"#,
    );
    assert_eq!(
        refs.metrics,
        vec![
            ("a_bucket".to_string(), Some("rate".to_string())),
            ("b".to_string(), None)
        ]
    );
    assert_eq!(
        refs.grouping,
        BTreeSet::from(["pool".to_string(), "le".to_string()])
    );
    assert_eq!(
        refs.variables,
        BTreeSet::from(["ns".to_string(), "__rate_interval".to_string()])
    );
    let series = exposed_series(
        "# TYPE q_jobs counter\nq_jobs_total 1\n# TYPE q_up gauge\n# TYPE q_t histogram\n# EOF\n",
    );
    assert_eq!(
        series.keys().collect::<Vec<_>>(),
        ["q_jobs_total", "q_t_bucket", "q_t_count", "q_t_sum", "q_up"]
    );
}

#[test]
#[should_panic(expected = "unbalanced")]
fn the_promql_reader_rejects_unbalanced_parentheses() {
    promql_refs("sum(rate(x[5m])");
}

#[test]
fn docs_copy_is_the_charts_file() {
    let docs = std::fs::read(repo().join("docs/grafana/qwp.json")).expect("docs/grafana/qwp.json");
    let chart = std::fs::read(repo().join("charts/qwp/dashboards/qwp.json")).unwrap();
    assert!(
        docs == chart,
        "docs/grafana/qwp.json must link to the chart's file"
    );
}

#[test]
fn dashboard_has_what_grafana_needs_to_load_it() {
    let d = dashboard();
    for key in ["title", "uid"] {
        assert!(
            d[key].as_str().is_some_and(|v| !v.is_empty()),
            "{key} missing"
        );
    }
    assert!(
        d["uid"].as_str().unwrap().len() <= 40,
        "Grafana uids are at most 40 characters"
    );
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "a current schemaVersion (datasource references by uid)"
    );
    assert!(d["time"]["from"].is_string() && d["time"]["to"].is_string());
    assert!(
        d["id"].is_null(),
        "no instance-specific id in a provisioned dashboard"
    );

    let variables = d["templating"]["list"].as_array().expect("templating.list");
    let datasource_vars: Vec<&str> = variables
        .iter()
        .filter(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(
        datasource_vars.len(),
        1,
        "one Prometheus datasource variable"
    );
    let datasource = serde_json::json!({
        "type": "prometheus",
        "uid": format!("${{{}}}", datasource_vars[0])
    });
    let defined: BTreeSet<String> = variables
        .iter()
        .map(|v| v["name"].as_str().expect("variable name").to_string())
        .chain(
            ["__rate_interval", "__interval", "__range", "__all"]
                .iter()
                .map(|s| s.to_string()),
        )
        .collect();
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(variable["datasource"], datasource, "{variable}");
        let mut used = BTreeSet::new();
        variables_in(variable["definition"].as_str().unwrap(), &mut used);
        assert!(used.is_subset(&defined), "{used:?} in {}", variable["name"]);
    }

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(&str, GridBox)> = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("numeric id")),
            "duplicate id at {title}"
        );
        let g = &panel["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(w >= 1 && h >= 1 && x + w <= 24, "{title}: gridPos {g}");
        for (other, (ox, oy, ow, oh)) in &boxes {
            let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
            assert!(!overlap, "{title} overlaps {other}");
        }
        boxes.push((title, (x, y, w, h)));
        let kind = panel["type"].as_str().expect("panel type");
        if kind == "row" {
            continue;
        }
        assert!(
            [
                "timeseries",
                "stat",
                "gauge",
                "bargauge",
                "table",
                "heatmap",
                "text"
            ]
            .contains(&kind),
            "{title}: {kind} is not a built-in panel"
        );
        assert_eq!(panel["datasource"], datasource, "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert!(
                ref_ids.insert(target["refId"].as_str().expect("refId")),
                "{title}: duplicate refId"
            );
            assert_eq!(target["datasource"], datasource, "{title}");
        }
    }

    for t in targets(&d) {
        let refs = promql_refs(t.expr);
        assert!(
            refs.variables.is_subset(&defined),
            "{}: undefined variable in {:?}",
            t.panel,
            t.expr
        );
        let mut legend_labels = BTreeSet::new();
        let mut rest = t.legend;
        while let Some(at) = rest.find("{{") {
            let end = rest[at..].find("}}").expect("closed {{") + at;
            legend_labels.insert(rest[at + 2..end].trim().to_string());
            rest = &rest[end + 2..];
        }
        assert!(
            legend_labels.is_subset(&refs.grouping),
            "{}: legend {:?} names labels the query aggregates away ({:?})",
            t.panel,
            t.legend,
            refs.grouping
        );
    }
}

#[test]
fn every_query_uses_only_series_the_binaries_register() {
    let registered = registered_series();
    let d = dashboard();
    let mut used = BTreeSet::new();
    // (expression, is a panel query): a variable's series selector is no rate of anything.
    let mut exprs: Vec<(String, bool)> = targets(&d)
        .iter()
        .map(|t| (t.expr.to_string(), true))
        .collect();
    exprs.extend(
        d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["type"] == "query")
            .map(|v| {
                let q = v["definition"].as_str().unwrap();
                // label_values(<series selector>, <label>): the selector is PromQL.
                q.strip_prefix("label_values(")
                    .and_then(|q| q.rsplit_once(','))
                    .map(|(selector, _)| (selector.to_string(), false))
                    .unwrap_or_else(|| panic!("{q}: only label_values queries"))
            }),
    );
    for (expr, in_panel) in &exprs {
        for (metric, around) in promql_refs(expr).metrics {
            let kind = registered.get(&metric).unwrap_or_else(|| {
                panic!(
                    "{metric} (in {expr:?}) is not exported by any binary; they export {:?}",
                    registered.keys().collect::<Vec<_>>()
                )
            });
            let rated = matches!(around.as_deref(), Some("rate" | "increase" | "irate"));
            match *kind {
                _ if !in_panel => {}
                "counter" | "histogram" => {
                    assert!(
                        rated,
                        "{metric} is a counter: rate() or increase() it in {expr:?}"
                    )
                }
                _ => assert!(!rated, "{metric} is a gauge: no rate() in {expr:?}"),
            }
            used.insert(metric);
        }
    }
    for wanted in [
        "qwp_operator_pool_backlog",
        "qwp_operator_pool_desired_replicas",
        "qwp_worker_ready",
        "qwp_worker_jobs_total",
        "qwp_worker_processing_duration_seconds_bucket",
        "qwp_worker_receive_errors_total",
        "qwp_api_http_requests_total",
        "qwp_api_http_request_duration_seconds_bucket",
    ] {
        assert!(used.contains(wanted), "the dashboard shows no {wanted}");
    }
    // The pool panels follow the pool selectors.
    for t in targets(&d) {
        if t.expr.contains("qwp_worker_") || t.expr.contains("qwp_operator_pool_") {
            assert!(
                t.expr.contains(r#"pool=~"$pool""#)
                    && t.expr.contains(r#"namespace=~"$namespace""#),
                "{}: {:?} ignores the pool variables",
                t.panel,
                t.expr
            );
        }
    }
}
