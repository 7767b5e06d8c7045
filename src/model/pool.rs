//! Pools: groups of desktops defined by attribute rules, nestable into sub-pools.
//!
//! Owns the [`Pool`] record and its [`Rule`]s, their validation, and membership evaluation:
//! which desktops each pool holds ([`Membership`]), kept current when one desktop or one pool
//! changes, and each pool's total / assigned / unassigned / available counts.
//!
//! Matching: a rule compares one desktop attribute with a value. Text conditions (begins with,
//! ends with, contains, does not contain, equals) ignore case; a regular expression also
//! ignores case and matches anywhere unless anchored (`^…$`). A missing metadata key reads as
//! the empty text. A pool with no rules holds every desktop of its parent (all desktops for a
//! top pool); otherwise it holds the parent's desktops that match all (or any) of its rules.
//! A pool that cannot be evaluated (unknown parent, a loop of parents, a bad regular
//! expression, or such an ancestor) holds nothing: [`validate`] keeps such pools out of the
//! store, so that only guards against damaged data.
//!
//! Pure: no I/O, no store. Provisioning, offering and assigning desktops belong to the broker.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use super::desktop::Desktop;
use super::new_id;
use super::provisioning::Provisioning;
use super::{FieldError, Protocol};
use crate::store::Record;

/// The most memory one compiled regular expression of a rule may take.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The longest pool name, and the longest rule value.
pub const MAX_NAME_LEN: usize = 255;
pub const MAX_VALUE_LEN: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the pool is not valid: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
}

pub type Result<T, E = PoolError> = std::result::Result<T, E>;

/// A group of desktops, defined by rules on their attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub id: String,
    /// Unique among pools, compared case-insensitively.
    pub name: String,
    /// The pool this one is a sub-pool of: its members are the parent's members that match
    /// this pool's rules.
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// `true`: a desktop must match every rule; `false`: at least one. Without rules, every
    /// desktop (of the parent) belongs either way.
    #[serde(default = "default_match_all")]
    pub match_all: bool,
    #[serde(default)]
    pub description: String,
    /// Growing the pool with new machines in a cloud center.
    #[serde(default)]
    pub provisioning: Provisioning,
}

fn default_match_all() -> bool {
    true
}

impl Record for Pool {
    const TREE: &'static str = "pool_by_id";
}

impl Pool {
    /// A new top pool with no rules (so: every desktop).
    pub fn new(name: impl Into<String>) -> Pool {
        Pool {
            id: new_id(),
            name: name.into(),
            parent: None,
            rules: Vec::new(),
            match_all: true,
            description: String::new(),
            provisioning: Provisioning::default(),
        }
    }

    /// What is wrong with this pool if it were saved into `pools` (which may hold an older
    /// version of it, with the same id: that one is replaced). Field names are the form's:
    /// `name`, `parent`, `rules[0].value`. Empty when it is fine.
    pub fn validate(&self, pools: &[Pool]) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let name = self.name.trim();
        if name.is_empty() {
            errors.push(FieldError::new("name", "the name is empty"));
        } else if name.chars().count() > MAX_NAME_LEN {
            errors.push(FieldError::new(
                "name",
                format!("the name is longer than {MAX_NAME_LEN} characters"),
            ));
        } else if name.chars().any(char::is_control) {
            errors.push(FieldError::new(
                "name",
                "the name contains a control character",
            ));
        } else if let Some(other) = pools
            .iter()
            .find(|p| p.id != self.id && p.name.trim().to_lowercase() == name.to_lowercase())
        {
            errors.push(FieldError::new(
                "name",
                format!("a pool named `{}` already exists", other.name),
            ));
        }

        if let Some(parent) = &self.parent
            && let Some(reason) = self.parent_problem(parent, pools)
        {
            errors.push(FieldError::new("parent", reason));
        }

        for (i, rule) in self.rules.iter().enumerate() {
            for (field, reason) in rule.problems() {
                errors.push(FieldError::new(format!("rules[{i}].{field}"), reason));
            }
        }
        // Whether the machines it creates belong to it depends on the center's protocol:
        // checked by the save, which knows the center (`provisioned_name_problem`).
        errors.extend(self.provisioning.validate());
        errors
    }

    /// Why machines named by the provisioning settings, with the center's `protocol`, would
    /// not be members of this pool (as it would be saved into `pools`), if so: the pool would
    /// never see what it creates and would create without end.
    pub fn provisioned_name_problem(&self, pools: &[Pool], protocol: Protocol) -> Option<String> {
        let mut all: Vec<Pool> = pools.iter().filter(|p| p.id != self.id).cloned().collect();
        all.push(self.clone());
        let chain = chain(&all, &self.id)?;
        let p = &self.provisioning;
        for n in p.sample_numbers() {
            let mut desktop = p.placeholder(&self.id, n, chrono::Utc::now());
            desktop.protocol = protocol;
            if !evaluate_one(&chain, &desktop) {
                return Some(not_a_member(&desktop));
            }
        }
        None
    }

    /// [`Pool::validate`] as a `Result`.
    pub fn check(&self, pools: &[Pool]) -> Result<()> {
        let errors = self.validate(pools);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(PoolError::Invalid(errors))
        }
    }

    fn parent_problem(&self, parent: &str, pools: &[Pool]) -> Option<String> {
        if parent == self.id {
            return Some("a pool cannot be a sub-pool of itself".to_string());
        }
        // Walk up from the parent, reading this pool as its new version.
        let find = |id: &str| -> Option<&Pool> {
            if id == self.id {
                Some(self)
            } else {
                pools.iter().find(|p| p.id == id)
            }
        };
        let mut path = vec![self.name.trim().to_string()];
        let mut seen: HashSet<&str> = HashSet::from([self.id.as_str()]);
        let mut current = parent;
        loop {
            let Some(pool) = find(current) else {
                return Some(if current == parent {
                    format!("the parent pool `{parent}` does not exist")
                } else {
                    format!("the ancestor pool `{current}` does not exist")
                });
            };
            path.push(pool.name.trim().to_string());
            if pool.id == self.id {
                return Some(format!(
                    "the pools would contain each other: {}",
                    path.join(" → ")
                ));
            }
            if !seen.insert(pool.id.as_str()) {
                return Some(format!(
                    "the parent pools loop ({}): fix those pools first",
                    path.join(" → ")
                ));
            }
            match &pool.parent {
                Some(next) => current = next,
                None => return None,
            }
        }
    }
}

