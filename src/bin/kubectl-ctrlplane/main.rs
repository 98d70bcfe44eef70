//! `kubectl-ctrlplane`: the kubectl plugin of ctrlplane-operator. kubectl
//! runs it as `kubectl ctrlplane ...` once it is on PATH.
//!
//! The decisions live in pure modules with unit tests: `target` (which
//! object), `change` (what a write sends), `show` and `table` (what a read
//! prints), `duration`; `cluster` does the talking, and this file ties a
//! command to them.

mod change;
mod cli;
mod cluster;
mod duration;
mod error;
mod show;
mod table;
mod target;

use std::io::Write as _;
use std::process::ExitCode;

use chrono::Utc;
use clap::Parser;
use clap::error::ErrorKind;
use ctrlplane_operator::api::{Instance, Sandbox, WebhookDelivery};
use serde_json::{Map, Value};

use cli::{Cli, Command, Global, Object, Output};
use cluster::Cluster;
use error::CliError;
use target::Kind;

const LIFECYCLE: &[Kind] = &[Kind::Instance, Kind::Sandbox];
const INSTANCE: &[Kind] = &[Kind::Instance];
const SANDBOX: &[Kind] = &[Kind::Sandbox];

/// How many times a write is tried again when the object changed between
/// reading it and writing.
const CONFLICT_RETRIES: usize = 5;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            return match err.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = err.print();
                    ExitCode::SUCCESS
                }
                _ => fail(&error::clap_one_line(&err.render().to_string())),
            };
        }
    };
    // One TLS crypto provider for the process (ring, as kube uses).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e.to_string()),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err.to_string()),
    }
}

/// One line on stderr, exit code 1: kubectl's way.
fn fail(message: &str) -> ExitCode {
    eprintln!("error: {}", error::one_line(message));
    ExitCode::FAILURE
}

