//! Console forms, in one shape for every page: how a field is edited ([`Kind`], [`Field`], and
//! row groups for nested lists, [`Rows`]), a record shown as the values its form would submit
//! ([`form_of`]), a submitted form read back into the JSON body the API takes ([`form_value`]),
//! the row-group buttons that change a form without saving it ([`apply_row_action`]), and the
//! views the templates read ([`FormView`], [`FieldView`]). Also `multipart/form-data` forms
//! (file uploads: licence keys, certificates, backups) read into memory, so handlers see plain
//! fields.
//!
//! Row groups work without JavaScript: every row carries a hidden marker (`entries[2]`) and its
//! inputs are named after it (`entries[2].pool_id`), the names the API uses for refusals, so a
//! refusal lands on its row and field. "Add", "Remove" and "Move up/down" are submit buttons
//! (`add_row=entries`, `remove_row=entries[2]`, …); the page answers with the form changed and
//! nothing saved. No business rules and no store here: the choices of selects come from the
//! caller.

use std::collections::{BTreeMap, HashMap};

use actix_multipart::Multipart;
use futures_util::TryStreamExt;
use serde::Serialize;
use serde_json::{Map, Value};

use super::HttpError;
use crate::model::FieldError;
use crate::model::directory::HostPort;

// ---- Declarations -----------------------------------------------------------------------------

/// How a field is edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// Write-only: never shown; left empty keeps the stored value.
    Password,
    /// A whole number.
    Number,
    /// A whole number, or empty for none.
    OptNumber,
    /// Text, or empty for none.
    OptText,
    Check,
    /// Yes or no, chosen from two labelled options: (yes, no).
    Either(&'static str, &'static str),
    /// One of fixed options: (value, label).
    Select(&'static [(&'static str, &'static str)]),
    /// One of the caller's options (a reference: a pool, a plan); empty for none.
    Choice,
    /// One of the caller's options, which must be chosen.
    Pick,
    /// Text suggested from the caller's options (a `<datalist>`), or empty for none.
    Suggest,
    /// A list of texts, one per line.
    Lines,
    /// `host[:port]` per line.
    Hosts,
    /// Several lines of text, or empty for none.
    OptTextarea,
    /// A nested list, edited as a group of rows.
    Rows(&'static Rows),
}

impl Kind {
    fn widget(self) -> &'static str {
        match self {
            Kind::Text | Kind::OptText | Kind::Suggest => "text",
            Kind::Password => "password",
            Kind::Number | Kind::OptNumber => "number",
            Kind::Check => "checkbox",
            Kind::Either(..) | Kind::Select(_) | Kind::Choice | Kind::Pick => "select",
            Kind::Lines | Kind::Hosts | Kind::OptTextarea => "textarea",
            Kind::Rows(_) => "rows",
        }
    }

    /// Whether its options come from the caller.
    fn has_choices(self) -> bool {
        matches!(self, Kind::Choice | Kind::Pick | Kind::Suggest)
    }
}

/// One field of a form: the JSON key (dotted for nested objects: `on_idle.action`), its label,
/// how it is edited and a line of help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub key: &'static str,
    pub label: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

pub const fn field(key: &'static str, label: &'static str, kind: Kind) -> Field {
    Field {
        key,
        label,
        kind,
        help: "",
    }
}

pub const fn helped(
    key: &'static str,
    label: &'static str,
    kind: Kind,
    help: &'static str,
) -> Field {
    Field {
        key,
        label,
        kind,
        help,
    }
}

/// A nested list edited as rows: one row per item, a column per field of the item (keys
/// relative to the item), in the list's order. Columns are plain inputs: a row group does not
/// nest another.
#[derive(Debug)]
pub struct Rows {
    /// What one row is, capitalised: `Entry` ("Entry 2", "Add entry").
    pub item: &'static str,
    pub columns: &'static [Field],
    /// A new row's values, as stored.
    pub blank: fn() -> Value,
    /// A stored item in the shape of the columns, when they differ ([`same`] otherwise)…
    pub to_form: fn(Value) -> Value,
    /// … and a row's values back in the stored shape.
    pub from_form: fn(Value) -> Value,
}

