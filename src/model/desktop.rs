//! Desktops: the machines users connect to, whichever center inventories them.
//!
//! Owns the [`Desktop`] record (with the fields the cloud centers fill in later: power and
//! agent state, image, flavor, metadata), its validation, the hand-entry form's input
//! ([`DesktopInput`]) and the static center's CSV import ([`parse_csv`]). It also defines
//! [`FieldError`], the "this field is wrong, because" pair that validation returns.
//!
//! Pure: no I/O, no store, no HTTP. Uniqueness of names against stored desktops is checked by
//! the caller passing the existing names in; which pools a desktop belongs to is
//! `model::pool`'s business.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Protocol, new_id};
use crate::store::Record;

/// The center of desktops entered by hand or imported from a CSV file.
pub const STATIC_CENTER: &str = "static";
/// The longest name, display name or OS text accepted.
pub const MAX_TEXT_LEN: usize = 255;
/// How many bad CSV lines are reported at once (all are counted).
pub const MAX_CSV_ERRORS: usize = 20;

pub use super::FieldError;

/// One bad line of a CSV file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CsvError {
    /// 1-based; the header is line 1. For a record whose quoted field spans lines, the line
    /// the record starts on.
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    /// The CSV file was refused as a whole: nothing from it is to be imported.
    #[error("{}", csv_summary(errors, *total))]
    Csv {
        /// The first [`MAX_CSV_ERRORS`] bad lines, in line order.
        errors: Vec<CsvError>,
        /// How many lines were bad in all.
        total: usize,
    },
    #[error("the desktop is not valid: {}", join(.0))]
    Invalid(Vec<FieldError>),
}

pub type Result<T, E = DesktopError> = std::result::Result<T, E>;

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn csv_summary(errors: &[CsvError], total: usize) -> String {
    let lines = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let more = total.saturating_sub(errors.len());
    let more = if more > 0 {
        format!(" (and {more} more bad lines)")
    } else {
        String::new()
    };
    let plural = if total == 1 { "line is" } else { "lines are" };
    format!("nothing was imported: {total} {plural} wrong: {lines}{more}")
}

/// Whether a desktop is on, as its center last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    /// Not known (yet): a static desktop, or a center that does not say.
    #[default]
    Unknown,
    Running,
    Stopped,
    Suspended,
    Paused,
    /// Being created by its center.
    Building,
    Error,
    /// Its machine is being deleted: never offered nor assigned again.
    Deleting,
}

impl PowerState {
    pub const ALL: [PowerState; 8] = [
        PowerState::Unknown,
        PowerState::Running,
        PowerState::Stopped,
        PowerState::Suspended,
        PowerState::Paused,
        PowerState::Building,
        PowerState::Error,
        PowerState::Deleting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::Unknown => "unknown",
            PowerState::Running => "running",
            PowerState::Stopped => "stopped",
            PowerState::Suspended => "suspended",
            PowerState::Paused => "paused",
            PowerState::Building => "building",
            PowerState::Error => "error",
            PowerState::Deleting => "deleting",
        }
    }
}

/// Whether the Gatehouse agent on the desktop answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    #[default]
    Unknown,
    Running,
    Stopped,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Unknown => "unknown",
            AgentState::Running => "running",
            AgentState::Stopped => "stopped",
        }
    }
}

/// An inventoried machine. Static desktops are entered by hand or imported; the other fields
/// (power and agent state, image, flavor, metadata) are filled by the cloud centers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Desktop {
    pub id: String,
    /// Unique among all desktops, compared case-insensitively (see [`Desktop::name_key`]).
    pub name: String,
    /// What users see; empty means "the name".
    #[serde(default)]
    pub display_name: String,
    /// Host name or IP address the desktop is reached at.
    pub address: String,
    /// `None`: the protocol's default port.
    #[serde(default)]
    pub port: Option<u16>,
    pub protocol: Protocol,
    #[serde(default)]
    pub os: String,
    /// The center that inventories it: [`STATIC_CENTER`] for hand-entered desktops, else the
    /// center's id.
    pub center: String,
    #[serde(default)]
    pub power_state: PowerState,
    #[serde(default)]
    pub agent_state: AgentState,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub flavor: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub assigned_user: Option<String>,
    #[serde(default)]
    pub assigned_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_released: Option<DateTime<Utc>>,
    /// Gatehouse may delete the machine itself (a provisioned instance); never for static ones.
    #[serde(default)]
    pub deletable: bool,
    pub created: DateTime<Utc>,
    /// The machine's id in its center's cloud (Nova's server id): what links the desktop to
    /// its server across inventories. Empty for static desktops.
    #[serde(default)]
    pub server_id: String,
    /// While the machine's first build is not over: the id of the pool whose provisioning
    /// asked for it. A first build that ends in ERROR, or is still going after
    /// [`crate::model::provisioning::BUILD_TIMEOUT`], is that pool's provisioning failure.
    /// Cleared when the cloud first reports the machine in another state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_build: Option<String>,
}

