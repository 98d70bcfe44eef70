//! The command line, kubectl's way: `kubectl ctrlplane VERB TYPE/NAME`,
//! with `-n`, `--context`, `--kubeconfig` and `-o` anywhere on the line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Operate ctrlplane Instances, Sandboxes and webhook deliveries";

const LONG_ABOUT: &str = "\
Operate ctrlplane Instances, Sandboxes and webhook deliveries.

Objects are named as kubectl names them: TYPE/NAME (inst/web, sbx/box),
TYPE NAME (instance web), or a bare NAME when only one object could be
meant. Types: inst (Instance), sbx (Sandbox), wh (Webhook), whd
(WebhookDelivery); plural and full names (instances.ctrlplane.dev) work too.

Changes are server-side applies of a few spec fields with the field
manager kubectl-ctrlplane (removals are merge patches of just those
fields), so a GitOps tool that owns the rest of the object does not
conflict with them.";

const EXAMPLES: &str = "\
Examples:
  kubectl ctrlplane stop inst/web
  kubectl ctrlplane scale web --replicas 4 -n team-a
  kubectl ctrlplane suspend web --reason \"invoice 1042 unpaid\"
  kubectl ctrlplane extend sbx/box --ttl 2h
  kubectl ctrlplane status inst/web -o yaml
  kubectl ctrlplane deliveries --failed hooks
  kubectl ctrlplane redeliver --failed hooks";

/// `kubectl ctrlplane`: the kubectl plugin of ctrlplane-operator.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl ctrlplane",
    bin_name = "kubectl ctrlplane",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    arg_required_else_help = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The flags kubectl users give every command.
#[derive(Args, Debug, Clone, Default)]
pub struct Global {
    /// The namespace; defaults to the context's namespace, else "default".
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// The kubeconfig context to use; defaults to its current-context.
    #[arg(long, global = true, value_name = "CONTEXT")]
    pub context: Option<String>,
    /// The kubeconfig file; defaults to $KUBECONFIG, else ~/.kube/config.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Output format: json or yaml print the objects; wide adds columns.
    #[arg(short = 'o', long, global = true, value_enum, value_name = "FORMAT")]
    pub output: Option<Output>,
}

/// `-o`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Yaml,
    Wide,
}

/// One object: TYPE/NAME, TYPE NAME or NAME.
#[derive(Args, Debug, Clone)]
pub struct Object {
    /// TYPE/NAME (inst/web), TYPE (then NAME), or a bare NAME.
    #[arg(value_name = "TYPE/NAME")]
    pub first: String,
    /// The NAME, when the first argument is a TYPE.
    #[arg(value_name = "NAME")]
    pub second: Option<String>,
}

