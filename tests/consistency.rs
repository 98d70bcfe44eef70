//! Checks that what is checked in agrees with the code: the CRD YAML under
//! `crds/`, the `crds` command, and the transition tables in
//! docs/api-reference.md.
//! These need no cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use ctrlplane_operator::api::{self, CommandPhase, InstancePhase, SandboxPhase, SnapshotPhase};
use ctrlplane_operator::lifecycle::Lifecycle;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const REGENERATE: &str = "regenerate them with `cargo run -- crds --output-dir crds`";

#[test]
fn checked_in_crds_are_up_to_date() {
    let dir = repo_root().join("crds");
    let mut expected_files = BTreeSet::new();
    for crd in api::crds() {
        let file = api::crd_file_name(&crd);
        let generated = api::crd_yaml(&crd).unwrap();
        let checked_in = std::fs::read_to_string(dir.join(&file))
            .unwrap_or_else(|e| panic!("crds/{file} is missing ({e}); {REGENERATE}"));
        assert!(
            checked_in == generated,
            "crds/{file} is stale; {REGENERATE}"
        );
        expected_files.insert(file);
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        on_disk, expected_files,
        "crds/ holds files that no CRD generates"
    );
}

#[test]
fn crds_command_prints_every_crd() {
    let output = Command::new(env!("CARGO_BIN_EXE_ctrlplane-operator"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let documents: Vec<serde_json::Value> = stdout
        .split("\n---\n")
        .map(|doc| doc.trim_start_matches("---\n"))
        .filter(|doc| !doc.trim().is_empty())
        .map(|doc| serde_saphyr::from_str(doc).unwrap())
        .collect();
    let names: Vec<&str> = documents
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "instances.ctrlplane.dev",
            "sandboxes.ctrlplane.dev",
            "webhooks.ctrlplane.dev",
            "webhookdeliveries.ctrlplane.dev",
            "sandboxcommands.ctrlplane.dev",
            "sandboxsnapshots.ctrlplane.dev"
        ]
    );
    for doc in &documents {
        assert_eq!(doc["kind"], "CustomResourceDefinition");
        assert_eq!(doc["spec"]["names"]["categories"][0], "ctrlplane");
        assert_eq!(doc["spec"]["scope"], "Namespaced");
    }
}

/// Where the lifecycle tables are documented.
const TABLES_PAGE: &str = "docs/api-reference.md";

/// Reads the Markdown table that follows `<!-- lifecycle-table: KIND -->` in
/// [`TABLES_PAGE`], as from -> set of allowed targets.
fn documented_table(kind: &str) -> BTreeMap<String, BTreeSet<String>> {
    let page = std::fs::read_to_string(repo_root().join(TABLES_PAGE))
        .unwrap_or_else(|e| panic!("reading {TABLES_PAGE}: {e}"));
    let marker = format!("<!-- lifecycle-table: {kind} -->");
    assert_eq!(
        page.matches(&marker).count(),
        1,
        "{TABLES_PAGE} must have exactly one `{marker}`, before the {kind} table"
    );
    let start = page.find(&marker).unwrap();
    let mut table = BTreeMap::new();
    for line in page[start + marker.len()..]
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.trim_start().starts_with('|'))
        .skip(2)
    {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(
            cells.len(),
            2,
            "{TABLES_PAGE}: the {kind} table's row has not two cells: {line}"
        );
        let to: BTreeSet<String> = if cells[1].contains("terminal") {
            BTreeSet::new()
        } else {
            cells[1].split(',').map(|s| s.trim().to_string()).collect()
        };
        assert!(
            table.insert(cells[0].to_string(), to).is_none(),
            "{TABLES_PAGE}: the {kind} table lists {} twice",
            cells[0]
        );
    }
    assert!(
        !table.is_empty(),
        "{TABLES_PAGE}: no table rows follow `{marker}`"
    );
    table
}

fn code_table<S: Lifecycle>() -> BTreeMap<String, BTreeSet<String>> {
    S::ALL
        .iter()
        .map(|from| {
            let to = from.allowed_next().iter().map(|s| s.to_string()).collect();
            (from.to_string(), to)
        })
        .collect()
}

#[test]
fn documented_instance_table_matches_the_code() {
    assert_eq!(
        documented_table("Instance"),
        code_table::<InstancePhase>(),
        "the Instance table in {TABLES_PAGE} and lifecycle::InstancePhase disagree"
    );
}

#[test]
fn documented_sandbox_table_matches_the_code() {
    assert_eq!(
        documented_table("Sandbox"),
        code_table::<SandboxPhase>(),
        "the Sandbox table in {TABLES_PAGE} and lifecycle::SandboxPhase disagree"
    );
}

#[test]
fn documented_sandbox_command_table_matches_the_code() {
    assert_eq!(
        documented_table("SandboxCommand"),
        code_table::<CommandPhase>(),
        "the SandboxCommand table in {TABLES_PAGE} and lifecycle::CommandPhase disagree"
    );
}

#[test]
fn documented_sandbox_snapshot_table_matches_the_code() {
    assert_eq!(
        documented_table("SandboxSnapshot"),
        code_table::<SnapshotPhase>(),
        "the SandboxSnapshot table in {TABLES_PAGE} and lifecycle::SnapshotPhase disagree"
    );
}

#[test]
fn the_helm_chart_ships_the_same_crds() {
    let chart = repo_root().join("deploy/helm/ctrlplane-operator/crds");
    for crd in api::crds() {
        let file = api::crd_file_name(&crd);
        let in_chart = std::fs::read(chart.join(&file)).unwrap_or_else(|e| {
            panic!("the chart lacks crds/{file} ({e}); copy crds/ into the chart")
        });
        let checked_in = std::fs::read(repo_root().join("crds").join(&file)).unwrap();
        assert!(
            in_chart == checked_in,
            "deploy/helm/ctrlplane-operator/crds/{file} differs from crds/{file}; copy crds/ into the chart"
        );
    }
    let files = std::fs::read_dir(&chart).unwrap().count();
    assert_eq!(
        files,
        api::crds().len(),
        "the chart's crds/ holds extra files"
    );
}