/// Declarations are statics: one is itself and no other.
impl PartialEq for Rows {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Rows {}

/// An item whose stored shape is its columns' shape.
pub fn same(item: Value) -> Value {
    item
}

/// The buttons of row groups, by what they do. The value of `add_row` names the group
/// (`entries`); the others name the row (`entries[2]`).
const ROW_BUTTONS: [&str; 4] = ["add_row", "remove_row", "move_up", "move_down"];

// ---- Views (what the templates read) ----------------------------------------------------------

#[derive(Debug, Clone, Serialize, Default)]
pub struct OptionView {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct FieldView {
    /// The input's name: `name`, `on_idle.action`, `entries[2].pool_id`.
    pub key: String,
    pub label: String,
    /// `text`, `password`, `number`, `checkbox`, `select`, `textarea`, `file`, `rows`.
    pub widget: String,
    pub value: String,
    pub checked: bool,
    pub options: Vec<OptionView>,
    pub error: String,
    pub help: String,
    /// The id of the `<datalist>` the input suggests from.
    pub list: String,
    /// Suggestions this field brings along as the `<datalist>` `list`.
    pub suggestions: Vec<SuggestionView>,
    /// Widget `rows`: one per item.
    pub rows: Vec<RowFieldsView>,
    /// Widget `rows`: what one row is (`Entry`).
    pub item: String,
    /// Widget `rows`: the suggestions its columns share, one list per column.
    pub datalists: Vec<DatalistView>,
}

/// One row of a row group.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RowFieldsView {
    /// The row's marker and name prefix: `entries[2]`.
    pub key: String,
    /// `Entry 3`.
    pub title: String,
    pub cells: Vec<FieldView>,
    /// Refusals of the row as a whole.
    pub error: String,
    pub first: bool,
    pub last: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct DatalistView {
    pub id: String,
    pub options: Vec<SuggestionView>,
}

/// One suggestion of a `<datalist>`: the text it fills in, and a label shown beside it when
/// the caller's label says something else (a group's name beside its DN); empty otherwise.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct SuggestionView {
    pub value: String,
    pub label: String,
}

/// The caller's (value, label) choices as suggestions.
fn suggestions(choices: &[(String, String)]) -> Vec<SuggestionView> {
    choices
        .iter()
        .map(|(value, label)| SuggestionView {
            value: value.clone(),
            label: if label == value {
                String::new()
            } else {
                label.clone()
            },
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ButtonView {
    pub label: String,
    pub action: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct FormView {
    pub action: String,
    pub multipart: bool,
    pub fields: Vec<FieldView>,
    /// Some field is a row group: the save button comes first too, so that Enter in a field
    /// saves rather than pressing a row's button.
    pub has_rows: bool,
    pub submit: String,
    pub cancel: String,
    /// Posted after the form, each on its own (e.g. Test connection).
    pub buttons: Vec<ButtonView>,
    /// A delete confirmation instead of fields.
    pub confirm: String,
}

impl FormView {
    /// A form of `fields` posted to `action`.
    pub fn new(action: String, fields: Vec<FieldView>, submit: &str, cancel: &str) -> Self {
        FormView {
            action,
            has_rows: fields.iter().any(|f| f.widget == "rows"),
            fields,
            submit: submit.to_string(),
            cancel: cancel.to_string(),
            ..FormView::default()
        }
    }
}

// ---- Records ⇄ form values --------------------------------------------------------------------

/// A form as submitted, or as a record would fill it: input name → text. Row groups are
/// flattened: `entries[0]` (the row's marker), `entries[0].pool_id`, `entries[1]`, …
pub type Values = HashMap<String, String>;

/// The value at a dotted key.
pub fn at<'v>(value: &'v Value, key: &str) -> &'v Value {
    key.split('.').fold(value, |v, k| &v[k])
}

fn set_at(target: &mut Value, key: &str, v: Value) {
    let mut node = target;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Some(map) = node.as_object_mut() else {
            return;
        };
        if i + 1 == parts.len() {
            map.insert((*part).to_string(), v);
            return;
        }
        node = map
            .entry((*part).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// A stored value as the text of its field.
pub fn shown(kind: Kind, v: &Value) -> String {
    match (kind, v) {
        (Kind::Password, _) | (_, Value::Null) => String::new(),
        (Kind::Hosts, Value::Array(items)) => items
            .iter()
            .map(|h| match (h["host"].as_str(), h["port"].as_u64()) {
                (Some(host), Some(port)) => {
                    HostPort::new(host, u16::try_from(port).unwrap_or(0)).to_string()
                }
                _ => h.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        (Kind::Lines, Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join("\n"),
        // A map of texts, one `key=value` per line.
        (Kind::Lines, Value::Object(map)) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n"),
        (_, Value::String(s)) => s.clone(),
        (_, Value::Bool(b)) => b.to_string(),
        (_, other) => other.to_string(),
    }
}

/// What a field submits for a stored value; `None` when it submits nothing (a password, an
/// unticked box).
fn submitted_text(kind: Kind, v: &Value) -> Option<String> {
    match kind {
        Kind::Password | Kind::Rows(_) => None,
        Kind::Check => (v.as_bool() == Some(true)).then(|| "on".to_string()),
        Kind::Either(..) => v
            .as_bool()
            .map(|b| if b { "on" } else { "off" }.to_string()),
        _ => Some(shown(kind, v)),
    }
}

/// A record (or a new record's starting values) as its form would submit it.
pub fn form_of(fields: &[Field], source: &Value) -> Values {
    let mut values = Values::new();
    for f in fields {
        let v = at(source, f.key);
        if let Kind::Rows(rows) = f.kind {
            let items = v.as_array().map(Vec::as_slice).unwrap_or_default();
            let list = items.iter().map(|item| row_of(rows, item)).collect();
            put_rows(&mut values, f.key, list);
        } else if let Some(text) = submitted_text(f.kind, v) {
            values.insert(f.key.to_string(), text);
        }
    }
    values
}

/// One stored item as its row's values, by column key.
fn row_of(rows: &Rows, item: &Value) -> Values {
    let item = (rows.to_form)(item.clone());
    rows.columns
        .iter()
        .filter_map(|c| submitted_text(c.kind, at(&item, c.key)).map(|t| (c.key.to_string(), t)))
        .collect()
}

fn row_key(group: &str, index: usize) -> String {
    format!("{group}[{index}]")
}

/// `entries[2]` as (`entries`, 2).
fn parse_row_key(key: &str) -> Option<(&str, usize)> {
    let (group, index) = key.strip_suffix(']')?.rsplit_once('[')?;
    Some((group, index.parse().ok()?))
}

/// Takes the rows of the group `key` out of `values`, in the order of their numbers: each
/// row's values by column key.
fn take_rows(values: &mut Values, key: &str) -> Vec<Values> {
    let prefix = format!("{key}[");
    let names: Vec<String> = values
        .keys()
        .filter(|k| k.starts_with(&prefix))
        .cloned()
        .collect();
    let mut rows: BTreeMap<usize, Values> = BTreeMap::new();
    for name in names {
        let Some((index, column)) = name[prefix.len()..].split_once(']') else {
            continue;
        };
        let Ok(index) = index.parse::<usize>() else {
            continue;
        };
        let text = values.remove(&name).unwrap_or_default();
        let row = rows.entry(index).or_default();
        if let Some(column) = column.strip_prefix('.') {
            row.insert(column.to_string(), text);
        }
    }
    rows.into_values().collect()
}

/// Puts rows into `values` as the group `key`, numbered from 0.
fn put_rows(values: &mut Values, key: &str, rows: Vec<Values>) {
    for (i, row) in rows.into_iter().enumerate() {
        let marker = row_key(key, i);
        for (column, text) in row {
            values.insert(format!("{marker}.{column}"), text);
        }
        values.insert(marker, String::new());
    }
}

/// How many rows the group `key` has (numbered from 0, as [`normalize`] leaves them).
pub fn row_count(values: &Values, key: &str) -> usize {
    (0..)
        .take_while(|i| values.contains_key(&row_key(key, *i)))
        .count()
}

/// Numbers the rows of every row group 0, 1, 2… in the order they came, whatever numbers
/// the submitted form gave them.
pub fn normalize(fields: &[Field], values: &mut Values) {
    for f in fields {
        if let Kind::Rows(_) = f.kind {
            let rows = take_rows(values, f.key);
            put_rows(values, f.key, rows);
        }
    }
}

/// Applies the row-group button that was pressed, if one was: adds a blank row at the end,
/// removes a row, or swaps a row with its neighbour. Returns whether one was pressed. Nothing
/// is saved either way; what was typed elsewhere stays as typed. Call after [`normalize`].
pub fn apply_row_action(fields: &[Field], values: &mut Values) -> Result<bool, HttpError> {
    let pressed = ROW_BUTTONS
        .iter()
        .find_map(|b| values.get(*b).map(|target| (*b, target.clone())));
    for b in ROW_BUTTONS {
        values.remove(b);
    }
    let Some((button, target)) = pressed else {
        return Ok(false);
    };
    let (group, index) = if button == "add_row" {
        (target.as_str(), None)
    } else {
        match parse_row_key(&target) {
            Some((group, index)) => (group, Some(index)),
            None => (target.as_str(), None),
        }
    };
    let rows = fields.iter().find_map(|f| match f.kind {
        Kind::Rows(rows) if f.key == group => Some(rows),
        _ => None,
    });
    let (Some(rows), true) = (rows, button == "add_row" || index.is_some()) else {
        return Err(HttpError::BadRequest(format!(
            "The button `{button}` names `{target}`, which is no row group or row of this form: \
             open the form again and retry."
        )));
    };
    let mut list = take_rows(values, group);
    match (button, index) {
        ("add_row", _) => list.push(row_of(rows, &(rows.blank)())),
        ("remove_row", Some(i)) if i < list.len() => {
            list.remove(i);
        }
        ("move_up", Some(i)) if i > 0 && i < list.len() => list.swap(i - 1, i),
        ("move_down", Some(i)) if i + 1 < list.len() => list.swap(i, i + 1),
        // The first row moved up, the last one down, or a row that is gone: nothing to do.
        _ => {}
    }
    put_rows(values, group, list);
    Ok(true)
}

/// The submitted form as the JSON body the API takes. Refusals name the field as the API
/// does (`entries[1].offer`). A row group becomes a list, empty when it has no rows.
pub fn form_value(fields: &[Field], values: &Values) -> Result<Value, Vec<FieldError>> {
    let mut value = Value::Object(Map::new());
    let mut errors = Vec::new();
    for f in fields {
        let parsed = if let Kind::Rows(rows) = f.kind {
            let items = (0..row_count(values, f.key))
                .map(|i| {
                    let marker = row_key(f.key, i);
                    let mut item = Value::Object(Map::new());
                    for c in rows.columns {
                        let name = format!("{marker}.{}", c.key);
                        let raw = values.get(&name).map(String::as_str);
                        if let Some(v) = parse(c.kind, &name, raw, values, &mut errors) {
                            set_at(&mut item, c.key, v);
                        }
                    }
                    (rows.from_form)(item)
                })
                .collect();
            Some(Value::Array(items))
        } else {
            let raw = values.get(f.key).map(String::as_str);
            parse(f.kind, f.key, raw, values, &mut errors)
        };
        if let Some(v) = parsed {
            set_at(&mut value, f.key, v);
        }
    }
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(errors)
    }
}

/// One field's text as its JSON value. `None` leaves the field out of the body (the record's
/// default applies), or else a refusal naming `name` was added to `errors`.
fn parse(
    kind: Kind,
    name: &str,
    raw: Option<&str>,
    values: &Values,
    errors: &mut Vec<FieldError>,
) -> Option<Value> {
    let raw = match (kind, raw) {
        // An unticked box sends nothing.
        (Kind::Check, raw) => return Some(Value::Bool(raw.is_some())),
        (Kind::Rows(_), _) => return None,
        (Kind::Pick, None) => "",
        (_, None) => return None,
        (_, Some(raw)) => raw,
    };
    match parse_text(kind, raw, values) {
        Ok(v) => Some(v),
        Err(reason) => {
            errors.push(FieldError::new(name, reason));
            None
        }
    }
}

/// A submitted text as the JSON value of a field of `kind`, or why it cannot be.
fn parse_text(kind: Kind, raw: &str, values: &Values) -> Result<Value, String> {
    let optional = || {
        if raw.trim().is_empty() {
            Value::Null
        } else {
            Value::String(raw.to_string())
        }
    };
    Ok(match kind {
        Kind::Text | Kind::Password => Value::String(raw.to_string()),
        Kind::Check => Value::Bool(true),
        Kind::Select(options) => {
            if !options.iter().any(|(v, _)| *v == raw) {
                let known: Vec<&str> = options.iter().map(|(v, _)| *v).collect();
                return Err(format!(
                    "`{raw}` is not one of the choices ({})",
                    known.join(", ")
                ));
            }
            Value::String(raw.to_string())
        }
        Kind::Either(..) => match raw {
            "on" | "true" => Value::Bool(true),
            "off" | "false" => Value::Bool(false),
            other => return Err(format!("`{other}` is neither `on` nor `off`")),
        },
        Kind::Pick if raw.trim().is_empty() => {
            return Err("nothing is chosen: pick one from the list".into());
        }
        Kind::Pick => Value::String(raw.to_string()),
        Kind::OptText | Kind::OptTextarea | Kind::Choice | Kind::Suggest => optional(),
        Kind::Number | Kind::OptNumber => match raw.trim() {
            "" if kind == Kind::OptNumber => Value::Null,
            t => match t.parse::<u64>() {
                Ok(n) => Value::from(n),
                Err(_) => return Err(format!("`{t}` is not a whole number")),
            },
        },
        Kind::Lines => Value::Array(
            raw.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| Value::String(l.to_string()))
                .collect(),
        ),
        Kind::Hosts => {
            let default_port = match values.get("security").map(String::as_str) {
                Some("starttls" | "plain") => 389,
                _ => 636,
            };
            let mut hosts = Vec::new();
            let mut bad = Vec::new();
            for line in raw.lines().map(str::trim).filter(|l| !l.is_empty()) {
                match HostPort::parse(line, default_port) {
                    Ok(hp) => hosts.push(serde_json::json!({"host": hp.host, "port": hp.port})),
                    Err(reason) => bad.push(reason),
                }
            }
            if !bad.is_empty() {
                return Err(bad.join("; "));
            }
            Value::Array(hosts)
        }
        Kind::Rows(_) => Value::Array(Vec::new()),
    })
}

// ---- Form values → views ----------------------------------------------------------------------

/// Whether a refusal (`entries[0].pool_id`) is about the input, row or group `key`, or
/// something inside it.
fn within(error_field: &str, key: &str) -> bool {
    error_field == key
        || error_field
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('[') || rest.starts_with('.'))
}

/// Whether a refusal belongs to a top-level field: as [`within`], and a refusal of a whole
/// nested object (`on_idle`) shows on each of its fields (`on_idle.action`).
pub fn belongs(error_field: &str, key: &str) -> bool {
    within(error_field, key)
        || key
            .strip_prefix(error_field)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// The refusals as a field shows them: the reason alone when it names the field itself,
/// else with the part of the field it names.
fn reasons<'e>(errors: impl Iterator<Item = &'e FieldError>, key: &str) -> String {
    errors
        .map(|e| {
            if e.field == key {
                e.reason.clone()
            } else {
                e.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One input's view: its text from `values`, its options, no refusals yet.
fn input_view(f: &Field, name: &str, values: &Values, choices: &[(String, String)]) -> FieldView {
    let value = match f.kind {
        Kind::Password => String::new(),
        _ => values.get(name).cloned().unwrap_or_default(),
    };
    let mut options: Vec<(String, String)> = match f.kind {
        Kind::Select(fixed) => fixed
            .iter()
            .map(|(v, l)| ((*v).to_string(), (*l).to_string()))
            .collect(),
        Kind::Either(yes, no) => vec![("on".into(), yes.into()), ("off".into(), no.into())],
        Kind::Choice | Kind::Pick => choices.to_vec(),
        _ => Vec::new(),
    };
    if matches!(f.kind, Kind::Choice | Kind::Pick) {
        if value.is_empty() && f.kind == Kind::Pick {
            // Shown unchosen rather than quietly taking the first choice.
            options.insert(0, (String::new(), "(choose one)".into()));
        } else if !options.iter().any(|(v, _)| *v == value) {
            // A reference to something gone stays visible, to be fixed.
            options.push((value.clone(), format!("{value} (missing)")));
        }
    }
    let (list, suggestions) = match f.kind {
        Kind::Suggest => (format!("{name}-list"), suggestions(choices)),
        _ => (String::new(), Vec::new()),
    };
    FieldView {
        key: name.to_string(),
        label: f.label.to_string(),
        widget: f.kind.widget().to_string(),
        checked: f.kind == Kind::Check && values.contains_key(name),
        options: options
            .into_iter()
            .map(|(v, label)| OptionView {
                selected: v == value,
                value: v,
                label,
            })
            .collect(),
        value,
        help: f.help.to_string(),
        list,
        suggestions,
        ..FieldView::default()
    }
}

/// The form's fields with the texts of `values`, the choices `options(key)` gives for
/// [`Kind::Choice`], [`Kind::Pick`] and [`Kind::Suggest`] fields (`key` is `parent`, or
/// `entries.pool_id` for a row group's column) as (value, label), and each refusal on the
/// most precise input, row or row group it names.
pub fn field_views<E>(
    fields: &[Field],
    values: &Values,
    errors: &[FieldError],
    mut options: impl FnMut(&str) -> Result<Vec<(String, String)>, E>,
) -> Result<Vec<FieldView>, E> {
    let mut views = Vec::new();
    for f in fields {
        let Kind::Rows(rows) = f.kind else {
            let choices = if f.kind.has_choices() {
                options(f.key)?
            } else {
                Vec::new()
            };
            let mut view = input_view(f, f.key, values, &choices);
            view.error = reasons(errors.iter().filter(|e| belongs(&e.field, f.key)), f.key);
            views.push(view);
            continue;
        };
        let mut column_choices = Vec::new();
        let mut datalists = Vec::new();
        for c in rows.columns {
            let choices = if c.kind.has_choices() {
                options(&format!("{}.{}", f.key, c.key))?
            } else {
                Vec::new()
            };
            if c.kind == Kind::Suggest {
                datalists.push(DatalistView {
                    id: format!("{}-{}-list", f.key, c.key),
                    options: suggestions(&choices),
                });
            }
            column_choices.push(choices);
        }
        let count = row_count(values, f.key);
        let mut placed = vec![false; errors.len()];
        let mut row_views = Vec::new();
        for i in 0..count {
            let marker = row_key(f.key, i);
            let mut cells = Vec::new();
            for (c, choices) in rows.columns.iter().zip(&column_choices) {
                let name = format!("{marker}.{}", c.key);
                let mut cell = input_view(c, &name, values, choices);
                if c.kind == Kind::Suggest {
                    cell.list = format!("{}-{}-list", f.key, c.key);
                    cell.suggestions = Vec::new();
                }
                if i > 0 {
                    // Column help shows once, on the first row.
                    cell.help = String::new();
                }
                let mine: Vec<&FieldError> = errors
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| within(&e.field, &name))
                    .map(|(n, e)| {
                        placed[n] = true;
                        e
                    })
                    .collect();
                cell.error = reasons(mine.into_iter(), &name);
                cells.push(cell);
            }
            let mut row_errors = Vec::new();
            for (n, e) in errors.iter().enumerate() {
                if !placed[n] && within(&e.field, &marker) {
                    placed[n] = true;
                    row_errors.push(e);
                }
            }
            row_views.push(RowFieldsView {
                title: format!("{} {}", rows.item, i + 1),
                error: reasons(row_errors.into_iter(), &marker),
                key: marker,
                cells,
                first: i == 0,
                last: i + 1 == count,
            });
        }
        let group_errors = errors
            .iter()
            .enumerate()
            .filter(|(n, e)| !placed[*n] && belongs(&e.field, f.key))
            .map(|(_, e)| e);
        views.push(FieldView {
            key: f.key.to_string(),
            label: f.label.to_string(),
            widget: "rows".into(),
            error: reasons(group_errors, f.key),
            help: f.help.to_string(),
            rows: row_views,
            item: rows.item.to_string(),
            datalists,
            ..FieldView::default()
        });
    }
    Ok(views)
}

// ---- Multipart forms --------------------------------------------------------------------------

/// The fields of one multipart form: text fields and uploaded files alike, by name.
pub struct MultipartForm {
    fields: HashMap<String, Vec<u8>>,
}

impl MultipartForm {
    /// Reads every field; refuses the form when all of it together exceeds `limit` bytes.
    pub async fn read(mut multipart: Multipart, limit: usize) -> Result<Self, HttpError> {
        let mut fields = HashMap::new();
        let mut total = 0usize;
        while let Some(mut field) = multipart
            .try_next()
            .await
            .map_err(|e| HttpError::BadRequest(format!("The upload could not be read: {e}")))?
        {
            let name = field.name().unwrap_or_default().to_string();
            let mut data = Vec::new();
            while let Some(chunk) = field
                .try_next()
                .await
                .map_err(|e| HttpError::BadRequest(format!("The upload could not be read: {e}")))?
            {
                total += chunk.len();
                if total > limit {
                    return Err(HttpError::BadRequest(format!(
                        "The upload is larger than {} MiB.",
                        limit / (1024 * 1024)
                    )));
                }
                data.extend_from_slice(&chunk);
            }
            fields.insert(name, data);
        }
        Ok(Self { fields })
    }

    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .get(name)
            .map(Vec::as_slice)
            .filter(|b| !b.is_empty())
    }

    /// A text field, or "" when absent.
    pub fn text(&self, name: &str) -> String {
        self.bytes(name)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    }

    /// The pasted text of `text_field`, or else the uploaded file `file_field` read as text.
    pub fn text_or_file(&self, text_field: &str, file_field: &str) -> String {
        let pasted = self.text(text_field);
        if pasted.trim().is_empty() {
            self.text(file_field)
        } else {
            pasted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static ITEMS: Rows = Rows {
        item: "Item",
        columns: &[
            field("name", "Name", Kind::Pick),
            field("count", "Count", Kind::Number),
            field("on", "On", Kind::Check),
            field("tags", "Tags", Kind::Lines),
        ],
        blank: || serde_json::json!({"name": "", "count": 1, "on": true, "tags": []}),
        to_form: same,
        from_form: same,
    };

    fn fields() -> Vec<Field> {
        vec![
            field("title", "Title", Kind::Text),
            field("items", "Items", Kind::Rows(&ITEMS)),
        ]
    }

    fn names(values: &Values) -> Vec<String> {
        let value = form_value(&fields(), values).expect("valid");
        value["items"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|i| i["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn press(values: &mut Values, button: &str, target: &str) {
        values.insert(button.into(), target.into());
        assert!(apply_row_action(&fields(), values).expect("a known row"));
        assert!(!values.contains_key(button), "the button is not kept");
    }

    #[test]
    fn row_buttons_add_remove_and_move_rows_keeping_what_was_typed() {
        let stored = serde_json::json!({"title": "T", "items": [
            {"name": "a", "count": 1, "on": true, "tags": ["x", "y"]},
            {"name": "b", "count": 2, "on": false, "tags": []},
        ]});
        let mut values = form_of(&fields(), &stored);
        assert_eq!(values["items[0].tags"], "x\ny");
        // What the admin typed before pressing a button stays.
        values.insert("title".into(), "typed".into());
        values.insert("items[1].count".into(), "7".into());

        press(&mut values, "add_row", "items");
        assert_eq!(values["items[2].count"], "1");
        assert_eq!(values["items[2].on"], "on");
        assert_eq!(values["items[2].name"], "");
        values.insert("items[2].name".into(), "c".into());
        assert_eq!(names(&values), ["a", "b", "c"]);

        press(&mut values, "move_up", "items[2]");
        assert_eq!(names(&values), ["a", "c", "b"]);
        press(&mut values, "move_down", "items[0]");
        assert_eq!(names(&values), ["c", "a", "b"]);
        // Past the ends: nothing moves.
        press(&mut values, "move_up", "items[0]");
        press(&mut values, "move_down", "items[2]");
        assert_eq!(names(&values), ["c", "a", "b"]);

        press(&mut values, "remove_row", "items[1]");
        assert_eq!(names(&values), ["c", "b"]);
        assert!(!values.contains_key("items[2]"), "renumbered");
        let value = form_value(&fields(), &values).expect("valid");
        assert_eq!(value["title"], "typed");
        assert_eq!(value["items"][1]["count"], 7, "typed before the buttons");
        assert_eq!(value["items"][1]["on"], false);
        assert_eq!(value["items"][0]["tags"], serde_json::json!([]));

        press(&mut values, "remove_row", "items[0]");
        press(&mut values, "remove_row", "items[0]");
        let value = form_value(&fields(), &values).expect("valid");
        assert_eq!(
            value["items"],
            serde_json::json!([]),
            "no rows: an empty list"
        );
    }

    #[test]
    fn a_button_naming_no_row_group_is_refused() {
        for (button, target) in [
            ("add_row", "nothing"),
            ("remove_row", "items"),
            ("move_up", "title[0]"),
        ] {
            let mut values = Values::new();
            values.insert(button.into(), target.into());
            let Err(HttpError::BadRequest(message)) = apply_row_action(&fields(), &mut values)
            else {
                panic!("{button}={target} was taken");
            };
            assert!(message.contains(target), "{message}");
        }
        let mut values = Values::new();
        assert!(!apply_row_action(&fields(), &mut values).expect("no button"));
    }

    #[test]
    fn rows_are_numbered_in_the_order_they_came() {
        let mut values = Values::new();
        for (k, v) in [
            ("items[7]", ""),
            ("items[7].name", "late"),
            ("items[3].name", "early"),
            ("items[x].name", "ignored"),
        ] {
            values.insert(k.into(), v.into());
        }
        normalize(&fields(), &mut values);
        assert_eq!(values["items[0].name"], "early");
        assert_eq!(values["items[1].name"], "late");
        assert_eq!(names(&values), ["early", "late"]);
    }

    #[test]
    fn refusals_land_on_their_cell_row_or_group_and_values_stay_as_typed() {
        assert!(belongs("entries[0].pool_id", "entries"));
        assert!(belongs("on_idle", "on_idle.after_minutes"));
        assert!(!belongs("name", "display_name"));
        assert!(!within("items[1]", "items[1].name"));

        let mut values = Values::new();
        for (k, v) in [
            ("title", "t"),
            ("items[0]", ""),
            ("items[0].name", "gone"),
            ("items[0].count", "x"),
            ("items[1]", ""),
            ("items[1].name", ""),
        ] {
            values.insert(k.into(), v.into());
        }
        let mut errors = form_value(&fields(), &values).expect_err("refused");
        assert_eq!(
            errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            ["items[0].count", "items[1].name"]
        );
        errors.push(FieldError::new("items[1]", "listed twice"));
        errors.push(FieldError::new("items", "keep one"));
        errors.push(FieldError::new("items[9].name", "far away"));
        let views = field_views(&fields(), &values, &errors, |key| {
            assert_eq!(key, "items.name");
            Ok::<_, ()>(vec![("a".into(), "A".into())])
        })
        .expect("views");
        let group = &views[1];
        assert_eq!(group.widget, "rows");
        assert_eq!(group.rows.len(), 2);
        let first = &group.rows[0];
        assert_eq!(first.cells[1].value, "x", "as typed");
        assert_eq!(first.cells[1].error, "`x` is not a whole number");
        let options: Vec<&str> = first.cells[0]
            .options
            .iter()
            .map(|o| o.label.as_str())
            .collect();
        assert_eq!(options, ["A", "gone (missing)"]);
        assert!(first.first && !first.last);
        let second = &group.rows[1];
        assert!(second.cells[0].error.contains("pick one"));
        assert_eq!(second.cells[0].options[0].label, "(choose one)");
        assert!(second.cells[0].options[0].selected);
        assert_eq!(second.error, "listed twice");
        assert!(second.cells[1].error.is_empty());
        assert_eq!(group.error, "keep one; items[9].name: far away");
        assert!(views[0].error.is_empty());
    }
}