fn warn(message: &str) {
    eprintln!("warning: {}", error::one_line(message));
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let cluster = cluster::connect(&cli.global).await?;
    let global = &cli.global;
    let name = cli.command.name();
    match &cli.command {
        Command::Start(object) => {
            write(&cluster, global, name, object, LIFECYCLE, |kind, obj| {
                let warning = change::start_warning(kind, obj_name(obj), &obj["spec"]);
                Ok(Write::apply(change::state(true), "started").warn(warning))
            })
            .await
        }
        Command::Stop(object) => {
            write(&cluster, global, name, object, LIFECYCLE, |_, _| {
                Ok(Write::apply(change::state(false), "stopped"))
            })
            .await
        }
        Command::Restart(object) => {
            write(&cluster, global, name, object, LIFECYCLE, |_, _| {
                Ok(Write::apply(change::restart(Utc::now()), "restarted"))
            })
            .await
        }
        Command::Suspend { object, reason } => {
            write(&cluster, global, name, object, INSTANCE, |_, _| {
                Ok(Write::apply(change::suspend(reason), "suspended"))
            })
            .await
        }
        Command::Resume(object) => {
            write(&cluster, global, name, object, INSTANCE, |kind, obj| {
                let (patch, warning) = change::resume(kind, obj_name(obj), &obj["spec"])?;
                Ok(Write::merge(patch, "resumed").warn(warning))
            })
            .await
        }
        Command::Scale { object, replicas } => {
            write(&cluster, global, name, object, INSTANCE, |_, _| {
                Ok(Write::apply(change::replicas(*replicas), "scaled"))
            })
            .await
        }
        Command::Expire(object) => {
            write(&cluster, global, name, object, SANDBOX, |_, obj| {
                let policy = obj["spec"]["expiryPolicy"].as_str().unwrap_or("Delete");
                let what = if policy == "Stop" {
                    "expired (expiryPolicy Stop: the operator stops it and keeps its data)"
                } else {
                    "expired (expiryPolicy Delete: the operator deletes it and its data)"
                };
                Ok(Write::merge(change::expire(Utc::now()), what))
            })
            .await
        }
        Command::Extend { object, ttl } => {
            write(&cluster, global, name, object, SANDBOX, |kind, obj| {
                let created = obj["metadata"]["creationTimestamp"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or_else(Utc::now);
                let (set, deadline) = change::extend(
                    &kind.object(obj_name(obj)),
                    &obj["spec"],
                    created,
                    Utc::now(),
                    *ttl,
                )?;
                Ok(Write::apply(
                    set,
                    &format!(
                        "extended: expires at {}",
                        change::timestamp(deadline, false)
                    ),
                ))
            })
            .await
        }
        Command::Status(object) => status(&cluster, global, object).await,
        Command::History(object) => history(&cluster, global, object).await,
        Command::Deliveries {
            webhook,
            failed,
            all_namespaces,
        } => {
            deliveries(
                &cluster,
                global,
                webhook.as_deref(),
                *failed,
                *all_namespaces,
            )
            .await
        }
        Command::Redeliver { delivery, failed } => {
            redeliver(&cluster, global, delivery.as_deref(), failed.as_deref()).await
        }
    }
}

fn obj_name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// What one write command sends, and what it says afterwards.
struct Write {
    how: How,
    says: String,
    warning: Option<String>,
}

enum How {
    /// Server-side apply of these spec fields (and those the plugin owns).
    Apply(Map<String, Value>),
    /// A JSON merge patch of exactly this.
    Merge(Value),
}

impl Write {
    fn apply(fields: Map<String, Value>, says: &str) -> Self {
        Self {
            how: How::Apply(fields),
            says: says.into(),
            warning: None,
        }
    }

    fn merge(patch: Value, says: &str) -> Self {
        Self {
            how: How::Merge(patch),
            says: says.into(),
            warning: None,
        }
    }

    fn warn(mut self, warning: Option<String>) -> Self {
        self.warning = warning;
        self
    }
}

/// Reads the object, decides what to send from what it is now, sends it,
/// and reads again when it changed in between; then says what was done,
/// kubectl's way (`instance.ctrlplane.dev/web stopped`), or prints the
/// object with `-o json|yaml`.
async fn write(
    cluster: &Cluster,
    global: &Global,
    command: &str,
    object: &Object,
    allowed: &[Kind],
    decide: impl Fn(Kind, &Value) -> Result<Write, CliError>,
) -> Result<(), CliError> {
    let target = target::parse(command, &object.words(), allowed)?;
    let (kind, mut current) = cluster.resolve(&target, allowed).await?;
    let mut attempt = 0;
    let (written, decided) = loop {
        let decided = decide(kind, &current)?;
        let sent = match &decided.how {
            How::Apply(fields) => {
                let body = change::apply_body(kind, &current, fields);
                cluster.apply(kind, &target.name, &body).await
            }
            How::Merge(patch) => cluster.merge_patch(kind, &target.name, patch).await,
        };
        match sent {
            Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => {
                attempt += 1;
                current = cluster.get(kind, &target.name).await?;
            }
            other => break (other?, decided),
        }
    };
    if let Some(warning) = &decided.warning {
        warn(warning);
    }
    match global.output {
        Some(Output::Json | Output::Yaml) => {
            print_value(global.output, &cluster::without_managed_fields(written))
        }
        _ => {
            let unchanged = cluster::generation(&written) == cluster::generation(&current);
            let note = if unchanged { " (no change)" } else { "" };
            say(&format!(
                "{} {}{note}",
                kind.object(&target.name),
                decided.says
            ))
        }
    }
}

fn say(line: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").map_err(|e| CliError::Output(e.to_string()))
}

fn print_text(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .map_err(|e| CliError::Output(e.to_string()))
}

/// `-o json` / `-o yaml`.
fn print_value(output: Option<Output>, value: &Value) -> Result<(), CliError> {
    let text = match output {
        Some(Output::Yaml) => {
            serde_saphyr::to_string(value).map_err(|e| CliError::Output(e.to_string()))?
        }
        _ => format!("{}\n", serde_json::to_string_pretty(value)?),
    };
    print_text(&text)
}

fn view(global: &Global) -> show::View {
    show::View {
        wide: global.output == Some(Output::Wide),
        now: Utc::now(),
    }
}

async fn status(cluster: &Cluster, global: &Global, object: &Object) -> Result<(), CliError> {
    let target = target::parse("status", &object.words(), LIFECYCLE)?;
    let (kind, current) = cluster.resolve(&target, LIFECYCLE).await?;
    let (children, raw, addresses) = cluster.children(kind, &current).await;
    if matches!(global.output, Some(Output::Json | Output::Yaml)) {
        let items = std::iter::once(current).chain(raw).collect();
        return print_value(global.output, &cluster::list(items));
    }
    let text = match kind {
        Kind::Instance => show::instance_status(
            &cluster::typed::<Instance>(kind, &current)?,
            &children,
            view(global),
        ),
        _ => show::sandbox_status(
            &cluster::typed::<Sandbox>(kind, &current)?,
            &children,
            &addresses,
            view(global),
        ),
    };
    print_text(&text)
}

async fn history(cluster: &Cluster, global: &Global, object: &Object) -> Result<(), CliError> {
    let target = target::parse("history", &object.words(), LIFECYCLE)?;
    let (kind, current) = cluster.resolve(&target, LIFECYCLE).await?;
    let entries = match kind {
        Kind::Instance => cluster::typed::<Instance>(kind, &current)?
            .status
            .map(|s| s.history),
        _ => cluster::typed::<Sandbox>(kind, &current)?
            .status
            .map(|s| s.history),
    }
    .unwrap_or_default();
    if matches!(global.output, Some(Output::Json | Output::Yaml)) {
        // The entries as the API server holds them.
        let raw = match &current["status"]["history"] {
            Value::Array(entries) => Value::Array(entries.clone()),
            _ => Value::Array(Vec::new()),
        };
        return print_value(global.output, &raw);
    }
    if entries.is_empty() {
        eprintln!("No history yet for {}.", kind.object(&target.name));
        return Ok(());
    }
    print_text(&show::history_table(&entries, view(global), 0))
}

/// The Webhook a `deliveries` or `redeliver --failed` names, which must exist.
async fn webhook(
    cluster: &Cluster,
    command: &str,
    name: &str,
) -> Result<(String, Value), CliError> {
    let target = target::parse(command, &[name.to_string()], &[Kind::Webhook])?;
    let webhook = cluster.get(Kind::Webhook, &target.name).await?;
    Ok((target.name, webhook))
}

/// Deliveries in the order they are listed, each typed and raw.
fn in_order(items: Vec<Value>) -> Result<Vec<(WebhookDelivery, Value)>, CliError> {
    let mut pairs = items
        .into_iter()
        .map(|raw| Ok((cluster::typed(Kind::WebhookDelivery, &raw)?, raw)))
        .collect::<Result<Vec<_>, CliError>>()?;
    pairs.sort_by_key(|(typed, _)| show::delivery_order(typed));
    Ok(pairs)
}

fn phase(delivery: &Value) -> &str {
    delivery["status"]["phase"].as_str().unwrap_or("Pending")
}

async fn deliveries(
    cluster: &Cluster,
    global: &Global,
    webhook_name: Option<&str>,
    failed: bool,
    all_namespaces: bool,
) -> Result<(), CliError> {
    let webhook_name = match webhook_name {
        Some(name) if all_namespaces => {
            Some(target::parse("deliveries", &[name.to_string()], &[Kind::Webhook])?.name)
        }
        Some(name) => Some(webhook(cluster, "deliveries", name).await?.0),
        None => None,
    };
    let items: Vec<(WebhookDelivery, Value)> = in_order(
        cluster
            .deliveries(webhook_name.as_deref(), all_namespaces)
            .await?,
    )?
    .into_iter()
    .filter(|(_, raw)| !failed || phase(raw) == "Failed")
    .collect();
    if matches!(global.output, Some(Output::Json | Output::Yaml)) {
        let raw = items.into_iter().map(|(_, raw)| raw).collect();
        return print_value(global.output, &cluster::list(raw));
    }
    let typed: Vec<WebhookDelivery> = items.into_iter().map(|(typed, _)| typed).collect();
    if typed.is_empty() {
        if all_namespaces {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {} namespace.", cluster.namespace);
        }
        return Ok(());
    }
    print_text(&show::deliveries_table(
        &typed,
        all_namespaces,
        view(global),
    ))
}

async fn redeliver(
    cluster: &Cluster,
    global: &Global,
    delivery: Option<&str>,
    failed_of: Option<&str>,
) -> Result<(), CliError> {
    let names: Vec<String> = match (delivery, failed_of) {
        (Some(delivery), _) => {
            let target = target::parse(
                "redeliver",
                &[delivery.to_string()],
                &[Kind::WebhookDelivery],
            )?;
            let current = cluster.get(Kind::WebhookDelivery, &target.name).await?;
            change::redeliver_check(&target.name, &current["status"])?;
            let webhook_name = current["spec"]["webhookName"].as_str().unwrap_or_default();
            if let Ok(webhook) = cluster.get(Kind::Webhook, webhook_name).await
                && let Some(warning) = change::webhook_warning(webhook_name, &webhook)
            {
                warn(&warning);
            }
            vec![target.name]
        }
        (None, Some(webhook_name)) => {
            let (webhook_name, webhook) = webhook(cluster, "redeliver", webhook_name).await?;
            let names: Vec<String> =
                in_order(cluster.deliveries(Some(&webhook_name), false).await?)?
                    .iter()
                    .filter(|(_, raw)| phase(raw) == "Failed")
                    .map(|(_, raw)| obj_name(raw).to_string())
                    .collect();
            if names.is_empty() {
                eprintln!(
                    "No Failed deliveries of {} in namespace {}.",
                    Kind::Webhook.object(&webhook_name),
                    cluster.namespace
                );
                return Ok(());
            }
            if let Some(warning) = change::webhook_warning(&webhook_name, &webhook) {
                warn(&warning);
            }
            names
        }
        (None, None) => {
            return Err(CliError::Usage(
                "redeliver needs a DELIVERY or --failed WEBHOOK".into(),
            ));
        }
    };
    let mut written = Vec::new();
    for name in names {
        let patched = cluster
            .merge_patch(Kind::WebhookDelivery, &name, &change::redeliver(Utc::now()))
            .await?;
        if !matches!(global.output, Some(Output::Json | Output::Yaml)) {
            say(&format!(
                "{} redelivery requested",
                Kind::WebhookDelivery.object(&name)
            ))?;
        }
        written.push(patched);
    }
    if matches!(global.output, Some(Output::Json | Output::Yaml)) {
        let value = if written.len() == 1 && delivery.is_some() {
            cluster::without_managed_fields(written.remove(0))
        } else {
            cluster::list(written)
        };
        return print_value(global.output, &value);
    }
    Ok(())
}
