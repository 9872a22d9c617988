//! `slipway-kube-fake`: the fake Kubernetes API server and cluster of the
//! tests, as a process, so that services and `kubectl` can be pointed at it
//! by hand. Test support only: never part of a product image.
//!
//! ```text
//! slipway-kube-fake --listen 127.0.0.1:6443 --write-kubeconfig /tmp/fake.kubeconfig
//! KUBECONFIG=/tmp/fake.kubeconfig kubectl get deploy,pods -A
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use slipway_kube_fake::{FakeKube, Options};

/// A fake Kubernetes API server with a Deployment/ReplicaSet controller and
/// pods that behave as their image tag says (crash, unready, slow-N,
/// pull-error, unschedulable, forbidden; anything else is ready at once).
#[derive(Parser, Debug)]
#[command(name = "slipway-kube-fake", version)]
struct Args {
    /// Address to serve on (plain HTTP, no authentication).
    #[arg(long, env = "SLIPWAY_KUBE_FAKE_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig for the server here (context `fake`).
    #[arg(long, env = "SLIPWAY_KUBE_FAKE_WRITE_KUBECONFIG")]
    write_kubeconfig: Option<PathBuf>,
    /// How often the controllers act.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    tick: Duration,
    /// How long a deleted pod takes to stop (at most its grace period).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pod_stop: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let Ok(args) = Args::try_parse().inspect_err(|e| {
        let _ = e.print();
    }) else {
        return Ok(ExitCode::from(64));
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let fake = FakeKube::serve(
        listener,
        Options {
            tick: args.tick,
            pod_stop: args.pod_stop,
        },
    );
    fake.run_controller();
    if let Some(path) = &args.write_kubeconfig {
        fake.write_kubeconfig(path)?;
    }
    // The line a harness waits for.
    eprintln!("serving addr={}", fake.addr);
    tokio::signal::ctrl_c().await?;
    Ok(ExitCode::SUCCESS)
}
