//! Pool membership speed against the issue's bar: evaluating the membership of 10,000 desktops
//! in 100 pools in under 50 ms.
//!
//! Run with `cargo bench --bench pools` (release build). It builds a deterministic inventory
//! (10,000 desktops over ten departments, four OSes, three centers, with metadata, power
//! states and assignments) and 100 pools: 40 top pools (name prefixes, center / OS / metadata
//! rules, "any" pools, regular expressions), 40 sub-pools and 20 sub-sub-pools. It times
//! `Membership::evaluate` (regular expressions compiled on every run, as a fresh evaluation
//! does) 20 times after one warm-up, and prints the best and the median next to the bar, plus
//! the same for a reused `CompiledPools` and for `counts_all`. It asserts nothing about time;
//! it exits non-zero only if the evaluation gives a wrong answer on the checks it makes.
//!
//! Owns nothing outside its own process; it writes nothing.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::Utc;
use gatehouse::model::Protocol;
use gatehouse::model::desktop::{AgentState, Desktop, PowerState};
use gatehouse::model::pool::{
    Attribute, CompiledPools, Condition, Membership, Pool, Rule, evaluate_one,
};

const DESKTOPS: usize = 10_000;
const RUNS: usize = 20;
const BAR: Duration = Duration::from_millis(50);

const DEPARTMENTS: [&str; 10] = [
    "sales", "finance", "dev", "hr", "support", "lab", "exec", "ops", "mkt", "legal",
];
const OSES: [(&str, &str); 4] = [
    ("win11", "Windows 11 Enterprise"),
    ("win10", "Windows 10 Pro"),
    ("ubu", "Ubuntu 22.04 LTS"),
    ("rhel", "Red Hat Enterprise Linux 9"),
];
const CENTERS: [&str; 3] = ["static", "openstack-eu", "openstack-us"];
const FLAVORS: [&str; 4] = ["m1.small", "m1.medium", "m1.large", "g1.gpu"];

/// A small deterministic generator (xorshift64*), so every run measures the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn desktops() -> Vec<Desktop> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let now = Utc::now();
    (0..DESKTOPS)
        .map(|n| {
            let dept = DEPARTMENTS[rng.below(DEPARTMENTS.len())];
            let (os_short, os) = OSES[rng.below(OSES.len())];
            let center = CENTERS[rng.below(CENTERS.len())];
            let power_state = match rng.below(10) {
                0..=5 => PowerState::Running,
                6 | 7 => PowerState::Stopped,
                8 => PowerState::Suspended,
                _ => PowerState::Unknown,
            };
            let mut metadata = BTreeMap::new();
            metadata.insert("dept".to_string(), dept.to_uppercase());
            metadata.insert("project".to_string(), format!("p{}", rng.below(20)));
            metadata.insert(
                "tier".to_string(),
                ["gold", "silver", "bronze"][rng.below(3)].to_string(),
            );
            let assigned = rng.below(3) == 0;
            // Mixed case on purpose: comparisons ignore it.
            let name = if n % 7 == 0 {
                format!("{}-{}-{n:05}", dept.to_uppercase(), os_short)
            } else {
                format!("{dept}-{os_short}-{n:05}")
            };
            Desktop {
                id: format!("{:012x}", rng.next() >> 16),
                display_name: format!("{} desktop {n}", dept),
                address: format!("10.{}.{}.{}", rng.below(4), n / 250, n % 250 + 1),
                name,
                port: None,
                protocol: if os_short.starts_with("win") {
                    Protocol::Rdp
                } else {
                    Protocol::Spice
                },
                os: os.to_string(),
                center: center.to_string(),
                power_state,
                agent_state: AgentState::Running,
                image: format!("{os_short}-golden-v{}", rng.below(5)),
                flavor: FLAVORS[rng.below(FLAVORS.len())].to_string(),
                metadata,
                assigned_user: assigned.then(|| format!("user{n}")),
                assigned_at: assigned.then_some(now),
                last_released: None,
                deletable: center != "static",
                server_id: String::new(),
                first_build: None,
                created: now,
            }
        })
        .collect()
}