/// Every problem of a whole set of pools (as stored, or about to be): bad names, duplicate
/// names, unknown parents, loops of parents, bad rules and regular expressions. Field names
/// are `pools[<id>].<field>`; reasons name the pool. Empty when all is fine.
pub fn validate(pools: &[Pool]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut ids = HashSet::new();
    for pool in pools {
        if !ids.insert(pool.id.as_str()) {
            errors.push(FieldError::new(
                format!("pools[{}].id", pool.id),
                format!("pool `{}`: the id `{}` is used twice", pool.name, pool.id),
            ));
        }
        for e in pool.validate(pools) {
            errors.push(FieldError::new(
                format!("pools[{}].{}", pool.id, e.field),
                format!("pool `{}`: {}", pool.name, e.reason),
            ));
        }
    }
    errors
}

/// The pools from the top pool down to `pool_id` (root first), or `None` when the pool, or
/// one of its ancestors, does not exist, or the parents loop.
pub fn chain<'p>(pools: &'p [Pool], pool_id: &str) -> Option<Vec<&'p Pool>> {
    let mut out: Vec<&Pool> = Vec::new();
    let mut current = pool_id;
    loop {
        let pool = pools.iter().find(|p| p.id == current)?;
        if out.iter().any(|p| p.id == pool.id) {
            return None;
        }
        out.push(pool);
        match &pool.parent {
            Some(parent) => current = parent,
            None => break,
        }
    }
    out.reverse();
    Some(out)
}

/// Whether `desktop` belongs to the last pool of `chain` (root first, as [`chain`] gives it):
/// it must be accepted by every pool of the chain. For updating one desktop or one pool
/// incrementally; it compiles the regular expressions on every call, so for many desktops use
/// [`CompiledPools`]. A bad regular expression matches nothing.
pub fn evaluate_one(chain: &[&Pool], desktop: &Desktop) -> bool {
    chain.iter().all(|pool| {
        let rules: std::result::Result<Vec<_>, _> =
            pool.rules.iter().map(CompiledRule::compile).collect();
        match rules {
            Ok(rules) => accepts(pool.match_all, &rules, |rule| rule.matches(desktop)),
            Err(_) => false,
        }
    })
}

/// The desktop attribute a rule looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    Name,
    DisplayName,
    Address,
    Os,
    /// `rdp`, `vnc`, `spice`, `ssh`.
    Protocol,
    /// The center's id (`static` for hand-entered desktops).
    Center,
    Image,
    Flavor,
    /// `unknown`, `running`, `stopped`, `suspended`, `paused`, `building`, `error`.
    PowerState,
    /// The value of one metadata key (empty when the desktop has no such key).
    Metadata(String),
}

impl Attribute {
    /// The attributes without a parameter, for the console's drop-down (plus `metadata:`).
    pub const SIMPLE: [Attribute; 9] = [
        Attribute::Name,
        Attribute::DisplayName,
        Attribute::Address,
        Attribute::Os,
        Attribute::Protocol,
        Attribute::Center,
        Attribute::Image,
        Attribute::Flavor,
        Attribute::PowerState,
    ];

    /// The attribute's value on `desktop`, as stored (not lowered).
    pub fn value<'d>(&self, desktop: &'d Desktop) -> &'d str {
        match self {
            Attribute::Name => &desktop.name,
            Attribute::DisplayName => &desktop.display_name,
            Attribute::Address => &desktop.address,
            Attribute::Os => &desktop.os,
            Attribute::Protocol => desktop.protocol.as_str(),
            Attribute::Center => &desktop.center,
            Attribute::Image => &desktop.image,
            Attribute::Flavor => &desktop.flavor,
            Attribute::PowerState => desktop.power_state.as_str(),
            Attribute::Metadata(key) => desktop.metadata.get(key).map_or("", String::as_str),
        }
    }

    /// What the console shows: `Display name`, `Metadata "dept"`.
    pub fn label(&self) -> String {
        match self {
            Attribute::Name => "Name".into(),
            Attribute::DisplayName => "Display name".into(),
            Attribute::Address => "Address".into(),
            Attribute::Os => "OS".into(),
            Attribute::Protocol => "Protocol".into(),
            Attribute::Center => "Center".into(),
            Attribute::Image => "Image".into(),
            Attribute::Flavor => "Flavor".into(),
            Attribute::PowerState => "Power state".into(),
            Attribute::Metadata(key) => format!("Metadata \"{key}\""),
        }
    }
}

/// The form's key: `name`, `display_name`, …, `metadata:<key>`.
impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match self {
            Attribute::Name => "name",
            Attribute::DisplayName => "display_name",
            Attribute::Address => "address",
            Attribute::Os => "os",
            Attribute::Protocol => "protocol",
            Attribute::Center => "center",
            Attribute::Image => "image",
            Attribute::Flavor => "flavor",
            Attribute::PowerState => "power_state",
            Attribute::Metadata(key) => return write!(f, "metadata:{key}"),
        };
        f.write_str(key)
    }
}

impl std::str::FromStr for Attribute {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if let Some(key) = s.strip_prefix("metadata:") {
            return Ok(Attribute::Metadata(key.trim().to_string()));
        }
        Attribute::SIMPLE
            .into_iter()
            .find(|a| a.to_string() == s)
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a desktop attribute (name, display_name, address, os, protocol, center, image, flavor, power_state, metadata:<key>)"
                )
            })
    }
}

/// How a rule compares the attribute with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    BeginsWith,
    EndsWith,
    Contains,
    DoesNotContain,
    Equals,
    /// The value is a regular expression (Rust `regex` syntax).
    MatchesRegex,
}

impl Condition {
    pub const ALL: [Condition; 6] = [
        Condition::BeginsWith,
        Condition::EndsWith,
        Condition::Contains,
        Condition::DoesNotContain,
        Condition::Equals,
        Condition::MatchesRegex,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::BeginsWith => "begins_with",
            Condition::EndsWith => "ends_with",
            Condition::Contains => "contains",
            Condition::DoesNotContain => "does_not_contain",
            Condition::Equals => "equals",
            Condition::MatchesRegex => "matches_regex",
        }
    }

    /// What the console shows: `begins with`.
    pub fn label(self) -> &'static str {
        match self {
            Condition::BeginsWith => "begins with",
            Condition::EndsWith => "ends with",
            Condition::Contains => "contains",
            Condition::DoesNotContain => "does not contain",
            Condition::Equals => "equals",
            Condition::MatchesRegex => "matches regular expression",
        }
    }
}

impl std::str::FromStr for Condition {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Condition::ALL
            .into_iter()
            .find(|c| c.as_str() == s.trim())
            .ok_or_else(|| format!("`{}` is not a rule condition", s.trim()))
    }
}

/// One test on a desktop attribute.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub attribute: Attribute,
    pub condition: Condition,
    pub value: String,
}

impl Rule {
    pub fn new(attribute: Attribute, condition: Condition, value: impl Into<String>) -> Rule {
        Rule {
            attribute,
            condition,
            value: value.into(),
        }
    }

