//! The command line (clap). With `main`, the only place that uses `anyhow`: each command
//! turns its module's typed errors into a message with context and an exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::admin::{self, Actor};
use crate::config::{self, Config};
use crate::licence::{self, LicencePayload};
use crate::store::Store;
use crate::{backup, tls};

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "VDI connection broker and gateway appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance: console, APIs and scheduler on one HTTPS port.
    Serve(ServeArgs),
    /// The first-run wizard's steps, unattended, for scripted installs.
    Setup(SetupArgs),
    /// Export or import snapshot backups of the store.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Licence keys: this installation's code, and the vendor side (keygen, issue).
    #[command(subcommand)]
    Licence(LicenceCommand),
    /// Administrator account maintenance.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print the commented default configuration, or check a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the version.
    Version,
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (TOML). Without one, built-in defaults apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data folder (overrides server.data_dir).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address and port for HTTPS (overrides server.listen), e.g. 127.0.0.1:8443.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
}

#[derive(Args)]
struct SetupArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data: PathBuf,
    /// File whose first line is the new administrator password.
    #[arg(long)]
    admin_password_file: PathBuf,
    /// Licence key file to activate (needs --accept-licence). Without it: the evaluation.
    #[arg(long, requires = "accept_licence")]
    licence_file: Option<PathBuf>,
    /// Accept the licence agreement.
    #[arg(long)]
    accept_licence: bool,
    /// PEM certificate chain to use instead of the generated one (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Write a snapshot of the store to a file (the server must be stopped).
    Export {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// File whose first line is a passphrase to encrypt the snapshot with.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Replace the store with a snapshot file, after checking all of it (server stopped).
    Import {
        #[arg(long)]
        data: PathBuf,
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LicenceCommand {
    /// Print this installation's code (to send to the supplier).
    Code {
        #[arg(long)]
        data: PathBuf,
    },
    /// Vendor: make a licence signing key pair in DIR.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Vendor: issue a licence key for an installation code.
    Issue {
        #[arg(long)]
        signing_key: PathBuf,
        #[arg(long)]
        serial: String,
        #[arg(long)]
        installation_code: String,
        #[arg(long, default_value = "")]
        customer: String,
        #[arg(long)]
        max_users: Option<u32>,
        /// Last valid day, YYYY-MM-DD.
        #[arg(long)]
        expires: Option<chrono::NaiveDate>,
        /// Issue date, YYYY-MM-DD (default: today).
        #[arg(long)]
        issued: Option<chrono::NaiveDate>,
        /// Comma-separated feature names.
        #[arg(long, default_value = "")]
        features: String,
        /// How many gateways may run.
        #[arg(long)]
        gateways: Option<u32>,
        /// Do not allow provisioning.
        #[arg(long)]
        no_provisioning: bool,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Set a one-time administrator password and print it (the server must be stopped).
    ResetPassword {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the commented default configuration.
    Default,
    /// Check a configuration file (and GATEHOUSE_… variables) without starting anything.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(file: Option<&Path>, data: Option<&Path>) -> Result<Config> {
    let mut config = Config::load(file)?;
    if let Some(d) = data {
        config.server.data_dir = d.to_path_buf();
    }
    Ok(config)
}

fn read_secret_line(path: &Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("while reading the {what} file {}", path.display()))?;
    let line = text.lines().next().unwrap_or_default().to_string();
    if line.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    Ok(line)
}

fn open_store(data: &Path) -> Result<Store> {
    Store::open(data).with_context(|| format!("while opening the store in {}", data.display()))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let mut config = load_config(args.config.as_deref(), args.data.as_deref())?;
            if let Some(listen) = args.listen {
                config.server.listen = listen;
            }
            crate::telemetry::init_logging(&config.log);
            actix_web::rt::System::new()
                .block_on(crate::app::serve(config))
                .context("while serving")?;
        }
        Command::Setup(args) => setup(args)?,
        Command::Backup(BackupCommand::Export {
            data,
            out,
            passphrase_file,
        }) => {
            let passphrase = passphrase_file
                .map(|f| read_secret_line(&f, "passphrase"))
                .transpose()?;
            let store = open_store(&data)?;
            let (bytes, meta) = admin::export_backup(&store, &Actor::cli(), passphrase.as_deref())?;
            backup::write_file_atomic(&out, &bytes)
                .with_context(|| format!("while writing {}", out.display()))?;
            println!(
                "Exported {} records to {}{}",
                meta.record_count,
                out.display(),
                if meta.encrypted { " (encrypted)" } else { "" }
            );
        }
        Command::Backup(BackupCommand::Import {
            data,
            input,
            passphrase_file,
        }) => {
            let passphrase = passphrase_file
                .map(|f| read_secret_line(&f, "passphrase"))
                .transpose()?;
            let bytes = std::fs::read(&input)
                .with_context(|| format!("while reading {}", input.display()))?;
            // The whole file is checked before the store is even opened.
            let (meta, records) = admin::verify_backup(&bytes, passphrase.as_deref())
                .with_context(|| {
                    format!(
                        "{} was not imported; the store is unchanged",
                        input.display()
                    )
                })?;
            let store = open_store(&data)?;
            let meta = admin::restore_verified(&store, &Actor::cli(), meta, &records)?;
            println!(
                "Imported {} records made {} by installation {}",
                meta.record_count,
                meta.created.format("%Y-%m-%d %H:%M UTC"),
                meta.installation_id
            );
        }
        Command::Licence(LicenceCommand::Code { data }) => {
            let id = Store::installation_id_of(&data)
                .with_context(|| {
                    format!("while reading the installation id in {}", data.display())
                })?
                .with_context(|| {
                    format!(
                        "{} has no installation yet: start gatehouse once first",
                        data.display()
                    )
                })?;
            println!("{}", licence::installation_code(&id));
        }
        Command::Licence(LicenceCommand::Keygen { out }) => {
            let paths = licence::keygen(&out)?;
            println!(
                "Signing key: {} (keep it secret)",
                paths.signing_key.display()
            );
            println!("Public key:  {}", paths.public_key.display());
        }
        Command::Licence(LicenceCommand::Issue {
            signing_key,
            serial,
            installation_code,
            customer,
            max_users,
            expires,
            issued,
            features,
            gateways,
            no_provisioning,
        }) => {
            let pem = std::fs::read_to_string(&signing_key)
                .with_context(|| format!("while reading {}", signing_key.display()))?;
            let code = licence::normalize_installation_code(&installation_code)?;
            let mut payload =
                LicencePayload::new(serial, code, issued.unwrap_or_else(licence::today));
            payload.customer = customer;
            payload.max_users = max_users;
            payload.expires = expires;
            payload.features = licence::parse_features(&features)?;
            payload.gateways = gateways;
            payload.provisioning = !no_provisioning;
            print!("{}", licence::issue(&pem, &payload)?);
        }
        Command::Admin(AdminCommand::ResetPassword { data, config }) => {
            let config = load_config(config.as_deref(), Some(&data))?;
            let store = open_store(&data)?;
            let password = admin::reset_password(&store, &config)?;
            println!("One-time password for admin: {password}");
            println!("Sign in with it; the console then asks for a new password.");
        }
        Command::Config(ConfigCommand::Default) => print!("{}", config::DEFAULT_TOML),
        Command::Config(ConfigCommand::Check { config }) => {
            Config::load(Some(&config))?;
            println!("{}: valid", config.display());
        }
        Command::Version => println!("gatehouse {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}

fn setup(args: SetupArgs) -> Result<()> {
    let config = load_config(args.config.as_deref(), Some(&args.data))?;
    let password = read_secret_line(&args.admin_password_file, "admin password")?;
    let store = open_store(&args.data)?;
    admin::initialise(&store, &config)?;
    let actor = Actor::cli();
    admin::wizard_password(
        &store,
        &actor,
        &password,
        &password,
        config.security.min_password_length,
    )
    .context("step 1 (administrator password)")?;
    match &args.licence_file {
        Some(file) => {
            let key = std::fs::read_to_string(file)
                .with_context(|| format!("while reading {}", file.display()))?;
            let verifier = admin::verifier(&config)?;
            let l = admin::activate_licence(&store, &verifier, &actor, &key, args.accept_licence)
                .context("step 2 (licence)")?;
            println!("Licence {} for {} activated.", l.serial(), l.customer());
        }
        None => {
            admin::choose_evaluation(&store, &actor, true).context("step 2 (licence)")?;
            println!("No licence key given: the 30-day evaluation runs.");
        }
    }
    let upload = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls::CertPem::new(
            std::fs::read_to_string(c).with_context(|| format!("while reading {}", c.display()))?,
            std::fs::read_to_string(k).with_context(|| format!("while reading {}", k.display()))?,
        )),
        _ => None,
    };
    let (_, info) =
        admin::choose_certificate(&store, &actor, upload).context("step 3 (certificate)")?;
    admin::finish_wizard(&store, &actor)?;
    println!(
        "Certificate: {} (valid until {}).",
        info.subject,
        info.not_after.format("%Y-%m-%d")
    );
    println!(
        "Setup complete. Start the appliance: gatehouse serve --data {}",
        args.data.display()
    );
    Ok(())
}
