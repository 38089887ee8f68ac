//! `caas`: the tenant's command line, a client of the control API (`caasd api`).
//!
//! ```text
//! export CAAS_API=http://127.0.0.1:7070 CAAS_TOKEN=...
//! caas deploy hello:v1 --image 127.0.0.1:5000/hello:v1 --replicas 3
//! caas ps hello
//! caas deploy hello:v2 --image 127.0.0.1:5000/hello:v2 --steps 10,50,100 --step-wait 5s
//! caas logs hello -f
//! caas rm hello
//! ```
//!
//! Tables by default, `--json` for scripts; exit codes in [`exit`] (and the README).

/// Prints on stdout; a closed stdout (`caas ps | head`) ends the program quietly, as it
/// does for other command-line tools, instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::exit::write_stdout(format_args!($($arg)*))
    };
}

/// [`out!`] with a newline.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::exit::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod client;
mod deploy;
mod exit;
mod show;
mod table;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hyper::Method;
use serde_json::{Map, Value, json};

use client::{Client, seg};
use exit::Failure;

#[derive(Parser, Debug)]
#[command(
    name = "caas",
    about = "caas: deploy, scale, update and remove apps through the control API"
)]
struct Cli {
    /// The control API.
    #[arg(
        long,
        env = "CAAS_API",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    api: String,
    /// Bearer token (the API's tokens file holds its SHA-256).
    #[arg(long, env = "CAAS_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of tables (progress lines are not printed).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Deploy APP:VERSION and wait until its instances are healthy. When another version of
    /// the app serves, this is a rolling update (the new version starts beside the old one,
    /// traffic moves in --steps, the old one is drained and removed; rolled back by itself if
    /// the new one is not healthy within --health-deadline).
    Deploy(DeployArgs),
    /// Set the replicas of APP:VERSION and wait until they are healthy.
    Scale {
        /// APP:VERSION.
        target: String,
        /// Replicas.
        replicas: u32,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Revert the app's last finished update (the same way: start, shift, drain).
    Rollback {
        /// The app.
        app: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List instances: of one app, or of every app you own.
    Ps {
        /// The app (default: all).
        app: Option<String>,
    },
    /// Print an instance's container logs (every instance of the app when none is named).
    Logs {
        /// The app.
        app: String,
        /// The instance (`caas ps APP` lists them).
        instance: Option<String>,
        /// Keep printing new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<u64>,
    },
    /// Remove an app (every version, its routing and domains) or one version.
    Rm {
        /// APP or APP:VERSION.
        target: String,
    },
    /// Claim or release a custom domain for an app.
    Domain {
        #[command(subcommand)]
        action: DomainAction,
    },
    /// Split the app's traffic across versions: `caas weights hello v1=90 v2=10`.
    Weights {
        /// The app.
        app: String,
        /// VERSION=WEIGHT, one per version (none: clear the split).
        weights: Vec<String>,
    },
    /// Traffic statistics of an app, summed over every gateway.
    Stats {
        /// The app.
        app: String,
    },
    /// List hosts (admin).
    Hosts,
    /// Drain a host: it takes nothing new and its instances move elsewhere (admin).
    Drain {
        /// The host id.
        host: String,
        /// Undo: the host takes instances again.
        #[arg(long)]
        undo: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DomainAction {
    /// Claim DOMAIN for APP (a domain belongs to one app).
    Add {
        /// The app.
        app: String,
        /// The domain.
        domain: String,
    },
    /// Release DOMAIN.
    Rm {
        /// The app.
        app: String,
        /// The domain.
        domain: String,
    },
}

#[derive(Args, Debug)]
struct WaitArgs {
    /// Return once the change is written, without waiting.
    #[arg(long)]
    no_wait: bool,
    /// Longest wait for the change to complete (exit code 7 after it).
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    timeout: Duration,
}

#[derive(Args, Debug)]
struct DeployArgs {
    /// APP:VERSION.
    target: String,
    /// The image, `{registry}/{app}:{tag}` (default for an update: the serving version's
    /// repository with VERSION as the tag).
    #[arg(long)]
    image: Option<String>,
    /// Instances (default 1; an update keeps the old version's count).
    #[arg(long)]
    replicas: Option<u32>,
    /// Memory limit per instance (`512m`, `1g`).
    #[arg(long)]
    memory: Option<String>,
    /// CPU shares per instance.
    #[arg(long)]
    cpu_shares: Option<u64>,
    /// The port the container listens on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Placement constraint on host labels (`zone==a`, `disk!=hdd`); repeatable.
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// At most one instance per host.
    #[arg(long)]
    spread: bool,
    /// `most_free_memory` (default), `least_cpu`, `spread` or `binpack`.
    #[arg(long)]
    strategy: Option<String>,
    /// One instance on every eligible host (instead of --replicas).
    #[arg(long, conflicts_with = "replicas")]
    global: bool,
    /// Rolling update: percentages of traffic moved to the new version, ending at 100.
    #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
    steps: Vec<u32>,
    /// Rolling update: time between steps.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    step_wait: Duration,
    /// Rolling update: longest wait for the new version to be healthy before rolling back.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    health_deadline: Duration,
    #[command(flatten)]
    wait: WaitArgs,
}

/// `300s`, `5m`, `1500ms`, `2h` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: a duration is a number and a unit (ms, s, m, h)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    }
}

/// `APP:VERSION` → its two parts.
fn app_version(s: &str) -> Result<(String, String), Failure> {
    match s.split_once(':') {
        Some((a, v)) if !a.is_empty() && !v.is_empty() => Ok((a.to_owned(), v.to_owned())),
        _ => Err(Failure::usage(format!("`{s}`: expected APP:VERSION"))),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Failure::internal(format!("cannot start the runtime: {e}")).report(),
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(),
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let api = Client::new(&cli.api, cli.token.clone())?;
    let json_out = cli.json;
    match cli.command {
        Command::Deploy(args) => {
            let (app, version) = app_version(&args.target)?;
            let req = deploy_request(&api, app, version, args).await?;
            let out = deploy::deploy(&api, req, json_out).await?;
            print_result(json_out, &out);
        }
        Command::Scale {
            target,
            replicas,
            wait,
        } => {
            let (app, version) = app_version(&target)?;
            api.call(
                Method::PATCH,
                &format!("/v1/apps/{}/versions/{}", seg(&app), seg(&version)),
                Some(&json!({ "replicas": replicas })),
            )
            .await?;
            if !wait.no_wait {
                let mut p = deploy::Progress::new(json_out);
                let want = Some(u64::from(replicas));
                let view =
                    deploy::wait_healthy(&api, &app, &version, want, wait.timeout, &mut p).await?;
                print_result(json_out, &view);
            }
        }
        Command::Rollback { app, wait } => {
            if wait.no_wait {
                let r = api
                    .call(
                        Method::POST,
                        &format!("/v1/apps/{}/rollback", seg(&app)),
                        None,
                    )
                    .await?;
                print_result(json_out, &r);
            } else {
                let r = deploy::rollback(&api, &app, wait.timeout, json_out).await?;
                print_result(json_out, &r);
            }
        }
        Command::Ps { app } => show::ps(&api, app.as_deref(), json_out).await?,
        Command::Logs {
            app,
            instance,
            follow,
            tail,
        } => show::logs(&api, &app, instance.as_deref(), follow, tail).await?,
        Command::Rm { target } => {
            let path = match target.split_once(':') {
                Some((a, v)) => format!("/v1/apps/{}/versions/{}", seg(a), seg(v)),
                None => format!("/v1/apps/{}", seg(&target)),
            };
            let r = api.call(Method::DELETE, &path, None).await?;
            if json_out {
                print_result(true, &r);
            } else {
                outln!("removed {target}");
            }
        }
        Command::Domain { action } => {
            let (method, app, domain) = match action {
                DomainAction::Add { app, domain } => (Method::PUT, app, domain),
                DomainAction::Rm { app, domain } => (Method::DELETE, app, domain),
            };
            let verb = if method == Method::PUT {
                "claimed"
            } else {
                "released"
            };
            let r = api
                .call(
                    method,
                    &format!("/v1/apps/{}/domains/{}", seg(&app), seg(&domain)),
                    None,
                )
                .await?;
            if json_out {
                print_result(true, &r);
            } else {
                outln!("{app}: {verb} {domain}");
            }
        }
        Command::Weights { app, weights } => {
            let path = format!("/v1/apps/{}/weights", seg(&app));
            let r = if weights.is_empty() {
                api.call(Method::DELETE, &path, None).await?
            } else {
                let mut body = Map::new();
                for w in &weights {
                    let (v, n) = w
                        .split_once('=')
                        .ok_or_else(|| Failure::usage(format!("`{w}`: expected VERSION=WEIGHT")))?;
                    let n: u32 = n.parse().map_err(|_| {
                        Failure::usage(format!("`{w}`: the weight is a whole number"))
                    })?;
                    body.insert(v.to_owned(), json!(n));
                }
                api.call(Method::PUT, &path, Some(&Value::Object(body)))
                    .await?
            };
            if json_out {
                print_result(true, &r);
            } else {
                outln!(
                    "{app}: weights {}",
                    if weights.is_empty() {
                        "cleared".to_owned()
                    } else {
                        weights.join(" ")
                    }
                );
            }
        }
        Command::Stats { app } => {
            let s = api.get(&format!("/v1/apps/{}/stats", seg(&app))).await?;
            if json_out {
                print_result(true, &s);
            } else {
                out!("{}", show::stats_text(&s));
            }
        }
        Command::Hosts => {
            let h = api.get("/v1/hosts").await?;
            if json_out {
                print_result(true, &h);
            } else {
                out!("{}", show::hosts_table(&h["hosts"]));
            }
        }
        Command::Drain { host, undo } => {
            let method = if undo { Method::DELETE } else { Method::POST };
            let r = api
                .call(method, &format!("/v1/hosts/{}/drain", seg(&host)), None)
                .await?;
            if json_out {
                print_result(true, &r);
            } else if undo {
                outln!("{host}: takes instances again");
            } else {
                outln!("{host}: draining (it takes nothing new; its instances move elsewhere)");
            }
        }
    }
    Ok(())
}

/// The deployment JSON from the flags. For an app whose version is not given an image, the
/// image is the serving version's repository tagged with VERSION.
async fn deploy_request(
    api: &Client,
    app: String,
    version: String,
    args: DeployArgs,
) -> Result<deploy::DeployRequest, Failure> {
    let image = match args.image {
        Some(i) => i,
        None => default_image(api, &app, &version).await?,
    };
    let image_only = args.memory.is_none()
        && args.cpu_shares.is_none()
        && args.constraints.is_empty()
        && !args.spread
        && args.strategy.is_none()
        && !args.global
        && args.port == 8080;
    let mut d = Map::new();
    d.insert("image".into(), json!(image));
    d.insert("container_port".into(), json!(args.port));
    if args.global {
        d.insert("global".into(), json!(true));
    } else if let Some(r) = args.replicas {
        d.insert("replicas".into(), json!(r));
    }
    if let Some(m) = args.memory {
        d.insert("memory".into(), json!(m));
    }
    if let Some(c) = args.cpu_shares {
        d.insert("cpu_shares".into(), json!(c));
    }
    if !args.constraints.is_empty() {
        d.insert("constraints".into(), json!(args.constraints));
    }
    if args.spread {
        d.insert("spread".into(), json!(true));
    }
    if let Some(s) = args.strategy {
        d.insert("strategy".into(), json!(s));
    }
    let deployment = Value::Object(d);
    Ok(deploy::DeployRequest {
        app,
        version,
        image_only,
        deployment,
        steps: args.steps,
        step_wait: args.step_wait,
        health_deadline: args.health_deadline,
        timeout: if args.wait.no_wait {
            Duration::ZERO
        } else {
            args.wait.timeout
        },
    })
}

/// The image of a new version when none is given: another version's repository, tagged with
/// the new version.
async fn default_image(api: &Client, app: &str, version: &str) -> Result<String, Failure> {
    let view = api
        .get(&format!("/v1/apps/{}", seg(app)))
        .await
        .map_err(|_| Failure::usage(format!("{app}:{version}: --image is needed for a new app")))?;
    let image = view["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|v| v["deployment"]["image"].as_str())
        .ok_or_else(|| {
            Failure::usage(format!(
                "{app}:{version}: --image is needed (no version of {app} names one)"
            ))
        })?;
    let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
    Ok(format!("{repo}:{version}"))
}

/// Prints an API answer: JSON for `--json`, else a short summary.
fn print_result(json_out: bool, v: &Value) {
    if json_out {
        outln!(
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        );
    } else if let Some(app) = v.get("app").and_then(Value::as_str) {
        if v.get("instances").is_some() {
            out!("{}", show::instances_table(std::slice::from_ref(v)));
        } else if let (Some(from), Some(to)) = (v["from"].as_str(), v["to"].as_str()) {
            outln!("{app}: {from} → {to} {}", v["phase"].as_str().unwrap_or(""));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn targets_need_both_parts() {
        assert_eq!(
            app_version("hello:v2").ok(),
            Some(("hello".into(), "v2".into()))
        );
        assert!(app_version("hello").is_err());
        assert!(app_version(":v1").is_err());
    }
}