impl Object {
    pub fn words(&self) -> Vec<String> {
        std::iter::once(self.first.clone())
            .chain(self.second.clone())
            .collect()
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start an Instance or Sandbox.
    ///
    /// Sets spec.state to Running (server-side apply). A suspended Instance
    /// stays stopped until it is resumed.
    #[command(override_usage = "kubectl ctrlplane start (TYPE/NAME | TYPE NAME | NAME) [options]")]
    Start(Object),
    /// Stop an Instance or Sandbox.
    ///
    /// Sets spec.state to Stopped (server-side apply): an Instance runs no
    /// replicas and keeps its Service; a Sandbox's pod goes and its data is
    /// kept.
    #[command(override_usage = "kubectl ctrlplane stop (TYPE/NAME | TYPE NAME | NAME) [options]")]
    Stop(Object),
    /// Restart an Instance or Sandbox.
    ///
    /// Sets spec.restartedAt to now (server-side apply): every replica of an
    /// Instance is replaced once; a Sandbox gets a new pod (and leaves Error).
    #[command(
        override_usage = "kubectl ctrlplane restart (TYPE/NAME | TYPE NAME | NAME) [options]"
    )]
    Restart(Object),
    /// Suspend an Instance, with a reason.
    ///
    /// Sets spec.suspend.reason (server-side apply): the Instance stops and
    /// stays stopped, whatever spec.state says, until it is resumed.
    #[command(override_usage = "kubectl ctrlplane suspend [inst/]NAME --reason REASON [options]")]
    Suspend {
        #[command(flatten)]
        object: Object,
        /// Why, for people, e.g. "invoice 1042 unpaid".
        #[arg(long, value_name = "REASON")]
        reason: String,
    },
    /// Resume a suspended Instance.
    ///
    /// Removes spec.suspend, and nothing else (a JSON merge patch). It runs
    /// again unless spec.state is Stopped.
    #[command(override_usage = "kubectl ctrlplane resume [inst/]NAME [options]")]
    Resume(Object),
    /// Scale an Instance.
    ///
    /// Sets spec.replicas (server-side apply).
    #[command(override_usage = "kubectl ctrlplane scale [inst/]NAME --replicas N [options]")]
    Scale {
        #[command(flatten)]
        object: Object,
        /// Replicas while it runs (0 to 1000).
        #[arg(long, value_name = "N")]
        replicas: u32,
    },
    /// Expire a Sandbox now.
    ///
    /// Sets spec.expiresAt to now and removes spec.ttlSeconds, in one JSON
    /// merge patch. Its spec.expiryPolicy then decides: Delete (the default)
    /// deletes it and its data, Stop stops it and keeps its data.
    #[command(override_usage = "kubectl ctrlplane expire [sbx/]NAME [options]")]
    Expire(Object),
    /// Move a Sandbox's deadline to now + D.
    ///
    /// D is from 1m to 720h. The field the Sandbox already uses is set
    /// (server-side apply): spec.ttlSeconds (counted from creation, so its
    /// age plus D) or spec.expiresAt (now plus D). A Sandbox with neither
    /// does not expire. A Sandbox that expiry stopped runs again, unless its
    /// spec.state is Stopped.
    #[command(override_usage = "kubectl ctrlplane extend [sbx/]NAME --ttl D [options]")]
    Extend {
        #[command(flatten)]
        object: Object,
        /// How long from now, as a Go duration: 30m, 2h, 1h30m.
        #[arg(long, value_name = "D", value_parser = crate::duration::parse)]
        ttl: Duration,
    },
    /// Show an Instance or Sandbox.
    ///
    /// Phase, conditions, children (read with your credentials), endpoints
    /// and the last five history entries. -o json|yaml prints the object and
    /// its children as a List; -o wide adds columns.
    #[command(
        override_usage = "kubectl ctrlplane status (TYPE/NAME | TYPE NAME | NAME) [-o json|yaml|wide] [options]"
    )]
    Status(Object),
    /// Show the lifecycle history of an Instance or Sandbox.
    ///
    /// Every entry of status.history: sequence, time, type, from -> to,
    /// reason and message; -o wide adds the details, -o json|yaml prints the
    /// entries.
    #[command(
        override_usage = "kubectl ctrlplane history (TYPE/NAME | TYPE NAME | NAME) [-o json|yaml|wide] [options]"
    )]
    History(Object),
    /// List webhook deliveries.
    ///
    /// The WebhookDelivery records in the namespace, or one Webhook's. With a
    /// Webhook's default `deliveryRecords: Failures`, a record exists only for
    /// a delivery that needed a retry or failed; with `All`, for every one.
    #[command(
        override_usage = "kubectl ctrlplane deliveries [WEBHOOK] [--failed] [-A] [-o json|yaml|wide] [options]"
    )]
    Deliveries {
        /// Only this Webhook's deliveries.
        #[arg(value_name = "WEBHOOK")]
        webhook: Option<String>,
        /// Only Failed deliveries.
        #[arg(long)]
        failed: bool,
        /// In every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Send webhook deliveries again.
    ///
    /// One completed (Succeeded or Failed) delivery, or every Failed delivery
    /// of a Webhook: sets the annotation ctrlplane.dev/redeliver-requested-at
    /// (a JSON merge patch), and the operator makes each Pending again with a
    /// fresh count of attempts.
    #[command(
        override_usage = "kubectl ctrlplane redeliver (DELIVERY | --failed WEBHOOK) [options]",
        group(ArgGroup::new("which").required(true).args(["delivery", "failed"]))
    )]
    Redeliver {
        /// The WebhookDelivery (NAME or whd/NAME).
        #[arg(value_name = "DELIVERY")]
        delivery: Option<String>,
        /// Every Failed delivery of this Webhook instead.
        #[arg(long, value_name = "WEBHOOK", conflicts_with = "delivery")]
        failed: Option<String>,
    },
}