impl Record for Desktop {
    const TREE: &'static str = "desktop_by_id";
}

impl Desktop {
    /// A static desktop made from checked input (call [`DesktopInput::validate`] first).
    pub fn from_input(input: DesktopInput, now: DateTime<Utc>) -> Desktop {
        let display_name = if input.display_name.trim().is_empty() {
            input.name.trim().to_string()
        } else {
            input.display_name.trim().to_string()
        };
        Desktop {
            id: new_id(),
            name: input.name.trim().to_string(),
            display_name,
            address: input.address.trim().to_string(),
            port: input.port,
            protocol: input.protocol,
            os: input.os.trim().to_string(),
            center: STATIC_CENTER.to_string(),
            power_state: PowerState::Unknown,
            agent_state: AgentState::Unknown,
            image: String::new(),
            flavor: String::new(),
            metadata: BTreeMap::new(),
            assigned_user: None,
            assigned_at: None,
            last_released: None,
            deletable: false,
            created: now,
            server_id: String::new(),
            first_build: None,
        }
    }

    /// The port to connect to: the desktop's own, or its protocol's default.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or_else(|| self.protocol.default_port())
    }

    /// The name users see.
    pub fn shown_name(&self) -> &str {
        if self.display_name.is_empty() {
            &self.name
        } else {
            &self.display_name
        }
    }

    /// The name as compared for uniqueness (lower case).
    pub fn name_key(&self) -> String {
        name_key(&self.name)
    }

    /// Whether the desktop is free to give to a user: nobody holds it, and its power state is
    /// `Running` or `Unknown` (static desktops report no power state; a stopped, suspended,
    /// building or failed machine is not offered). This is the "available" of pool counts.
    pub fn is_available(&self) -> bool {
        self.assigned_user.is_none()
            && !self.address.is_empty()
            && matches!(self.power_state, PowerState::Running | PowerState::Unknown)
    }

    /// Whether a user could be given this desktop at all: it has an address and its machine
    /// is not being created, failed, or being deleted.
    pub fn can_be_assigned(&self) -> bool {
        !self.address.is_empty()
            && !matches!(
                self.power_state,
                PowerState::Building | PowerState::Error | PowerState::Deleting
            )
    }

    /// What is wrong with this record on its own (uniqueness of the name is the caller's
    /// check: see [`name_key`]). Empty when it is fine.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = check_fields(
            &self.name,
            &self.display_name,
            &self.address,
            self.port,
            &self.os,
        );
        // A cloud machine may have no address yet (still building, or no network): it is
        // kept, and not offered until its center reports one.
        if self.address.is_empty() && self.center != STATIC_CENTER {
            errors.retain(|e| e.field != "address");
        }
        if self.center.trim().is_empty() {
            errors.push(FieldError::new(
                "center",
                "a desktop must belong to a center",
            ));
        }
        if self.metadata.keys().any(|k| k.trim().is_empty()) {
            errors.push(FieldError::new("metadata", "a metadata key is empty"));
        }
        errors
    }
}

/// The lower-case form names are compared in: desktop names are unique case-insensitively.
pub fn name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

/// What an administrator enters for a static desktop, by hand or as one CSV line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesktopInput {
    pub name: String,
    /// Empty: the name.
    #[serde(default)]
    pub display_name: String,
    pub address: String,
    #[serde(default)]
    pub port: Option<u16>,
    pub protocol: Protocol,
    #[serde(default)]
    pub os: String,
}

impl DesktopInput {
    /// What is wrong with the input on its own; empty when it is fine.
    pub fn validate(&self) -> Vec<FieldError> {
        check_fields(
            &self.name,
            &self.display_name,
            &self.address,
            self.port,
            &self.os,
        )
    }

