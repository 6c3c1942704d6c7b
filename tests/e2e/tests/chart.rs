//! Chart checks that need no cluster (run by `make unit` too).

use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn chart_crd_is_byte_identical_to_the_generated_crd() {
    let generated = std::fs::read(repo().join("crds/queueworkerpool.yaml"))
        .expect("read crds/queueworkerpool.yaml");
    let in_chart = std::fs::read(repo().join("charts/qwp/crds/queueworkerpool.yaml"))
        .expect("read charts/qwp/crds/queueworkerpool.yaml");
    assert!(
        generated == in_chart,
        "charts/qwp/crds/queueworkerpool.yaml differs from crds/queueworkerpool.yaml: run `make crds` (it copies the CRD into the chart)"
    );
}

#[test]
fn chart_crd_is_the_crd_the_operator_types_generate() {
    let in_chart = std::fs::read_to_string(repo().join("charts/qwp/crds/queueworkerpool.yaml"))
        .expect("read the chart's CRD");
    assert_eq!(
        in_chart,
        qwp_pool::crd::crd_yaml(),
        "the chart's CRD is stale: run `make crds`"
    );
}