    /// Whether `desktop` passes this rule alone (compiles a regular expression on every call;
    /// a bad one matches nothing).
    pub fn matches(&self, desktop: &Desktop) -> bool {
        CompiledRule::compile(self).is_ok_and(|rule| rule.matches(desktop))
    }

    /// (field, reason) pairs: `attribute` or `value`.
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Attribute::Metadata(key) = &self.attribute
            && key.trim().is_empty()
        {
            out.push(("attribute", "the metadata key is empty".to_string()));
        }
        if self.value.chars().count() > MAX_VALUE_LEN {
            out.push((
                "value",
                format!("the value is longer than {MAX_VALUE_LEN} characters"),
            ));
        } else if self.value.is_empty() && self.condition != Condition::Equals {
            out.push((
                "value",
                format!(
                    "the value is empty: \"{}\" needs a text to compare with",
                    self.condition.label()
                ),
            ));
        } else if let Err(reason) = CompiledRule::compile(self) {
            out.push(("value", reason));
        }
        out
    }
}

/// The lower-case form both sides of a text comparison are put in. Borrows when nothing changes.
fn lower(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(text.to_ascii_lowercase())
        } else {
            Cow::Borrowed(text)
        }
    } else {
        Cow::Owned(text.to_lowercase())
    }
}

/// A rule ready to run: its value lowered, or its regular expression compiled.
#[derive(Debug)]
struct CompiledRule<'p> {
    attribute: &'p Attribute,
    test: Test,
}

#[derive(Debug)]
enum Test {
    Text {
        condition: Condition,
        needle: String,
    },
    Regex(Regex),
}

impl<'p> CompiledRule<'p> {
    fn compile(rule: &'p Rule) -> std::result::Result<Self, String> {
        let test = match rule.condition {
            Condition::MatchesRegex => {
                let regex = RegexBuilder::new(&rule.value)
                    .case_insensitive(true)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| regex_problem(&rule.value, &e))?;
                Test::Regex(regex)
            }
            condition => Test::Text {
                condition,
                needle: lower(&rule.value).into_owned(),
            },
        };
        Ok(CompiledRule {
            attribute: &rule.attribute,
            test,
        })
    }

    fn matches(&self, desktop: &Desktop) -> bool {
        let value = self.attribute.value(desktop);
        match &self.test {
            Test::Text { condition, needle } => text_matches(*condition, &lower(value), needle),
            Test::Regex(regex) => regex.is_match(value),
        }
    }
}

fn regex_problem(pattern: &str, error: &regex::Error) -> String {
    let detail = match error {
        regex::Error::CompiledTooBig(_) => {
            "it is too large once compiled: simplify it (fewer repetitions)".to_string()
        }
        other => {
            let text = other.to_string();
            // The syntax error's text is several lines with a caret; its last line says what.
            text.lines()
                .rev()
                .find_map(|l| l.strip_prefix("error: "))
                .map_or(text.clone(), str::to_string)
        }
    };
    format!("`{pattern}` is not a valid regular expression: {detail}")
}

/// `haystack` and `needle` are both lowered.
fn text_matches(condition: Condition, haystack: &str, needle: &str) -> bool {
    match condition {
        Condition::BeginsWith => haystack.starts_with(needle),
        Condition::EndsWith => haystack.ends_with(needle),
        Condition::Contains => haystack.contains(needle),
        Condition::DoesNotContain => !haystack.contains(needle),
        Condition::Equals => haystack == needle,
        // Compiled as a `Test::Regex`, never as text.
        Condition::MatchesRegex => false,
    }
}

/// A pool's verdict from its rules' verdicts.
fn accepts<R>(match_all: bool, rules: &[R], mut matches: impl FnMut(&R) -> bool) -> bool {
    if rules.is_empty() {
        true
    } else if match_all {
        rules.iter().all(&mut matches)
    } else {
        rules.iter().any(&mut matches)
    }
}

/// A set of pools ready to evaluate: regular expressions compiled once, parents ordered
/// before their sub-pools. Build it once per change of the pool definitions.
#[derive(Debug)]
pub struct CompiledPools<'p> {
    /// Parents before children; the pools that cannot be evaluated last.
    entries: Vec<Entry<'p>>,
    /// Pool id → position in `entries`.
    index: HashMap<&'p str, usize>,
}

#[derive(Debug)]
struct Entry<'p> {
    pool: &'p Pool,
    /// The parent's position in `entries` (always before this one).
    parent: Option<usize>,
    rules: Vec<CompiledRule<'p>>,
    /// False when the pool cannot be evaluated: it then holds nothing.
    usable: bool,
}

impl Entry<'_> {
    fn accepts(&self, desktop: &Desktop) -> bool {
        accepts(self.pool.match_all, &self.rules, |rule| {
            rule.matches(desktop)
        })
    }
}

/// Where a pool stands while the evaluation order is worked out.
#[derive(Clone, Copy, PartialEq)]
enum Depth {
    Unseen,
    Visiting,
    /// Its nesting depth (0 for a top pool), or `None` when it cannot be evaluated.
    Done(Option<usize>),
}

impl<'p> CompiledPools<'p> {
    /// Orders `pools` (parents first) and compiles their rules. A pool whose id repeats an
    /// earlier one is ignored.
    pub fn new(pools: &'p [Pool]) -> Self {
        let mut first: HashMap<&str, usize> = HashMap::with_capacity(pools.len());
        let mut unique: Vec<usize> = Vec::with_capacity(pools.len());
        for (i, pool) in pools.iter().enumerate() {
            if !first.contains_key(pool.id.as_str()) {
                first.insert(pool.id.as_str(), i);
                unique.push(i);
            }
        }

        let mut depth = vec![Depth::Unseen; pools.len()];
        for &start in &unique {
            let mut path = Vec::new();
            let mut current = start;
            let mut next: Option<usize> = loop {
                match depth[current] {
                    Depth::Done(d) => break d.map(|d| d + 1),
                    // Back on the path: a loop of parents.
                    Depth::Visiting => break None,
                    Depth::Unseen => {}
                }
                depth[current] = Depth::Visiting;
                path.push(current);
                match &pools[current].parent {
                    None => break Some(0),
                    Some(parent) => match first.get(parent.as_str()) {
                        Some(&p) => current = p,
                        None => break None,
                    },
                }
            };
            for &p in path.iter().rev() {
                depth[p] = Depth::Done(next);
                next = next.map(|d| d + 1);
            }
        }

        let depth_of = |i: usize| match depth[i] {
            Depth::Done(Some(d)) => d,
            _ => usize::MAX,
        };
        let mut order = unique;
        order.sort_by_key(|&i| depth_of(i));

        let mut entries: Vec<Entry<'p>> = Vec::with_capacity(order.len());
        let mut index: HashMap<&'p str, usize> = HashMap::with_capacity(order.len());
        for i in order {
            let pool = &pools[i];
            let rules: std::result::Result<Vec<_>, _> =
                pool.rules.iter().map(CompiledRule::compile).collect();
            let parent = pool.parent.as_deref().and_then(|p| index.get(p).copied());
            let parent_usable = match (&pool.parent, parent) {
                (None, _) => true,
                (Some(_), Some(p)) => entries[p].usable,
                (Some(_), None) => false,
            };
            let usable = depth_of(i) != usize::MAX && rules.is_ok() && parent_usable;
            index.insert(pool.id.as_str(), entries.len());
            entries.push(Entry {
                pool,
                parent,
                rules: rules.unwrap_or_default(),
                usable,
            });
        }
        CompiledPools { entries, index }
    }