    /// Checks the input, and that its name is not one of `existing_names` (any case), then
    /// makes the static desktop.
    pub fn into_desktop<'a>(
        self,
        existing_names: impl IntoIterator<Item = &'a str>,
        now: DateTime<Utc>,
    ) -> Result<Desktop> {
        let mut errors = self.validate();
        let key = name_key(&self.name);
        if !key.is_empty() && existing_names.into_iter().any(|n| name_key(n) == key) {
            errors.push(FieldError::new(
                "name",
                format!("a desktop named `{}` already exists", self.name.trim()),
            ));
        }
        if errors.is_empty() {
            Ok(Desktop::from_input(self, now))
        } else {
            Err(DesktopError::Invalid(errors))
        }
    }
}

fn check_fields(
    name: &str,
    display_name: &str,
    address: &str,
    port: Option<u16>,
    os: &str,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if name.trim().is_empty() {
        errors.push(FieldError::new("name", "the name is empty"));
    } else if let Err(reason) = check_text(name) {
        errors.push(FieldError::new("name", format!("the name {reason}")));
    }
    if let Err(reason) = check_text(display_name) {
        errors.push(FieldError::new(
            "display_name",
            format!("the display name {reason}"),
        ));
    }
    if let Err(reason) = check_address(address.trim()) {
        errors.push(FieldError::new("address", reason));
    }
    if port == Some(0) {
        errors.push(FieldError::new("port", "the port must be from 1 to 65535"));
    }
    if let Err(reason) = check_text(os) {
        errors.push(FieldError::new("os", format!("the OS {reason}")));
    }
    errors
}

fn check_text(text: &str) -> std::result::Result<(), String> {
    if text.chars().count() > MAX_TEXT_LEN {
        return Err(format!("is longer than {MAX_TEXT_LEN} characters"));
    }
    if text.chars().any(char::is_control) {
        return Err("contains a control character (a tab or line break)".to_string());
    }
    Ok(())
}

/// A host name (letters, digits, `-`, `_`; dot-separated labels of at most 63 characters) or
/// an IPv4 / IPv6 address.
fn check_address(address: &str) -> std::result::Result<(), String> {
    if address.is_empty() {
        return Err("the address is empty: give a host name or an IP address".to_string());
    }
    if address.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("`{address}` is not a host name or an IP address");
    let host = address.strip_suffix('.').unwrap_or(address);
    if host.is_empty() || host.len() > 253 {
        return Err(bad());
    }
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    // An all-digit last label is a mistyped IPv4 address (`10.0.0.300`), not a host name.
    let numeric_tail = host
        .rsplit('.')
        .next()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()));
    if !labels_ok || numeric_tail {
        return Err(bad());
    }
    Ok(())
}

/// The columns a desktop CSV file may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Name,
    DisplayName,
    Address,
    Port,
    Protocol,
    Os,
}

impl Column {
    fn parse(header: &str) -> Option<Column> {
        let normal: String = header
            .trim()
            .to_lowercase()
            .chars()
            .map(|c| if c == ' ' || c == '-' { '_' } else { c })
            .collect();
        match normal.as_str() {
            "name" => Some(Column::Name),
            "display_name" | "displayname" => Some(Column::DisplayName),
            "address" => Some(Column::Address),
            "port" => Some(Column::Port),
            "protocol" => Some(Column::Protocol),
            "os" => Some(Column::Os),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Column::Name => "name",
            Column::DisplayName => "display_name",
            Column::Address => "address",
            Column::Port => "port",
            Column::Protocol => "protocol",
            Column::Os => "os",
        }
    }
}

const COLUMNS_HELP: &str = "name, display_name, address, port, protocol, os";

/// Collects the bad lines of one CSV file, keeping the first [`MAX_CSV_ERRORS`].
#[derive(Default)]
struct CsvErrors {
    errors: Vec<CsvError>,
    total: usize,
}

impl CsvErrors {
    fn push(&mut self, line: usize, reason: String) {
        self.total += 1;
        if self.errors.len() < MAX_CSV_ERRORS {
            self.errors.push(CsvError { line, reason });
        }
    }

    fn into_error(self) -> DesktopError {
        DesktopError::Csv {
            errors: self.errors,
            total: self.total,
        }
    }
}