impl Command {
    /// The command's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Start(_) => "start",
            Command::Stop(_) => "stop",
            Command::Restart(_) => "restart",
            Command::Suspend { .. } => "suspend",
            Command::Resume(_) => "resume",
            Command::Scale { .. } => "scale",
            Command::Expire(_) => "expire",
            Command::Extend { .. } => "extend",
            Command::Status(_) => "status",
            Command::History(_) => "history",
            Command::Deliveries { .. } => "deliveries",
            Command::Redeliver { .. } => "redeliver",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kubectl-ctrlplane").chain(line.split_whitespace()))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kubectl_flags_go_before_or_after_the_command() {
        let cli = parse("-n team-a stop inst/web --context dev -o json").unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("team-a"));
        assert_eq!(cli.global.context.as_deref(), Some("dev"));
        assert_eq!(cli.global.output, Some(Output::Json));
        let Command::Stop(object) = cli.command else {
            panic!("stop")
        };
        assert_eq!(object.words(), ["inst/web"]);
        let cli = parse("scale instance web --replicas 3 --kubeconfig /tmp/kc").unwrap();
        assert_eq!(cli.global.kubeconfig, Some(PathBuf::from("/tmp/kc")));
        let Command::Scale { object, replicas } = cli.command else {
            panic!("scale")
        };
        assert_eq!(
            (object.words(), replicas),
            (vec!["instance".into(), "web".into()], 3)
        );
    }

    #[test]
    fn extend_takes_go_durations() {
        let cli = parse("extend box --ttl 1h30m").unwrap();
        let Command::Extend { ttl, .. } = cli.command else {
            panic!("extend")
        };
        assert_eq!(ttl, Duration::from_secs(5400));
        let err = parse("extend box --ttl 3d")
            .unwrap_err()
            .render()
            .to_string();
        assert!(err.contains("unknown unit \"d\""), "{err}");
    }

    #[test]
    fn redeliver_takes_a_delivery_or_failed_webhook_not_both_nor_neither() {
        assert!(parse("redeliver d1").is_ok());
        assert!(parse("redeliver --failed hooks").is_ok());
        assert!(parse("redeliver").is_err());
        assert!(parse("redeliver d1 --failed hooks").is_err());
    }

    #[test]
    fn missing_or_bad_arguments_are_errors() {
        assert!(parse("suspend web").is_err(), "suspend needs --reason");
        assert!(parse("scale web --replicas -1").is_err());
        assert!(parse("scale web").is_err());
        assert!(parse("stop").is_err());
        assert!(parse("stop inst web extra").is_err());
        assert!(parse("status web -o table").is_err());
    }

    #[test]
    fn every_command_has_help_that_shows_its_usage() {
        let mut cli = Cli::command();
        // Global flags reach the subcommands when the command is built.
        cli.build();
        let names: Vec<String> = cli
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "start",
                "stop",
                "restart",
                "suspend",
                "resume",
                "scale",
                "expire",
                "extend",
                "status",
                "history",
                "deliveries",
                "redeliver"
            ]
        );
        for name in names {
            let help = cli
                .find_subcommand_mut(&name)
                .unwrap()
                .render_long_help()
                .to_string();
            assert!(
                help.contains(&format!("kubectl ctrlplane {name}")),
                "{help}"
            );
            assert!(
                help.contains("--namespace") && help.contains("--kubeconfig"),
                "{help}"
            );
        }
    }
}