    /// Whether `desktop` belongs to the pool `pool_id` (walks up its parents).
    pub fn matches(&self, pool_id: &str, desktop: &Desktop) -> bool {
        let mut at = self.index.get(pool_id).copied();
        while let Some(i) = at {
            let entry = &self.entries[i];
            if !entry.usable || !entry.accepts(desktop) {
                return false;
            }
            at = entry.parent;
        }
        self.index.contains_key(pool_id)
    }

    /// Every pool's members among `desktops` (a desktop id that repeats counts once).
    pub fn evaluate(&self, desktops: &[Desktop]) -> Membership {
        // Desktops are read in the order they are given (memory order: reading them in id
        // order costs a cache miss per value); only the results are put in id order.
        let mut keyed: Vec<(&str, usize)> = desktops
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.as_str(), i))
            .collect();
        // By id, then position: of a repeated id, the first one given is kept.
        keyed.sort_unstable();
        keyed.dedup_by(|a, b| a.0 == b.0);
        let order: Vec<usize> = keyed.iter().map(|&(_, i)| i).collect();
        // Desktop position → rank in id order; `None` for a repeated id.
        let mut rank: Vec<Option<u32>> = vec![None; desktops.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = u32::try_from(r).ok();
        }
        let live: Vec<u32> = (0..desktops.len())
            .filter(|&i| rank[i].is_some())
            .filter_map(|i| u32::try_from(i).ok())
            .collect();

        // Each attribute a rule reads, laid out for all desktops in one buffer, in one pass:
        // lowered for text rules, as stored for regular expressions.
        let mut column_of: HashMap<(&Attribute, bool), usize> = HashMap::new();
        let mut specs: Vec<(&Attribute, bool)> = Vec::new();
        let mut rule_columns: Vec<Vec<usize>> = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            let mut per_rule = Vec::new();
            if entry.usable {
                for rule in &entry.rules {
                    let key = (rule.attribute, matches!(rule.test, Test::Text { .. }));
                    let column = *column_of.entry(key).or_insert_with(|| {
                        specs.push(key);
                        specs.len() - 1
                    });
                    per_rule.push(column);
                }
            }
            rule_columns.push(per_rule);
        }
        let columns = Column::build(desktops, &specs);

        let rule_matches = |rule: &CompiledRule<'_>, column: usize, at: u32| -> bool {
            let value = columns[column].get(at as usize);
            match &rule.test {
                Test::Text { condition, needle } => text_matches(*condition, value, needle),
                Test::Regex(regex) => regex.is_match(value),
            }
        };

        // Members as desktop positions, in position order; parents come first.
        let mut members: Vec<Vec<u32>> = Vec::with_capacity(self.entries.len());
        for (entry, per_rule) in self.entries.iter().zip(&rule_columns) {
            let accept = |at: &u32| {
                if entry.rules.is_empty() {
                    return true;
                }
                let mut verdicts = entry
                    .rules
                    .iter()
                    .zip(per_rule)
                    .map(|(rule, column)| rule_matches(rule, *column, *at));
                if entry.pool.match_all {
                    verdicts.all(|v| v)
                } else {
                    verdicts.any(|v| v)
                }
            };
            let candidates = match entry.parent {
                Some(parent) => &members[parent],
                None => &live,
            };
            let kept: Vec<u32> = if entry.usable {
                candidates.iter().filter(|at| accept(at)).copied().collect()
            } else {
                Vec::new()
            };
            members.push(kept);
        }

        let ids: Vec<Arc<str>> = order
            .iter()
            .map(|&i| Arc::from(desktops[i].id.as_str()))
            .collect();
        let by_pool = self
            .entries
            .iter()
            .zip(members)
            .map(|(entry, kept)| {
                let mut ranks: Vec<u32> = kept.iter().filter_map(|&at| rank[at as usize]).collect();
                ranks.sort_unstable();
                let list = ranks
                    .iter()
                    .map(|&r| Arc::clone(&ids[r as usize]))
                    .collect();
                (entry.pool.id.clone(), list)
            })
            .collect();
        Membership { by_pool }
    }
}

/// One attribute of every desktop (by position), in one buffer.
struct Column {
    text: String,
    /// Where each desktop's value ends in `text` (it starts where the previous one ends).
    ends: Vec<usize>,
}

impl Column {
    /// The columns `specs` (attribute, lowered) asks for, in one pass over `desktops`.
    fn build(desktops: &[Desktop], specs: &[(&Attribute, bool)]) -> Vec<Column> {
        let mut columns: Vec<Column> = specs
            .iter()
            .map(|_| Column {
                text: String::with_capacity(desktops.len() * 16),
                ends: Vec::with_capacity(desktops.len()),
            })
            .collect();
        for desktop in desktops {
            for (column, (attribute, lowered)) in columns.iter_mut().zip(specs) {
                column.push(attribute.value(desktop), *lowered);
            }
        }
        columns
    }

    fn push(&mut self, value: &str, lowered: bool) {
        if lowered && value.is_ascii() {
            // As `lower` does, without a string per value.
            let start = self.text.len();
            self.text.push_str(value);
            if let Some(tail) = self.text.get_mut(start..) {
                tail.make_ascii_lowercase();
            }
        } else if lowered {
            self.text.push_str(&lower(value));
        } else {
            self.text.push_str(value);
        }
        self.ends.push(self.text.len());
    }

    fn get(&self, at: usize) -> &str {
        let start = if at == 0 { 0 } else { self.ends[at - 1] };
        self.text.get(start..self.ends[at]).unwrap_or_default()
    }
}

/// Which desktops each pool holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Pool id → its desktops' ids, sorted.
    by_pool: HashMap<String, Vec<Arc<str>>>,
}