fn pool(id: String, parent: Option<String>, match_all: bool, rules: Vec<Rule>) -> Pool {
    Pool {
        name: format!("Pool {id}"),
        id,
        parent,
        rules,
        match_all,
        description: String::new(),
        provisioning: Default::default(),
    }
}

fn rule(attribute: Attribute, condition: Condition, value: &str) -> Rule {
    Rule::new(attribute, condition, value)
}

/// 100 pools: 40 top pools, 40 sub-pools, 20 sub-sub-pools.
fn pools() -> Vec<Pool> {
    let mut out = Vec::new();
    // 10 department pools by name prefix, each with 4 sub-pools and 2 sub-sub-pools.
    for dept in DEPARTMENTS {
        let top = dept.to_string();
        out.push(pool(
            top.clone(),
            None,
            true,
            vec![rule(
                Attribute::Name,
                Condition::BeginsWith,
                &format!("{dept}-"),
            )],
        ));
        let windows = format!("{dept}-windows");
        out.push(pool(
            windows.clone(),
            Some(top.clone()),
            true,
            vec![rule(Attribute::Os, Condition::Contains, "windows")],
        ));
        out.push(pool(
            format!("{dept}-linux"),
            Some(top.clone()),
            true,
            vec![rule(Attribute::Os, Condition::DoesNotContain, "windows")],
        ));
        out.push(pool(
            format!("{dept}-cloud"),
            Some(top.clone()),
            false,
            vec![
                rule(Attribute::Center, Condition::Equals, "openstack-eu"),
                rule(Attribute::Center, Condition::Equals, "openstack-us"),
            ],
        ));
        let gpu = format!("{dept}-gpu");
        out.push(pool(
            gpu.clone(),
            Some(top.clone()),
            true,
            vec![rule(Attribute::Flavor, Condition::BeginsWith, "g1.")],
        ));
        out.push(pool(
            format!("{dept}-windows-gold"),
            Some(windows),
            true,
            vec![
                rule(
                    Attribute::Metadata("tier".into()),
                    Condition::Equals,
                    "GOLD",
                ),
                rule(Attribute::PowerState, Condition::Equals, "running"),
            ],
        ));
        out.push(pool(
            format!("{dept}-gpu-recent"),
            Some(gpu),
            true,
            vec![rule(
                Attribute::Image,
                Condition::MatchesRegex,
                r"-golden-v[34]$",
            )],
        ));
    }
    // 30 more top pools.
    for center in CENTERS {
        out.push(pool(
            format!("center-{center}"),
            None,
            true,
            vec![rule(Attribute::Center, Condition::Equals, center)],
        ));
    }
    for (short, _) in OSES {
        out.push(pool(
            format!("image-{short}"),
            None,
            true,
            vec![rule(Attribute::Image, Condition::BeginsWith, short)],
        ));
    }
    for p in 0..11 {
        out.push(pool(
            format!("project-{p}"),
            None,
            true,
            vec![
                rule(
                    Attribute::Metadata("project".into()),
                    Condition::Equals,
                    &format!("p{p}"),
                ),
                rule(Attribute::Protocol, Condition::Equals, "rdp"),
            ],
        ));
    }
    for (i, (a, b)) in [
        ("sales", "mkt"),
        ("dev", "lab"),
        ("hr", "legal"),
        ("exec", "finance"),
    ]
    .into_iter()
    .enumerate()
    {
        out.push(pool(
            format!("any-{i}"),
            None,
            false,
            vec![
                rule(Attribute::Metadata("dept".into()), Condition::Equals, a),
                rule(Attribute::Metadata("dept".into()), Condition::Equals, b),
                rule(Attribute::DisplayName, Condition::EndsWith, "desktop 42"),
            ],
        ));
    }
    for (i, pattern) in [
        r"^(sales|finance)-win1[01]-\d{4}7$",
        r"^10\.[0-3]\.1\d\.",
        r"ubu|rhel",
        r"-0[0-4]\d{3}$",
        r"^(dev|lab)-.*-\d*(13|42)$",
        r"large|gpu",
        r"^lab-",
    ]
    .into_iter()
    .enumerate()
    {
        let attribute = match i {
            1 => Attribute::Address,
            5 => Attribute::Flavor,
            _ => Attribute::Name,
        };
        out.push(pool(
            format!("regex-{i}"),
            None,
            true,
            vec![rule(attribute, Condition::MatchesRegex, pattern)],
        ));
    }
    out.push(pool(
        "everything".into(),
        None,
        true,
        vec![rule(Attribute::Name, Condition::DoesNotContain, "zzz")],
    ));
    out
}

