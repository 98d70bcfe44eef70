//! The ctrlplane-operator command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ctrlplane_operator::api;

#[derive(Parser)]
#[command(
    name = "ctrlplane-operator",
    version,
    about = "Kubernetes operator for instances, sandboxes and signed lifecycle webhooks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition as YAML, or write one file per CRD.
    Crds {
        /// Write `<name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds { output_dir } => print_crds(output_dir),
        Command::Version => {
            println!("ctrlplane-operator {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn print_crds(output_dir: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    for crd in api::crds() {
        let yaml = api::crd_yaml(&crd)?;
        match &output_dir {
            Some(dir) => std::fs::write(dir.join(api::crd_file_name(&crd)), yaml)?,
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}