/// Parses a desktop CSV file for the static center.
///
/// The first non-blank line names the columns, in any order and any case: `name` and
/// `address` are required; `display_name` (also `display name`), `port`, `protocol` and `os`
/// are optional. An empty display name becomes the name, an empty port the protocol's
/// default, an empty protocol `rdp`. Fields follow RFC 4180: a field in double quotes may hold
/// commas, line breaks and doubled quotes (`""`). A UTF-8 byte-order mark, CRLF line ends,
/// spaces around unquoted fields, blank lines and lines of empty fields (`,,,` from
/// spreadsheets) are tolerated.
///
/// All or nothing: when any line is bad (wrong field count, bad port, protocol or address, a
/// name used twice in the file or already taken by one of `existing_names`, compared
/// case-insensitively), the result is [`DesktopError::Csv`] with every bad line's number
/// (the header is line 1) and reason (the first [`MAX_CSV_ERRORS`] of them), and no desktop.
pub fn parse_csv<'a>(
    text: &str,
    existing_names: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<DesktopInput>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut errors = CsvErrors::default();
    let mut records = split_records(text).into_iter();

    let header = match records.next() {
        None => {
            errors.push(
                1,
                format!("the file is empty: its first line must name the columns ({COLUMNS_HELP})"),
            );
            return Err(errors.into_error());
        }
        Some(Err(e)) => {
            errors.push(e.line, e.reason);
            return Err(errors.into_error());
        }
        Some(Ok(header)) => header,
    };
    let columns = parse_header(&header, &mut errors);
    let Some(columns) = columns else {
        return Err(errors.into_error());
    };

    let existing: HashMap<String, ()> = existing_names
        .into_iter()
        .map(|n| (name_key(n), ()))
        .collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut inputs = Vec::new();
    for record in records {
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                errors.push(e.line, e.reason);
                continue;
            }
        };
        match parse_row(&columns, &record) {
            Err(reasons) => errors.push(record.line, reasons.join("; ")),
            Ok(input) => {
                let key = name_key(&input.name);
                let mut reasons = Vec::new();
                if let Some(first) = seen.get(&key) {
                    reasons.push(format!(
                        "the name `{}` is already used on line {first}",
                        input.name
                    ));
                } else {
                    seen.insert(key.clone(), record.line);
                }
                if existing.contains_key(&key) {
                    reasons.push(format!("a desktop named `{}` already exists", input.name));
                }
                if reasons.is_empty() {
                    inputs.push(input);
                } else {
                    errors.push(record.line, reasons.join("; "));
                }
            }
        }
    }
    if errors.total > 0 {
        return Err(errors.into_error());
    }
    Ok(inputs)
}

fn parse_header(header: &CsvRecord, errors: &mut CsvErrors) -> Option<Vec<Column>> {
    let mut columns = Vec::with_capacity(header.fields.len());
    let mut reasons = Vec::new();
    for field in &header.fields {
        match Column::parse(field) {
            Some(column) if columns.contains(&column) => {
                reasons.push(format!("the column `{}` is named twice", column.as_str()));
            }
            Some(column) => columns.push(column),
            None if field.trim().is_empty() => {
                reasons.push(format!("a column has no name (columns: {COLUMNS_HELP})"));
            }
            None => reasons.push(format!(
                "unknown column `{}` (columns: {COLUMNS_HELP})",
                field.trim()
            )),
        }
    }
    for required in [Column::Name, Column::Address] {
        if !columns.contains(&required) {
            reasons.push(format!(
                "the header has no `{}` column: the first line must name the columns ({COLUMNS_HELP})",
                required.as_str()
            ));
        }
    }
    if reasons.is_empty() {
        Some(columns)
    } else {
        errors.push(header.line, reasons.join("; "));
        None
    }
}

/// One CSV line (or several, when a quoted field holds line breaks) as a desktop, or the
/// reasons it is not one.
fn parse_row(
    columns: &[Column],
    record: &CsvRecord,
) -> std::result::Result<DesktopInput, Vec<String>> {
    if record.fields.len() != columns.len() {
        return Err(vec![format!(
            "{} fields, but the header names {} columns",
            record.fields.len(),
            columns.len()
        )]);
    }
    let mut reasons = Vec::new();
    let mut input = DesktopInput {
        name: String::new(),
        display_name: String::new(),
        address: String::new(),
        port: None,
        protocol: Protocol::Rdp,
        os: String::new(),
    };
    for (column, value) in columns.iter().zip(&record.fields) {
        let value = value.trim();
        match column {
            Column::Name => input.name = value.to_string(),
            Column::DisplayName => input.display_name = value.to_string(),
            Column::Address => input.address = value.to_string(),
            Column::Os => input.os = value.to_string(),
            Column::Port if value.is_empty() => input.port = None,
            Column::Port => match value.parse::<u16>() {
                Ok(port) if port > 0 => input.port = Some(port),
                _ => reasons.push(format!("port `{value}` is not a number from 1 to 65535")),
            },
            Column::Protocol if value.is_empty() => input.protocol = Protocol::Rdp,
            Column::Protocol => match value.parse::<Protocol>() {
                Ok(protocol) => input.protocol = protocol,
                Err(reason) => reasons.push(reason),
            },
        }
    }
    // The port was checked above with a better message.
    reasons.extend(
        input
            .validate()
            .into_iter()
            .filter(|e| e.field != "port")
            .map(|e| e.reason),
    );
    if reasons.is_empty() {
        if input.display_name.is_empty() {
            input.display_name = input.name.clone();
        }
        Ok(input)
    } else {
        Err(reasons)
    }
}