fn summary(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort_unstable();
    let median = (times[(times.len() - 1) / 2] + times[times.len() / 2]) / 2;
    (times[0], median)
}

fn time<T>(mut work: impl FnMut() -> T) -> (Duration, Duration) {
    black_box(work());
    let times = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            black_box(work());
            start.elapsed()
        })
        .collect();
    summary(times)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> ExitCode {
    let desktops = desktops();
    let pools = pools();
    let problems = gatehouse::model::pool::validate(&pools);
    if !problems.is_empty() {
        eprintln!("the benchmark's pools are not valid: {problems:?}");
        return ExitCode::FAILURE;
    }
    let tops = pools.iter().filter(|p| p.parent.is_none()).count();
    println!(
        "{} desktops, {} pools ({tops} top pools, {} sub-pools, {} regular expressions)",
        desktops.len(),
        pools.len(),
        pools.len() - tops,
        pools
            .iter()
            .flat_map(|p| &p.rules)
            .filter(|r| r.condition == Condition::MatchesRegex)
            .count()
    );

    // Correctness checks on the data measured: a sample of desktops, every pool, against
    // the one-desktop path.
    let membership = Membership::evaluate(&pools, &desktops);
    let memberships: usize = pools.iter().map(|p| membership.members(&p.id).len()).sum();
    println!("memberships in all: {memberships}");
    for desktop in desktops.iter().step_by(97) {
        for p in &pools {
            let Some(chain) = gatehouse::model::pool::chain(&pools, &p.id) else {
                eprintln!("pool {} has no chain", p.id);
                return ExitCode::FAILURE;
            };
            if evaluate_one(&chain, desktop) != membership.contains(&p.id, &desktop.id) {
                eprintln!("pool {} disagrees on desktop {}", p.id, desktop.name);
                return ExitCode::FAILURE;
            }
        }
    }
    if membership.members("everything").len() != desktops.len() {
        eprintln!("the `everything` pool does not hold every desktop");
        return ExitCode::FAILURE;
    }

    let (best, median) = time(|| Membership::evaluate(&pools, &desktops));
    let met = if median < BAR { "MET" } else { "NOT MET" };
    println!(
        "Membership::evaluate, 10,000 desktops x 100 pools (best / median of {RUNS}): {} / {}  (bar < {}): {met}",
        ms(best),
        ms(median),
        ms(BAR)
    );

    let compiled = CompiledPools::new(&pools);
    let (best, median) = time(|| compiled.evaluate(&desktops));
    println!(
        "CompiledPools::evaluate, regexes compiled once (best / median): {} / {}",
        ms(best),
        ms(median)
    );
    let (best, median) = time(|| CompiledPools::new(&pools));
    println!(
        "CompiledPools::new alone (best / median): {} / {}",
        ms(best),
        ms(median)
    );
    let (best, median) = time(|| membership.counts_all(&desktops));
    println!(
        "Membership::counts_all, 100 pools (best / median): {} / {}",
        ms(best),
        ms(median)
    );
    let changed = &desktops[desktops.len() / 2];
    let mut incremental = membership.clone();
    let (best, median) = time(|| incremental.update_desktop(&compiled, changed));
    println!(
        "Membership::update_desktop, one desktop (best / median): {} / {}",
        ms(best),
        ms(median)
    );
    ExitCode::SUCCESS
}