/// A pool's desktops by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PoolCounts {
    /// Desktops in the pool.
    pub total: usize,
    /// Held by a user.
    pub assigned: usize,
    /// Held by nobody (`total - assigned`).
    pub unassigned: usize,
    /// Could be offered now: unassigned, and powered `Running` or `Unknown` (see
    /// [`Desktop::is_available`]).
    pub available: usize,
}

impl PoolCounts {
    fn add(&mut self, desktop: &Desktop) {
        self.total += 1;
        if desktop.assigned_user.is_some() {
            self.assigned += 1;
        } else {
            self.unassigned += 1;
        }
        if desktop.is_available() {
            self.available += 1;
        }
    }
}

impl Membership {
    /// Every pool's members among `desktops`. To evaluate the same pools again, keep a
    /// [`CompiledPools`] instead.
    pub fn evaluate(pools: &[Pool], desktops: &[Desktop]) -> Membership {
        CompiledPools::new(pools).evaluate(desktops)
    }

    /// The ids of the pool's desktops, sorted; empty for an unknown pool.
    pub fn members(&self, pool_id: &str) -> &[Arc<str>] {
        self.by_pool.get(pool_id).map_or(&[], Vec::as_slice)
    }

    /// Whether the desktop is in the pool.
    pub fn contains(&self, pool_id: &str, desktop_id: &str) -> bool {
        find(self.members(pool_id), desktop_id).is_ok()
    }

    /// The ids of the pools the desktop is in, sorted.
    pub fn pools_of(&self, desktop_id: &str) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .by_pool
            .iter()
            .filter(|(_, list)| find(list, desktop_id).is_ok())
            .map(|(pool, _)| pool.as_str())
            .collect();
        out.sort_unstable();
        out
    }

    /// The pool's counts, over those of its members found in `desktops`.
    pub fn counts(&self, pool_id: &str, desktops: &[Desktop]) -> PoolCounts {
        let members = self.members(pool_id);
        let mut counts = PoolCounts::default();
        for desktop in desktops {
            if find(members, &desktop.id).is_ok() {
                counts.add(desktop);
            }
        }
        counts
    }

    /// Every pool's counts, in one pass over `desktops`.
    pub fn counts_all(&self, desktops: &[Desktop]) -> BTreeMap<String, PoolCounts> {
        let by_id: HashMap<&str, &Desktop> = desktops.iter().map(|d| (d.id.as_str(), d)).collect();
        self.by_pool
            .iter()
            .map(|(pool, members)| {
                let mut counts = PoolCounts::default();
                for id in members {
                    if let Some(desktop) = by_id.get(&**id) {
                        counts.add(desktop);
                    }
                }
                (pool.clone(), counts)
            })
            .collect()
    }

    /// Brings one desktop's membership up to date after it was added or changed.
    pub fn update_desktop(&mut self, pools: &CompiledPools<'_>, desktop: &Desktop) {
        let mut member = vec![false; pools.entries.len()];
        for (i, entry) in pools.entries.iter().enumerate() {
            let parent_ok = entry.parent.is_none_or(|p| member[p]);
            member[i] = entry.usable && parent_ok && entry.accepts(desktop);
            let list = self.by_pool.entry(entry.pool.id.clone()).or_default();
            match (find(list, &desktop.id), member[i]) {
                (Ok(at), false) => {
                    list.remove(at);
                }
                (Err(at), true) => list.insert(at, Arc::from(desktop.id.as_str())),
                _ => {}
            }
        }
    }

    /// Forgets a deleted desktop.
    pub fn remove_desktop(&mut self, desktop_id: &str) {
        for list in self.by_pool.values_mut() {
            if let Ok(at) = find(list, desktop_id) {
                list.remove(at);
            }
        }
    }

    /// Brings the membership up to date after the pool `pool_id` was added, changed or
    /// deleted: that pool and its sub-pools are evaluated again over `desktops`; pools no
    /// longer in `pools` are forgotten.
    pub fn update_pool(&mut self, pools: &CompiledPools<'_>, desktops: &[Desktop], pool_id: &str) {
        self.by_pool
            .retain(|id, _| pools.index.contains_key(id.as_str()));
        let mut sorted: Vec<&Desktop> = desktops.iter().collect();
        sorted.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        sorted.dedup_by(|a, b| a.id == b.id);
        let by_id: HashMap<&str, &Desktop> = sorted.iter().map(|d| (d.id.as_str(), *d)).collect();

        let mut affected: HashSet<&str> = HashSet::from([pool_id]);
        for entry in &pools.entries {
            let id = entry.pool.id.as_str();
            let in_tree = id == pool_id
                || entry
                    .pool
                    .parent
                    .as_deref()
                    .is_some_and(|p| affected.contains(p));
            if !entry.usable {
                self.by_pool.insert(id.to_string(), Vec::new());
                if in_tree {
                    affected.insert(id);
                }
                continue;
            }
            if !in_tree {
                continue;
            }
            affected.insert(id);
            let list: Vec<Arc<str>> = match entry.parent {
                Some(parent) => self
                    .members(&pools.entries[parent].pool.id)
                    .iter()
                    .filter(|d| by_id.get(&***d).is_some_and(|d| entry.accepts(d)))
                    .cloned()
                    .collect(),
                None => sorted
                    .iter()
                    .filter(|d| entry.accepts(d))
                    .map(|d| Arc::from(d.id.as_str()))
                    .collect(),
            };
            self.by_pool.insert(id.to_string(), list);
        }
    }
}

fn find(list: &[Arc<str>], desktop_id: &str) -> std::result::Result<usize, usize> {
    list.binary_search_by(|id| (**id).cmp(desktop_id))
}