/// One CSV record: its fields and the line it starts on.
#[derive(Debug, PartialEq)]
struct CsvRecord {
    line: usize,
    fields: Vec<String>,
}

/// Splits CSV text into records (RFC 4180 with tolerance for spaces around fields, LF or CRLF
/// line ends, and a missing final line end). Blank records (no field has text, none is quoted)
/// are left out. A malformed record gives an error, and parsing resumes on the next line.
fn split_records(text: &str) -> Vec<std::result::Result<CsvRecord, CsvError>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;

    // Consumes one line end (LF, CRLF or a lone CR) if one is next.
    fn eat_line_end(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, line: &mut usize) {
        match chars.peek() {
            Some('\n') => {
                chars.next();
                *line += 1;
            }
            Some('\r') => {
                chars.next();
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                *line += 1;
            }
            _ => {}
        }
    }
    fn skip_line(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, line: &mut usize) {
        while let Some(&c) = chars.peek() {
            if c == '\n' || c == '\r' {
                eat_line_end(chars, line);
                return;
            }
            chars.next();
        }
    }

    while chars.peek().is_some() {
        let start = line;
        let mut fields: Vec<String> = Vec::new();
        let mut quoted_any = false;
        let mut error: Option<String> = None;
        'record: loop {
            let mut field = String::new();
            while let Some(&c) = chars.peek() {
                if c == ' ' || c == '\t' {
                    field.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if chars.peek() == Some(&'"') {
                chars.next();
                quoted_any = true;
                field.clear();
                let opened = line;
                loop {
                    match chars.next() {
                        None => {
                            error = Some(format!(
                                "a quoted field opened on line {opened} is never closed"
                            ));
                            break 'record;
                        }
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some('"') => break,
                        Some('\r') => {
                            if chars.peek() == Some(&'\n') {
                                chars.next();
                            }
                            line += 1;
                            field.push('\n');
                        }
                        Some('\n') => {
                            line += 1;
                            field.push('\n');
                        }
                        Some(c) => field.push(c),
                    }
                }
                while let Some(&c) = chars.peek() {
                    if c == ' ' || c == '\t' {
                        chars.next();
                    } else {
                        break;
                    }
                }
                match chars.peek() {
                    Some(',') => {
                        chars.next();
                        fields.push(field);
                    }
                    Some('\n' | '\r') | None => {
                        eat_line_end(&mut chars, &mut line);
                        fields.push(field);
                        break 'record;
                    }
                    Some(_) => {
                        error = Some(
                            "text after a closing quote: a quoted field must end at the comma"
                                .to_string(),
                        );
                        skip_line(&mut chars, &mut line);
                        break 'record;
                    }
                }
            } else {
                loop {
                    match chars.peek() {
                        Some(',') => {
                            chars.next();
                            fields.push(field.trim().to_string());
                            continue 'record;
                        }
                        Some('\n' | '\r') | None => {
                            eat_line_end(&mut chars, &mut line);
                            fields.push(field.trim().to_string());
                            break 'record;
                        }
                        Some('"') => {
                            error = Some(
                                "a quote inside an unquoted field: put the whole field in quotes and double the quote (\"a \"\"b\"\" c\")"
                                    .to_string(),
                            );
                            skip_line(&mut chars, &mut line);
                            break 'record;
                        }
                        Some(&c) => {
                            field.push(c);
                            chars.next();
                        }
                    }
                }
            }
        }
        if let Some(reason) = error {
            out.push(Err(CsvError {
                line: start,
                reason,
            }));
        } else if quoted_any || fields.iter().any(|f| !f.is_empty()) {
            out.push(Ok(CsvRecord {
                line: start,
                fields,
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_names() -> std::iter::Empty<&'static str> {
        std::iter::empty()
    }

    fn csv_errors(result: Result<Vec<DesktopInput>>) -> (Vec<CsvError>, usize) {
        match result {
            Err(DesktopError::Csv { errors, total }) => (errors, total),
            other => panic!("expected CSV errors, got {other:?}"),
        }
    }

    fn one_error(result: Result<Vec<DesktopInput>>) -> CsvError {
        let (errors, total) = csv_errors(result);
        assert_eq!(total, 1, "{errors:?}");
        errors.into_iter().next().expect("one error")
    }

    const HEADER: &str = "name,display_name,address,port,protocol,os\n";

    #[test]
    fn good_file_parses_every_column() {
        let text = format!(
            "{HEADER}pc-01,Front desk,10.0.0.1,3390,rdp,Windows 11\n\
             pc-02,,pc-02.example.com,,vnc,Ubuntu\n\
             pc-03,Lab,fd00::3,22,SSH,\n"
        );
        let inputs = parse_csv(&text, no_names()).expect("parses");
        assert_eq!(inputs.len(), 3);
        assert_eq!(
            inputs[0],
            DesktopInput {
                name: "pc-01".into(),
                display_name: "Front desk".into(),
                address: "10.0.0.1".into(),
                port: Some(3390),
                protocol: Protocol::Rdp,
                os: "Windows 11".into(),
            }
        );
        // Empty display name → the name; empty port → none (protocol default later).
        assert_eq!(inputs[1].display_name, "pc-02");
        assert_eq!(inputs[1].port, None);
        assert_eq!(inputs[1].protocol, Protocol::Vnc);
        assert_eq!(inputs[2].protocol, Protocol::Ssh);
        assert_eq!(inputs[2].address, "fd00::3");
        assert_eq!(inputs[2].os, "");
    }

    #[test]
    fn header_is_case_insensitive_in_any_order_with_optional_columns() {
        let text = "Address, Display Name ,NAME\n10.1.1.1,Shown,host-a\n";
        let inputs = parse_csv(text, no_names()).expect("parses");
        assert_eq!(inputs.len(), 1);
        assert_eq!(inputs[0].name, "host-a");
        assert_eq!(inputs[0].display_name, "Shown");
        assert_eq!(inputs[0].address, "10.1.1.1");
        assert_eq!(
            inputs[0].protocol,
            Protocol::Rdp,
            "protocol defaults to rdp"
        );
    }

    #[test]
    fn unknown_or_missing_header_columns_are_named() {
        let e = one_error(parse_csv(
            "name,address,colour\nx,1.2.3.4,red\n",
            no_names(),
        ));
        assert_eq!(e.line, 1);
        assert!(e.reason.contains("unknown column `colour`"), "{}", e.reason);

        let e = one_error(parse_csv("name,os\nx,linux\n", no_names()));
        assert_eq!(e.line, 1);
        assert!(e.reason.contains("no `address` column"), "{}", e.reason);

        let e = one_error(parse_csv("name,address,Name\n", no_names()));
        assert!(e.reason.contains("`name` is named twice"), "{}", e.reason);

        let e = one_error(parse_csv("\u{feff}\n\n", no_names()));
        assert!(e.reason.contains("empty"), "{}", e.reason);
    }

    #[test]
    fn quoted_fields_hold_commas_and_doubled_quotes() {
        let text = "name,display_name,address\n\
                    pc-1,\"Smith, John \"\"JS\"\"\",10.0.0.1\n\
                    \"pc-2\", \"spaced\" ,\"10.0.0.2\"\n\
                    pc-3,\"\",10.0.0.3";
        let inputs = parse_csv(text, no_names()).expect("parses");
        assert_eq!(inputs.len(), 3);
        assert_eq!(inputs[0].display_name, "Smith, John \"JS\"");
        assert_eq!(
            inputs[0].address, "10.0.0.1",
            "the comma did not split the field"
        );
        assert_eq!(inputs[1].name, "pc-2");
        assert_eq!(inputs[1].display_name, "spaced");
        assert_eq!(inputs[2].display_name, "pc-3", "no final line end needed");
    }

    #[test]
    fn quoted_line_break_is_refused_in_a_display_name_but_counts_lines() {
        // The display name may not hold a line break (control character): the error names the
        // line the record starts on, and the next record's line number is still right.
        let text = "name,display_name,address\n\
                    pc-1,\"two\nlines\",10.0.0.1\n\
                    pc-2,ok,bad host\n";
        let (errors, total) = csv_errors(parse_csv(text, no_names()));
        assert_eq!(total, 2);
        assert_eq!(errors[0].line, 2);
        assert!(errors[0].reason.contains("control character"));
        assert_eq!(errors[1].line, 4);
        assert!(errors[1].reason.contains("`bad host` is not a host name"));
    }

    #[test]
    fn bom_crlf_blank_lines_and_spreadsheet_filler_are_tolerated() {
        let text =
            "\u{feff}name,address,port\r\n\r\npc-1,10.0.0.1,3389\r\n,,\r\n  \r\npc-2,10.0.0.2,\r\n";
        let inputs = parse_csv(text, no_names()).expect("parses");
        let names: Vec<_> = inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["pc-1", "pc-2"]);
        assert_eq!(inputs[0].port, Some(3389));
    }

    #[test]
    fn line_numbers_count_the_header_as_line_one_and_blank_lines() {
        let text = "name,address,port\r\npc-1,10.0.0.1,1\r\n\r\npc-2,10.0.0.2,99999\r\n";
        let e = one_error(parse_csv(text, no_names()));
        assert_eq!(e.line, 4);
        assert!(e.reason.contains("port `99999`"), "{}", e.reason);
    }

    #[test]
    fn each_kind_of_bad_line_is_reported_and_nothing_is_returned() {
        let text = format!(
            "{HEADER}\
             good-1,Good,10.0.0.1,,rdp,\n\
             short,Short,10.0.0.2\n\
             badport,,10.0.0.3,abc,rdp,\n\
             zeroport,,10.0.0.4,0,rdp,\n\
             badproto,,10.0.0.5,,telnet,\n\
             GOOD-1,,10.0.0.6,,rdp,\n\
             ,,10.0.0.7,,rdp,\n\
             noaddr,,,,rdp,\n\
             badquote,a\"b,10.0.0.9,,rdp,\n\
             existing,,10.0.0.10,,rdp,\n\
             toomany,,10.0.0.11,,rdp,,extra\n"
        );
        let (errors, total) = csv_errors(parse_csv(&text, ["Existing"]));
        assert_eq!(total, 10, "{errors:#?}");
        let by_line: Vec<(usize, &str)> =
            errors.iter().map(|e| (e.line, e.reason.as_str())).collect();
        let expect = [
            (3, "3 fields, but the header names 6 columns"),
            (4, "port `abc` is not a number from 1 to 65535"),
            (5, "port `0` is not a number from 1 to 65535"),
            (6, "`telnet` is not a protocol"),
            (7, "the name `GOOD-1` is already used on line 2"),
            (8, "the name is empty"),
            (9, "the address is empty"),
            (10, "a quote inside an unquoted field"),
            (11, "a desktop named `existing` already exists"),
            (12, "7 fields, but the header names 6 columns"),
        ];
        for ((line, reason), (want_line, want)) in by_line.iter().zip(expect) {
            assert_eq!(*line, want_line, "{reason}");
            assert!(
                reason.contains(want),
                "line {line}: `{reason}` lacks `{want}`"
            );
        }
    }

    #[test]
    fn unterminated_quote_is_reported_at_its_line() {
        let text = "name,address\npc-1,10.0.0.1\npc-2,\"10.0.0.2\npc-3,10.0.0.3\n";
        let e = one_error(parse_csv(text, no_names()));
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("never closed"), "{}", e.reason);
    }

    #[test]
    fn text_after_a_closing_quote_is_an_error_and_parsing_resumes() {
        let text = "name,address\n\"pc-1\"x,10.0.0.1\npc-2,10.0.0.2\npc-3,10.0.0.300\n";
        let (errors, total) = csv_errors(parse_csv(text, no_names()));
        assert_eq!(total, 2);
        assert_eq!(errors[0].line, 2);
        assert!(errors[0].reason.contains("after a closing quote"));
        assert_eq!(errors[1].line, 4);
        assert!(errors[1].reason.contains("`10.0.0.300` is not a host name"));
    }

    #[test]
    fn at_most_twenty_errors_are_listed_but_all_are_counted() {
        let mut text = String::from("name,address,port\n");
        for i in 0..30 {
            text.push_str(&format!("pc-{i},10.0.0.{i},bad\n"));
        }
        let (errors, total) = csv_errors(parse_csv(&text, no_names()));
        assert_eq!(total, 30);
        assert_eq!(errors.len(), MAX_CSV_ERRORS);
        assert_eq!(errors[0].line, 2);
        assert_eq!(errors[19].line, 21);
        let message = DesktopError::Csv { errors, total }.to_string();
        assert!(message.starts_with("nothing was imported: 30 lines are wrong"));
        assert!(message.contains("(and 10 more bad lines)"), "{message}");
    }

    #[test]
    fn header_only_file_is_an_empty_import() {
        assert_eq!(parse_csv("name,address\n", no_names()).expect("ok"), vec![]);
    }

    #[test]
    fn addresses() {
        for good in [
            "10.0.0.1",
            "::1",
            "fd00::1:2",
            "pc-01",
            "pc_01.corp.example.com",
            "host.example.com.",
            "a1",
        ] {
            assert_eq!(check_address(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "10.0.0.256",
            "1.2.3",
            "-host",
            "host-",
            "a..b",
            "has space",
            "http://x",
            "[::1]",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
    }

    fn input(name: &str) -> DesktopInput {
        DesktopInput {
            name: name.into(),
            display_name: String::new(),
            address: "10.0.0.1".into(),
            port: None,
            protocol: Protocol::Spice,
            os: String::new(),
        }
    }

    #[test]
    fn input_becomes_a_static_desktop() {
        let now = Utc::now();
        let desktop = input(" pc-9 ")
            .into_desktop(["pc-1", "pc-2"], now)
            .expect("valid");
        assert_eq!(desktop.name, "pc-9");
        assert_eq!(desktop.display_name, "pc-9");
        assert_eq!(desktop.center, STATIC_CENTER);
        assert_eq!(desktop.power_state, PowerState::Unknown);
        assert!(!desktop.deletable);
        assert_eq!(desktop.created, now);
        assert_eq!(desktop.id.len(), 12);
        assert_eq!(desktop.port_or_default(), 5900);
        assert!(desktop.validate().is_empty());
        assert!(desktop.is_available());
    }

    #[test]
    fn hand_entry_refuses_a_taken_name_in_any_case() {
        let err = input("PC-1")
            .into_desktop(["pc-1"], Utc::now())
            .expect_err("taken");
        match err {
            DesktopError::Invalid(errors) => {
                assert_eq!(errors.len(), 1);
                assert_eq!(errors[0].field, "name");
                assert!(errors[0].reason.contains("already exists"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validate_names_each_bad_field() {
        let mut desktop = Desktop::from_input(input("pc"), Utc::now());
        desktop.name = " ".into();
        desktop.address = "bad address".into();
        desktop.port = Some(0);
        desktop.os = "x".repeat(MAX_TEXT_LEN + 1);
        desktop.center = String::new();
        desktop.display_name = "tab\there".into();
        let fields: Vec<_> = desktop.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            ["name", "display_name", "address", "port", "os", "center"]
        );
    }

    #[test]
    fn port_default_and_availability() {
        let mut desktop = Desktop::from_input(input("pc"), Utc::now());
        desktop.protocol = Protocol::Rdp;
        assert_eq!(desktop.port_or_default(), 3389);
        desktop.port = Some(4000);
        assert_eq!(desktop.port_or_default(), 4000);

        desktop.power_state = PowerState::Running;
        assert!(desktop.is_available());
        desktop.power_state = PowerState::Stopped;
        assert!(!desktop.is_available());
        desktop.power_state = PowerState::Running;
        desktop.assigned_user = Some("alice".into());
        assert!(!desktop.is_available());
    }

    #[test]
    fn desktop_round_trips_through_json_and_old_records_get_defaults() {
        let mut desktop = Desktop::from_input(input("pc"), Utc::now());
        desktop.metadata.insert("dept".into(), "sales".into());
        desktop.power_state = PowerState::Suspended;
        let json = serde_json::to_string(&desktop).expect("encodes");
        assert!(json.contains("\"power_state\":\"suspended\""), "{json}");
        let back: Desktop = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, desktop);

        let minimal = r#"{"id":"a","name":"n","address":"h","protocol":"vnc","center":"static","created":"2026-01-01T00:00:00Z"}"#;
        let d: Desktop = serde_json::from_str(minimal).expect("defaults fill the rest");
        assert_eq!(d.power_state, PowerState::Unknown);
        assert_eq!(d.agent_state, AgentState::Unknown);
        assert!(d.metadata.is_empty());
    }
}