/// Why a machine provisioning would create is refused: it would not be counted in its pool.
pub fn not_a_member(desktop: &Desktop) -> String {
    format!(
        "a machine named `{}` ({}) would not belong to this pool (its rules, or its parent's, leave it out): the pool would never count what it creates; change the name or the rules",
        desktop.name,
        desktop.protocol.as_str()
    )
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::model::Protocol;
    use crate::model::desktop::{AgentState, PowerState};

    fn desktop(id: &str, name: &str) -> Desktop {
        Desktop {
            id: id.into(),
            name: name.into(),
            display_name: String::new(),
            address: format!("{name}.corp.example"),
            port: None,
            protocol: Protocol::Rdp,
            os: String::new(),
            center: "static".into(),
            power_state: PowerState::Unknown,
            agent_state: AgentState::Unknown,
            image: String::new(),
            flavor: String::new(),
            metadata: BTreeMap::new(),
            assigned_user: None,
            assigned_at: None,
            last_released: None,
            deletable: false,
            server_id: String::new(),
            first_build: None,
            created: Utc::now(),
        }
    }

    fn pool(id: &str, parent: Option<&str>, match_all: bool, rules: Vec<Rule>) -> Pool {
        Pool {
            id: id.into(),
            name: format!("Pool {id}"),
            parent: parent.map(str::to_string),
            rules,
            match_all,
            description: String::new(),
            provisioning: Default::default(),
        }
    }

    fn rule(attribute: Attribute, condition: Condition, value: &str) -> Rule {
        Rule::new(attribute, condition, value)
    }

    fn ids(m: &Membership, pool: &str) -> Vec<String> {
        m.members(pool).iter().map(|s| s.to_string()).collect()
    }

    fn names() -> Vec<Desktop> {
        vec![
            desktop("d1", "Sales-PC-01"),
            desktop("d2", "sales-pc-02"),
            desktop("d3", "DEV-laptop"),
            desktop("d4", "dev-PC-sales"),
            desktop("d5", "kiosk"),
        ]
    }

    /// The members of one top pool with one rule on the name.
    fn by_name(condition: Condition, value: &str) -> Vec<String> {
        let pools = [pool(
            "p",
            None,
            true,
            vec![rule(Attribute::Name, condition, value)],
        )];
        let m = Membership::evaluate(&pools, &names());
        ids(&m, "p")
    }

    #[test]
    fn every_condition_ignoring_case() {
        assert_eq!(by_name(Condition::BeginsWith, "SALES-"), ["d1", "d2"]);
        assert_eq!(by_name(Condition::EndsWith, "-Sales"), ["d4"]);
        assert_eq!(by_name(Condition::Contains, "pc"), ["d1", "d2", "d4"]);
        assert_eq!(by_name(Condition::DoesNotContain, "PC"), ["d3", "d5"]);
        assert_eq!(by_name(Condition::Equals, "KIOSK"), ["d5"]);
        assert_eq!(by_name(Condition::Equals, "kiosk2"), Vec::<String>::new());
        assert_eq!(
            by_name(Condition::MatchesRegex, r"^sales-pc-\d+$"),
            ["d1", "d2"]
        );
        assert_eq!(
            by_name(Condition::MatchesRegex, "laptop|kiosk"),
            ["d3", "d5"]
        );
    }

    #[test]
    fn non_ascii_text_is_compared_without_case() {
        let desktops = vec![desktop("d1", "Ärzte-01"), desktop("d2", "büro-02")];
        let pools = [
            pool(
                "a",
                None,
                true,
                vec![rule(Attribute::Name, Condition::BeginsWith, "ärzte")],
            ),
            pool(
                "b",
                None,
                true,
                vec![rule(Attribute::Name, Condition::Contains, "BÜRO")],
            ),
        ];
        let m = Membership::evaluate(&pools, &desktops);
        assert_eq!(ids(&m, "a"), ["d1"]);
        assert_eq!(ids(&m, "b"), ["d2"]);
    }

    #[test]
    fn all_versus_any() {
        let rules = vec![
            rule(Attribute::Name, Condition::Contains, "sales"),
            rule(Attribute::Name, Condition::Contains, "dev"),
        ];
        let pools = [
            pool("all", None, true, rules.clone()),
            pool("any", None, false, rules),
        ];
        let m = Membership::evaluate(&pools, &names());
        assert_eq!(ids(&m, "all"), ["d4"]);
        assert_eq!(ids(&m, "any"), ["d1", "d2", "d3", "d4"]);
    }

    #[test]
    fn no_rules_means_every_desktop_of_the_parent() {
        let pools = [
            pool("top", None, false, vec![]),
            pool(
                "dev",
                None,
                true,
                vec![rule(Attribute::Name, Condition::BeginsWith, "dev")],
            ),
            pool("dev-all", Some("dev"), false, vec![]),
        ];
        let m = Membership::evaluate(&pools, &names());
        assert_eq!(ids(&m, "top"), ["d1", "d2", "d3", "d4", "d5"]);
        assert_eq!(ids(&m, "dev-all"), ["d3", "d4"]);
    }

    #[test]
    fn other_attributes_and_metadata() {
        let mut desktops = names();
        desktops[0].metadata.insert("Dept".into(), "Finance".into());
        desktops[1]
            .metadata
            .insert("Dept".into(), "finance-eu".into());
        desktops[2].protocol = Protocol::Vnc;
        desktops[2].power_state = PowerState::Running;
        desktops[3].os = "Windows 11".into();
        desktops[3].image = "win11-golden".into();
        desktops[3].flavor = "m1.large".into();
        desktops[4].center = "openstack-1".into();
        desktops[4].display_name = "Lobby kiosk".into();
        desktops[4].address = "10.1.2.3".into();
        let cases = [
            (
                Attribute::Metadata("Dept".into()),
                Condition::BeginsWith,
                "FINANCE",
                vec!["d1", "d2"],
            ),
            // A missing key reads as empty.
            (
                Attribute::Metadata("Dept".into()),
                Condition::Equals,
                "",
                vec!["d3", "d4", "d5"],
            ),
            // Keys are exact (only values ignore case).
            (
                Attribute::Metadata("dept".into()),
                Condition::Contains,
                "fin",
                vec![],
            ),
            (Attribute::Protocol, Condition::Equals, "VNC", vec!["d3"]),
            (
                Attribute::PowerState,
                Condition::Equals,
                "running",
                vec!["d3"],
            ),
            (Attribute::Os, Condition::Contains, "windows", vec!["d4"]),
            (Attribute::Image, Condition::BeginsWith, "win11", vec!["d4"]),
            (Attribute::Flavor, Condition::EndsWith, ".LARGE", vec!["d4"]),
            (
                Attribute::Center,
                Condition::DoesNotContain,
                "static",
                vec!["d5"],
            ),
            (
                Attribute::DisplayName,
                Condition::Contains,
                "lobby",
                vec!["d5"],
            ),
            (
                Attribute::Address,
                Condition::MatchesRegex,
                r"^10\.1\.",
                vec!["d5"],
            ),
        ];
        for (attribute, condition, value, want) in cases {
            let label = format!("{attribute} {} {value:?}", condition.as_str());
            let pools = [pool(
                "p",
                None,
                true,
                vec![rule(attribute, condition, value)],
            )];
            let m = Membership::evaluate(&pools, &desktops);
            assert_eq!(ids(&m, "p"), want, "{label}");
            // The one-desktop path agrees with the bulk path.
            for d in &desktops {
                let chain = chain(&pools, "p").expect("chain");
                assert_eq!(
                    evaluate_one(&chain, d),
                    want.contains(&d.id.as_str()),
                    "{label} {}",
                    d.id
                );
            }
        }
    }

    fn nested() -> Vec<Pool> {
        // Listed children first: the order of the input must not matter.
        vec![
            pool(
                "grandchild",
                Some("child"),
                true,
                vec![rule(Attribute::Name, Condition::EndsWith, "01")],
            ),
            pool(
                "child",
                Some("top"),
                true,
                vec![rule(Attribute::Name, Condition::Contains, "pc")],
            ),
            pool(
                "top",
                None,
                true,
                vec![rule(Attribute::Name, Condition::BeginsWith, "sales")],
            ),
            pool(
                "other",
                None,
                true,
                vec![rule(Attribute::Name, Condition::EndsWith, "01")],
            ),
        ]
    }

    #[test]
    fn nested_pools_narrow_their_parent() {
        let mut desktops = names();
        desktops.push(desktop("d6", "salesroom-01"));
        desktops.push(desktop("d7", "dev-pc-01"));
        let m = Membership::evaluate(&nested(), &desktops);
        assert_eq!(ids(&m, "top"), ["d1", "d2", "d6"]);
        assert_eq!(ids(&m, "child"), ["d1", "d2"]);
        // Ends with 01 alone would take d6 and d7; the chain leaves d1 only.
        assert_eq!(ids(&m, "grandchild"), ["d1"]);
        assert_eq!(ids(&m, "other"), ["d1", "d6", "d7"]);
        assert_eq!(m.pools_of("d1"), ["child", "grandchild", "other", "top"]);
        assert_eq!(m.pools_of("d7"), ["other"]);
        assert!(m.pools_of("d5").is_empty());
        assert!(m.contains("grandchild", "d1"));
        assert!(!m.contains("grandchild", "d6"));

        let pools = nested();
        let compiled = CompiledPools::new(&pools);
        assert!(compiled.matches("grandchild", &desktops[0]));
        assert!(!compiled.matches("grandchild", &desktops[6]));
        assert!(!compiled.matches("no-such-pool", &desktops[0]));
        let chain = chain(&pools, "grandchild").expect("chain");
        let chain_ids: Vec<_> = chain.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(chain_ids, ["top", "child", "grandchild"]);
        assert!(evaluate_one(&chain, &desktops[0]));
        assert!(!evaluate_one(&chain, &desktops[5]));
    }

    #[test]
    fn broken_pools_hold_nothing_and_do_not_hang() {
        let pools = vec![
            pool("a", Some("b"), true, vec![]),
            pool("b", Some("a"), true, vec![]),
            pool("self", Some("self"), true, vec![]),
            pool("under-loop", Some("a"), true, vec![]),
            pool("orphan", Some("gone"), true, vec![]),
            pool(
                "bad-regex",
                None,
                true,
                vec![rule(Attribute::Name, Condition::MatchesRegex, "(")],
            ),
            pool("under-bad", Some("bad-regex"), true, vec![]),
            pool("fine", None, true, vec![]),
        ];
        let m = Membership::evaluate(&pools, &names());
        for broken in [
            "a",
            "b",
            "self",
            "under-loop",
            "orphan",
            "bad-regex",
            "under-bad",
        ] {
            assert!(m.members(broken).is_empty(), "{broken}");
        }
        assert_eq!(m.members("fine").len(), 5);
        assert!(chain(&pools, "a").is_none());
        assert!(chain(&pools, "orphan").is_none());
    }

    #[test]
    fn validate_refuses_cycles() {
        let mut pools = nested();
        // Make the top pool a sub-pool of its grandchild.
        let mut top = pools[2].clone();
        top.parent = Some("grandchild".into());
        let errors = top.validate(&pools);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "parent");
        assert_eq!(
            errors[0].reason,
            "the pools would contain each other: Pool top → Pool grandchild → Pool child → Pool top"
        );
        assert!(top.check(&pools).is_err());

        let mut itself = pools[3].clone();
        itself.parent = Some(itself.id.clone());
        assert!(
            itself.validate(&pools)[0]
                .reason
                .contains("sub-pool of itself")
        );

        pools[2] = top;
        let all = validate(&pools);
        let fields: Vec<_> = all.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "pools[grandchild].parent",
                "pools[child].parent",
                "pools[top].parent"
            ]
        );
        assert!(
            all[0]
                .reason
                .starts_with("pool `Pool grandchild`: the pools would contain each other")
        );
    }

    #[test]
    fn provisioned_names_must_belong_to_the_pool() {
        let mut p = pool(
            "p",
            None,
            true,
            vec![rule(Attribute::Name, Condition::BeginsWith, "vdi-")],
        );
        p.provisioning = Provisioning {
            enabled: true,
            center: "c".into(),
            flavor: "f".into(),
            image: "i".into(),
            name: "desk-{SEQUENCE}".into(),
            ..Provisioning::default()
        };
        assert!(p.validate(&[]).is_empty(), "the center's protocol decides");
        let problem = p
            .provisioned_name_problem(&[], Protocol::Rdp)
            .expect("refused");
        assert!(
            problem.contains("`desk-001` (rdp) would not belong to this pool"),
            "{problem}"
        );
        p.provisioning.name = "vdi-{SEQUENCE}".into();
        assert_eq!(p.provisioned_name_problem(&[], Protocol::Rdp), None);

        // A rule on the protocol: the center's protocol is the machines'.
        p.rules = vec![rule(Attribute::Protocol, Condition::Equals, "vnc")];
        assert_eq!(p.provisioned_name_problem(&[], Protocol::Vnc), None);
        let problem = p
            .provisioned_name_problem(&[], Protocol::Rdp)
            .expect("refused");
        assert!(problem.contains("(rdp)"), "{problem}");
    }

    #[test]
    fn validate_refuses_a_bad_regex_with_the_reason() {
        let p = pool(
            "p",
            None,
            true,
            vec![
                rule(Attribute::Name, Condition::BeginsWith, "ok"),
                rule(Attribute::Name, Condition::MatchesRegex, "sales-(pc"),
            ],
        );
        let errors = p.validate(std::slice::from_ref(&p));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "rules[1].value");
        assert_eq!(
            errors[0].reason,
            "`sales-(pc` is not a valid regular expression: unclosed group"
        );

        let huge = pool(
            "h",
            None,
            true,
            vec![rule(
                Attribute::Name,
                Condition::MatchesRegex,
                r"\w{1000}\w{1000}",
            )],
        );
        let errors = huge.validate(&[]);
        assert!(errors[0].reason.contains("too large"), "{errors:?}");
    }

    #[test]
    fn validate_names_parents_rules_and_duplicates() {
        let existing = vec![pool("a", None, true, vec![])];
        let mut p = pool(
            "b",
            Some("missing"),
            true,
            vec![
                rule(Attribute::Name, Condition::Contains, ""),
                rule(Attribute::Metadata(" ".into()), Condition::Equals, ""),
            ],
        );
        p.name = "pool A".into();
        let errors = p.validate(&existing);
        let got: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.field.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("name", "a pool named `Pool a` already exists"),
                ("parent", "the parent pool `missing` does not exist"),
                (
                    "rules[0].value",
                    "the value is empty: \"contains\" needs a text to compare with"
                ),
                ("rules[1].attribute", "the metadata key is empty"),
            ]
        );
        // Saving a pool over its own older version is not a duplicate.
        let mut renamed = existing[0].clone();
        renamed.description = "changed".into();
        assert!(renamed.validate(&existing).is_empty());

        let mut twice = existing.clone();
        twice.push(existing[0].clone());
        let errors = validate(&twice);
        assert!(
            errors
                .iter()
                .any(|e| e.reason.contains("the id `a` is used twice")),
            "{errors:?}"
        );
    }

    #[test]
    fn counts_by_assignment_and_power() {
        let mut desktops = names();
        desktops[0].assigned_user = Some("alice".into());
        desktops[0].power_state = PowerState::Running;
        desktops[1].power_state = PowerState::Running; // available
        desktops[2].power_state = PowerState::Stopped; // unassigned, not available
        desktops[3].power_state = PowerState::Unknown; // available
        desktops[4].power_state = PowerState::Error; // unassigned, not available
        let pools = [
            pool("all", None, true, vec![]),
            pool(
                "none",
                None,
                true,
                vec![rule(Attribute::Name, Condition::Equals, "x")],
            ),
        ];
        let m = Membership::evaluate(&pools, &desktops);
        let want = PoolCounts {
            total: 5,
            assigned: 1,
            unassigned: 4,
            available: 2,
        };
        assert_eq!(m.counts("all", &desktops), want);
        assert_eq!(m.counts("none", &desktops), PoolCounts::default());
        assert_eq!(m.counts("unknown-pool", &desktops), PoolCounts::default());
        let all = m.counts_all(&desktops);
        assert_eq!(all["all"], want);
        assert_eq!(all["none"], PoolCounts::default());
    }

    #[test]
    fn one_changed_desktop_updates_every_pool_it_touches() {
        let pools = nested();
        let compiled = CompiledPools::new(&pools);
        let mut desktops = names();
        let mut m = compiled.evaluate(&desktops);
        assert_eq!(ids(&m, "grandchild"), ["d1"]);

        // d2 is renamed into the grandchild; d1 out of everything but `top`.
        desktops[1].name = "sales-pc-01b-01".into();
        desktops[0].name = "sales-room".into();
        m.update_desktop(&compiled, &desktops[1]);
        m.update_desktop(&compiled, &desktops[0]);
        // A new desktop arrives.
        desktops.push(desktop("d0", "Sales-PC-001"));
        m.update_desktop(&compiled, &desktops[5]);
        assert_eq!(m, compiled.evaluate(&desktops), "incremental equals full");
        assert_eq!(ids(&m, "grandchild"), ["d0", "d2"]);

        m.remove_desktop("d2");
        desktops.remove(1);
        assert_eq!(m, compiled.evaluate(&desktops));
        assert_eq!(m.pools_of("d2"), Vec::<&str>::new());
    }

    #[test]
    fn a_changed_or_deleted_pool_updates_its_sub_pools() {
        let mut pools = nested();
        let mut desktops = names();
        desktops.push(desktop("d6", "dev-pc-01"));
        let mut m = Membership::evaluate(&pools, &desktops);

        // `top` now takes dev desktops: child and grandchild follow; `other` is untouched.
        pools[2].rules = vec![rule(Attribute::Name, Condition::BeginsWith, "dev")];
        let compiled = CompiledPools::new(&pools);
        m.update_pool(&compiled, &desktops, "top");
        assert_eq!(ids(&m, "top"), ["d3", "d4", "d6"]);
        assert_eq!(ids(&m, "child"), ["d4", "d6"]);
        assert_eq!(ids(&m, "grandchild"), ["d6"]);
        assert_eq!(m, compiled.evaluate(&desktops));

        // Deleting `child` leaves the grandchild orphaned: it holds nothing, and `child` is gone.
        pools.remove(1);
        let compiled = CompiledPools::new(&pools);
        m.update_pool(&compiled, &desktops, "child");
        assert!(m.members("grandchild").is_empty());
        assert!(!m.by_pool.contains_key("child"));
        assert_eq!(m, compiled.evaluate(&desktops));

        // A new pool.
        pools.push(pool(
            "new",
            None,
            true,
            vec![rule(Attribute::Name, Condition::Contains, "kiosk")],
        ));
        let compiled = CompiledPools::new(&pools);
        m.update_pool(&compiled, &desktops, "new");
        assert_eq!(ids(&m, "new"), ["d5"]);
        assert_eq!(m, compiled.evaluate(&desktops));
    }

    #[test]
    fn members_are_sorted_by_id_whatever_the_input_order_and_repeats_count_once() {
        let pools = [pool(
            "p",
            None,
            true,
            vec![rule(Attribute::Name, Condition::Contains, "-")],
        )];
        let mut desktops = names();
        desktops.reverse();
        assert_eq!(
            ids(&Membership::evaluate(&pools, &desktops), "p"),
            ["d1", "d2", "d3", "d4"]
        );
        // Of a repeated id, the first one given counts, once.
        desktops.insert(0, desktop("d1", "nodash"));
        desktops.push(desktop("d5", "late-dash"));
        let m = Membership::evaluate(&pools, &desktops);
        assert_eq!(ids(&m, "p"), ["d2", "d3", "d4"]);
        assert_eq!(m.counts("p", &names()).total, 3);
    }

    #[test]
    fn attribute_and_condition_keys_round_trip() {
        for attribute in Attribute::SIMPLE
            .into_iter()
            .chain([Attribute::Metadata("dept".into())])
        {
            let key = attribute.to_string();
            assert_eq!(key.parse::<Attribute>(), Ok(attribute), "{key}");
        }
        assert!("colour".parse::<Attribute>().is_err());
        for condition in Condition::ALL {
            assert_eq!(condition.as_str().parse::<Condition>(), Ok(condition));
        }
        let p = pool(
            "p",
            Some("q"),
            false,
            vec![rule(
                Attribute::Metadata("k".into()),
                Condition::MatchesRegex,
                "^a",
            )],
        );
        let json = serde_json::to_string(&p).expect("encodes");
        assert!(
            json.contains(r#""attribute":{"metadata":"k"},"condition":"matches_regex""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Pool>(&json).expect("decodes"), p);
        let old: Pool = serde_json::from_str(r#"{"id":"x","name":"X"}"#).expect("defaults");
        assert!(old.match_all && old.rules.is_empty() && old.parent.is_none());
    }
}
